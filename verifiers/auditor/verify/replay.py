"""Replaying an audit run over the ledger as it was when the run was made.

A run's rows say which run it was (``audit_run``: a range ``range:<from>..<to>`` or a
follower ``follow:<token>[;warm=..][;from=..]``), when it decided (``decided_at``: one per
range run, one per follow cycle) and with which reference knowledge
(``reference_known_at``). ``verify`` serves the auditor's own code (``plan_range``, and
``Follower`` cycle by cycle) exactly what that run read, from the ledger:

* the committed events the run could see (blocks sealed by then, or decided by it);
* the reference records known by each cutoff;
* the reviews made by then, from the *ledgered* status changes, never from the rows;
* for a follower, the blocks of each cycle (from the heights its rows name), its
  warm-up and its start.

What the replay writes is what the run must have written (``Replay``).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..alerts import Alert
from ..config import DEFAULT_CONFIG, AuditConfig
from ..runner.decide import LedgeredEvent, LedgeredReference, PlacedDecision
from ..runner.follow import Follower
from ..runner.range_run import plan_range
from ..runner.reviews import Reviews
from ..runner.rows import ALERT_COLUMNS, DECISION_COLUMNS, RESTORED_COLUMNS, RunId, alert_row
from .ledger import DecisionGroup, LedgerView
from .stored import StoredDecision, compact_alert

__all__ = ["AlertSink", "Replay", "replay_follow", "replay_range"]

#: where a replay hands each alert upsert as the run wrote it: (time, alert id, the
#: ``compact_alert`` of the row); checked as it comes, never held (ADR 0047)
AlertSink = Callable[[str, str, tuple[Any, ...]], None]

#: blocks of a chain a follow replay reads from ClickHouse ahead of its cycle at once
#: (what it holds beyond the cycle: ~1,000 events a block at full speed, so ~8,000 a
#: chain; a live cycle asks for one or two blocks, a capped one for ~50,000 events)
_CHUNK = 8


_D_RUN: Final = DECISION_COLUMNS.index("audit_run")
_D_AMENDS: Final = DECISION_COLUMNS.index("amends")


def _occurred(cutoff: tuple[str, str, str]) -> str:
    return cutoff[1]


@dataclass
class Replay:
    """What is kept of one run's replay: its times and bounds. Its decisions and their
    rows, and its alert upserts, are handed over as the replay makes them."""

    run: str
    kind: str
    #: the times of the run's decisions (one for a range run, one per follow cycle)
    times: list[str] = field(default_factory=list)
    #: range runs: [from, to); the alerts with first_at there were replaced by the run
    bounds: tuple[str, str] | None = None
    #: the decisions the replay made
    count: int = 0


class _Snapshot:
    """An ``AuditSource`` serving the ledger as one run saw it (reads only: a range
    replay's rows and alerts go to its sinks, a follow replay's writes are handed over
    by ``FollowSnapshot``; nothing written is held here)."""

    def __init__(self, view: LedgerView) -> None:
        self.view = view
        self.now = ""

    # reads every run makes
    def reference_records(self) -> list[LedgeredReference]:
        # every version: each decision's knowledge cutoff says which it could use
        return list(self.view.references)

    def is_reference(self, chain_id: str) -> bool:
        return self.view.store.is_reference(chain_id)

    def reviews(self) -> Reviews:
        return self.view.reviews_at(self.now)

    def status_changes(self) -> int:
        return self.view.status_changes_at(self.now)

    def undecided_count(self, from_ts: str, to_ts: str) -> int:
        return 0

    def insert_decisions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        raise NotImplementedError  # plan_range hands its rows to the sink

    def insert_alerts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        raise NotImplementedError  # plan_range hands its alerts to the alert sink


class RangeSnapshot(_Snapshot):
    """The ledger as a range run (one run: the same id and ``decided_at``; its rows:
    ``groups``) saw it."""

    def __init__(self, view: LedgerView, groups: Sequence[DecisionGroup], decided_at: str) -> None:
        super().__init__(view)
        self.now = decided_at
        self.groups = groups
        #: the blocks the run decided events of: it saw them, whatever their time says
        self.blocks = view.run_blocks(groups)

    def _visible(self, le: LedgeredEvent) -> bool:
        p = le.position
        return (p.chain_id, p.height) in self.blocks or self.view.committed_by(
            p.chain_id, p.height, self.now
        )

    def events_between(self, lo: str, hi: str, page_size: int = 20_000) -> Iterator[LedgeredEvent]:
        return (le for le in self.view.events_between(lo, hi) if self._visible(le))

    def horizon(self) -> str | None:
        return self.view.horizon_at(self.now, sorted(self.blocks))

    def decision_cutoffs(self, lo: str, hi: str) -> Iterator[tuple[str, str, str]]:
        # the run's own decisions first: they are the cutoffs it kept (or chose); of two
        # for the same access the first is taken (``StoredCutoffs``); both in
        # ``occurred_at`` order, merged on it (ties: the run's own first)
        latest = (c for c in self.view.latest_cutoffs(self.now, lo, hi) if lo <= c[1] < hi)
        return heapq.merge(self.view.run_cutoffs(self.groups, lo, hi), latest, key=_occurred)

    # not read by a range run
    def reference_records_of_chain(
        self, chain_id: str, above: int, upto: int
    ) -> list[LedgeredReference]:
        raise NotImplementedError

    def heads(self) -> dict[str, int]:
        raise NotImplementedError

    def events_of_chain(self, chain_id: str, above: int, upto: int) -> list[LedgeredEvent]:
        raise NotImplementedError

    def last_decided_time(self) -> str | None:
        raise NotImplementedError

    def decided_heights(self) -> dict[str, int]:
        raise NotImplementedError

    def flagged_decisions(
        self, actors: Sequence[str], lo: str, hi: str, before: str
    ) -> list[tuple[Any, ...]]:
        raise NotImplementedError


def replay_range(
    view: LedgerView,
    run: RunId,
    decided_at: str,
    groups: Sequence[DecisionGroup],
    sink: Callable[[PlacedDecision, tuple[Any, ...]], None],
    on_alert: AlertSink,
    *,
    salt: str,
    config: AuditConfig = DEFAULT_CONFIG,
    progress: Callable[[int], None] | None = None,
) -> Replay:
    """Range run ``run`` made at ``decided_at``, replayed (``plan_range``) from what its
    rows (``groups``) tell. Each decision goes to ``sink`` with its row as the auditor
    makes it, each alert to ``on_alert`` as it is final. ``progress`` is told the
    accesses read so far, every 5,000."""
    assert run.from_ts is not None and run.to_ts is not None
    source = RangeSnapshot(view, groups, decided_at)
    out = Replay(run.text, "range", times=[decided_at], bounds=(run.from_ts, run.to_ts))

    def raised(a: Alert) -> None:
        # handed over as each alert is final: the grouper lets it go (ADR 0045, 0047)
        row = alert_row(a, created_at=decided_at, audit_run=run.text, version=0)
        on_alert(decided_at, a.alert_id, compact_alert(row))

    plan = plan_range(
        source,
        run.from_ts,
        run.to_ts,
        sink,
        salt=salt,
        config=config,
        now=lambda: decided_at,
        progress=progress,
        alert_sink=raised,
    )
    out.count = plan.result.decisions
    return out


# --------------------------------------------------------------------------- follow


@dataclass
class _Cycles:
    """A follow run's cycles as its rows show them."""

    times: list[str]
    known: list[str]
    #: access chain -> (height, cycle) of the blocks the run decided, by height
    blocks: dict[str, list[tuple[int, int]]]
    #: access chain -> the height the run started above
    cursors: dict[str, int]


def _cycles(rows: Iterable[StoredDecision]) -> _Cycles:
    """The cycles, read in one pass over the run's rows: what is held grows with the
    cycles and the blocks, not the rows."""
    known_of: dict[str, Counter[str]] = {}  # cycle time -> its rows' cutoffs, counted
    first_of: dict[tuple[str, int], str] = {}  # block -> the first cycle that decided it
    for r in rows:
        if r.key[1] != 0 or not r.decided_at:
            continue
        known_of.setdefault(r.decided_at, Counter())[r.known_at] += 1
        p = r.position
        if p is None:
            continue
        block = (p[0], p[1])
        seen = first_of.get(block)
        if seen is None or r.decided_at < seen:
            first_of[block] = r.decided_at
    times = sorted(known_of)
    index = {t: k for k, t in enumerate(times)}
    # the cutoff most of a cycle's rows have (ties: the first read)
    known = [known_of[t].most_common(1)[0][0] for t in times]
    blocks: dict[str, list[tuple[int, int]]] = {}
    for (chain, height), t in sorted(first_of.items()):
        blocks.setdefault(chain, []).append((height, index[t]))
    cursors = {chain: hs[0][0] - 1 for chain, hs in blocks.items()}
    return _Cycles(times, known, blocks, cursors)


class FollowSnapshot(_Snapshot):
    """The ledger as follow run ``rows`` saw it, one cycle at a time (``cycle``)."""

    def __init__(
        self,
        view: LedgerView,
        run: str,
        cycles: _Cycles,
        warm_until: str | None,
        on_row: Callable[[tuple[str, int], tuple[Any, ...]], None],
        on_alert: AlertSink,
    ) -> None:
        super().__init__(view)
        self.run = run
        self.cycles = cycles
        self.warm_until = warm_until
        self.k = -1
        self.on_row = on_row
        self.on_alert = on_alert
        self._cache: dict[str, dict[int, list[LedgeredEvent]]] = {}
        self._loaded: dict[str, int] = {}
        known = [k for k in cycles.known if k]
        self._first_known = known[0] if known else ""

    def cycle(self, k: int) -> None:
        self.k = k
        self.now = self.cycles.times[k]

    def _known(self) -> str:
        known = self.cycles.known[self.k] if self.k >= 0 else ""
        return known or self._first_known

    def heads(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for chain, blocks in self.cycles.blocks.items():
            head = self.cycles.cursors[chain]
            # blocks between two of the run's blocks were read with the earlier one
            for height, k in blocks:
                if k > self.k:
                    break
                head = height
            out[chain] = head
        known = self._known()
        for chain, heights in self.view.reference_times.items():
            if known:
                out[chain] = self.view.reference_head_at(chain, known)
            else:  # rows written before the cutoff was stored: what was committed
                out[chain] = max(
                    (h for h, _t in heights if self.view.committed_by(chain, h, self.now)),
                    default=-1,
                )
        return out

    def decided_heights(self) -> dict[str, int]:
        return dict(self.cycles.cursors)

    def last_decided_time(self) -> str | None:
        return self.warm_until

    def reference_records_of_chain(
        self, chain_id: str, above: int, upto: int
    ) -> list[LedgeredReference]:
        return [
            r for r in self.view.references if r.chain_id == chain_id and above < r.height <= upto
        ]

    def events_of_chain(self, chain_id: str, above: int, upto: int) -> list[LedgeredEvent]:
        cache = self._cache.setdefault(chain_id, {})
        loaded = self._loaded.get(chain_id, above)
        if upto > loaded:
            last = max(upto, loaded + _CHUNK)
            for le in self.view.store.events_of_chain(chain_id, loaded, last):
                cache.setdefault(le.position.height, []).append(le)
            self._loaded[chain_id] = last
        for h in [h for h in cache if h <= above]:
            del cache[h]
        return [le for h in range(above + 1, upto + 1) for le in cache.get(h, ())]

    def events_between(self, lo: str, hi: str, page_size: int = 20_000) -> Iterator[LedgeredEvent]:
        # the warm-up: what earlier runs decided (the follower keeps heights <= cursors)
        return self.view.events_between(lo, hi)

    def decision_cutoffs(self, lo: str, hi: str) -> list[tuple[str, str, str]]:
        first = self.cycles.times[0]
        return [c for c in self.view.latest_cutoffs(first, lo, hi) if lo <= c[1] < hi]

    def flagged_decisions(
        self, actors: Sequence[str], lo: str, hi: str, before: str
    ) -> list[tuple[Any, ...]]:
        # what the run read back: the latest stored version, per event and amends, of
        # the decisions about ``actors`` made before ``before`` (its start)
        wanted = set(actors)
        latest: dict[tuple[str, int], StoredDecision] = {}
        for d in self.view.rows_about(actors, lo, hi):
            if d.decided_at >= before or not lo <= d.occurred_at < hi:
                continue
            if d.text("actor_id") not in wanted:
                continue
            seen = latest.get(d.key)
            if seen is None or d.decided_at > seen.decided_at:
                latest[d.key] = d
        out = [tuple(d.get(c) for c in RESTORED_COLUMNS) for d in latest.values()]
        flags = RESTORED_COLUMNS.index("flags")
        return [r for r in out if r[flags] not in ("", "[]")]

    def horizon(self) -> str | None:
        raise NotImplementedError

    def insert_decisions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        # handed over as written; the replaying follower has a token of its own: the
        # rows carry the run's id
        for row in rows:
            fixed = (*row[:_D_RUN], self.run, *row[_D_RUN + 1 :])
            self.on_row((str(row[0]), int(row[_D_AMENDS])), fixed)

    def insert_alerts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        a_run = ALERT_COLUMNS.index("audit_run")
        # the replaying follower has a token of its own: the rows carry the run's id
        for r in rows:
            self.on_alert(
                self.now, str(r[0]), compact_alert((*r[:a_run], self.run, *r[a_run + 1 :]))
            )


def replay_follow(
    view: LedgerView,
    run: RunId,
    rows: Iterable[StoredDecision],
    on_row: Callable[[tuple[str, int], tuple[Any, ...]], None],
    on_placed: Callable[[PlacedDecision], None],
    on_alert: AlertSink,
    *,
    salt: str,
    config: AuditConfig = DEFAULT_CONFIG,
    progress: Callable[[int], None] | None = None,
) -> Replay:
    """Follow run ``run`` replayed cycle by cycle with the auditor's ``Follower``, its
    cycles told by its rows (``rows``, read once). Each row the follower writes goes to
    ``on_row`` (by event id and amends, with the run's id), each decision it makes to
    ``on_placed`` and each alert upsert to ``on_alert`` as they come (ADR 0045, 0047).
    ``progress`` is told the decisions made so far, once per cycle."""
    cycles = _cycles(rows)
    out = Replay(run.text, "follow", times=list(cycles.times))
    if not cycles.times:
        return out
    source = FollowSnapshot(view, run.text, cycles, run.warm_until, on_row, on_alert)
    follower = Follower(
        source,
        salt=salt,
        config=config,
        from_ts=run.from_ts,
        now=lambda: source.now,
        warmup=run.warm_until is not None,
        grouping=run.grouping,
    )

    def decided(placed: list[PlacedDecision]) -> None:
        out.count += len(placed)
        for p in placed:
            on_placed(p)

    follower.on_decided = decided
    for k in range(len(cycles.times)):
        source.cycle(k)
        follower.cycle()
        if progress is not None:
            progress(out.count)
    return out
