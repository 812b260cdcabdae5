"""Deciding ledgered access events over a range (pure): the bounds of what a range
run reads (warm-up and look-ahead), events and reference records with their place in
the ledger, the knowledge cutoff each event is decided with (``Knowledge``), and
``decide_range``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from careledger_core.event import AccessEvent
from careledger_core.reference import ReferenceRecord

from .._time import US_PER_HOUR, ts_to_us, us_to_ts
from ..config import DEFAULT_CONFIG, AuditConfig
from ..explanations import read_policy_table
from ..rules import AccessDecision, Auditor, core_consent_evaluator
from ..state import ReferenceState

#: accesses read between two looks at which positions can be let go
_FORGET_EVERY: Final = 4096
#: the knowledge cutoff of a decision made while no reference record was known
NOTHING_KNOWN: Final = "1970-01-01T00:00:00.000000Z"


def warmup_us(config: AuditConfig) -> int:
    """History the rules look back on: events this long before ``from`` are fed to the
    auditor (not decided) so windows and open overrides at ``from`` are as in a
    continuous run."""
    return max(
        config.btg_episode_us,
        config.volume_window_us,
        config.denied_burst_window_us,
        config.shared_credentials_window_us,
    )


def lookahead_us(config: AuditConfig) -> int:
    """Events this long after ``to`` are fed so a break-the-glass start near ``to``
    sees its stop (or its missing stop is decided)."""
    return config.btg_stop_window_us + 1


def read_bounds(from_ts: str, to_ts: str, config: AuditConfig) -> tuple[str, str]:
    return (
        us_to_ts(ts_to_us(from_ts) - warmup_us(config)),
        us_to_ts(ts_to_us(to_ts) + lookahead_us(config)),
    )


@dataclass(frozen=True, slots=True)
class Position:
    chain_id: str
    height: int
    idx: int


@dataclass(frozen=True, slots=True)
class LedgeredEvent:
    position: Position
    event: AccessEvent

    @property
    def sort_key(self) -> tuple[str, str, int, int]:
        p = self.position
        return (self.event.occurred_at, p.chain_id, p.height, p.idx)


@dataclass(frozen=True, slots=True)
class PlacedDecision:
    decision: AccessDecision
    position: Position
    #: the knowledge cutoff the decision used (reference versions ledgered later were
    #: ignored); a late break-the-glass flag carries its start's
    known_at: str = NOTHING_KNOWN
    #: the cutoff is the access's stored decision's (kept, not chosen now)
    kept_cutoff: bool = False


@dataclass(frozen=True, slots=True)
class LedgeredReference:
    """A committed reference record and the signed ``created_at`` of its block."""

    record: ReferenceRecord
    chain_id: str
    height: int
    block_time: str


def ledger_times(
    refs: Iterable[LedgeredReference], latest: dict[str, tuple[int, str]]
) -> Iterator[tuple[ReferenceRecord, str]]:
    """(record, ledger time) in ledger order per chain. A record's ledger time is its
    block's ``created_at`` or, if a processor clock stepped back, 1 µs after the time of
    the chain's previous block (``latest``: chain -> (height, time) of the last block
    seen, updated in place): a record is never known before one chained earlier."""
    for r in refs:
        last = latest.get(r.chain_id)
        if last is not None and last[0] == r.height:
            t = last[1]
        else:
            t = r.block_time
            if last is not None and last[1] > t:
                t = us_to_ts(ts_to_us(last[1]) + 1)
            latest[r.chain_id] = (r.height, t)
        yield r.record, t


class StoredCutoffs:
    """The stored knowledge cutoffs of a range, read in step with its events.

    ``rows``: (event id, occurred_at, cutoff) in ``occurred_at`` order (ties in any
    order); of two for the same access (occurred_at and event id) the first is taken.
    Asked in ``occurred_at`` order, it holds only the cutoffs of the time asked
    (ADR 0046): a cutoff is an access's, found by its event id *and* its time."""

    __slots__ = ("_at", "_here", "_next", "_rows")

    def __init__(self, rows: Iterable[tuple[str, str, str]] = ()) -> None:
        self._rows = iter(rows)
        self._next = next(self._rows, None)
        self._at: str | None = None
        self._here: dict[str, str] = {}

    def at(self, occurred_at: str, event_id: str) -> str | None:
        """The cutoff stored for the access ``event_id`` at ``occurred_at`` (None: none).
        Times before the last one asked are gone: asked again, they find nothing."""
        if occurred_at != self._at:
            here: dict[str, str] = {}
            row = self._next
            while row is not None and row[1] <= occurred_at:
                if row[1] == occurred_at:
                    here.setdefault(row[0], row[2])
                row = next(self._rows, None)
            self._next, self._at, self._here = row, occurred_at, here
        return self._here.get(event_id)


def first_cutoffs(rows: Iterable[tuple[str, str, str]]) -> Iterator[tuple[str, str, str]]:
    """``rows`` (in ``occurred_at`` order) without a later row for the same access: what
    ``StoredCutoffs`` takes."""
    at: str | None = None
    seen: set[str] = set()
    for row in rows:
        if row[1] != at:
            at, seen = row[1], set()
        if row[0] not in seen:
            seen.add(row[0])
            yield row


@dataclass(frozen=True, slots=True)
class Knowledge:
    """Which reference knowledge each event of a run is decided with: a cutoff on the
    ledger times of reference versions (``ReferenceState.as_of(t, known_at=...)``).

    * an event decided in this run uses the cutoff of its stored decision (``stored``,
      by event id and time, read in step with the events), so a replay reproduces it;
      an event without one, or every event with ``reconsider``, uses ``current`` (what
      is known now);
    * an event only fed to the rules' windows (warm-up, look-ahead) uses its stored
      cutoff too, else ``others`` (default ``current``).

    Asked in the events' ``occurred_at`` order; used by one run only.
    """

    current: str
    stored: StoredCutoffs = field(default_factory=StoredCutoffs)
    reconsider: bool = False
    others: str | None = None

    def cutoff(self, event_id: str, occurred_at: str, decided: bool) -> tuple[str, bool]:
        """The cutoff of an event, and whether it is its stored decision's."""
        if decided and self.reconsider:
            return self.current, False
        known = self.stored.at(occurred_at, event_id)
        if known is not None:
            return known, True
        if decided or self.others is None:
            return self.current, False
        return self.others, False


def plan_knowledge(
    current: str | None,
    stored: Callable[[], Iterable[tuple[str, str, str]]],
    from_ts: str,
    to_ts: str,
    *,
    reconsider: bool = False,
    undecided: int = 0,
) -> Knowledge:
    """The ``Knowledge`` of a range run. ``current``: the newest ledger time applied
    (None: no reference data); ``stored()``: (event id, occurred_at, cutoff) of the
    stored decisions around the range, in ``occurred_at`` order (legacy rows without a
    cutoff left out), read once more in step with the events; ``undecided``: how many
    events of ``[from_ts, to_ts)`` have none.

    Events outside the range without a stored decision (only fed to the windows) use the
    cutoff the range's decisions use: ``current`` when something in the range is
    decided with it (new events, ``reconsider``), otherwise the newest stored cutoff of
    the range (a first read), which is what the run that stored them used; so a replay
    feeds them the same knowledge as the run it reproduces."""
    now = NOTHING_KNOWN if current is None else current
    in_range: str | None = None
    if not reconsider and not undecided:
        for _event_id, occurred_at, known_at in first_cutoffs(stored()):
            if from_ts <= occurred_at < to_ts and (in_range is None or known_at > in_range):
                in_range = known_at
    others = now if reconsider or undecided or in_range is None else in_range
    return Knowledge(now, StoredCutoffs(stored()), reconsider, others)


def decide_range(
    state: ReferenceState,
    events: Iterable[LedgeredEvent],
    from_ts: str,
    to_ts: str,
    *,
    horizon_ts: str | None = None,
    config: AuditConfig = DEFAULT_CONFIG,
    auditor: Auditor | None = None,
    confirmed: Iterable[tuple[str, str]] = (),
    knowledge: Knowledge | None = None,
) -> Iterator[PlacedDecision]:
    """Decisions about the events in ``[from_ts, to_ts)`` (``events`` sorted by
    ``sort_key``, including the warm-up and look-ahead), each as soon as the auditor
    makes it: an access's own decision when the access is read, a late break-the-glass
    flag (``amends``) at most ``btg_stop_window_us`` of event time later, and the
    overrides still open when the input ends.

    At the end of the input, an override still open is reported as missing its stop
    only if its stop window ended before ``horizon_ts`` (the latest committed event
    time: later, the stop may still come); ``horizon_ts=None`` reports all of them.
    ``confirmed``: (actor id, time) of confirmed violations (REPEAT_OFFENDER weighting).
    ``knowledge``: the cutoff of each event (default: everything in ``state``).
    """
    if auditor is None:
        auditor = Auditor(state, config=config, consent_evaluator=core_consent_evaluator)
    ref_state = auditor.state
    if knowledge is None:
        knowledge = Knowledge(ref_state.latest_known_at or NOTHING_KNOWN)
    for actor_id, when in sorted(confirmed, key=lambda c: (c[1], c[0])):
        auditor.history.record_confirmed_violation(actor_id, when)
    # where each decided access is, and its cutoff, until no decision about it can come
    # any more: a late flag comes within the stop window of its access, kept an hour
    # longer. (An event id ledgered again later than that, at another time, is placed
    # where it is read again: the auditor and verify both place it so.)
    positions: dict[str, tuple[Position, str, bool]] = {}
    placed_order: deque[tuple[str, str]] = deque()
    keep_us = lookahead_us(auditor.config) + US_PER_HOUR
    seen = 0

    def kept(d: AccessDecision) -> PlacedDecision | None:
        if from_ts <= d.occurred_at < to_ts:
            placed = positions.get(d.event_id)
            if placed is not None:
                return PlacedDecision(d, placed[0], placed[1], placed[2])
        return None

    before = ref_state.known_at
    table_before = auditor.policy_table
    if table_before is None:  # read once for the range
        auditor.policy_table = read_policy_table()
    try:
        for le in events:
            event_id = le.event.event_id
            decided = from_ts <= le.event.occurred_at < to_ts
            cutoff, kept_cutoff = knowledge.cutoff(event_id, le.event.occurred_at, decided)
            if decided:
                placed = positions.get(event_id)
                if placed is None:
                    positions[event_id] = (le.position, cutoff, kept_cutoff)
                    placed_order.append((le.event.occurred_at, event_id))
                else:
                    cutoff = placed[1]
            seen += 1
            if seen % _FORGET_EVERY == 0 and placed_order:
                forget = us_to_ts(ts_to_us(le.event.occurred_at) - keep_us)
                while placed_order and placed_order[0][0] < forget:
                    positions.pop(placed_order.popleft()[1], None)
            ref_state.known_at = cutoff
            for d in auditor.process(le.event):
                if (p := kept(d)) is not None:
                    yield p
    finally:
        ref_state.known_at = before
        auditor.policy_table = table_before
    horizon = None if horizon_ts is None else ts_to_us(horizon_ts)
    window = auditor.config.btg_stop_window_us
    for d in auditor.finish():
        late_enough = horizon is None or ts_to_us(d.occurred_at) + window < horizon
        if late_enough and (p := kept(d)) is not None:
            yield p


def sort_decisions(placed: Iterable[PlacedDecision]) -> list[PlacedDecision]:
    return sorted(
        placed,
        key=lambda p: (
            p.decision.occurred_at,
            p.decision.event_id,
            p.decision.amends,
            p.position.chain_id,
            p.position.height,
            p.position.idx,
        ),
    )
