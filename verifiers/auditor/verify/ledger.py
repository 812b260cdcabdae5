"""What ``verify`` reads once: the ledger the auditor's runs decided from, and the rows
they wrote (``LedgerView``).

The ledger part is trusted as far as the integrity checks vouch for it (committed
blocks, signed times, canonical bytes); the auditor's rows are not trusted at all: they
only say which runs to replay and with which knowledge cutoffs (ADR 0016).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.storage.backend import SqlBackend
from careledger.storage.migrations import check_identifier

from .._time import ts_to_us
from ..runner.decide import LedgeredEvent, LedgeredReference, ledger_times
from ..runner.reviews import ReviewedAlert, Reviews, review_alerts
from ..runner.rows import ALERT_COLUMNS, DECISION_COLUMNS
from ..runner.store import AuditStore, pages_by_time
from ..status_records import (
    SealedStatus,
    StatusReconciliation,
    read_ledgered_status,
    read_status_rows,
    reconcile,
)
from .stored import (
    StoredAlert,
    StoredDecision,
    Unreadable,
    normalise_value,
    parse_alerts,
    parse_decisions,
)

__all__ = ["LedgerView"]

log = logging.getLogger("careledger.verify.audit")


#: alert rows read at once (each with its evidence and event ids)
_ALERT_PAGE: Final = 5000


def stored_alerts(
    backend: SqlBackend, db: str, page_size: int = _ALERT_PAGE
) -> Iterator[StoredAlert]:
    """Every ``alerts`` row as ``FINAL`` reads it, page by page in ``first_at`` order (the
    table's sort key leads with it), never all rows of text at once (ADR 0045). A page
    ends at the ``first_at`` of its last row, taken as bytes (``hex``), so that no
    stored time, UTF-8 or not, is skipped or read twice."""
    columns = ", ".join(ALERT_COLUMNS)
    after: str | None = None
    while True:
        where = "1" if after is None else "first_at > unhex(%(a)s)"
        params = {} if after is None else {"a": after}
        bound = backend.execute(
            f"SELECT hex(first_at) FROM {db}.alerts WHERE {where} "
            f"ORDER BY first_at LIMIT {int(page_size) - 1}, 1",
            params,
        )
        if not bound:
            yield from parse_alerts(
                backend.execute(f"SELECT {columns} FROM {db}.alerts FINAL WHERE {where}", params)
            )
            return
        after_this = _text(bound[0][0])
        yield from parse_alerts(
            backend.execute(
                f"SELECT {columns} FROM {db}.alerts FINAL WHERE {where} "
                "AND first_at <= unhex(%(b)s)",
                {**params, "b": after_this},
            )
        )
        after = after_this


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


@dataclass
class LedgerView:
    """The ledger and the auditor's rows of one database, read once."""

    store: AuditStore
    #: (chain, height) -> the block's signed created_at (the earliest if several)
    block_times: dict[tuple[str, int], str]
    references: list[LedgeredReference]
    status: StatusReconciliation
    #: the decision rows by run and time (their rows are read when they are checked)
    groups: list[DecisionGroup]
    alerts: list[StoredAlert]
    #: alerts written after ``settled`` (the auditor may still be writing their run):
    #: left for the next run of verify
    recent_alerts: list[StoredAlert] = field(default_factory=list)
    #: per reference chain, (height, ledger time) in ledger order
    reference_times: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    _reviews: dict[int, Reviews] = field(default_factory=dict)
    _changes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _change_times: list[str] = field(default_factory=list)

    @classmethod
    def read(
        cls,
        backend: SqlBackend,
        database: str,
        reference_topics: frozenset[str],
        *,
        now_us: int,
        settled: str,
        future: str,
        sealed: SealedStatus | None = None,
    ) -> LedgerView:
        """Read everything. Decisions and alerts written after ``settled`` (and not
        after ``future``, which no real run can have written) are kept apart. ``sealed``:
        a sealed ledger's key store, to open its status records (without it they are
        checked by their public part: the hash of each row)."""
        db = check_identifier(database)
        store = AuditStore(backend, db, reference_topics)
        block_times: dict[tuple[str, int], str] = {}
        latest_access: dict[str, str] = {}
        for chain, height, created in backend.execute(
            f"SELECT chain_id, height, created_at FROM {db}.blocks"
        ):
            if not isinstance(height, int):
                continue  # an unreadable header: the integrity checks report it
            key = (_text(chain), height)
            t = _text(created)
            if key not in block_times or t < block_times[key]:
                block_times[key] = t
            if not store.is_reference(key[0]) and t > latest_access.get(key[0], ""):
                latest_access[key[0]] = t
        references = store.reference_records()
        newest = max(latest_access.values(), default="")

        def chained_since(t: str) -> bool:
            # the processor sealed a block well after the change: it was running
            try:
                return ts_to_us(newest) > ts_to_us(t) + 60_000_000
            except ValueError:
                return True

        status = reconcile(
            read_status_rows(backend, db),
            read_ledgered_status(backend, db, sealed=sealed),
            now_us=now_us,
            chained_since=chained_since,
        )
        groups = [
            DecisionGroup.of(run, at, int(n), settled=settled, future=future)
            for run, at, n in backend.execute(
                f"SELECT hex(audit_run), hex(decided_at), count() FROM {db}.access_decisions "
                "GROUP BY audit_run, decided_at"
            )
        ]
        groups.sort(key=lambda g: (g.run, g.decided_at, g.run_hex, g.decided_hex))
        view = cls(store, block_times, references, status, groups, [])
        # an alert's flagged events are read only to regroup it (no replayed run wrote
        # it at its time) and to review it: the others' are not kept
        replayed = {(g.run, g.decided_at) for g in groups if not g.recent}
        for a in stored_alerts(backend, db):
            recent = settled < a.created_at <= future
            if recent:
                view.recent_alerts.append(a)
                continue
            if (a.audit_run, a.created_at) in replayed and a.alert_id not in status.alerts:
                a = StoredAlert(a.values, None, flagged_kept=False)
            view.alerts.append(a)
        latest: dict[str, tuple[int, str]] = {}
        for (rec, t), ref in zip(ledger_times(references, latest), references, strict=True):
            del rec
            view.reference_times.setdefault(ref.chain_id, []).append((ref.height, t))
        view._changes = view._status_changes()
        view._change_times = [when for when, _c in view._changes]
        return view

    # -- reviews as they were ---------------------------------------------------------
    def _status_changes(self) -> list[tuple[str, dict[str, Any]]]:
        """(changed_at, change) of every ledgered or pending status change, by time."""
        out: list[tuple[str, dict[str, Any]]] = []
        for alert_id, view in self.status.alerts.items():
            for change in view.changes:
                out.append((str(change["changed_at"]), {**change, "alert_id": alert_id}))
        out.sort(key=lambda c: (c[0], c[1]["alert_id"]))
        return out

    def status_changes_at(self, t: str) -> int:
        """How many status changes had been made at ``t``."""
        return bisect.bisect_right(self._change_times, t)

    def reviews_at(self, t: str) -> Reviews:
        """The reviews as a run at ``t`` read them: the ledgered (or pending) status
        changes made by then, over the stored alerts."""
        n = self.status_changes_at(t)
        cached = self._reviews.get(n)
        if cached is not None:
            return cached
        histories: dict[str, list[dict[str, Any]]] = {}
        for _when, change in self._changes[:n]:
            histories.setdefault(change["alert_id"], []).append(change)
        alerts: dict[str, ReviewedAlert] = {}
        for a in [*self.alerts, *self.recent_alerts]:
            if a.alert_id not in histories:
                continue
            flagged = a.flagged()
            if flagged is not None:
                alerts[a.alert_id] = ReviewedAlert(
                    a.text("actor_id"), a.text("last_at"), tuple(flagged)
                )
        reviews = review_alerts(histories, alerts, intact=lambda _h: True)
        self._reviews[n] = reviews
        return reviews

    # -- the ledger -------------------------------------------------------------------
    def committed_by(self, chain: str, height: int, t: str) -> bool:
        """The block was sealed at or before ``t`` (by its signed time)."""
        created = self.block_times.get((chain, height))
        return created is not None and created <= t

    def horizon_at(self, t: str, also: Sequence[tuple[str, int]] = ()) -> str | None:
        """The latest event time in the blocks sealed by ``t`` (and in ``also``)."""
        db = self.store.db
        rows = self.store.backend.execute(
            f"SELECT chain_id, height, max(occurred_at) FROM {db}.access_events "
            "WHERE (chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {db}.blocks) GROUP BY chain_id, height"
        )
        wanted = set(also)
        best: str | None = None
        for chain, height, latest in rows:
            if type(height) is not int:
                continue
            key = (_text(chain), height)
            if key in wanted or self.committed_by(key[0], key[1], t):
                value = _text(latest)
                if best is None or value > best:
                    best = value
        return best

    def events_between(self, lo: str, hi: str) -> Iterator[LedgeredEvent]:
        return self.store.events_between(lo, hi)

    def reference_head_at(self, chain: str, known_at: str) -> int:
        """The highest block of a reference chain known by ``known_at`` (-1: none)."""
        head = -1
        for height, t in self.reference_times.get(chain, ()):
            if t <= known_at:
                head = max(head, height)
        return head

    def latest_cutoffs(self, before: str, lo: str, hi: str) -> Iterator[tuple[str, str, str]]:
        """(event id, occurred_at, knowledge cutoff) of the latest stored decision made
        before ``before`` about each access (event id and time) with
        ``lo <= occurred_at < hi``, in ``occurred_at`` order: what a run then read as
        stored cutoffs, which it asks for by the same range. Read in pages of the five
        columns it needs, an access's rows reduced as they come (the pages' order keeps
        them together)."""
        shared: dict[str, str] = {}  # a few distinct cutoffs and run times, many events
        key: tuple[str, str] | None = None
        best: tuple[str, str] | None = None  # (decided_at, cutoff) of the access ``key``
        for rows in self._pages(
            "occurred_at, event_id, amends, reference_known_at, decided_at",
            "occurred_at < %(hi)s AND amends = 0 AND reference_known_at != ''",
            {"hi": hi},
            lo=lo,
        ):
            for occ_raw, event_raw, amends, known_raw, at_raw in rows:
                event_id, known = _txt("event_id", event_raw), _txt("reference_known_at", known_raw)
                at = _txt("decided_at", at_raw)
                if amends != 0 or not known or not event_id or at >= before:
                    continue
                occurred = _txt("occurred_at", occ_raw)
                if key != (occurred, event_id):
                    if key is not None and best is not None:
                        yield key[1], key[0], best[1]
                    key, best = (occurred, event_id), None
                if best is None or at > best[0]:
                    best = (at, shared.setdefault(known, known))
        if key is not None and best is not None:
            yield key[1], key[0], best[1]

    def run_blocks(self, groups: Sequence[DecisionGroup]) -> set[tuple[str, int]]:
        """The blocks a run (its rows: ``groups``) decided events of."""
        blocks: set[tuple[str, int]] = set()
        for chain_raw, height in self.store.backend.execute(
            f"SELECT DISTINCT chain_id, height FROM {self.store.db}.access_decisions "
            f"WHERE {_OF_GROUPS}",
            _of_groups(groups),
        ):
            chain = normalise_value("chain_id", chain_raw)
            if not isinstance(chain, Unreadable) and type(height) is int:
                blocks.add((chain, height))
        return blocks

    def run_cutoffs(
        self, groups: Sequence[DecisionGroup], lo: str, hi: str
    ) -> Iterator[tuple[str, str, str]]:
        """(event id, occurred_at, cutoff) of a run's own decisions (its rows:
        ``groups``) with a cutoff and ``lo <= occurred_at < hi``, read in pages."""
        shared: dict[str, str] = {}
        for rows in self._pages(
            "occurred_at, event_id, amends, reference_known_at",
            f"{_OF_GROUPS} AND amends = 0 AND reference_known_at != ''",
            _of_groups(groups),
            lo=lo,
        ):
            for occ_raw, event_raw, amends, known_raw in rows:
                occurred = _txt("occurred_at", occ_raw)
                known = _txt("reference_known_at", known_raw)
                if amends == 0 and known and lo <= occurred < hi:
                    # held per event by the run's knowledge: one string per cutoff
                    yield _txt("event_id", event_raw), occurred, shared.setdefault(known, known)

    # -- the auditor's decision rows, read when they are checked (ADR 0045)
    @property
    def decisions(self) -> int:
        """Decision rows to check (the recent ones are left for the next verify)."""
        return sum(g.rows for g in self.groups if not g.recent)

    @property
    def recent_decisions(self) -> int:
        return sum(g.rows for g in self.groups if g.recent)

    def _pages(
        self, columns: str, where: str, params: Mapping[str, Any], lo: str = ""
    ) -> Iterator[Sequence[Sequence[Any]]]:
        # a total order, so that pages cut between rows of one key cut the same way
        return pages_by_time(
            self.store.backend,
            table=f"{self.store.db}.access_decisions",
            columns=columns,
            lo=lo,
            also="",
            where=where,
            order=f"event_id, amends, cityHash64({', '.join(DECISION_COLUMNS)})",
            params=params,
            page_size=20_000,
        )

    def decisions_where(
        self, where: str, params: Mapping[str, Any], lo: str = ""
    ) -> Iterator[StoredDecision]:
        """Stored decisions matching ``where`` with ``occurred_at >= lo``, in
        (occurred_at, event_id, amends) order, page by page."""
        columns = f"occurred_at, {', '.join(DECISION_COLUMNS)}"
        for rows in self._pages(columns, where, params, lo):
            yield from parse_decisions(r[1:] for r in rows)

    def decisions_of(self, groups: Sequence[DecisionGroup]) -> Iterator[StoredDecision]:
        """The rows of ``groups`` (of one run: the same ``run`` text), in
        (occurred_at, event_id, amends) order."""
        if not groups:
            return iter(())
        if len({g.decided_hex for g in groups}) <= _MAX_TIMES:
            return self.decisions_where(_OF_GROUPS, _of_groups(groups))
        # a follower's many cycles: the run's rows, but those left for the next verify
        texts = {g.decided_at for g in groups}
        runs = tuple(sorted({g.run_hex for g in groups}))
        return (
            d
            for d in self.decisions_where("hex(audit_run) IN %(runs)s", {"runs": runs})
            if d.decided_at in texts
        )

    def latest_decided(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """The latest ``decided_at`` stored per key (event id, amends), over all rows."""
        wanted = set(keys)
        out: dict[tuple[str, int], str] = {}
        events = sorted({e for e, _a in wanted})
        for i in range(0, len(events), 2000):
            chunk = tuple(events[i : i + 2000])
            for d in self.decisions_where("event_id IN %(e)s", {"e": chunk}):
                if d.key in wanted and d.decided_at > out.get(d.key, ""):
                    out[d.key] = d.decided_at
        return out

    def rows_about(self, actors: Sequence[str], lo: str, hi: str) -> Iterator[StoredDecision]:
        """Rows about ``actors`` with ``lo <= occurred_at < hi`` as stored (a superset:
        the caller tests the normalised row)."""
        if not actors:
            return iter(())
        return self.decisions_where(
            "actor_id IN %(a)s AND occurred_at < %(hi)s",
            {"a": tuple(sorted(set(actors))), "hi": hi},
            lo=lo,
        )


#: decision times a run's rows are asked for by (more: the run's rows, filtered here)
_MAX_TIMES: Final = 200
#: the rows of some groups (``_of_groups``)
_OF_GROUPS: Final = "hex(audit_run) IN %(runs)s AND hex(decided_at) IN %(times)s"


def _of_groups(groups: Sequence[DecisionGroup]) -> dict[str, Any]:
    """``_OF_GROUPS``'s parameters: the rows of ``groups``, which are of one run (so
    every run and time asked for pairs into one of them)."""
    return {
        "runs": tuple(sorted({g.run_hex for g in groups})),
        "times": tuple(sorted({g.decided_hex for g in groups})),
    }


def _txt(column: str, value: Any) -> str:
    """A stored text value as ``StoredDecision.text`` reads it ("" if not UTF-8)."""
    v = normalise_value(column, value)
    return v if isinstance(v, str) and not isinstance(v, Unreadable) else ""


@dataclass(frozen=True, slots=True)
class DecisionGroup:
    """The decision rows of one ``audit_run`` written at one ``decided_at``, as stored
    (hex) and as read (text, "" if not UTF-8); ``recent``: written after the settle
    time (their run may still be writing): left for the next verify."""

    run: str
    decided_at: str
    run_hex: str
    decided_hex: str
    rows: int
    recent: bool

    @classmethod
    def of(
        cls, run_hex: Any, decided_hex: Any, rows: int, *, settled: str, future: str
    ) -> DecisionGroup:
        rh, dh = _text(run_hex), _text(decided_hex)
        run = _txt("audit_run", bytes.fromhex(rh))
        at = _txt("decided_at", bytes.fromhex(dh))
        return cls(run, at, rh, dh, rows, settled < at <= future)
