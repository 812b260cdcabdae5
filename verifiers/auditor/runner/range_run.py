"""The range run (``careledger audit --from --to``): ``audit_range``.

Rebuild the reference state from every committed reference record, each known from its
block's signed ``created_at`` (its *ledger time*, never decreasing along a chain), feed
the committed access events of ``[from - warm-up, to + look-ahead)`` in a deterministic
order (``occurred_at, chain_id, height, idx``) to an
:class:`~verifiers.auditor.rules.Auditor`, keep the decisions about events in
``[from, to)``, group them into alerts, then *replace* that range in ClickHouse:
``ALTER ... DELETE`` of the range's decisions and alerts (waiting for the mutations, as
18.16 has no ``mutations_sync``), then batched inserts. Every decision stores its
knowledge cutoff (``reference_known_at``): an event already decided is decided again
with the cutoff its decision used (``Knowledge``), so the same range audited twice gives
the same decisions (same rows but ``decided_at``) and alert ids, even after back-dated
reference records arrived; ``reconsider`` decides the range with what is known now
instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.storage.backend import StorageError

from .._time import ts_to_us, us_to_ts
from ..alerts import Alert, AlertGrouper
from ..config import DEFAULT_CONFIG, AuditConfig
from ..state import ReferenceState
from .decide import (
    NOTHING_KNOWN,
    LedgeredEvent,
    PlacedDecision,
    decide_range,
    ledger_times,
    plan_knowledge,
    read_bounds,
)
from .publish import AlertPublisher
from .reviews import Reviews, report_broken_histories
from .rows import alert_document, alert_fingerprint, alert_row, decision_row, utc_now_ts
from .store import AuditSource, AuditStore


@dataclass
class RangeResult:
    from_ts: str
    to_ts: str
    audit_run: str
    events_read: int = 0
    decisions: int = 0
    explained: int = 0
    flagged: int = 0
    alerts: int = 0
    published: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    #: what is known now: the newest ledger time of a reference record
    reference_known_at: str = NOTHING_KNOWN
    reconsider: bool = False
    #: decisions made again with the knowledge cutoff of their stored decision
    kept_knowledge: int = 0
    #: confirmed violations that weighed the range (REPEAT_OFFENDER)
    confirmed_violations: int = 0
    #: alerts whose status history is broken: their status was not used as confirmed
    broken_status_histories: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.from_ts,
            "to": self.to_ts,
            "audit_run": self.audit_run,
            "events_read": self.events_read,
            "decisions": self.decisions,
            "reference_known_at": self.reference_known_at,
            "reconsider": self.reconsider,
            "decisions_with_stored_knowledge": self.kept_knowledge,
            "confirmed_violations": self.confirmed_violations,
            "status_histories_broken": list(self.broken_status_histories),
            "explained": self.explained,
            "flagged": self.flagged,
            "alerts": self.alerts,
            "alerts_published": self.published,
            "alerts_by_rule": dict(sorted(self.by_rule.items())),
            "elapsed_s": round(self.elapsed_s, 3),
        }


#: accesses read between two times the alert grouper is told what is final
_SETTLE_EVERY: Final = 64


def range_run_id(from_ts: str, to_ts: str) -> str:
    return f"range:{from_ts}..{to_ts}"


@dataclass
class RangePlan:
    """What a range run decided, before it is written (its decisions went to the
    ``sink`` of ``plan_range``): its counts, its alerts (none when they went to its
    ``alert_sink``), its time and reviews."""

    result: RangeResult
    alerts: list[Alert]
    decided_at: str
    reviews: Reviews


def plan_range(
    store: AuditSource,
    from_ts: str,
    to_ts: str,
    sink: Callable[[PlacedDecision, tuple[Any, ...]], None],
    *,
    salt: str,
    config: AuditConfig = DEFAULT_CONFIG,
    now: Callable[[], str] = utc_now_ts,
    reconsider: bool = False,
    progress: Callable[[int], None] | None = None,
    alert_sink: Callable[[Alert], None] | None = None,
) -> RangePlan:
    """Decide ``[from_ts, to_ts)`` from what ``store`` serves, without writing anything:
    what ``audit_range`` stores, and what ``verify`` recomputes from the ledger (it
    serves the ledger as it was when the run was made, ADR 0016).

    ``sink`` is given each decision and its row as soon as the auditor makes it (in the
    order it makes them, not sorted): the plan does not hold them. The alerts are
    grouped as they come (``AlertGrouper``), told every ``_SETTLE_EVERY`` accesses which
    decisions are final (ADR 0045); given ``alert_sink``, each alert goes there as soon
    as it is final (in no particular order) and the plan holds none."""
    run = range_run_id(from_ts, to_ts)
    result = RangeResult(from_ts, to_ts, run, reconsider=reconsider)
    # the run's time is taken before it reads: it decides from what was committed then
    # (a replay serves the blocks sealed by this time, ADR 0016)
    decided_at = now()
    state = ReferenceState()
    state.apply_ledgered(ledger_times(store.reference_records(), {}))
    lo, hi = read_bounds(from_ts, to_ts, config)
    knowledge = plan_knowledge(
        state.latest_known_at,
        lambda: store.decision_cutoffs(lo, hi),
        from_ts,
        to_ts,
        reconsider=reconsider,
        undecided=0 if reconsider else store.undecided_count(from_ts, to_ts),
    )
    result.reference_known_at = knowledge.current
    reviews = store.reviews()
    result.confirmed_violations = len(reviews.confirmed)
    result.broken_status_histories = list(reviews.broken)
    counted: list[int] = [0]
    grouper = AlertGrouper(
        salt=salt, closed=reviews.closed, late_flag_delay_us=config.btg_stop_window_us
    )
    late_us = config.btg_stop_window_us

    def raised(alerts: list[Alert]) -> None:
        result.alerts += len(alerts)
        for a in alerts:
            result.by_rule[str(a.rule)] = result.by_rule.get(str(a.rule), 0) + 1
            if alert_sink is not None:
                alert_sink(a)

    def counting(events: Iterable[LedgeredEvent]) -> Iterator[LedgeredEvent]:
        previous = ""
        for le in events:
            counted[0] += 1
            if progress is not None and counted[0] % 5000 == 0:
                progress(counted[0])
            if previous and counted[0] % _SETTLE_EVERY == 0:
                # every decision about the accesses read so far is made, but the late
                # flags of those within the stop window of the last one
                grouper.settled(us_to_ts(ts_to_us(previous) - late_us))
                if alert_sink is not None:
                    raised(grouper.finished())
            previous = le.event.occurred_at
            yield le

    decided = decide_range(
        state,
        counting(store.events_between(lo, hi)),
        from_ts,
        to_ts,
        horizon_ts=store.horizon(),
        config=config,
        confirmed=reviews.violations(),
        knowledge=knowledge,
    )
    made = _passed(decided, sink, grouper, salt=salt, decided_at=decided_at, run=run)
    for p in made:
        result.decisions += 1
        result.explained += bool(p.decision.explained)
        result.flagged += bool(p.decision.flagged)
        if not p.decision.amends and p.kept_cutoff:
            result.kept_knowledge += 1
    result.events_read = counted[0]
    alerts = grouper.alerts()
    raised(alerts)
    return RangePlan(result, [] if alert_sink is not None else alerts, decided_at, reviews)


def _passed(
    decided: Iterable[PlacedDecision],
    sink: Callable[[PlacedDecision, tuple[Any, ...]], None],
    grouper: AlertGrouper,
    *,
    salt: str,
    decided_at: str,
    run: str,
) -> Iterator[PlacedDecision]:
    """Each decision handed to ``sink`` with its row, and to ``grouper``."""
    for p in decided:
        sink(p, decision_row(p, salt=salt, decided_at=decided_at, audit_run=run))
        grouper.add(p.decision)
        yield p


def audit_range(
    store: AuditStore,
    from_ts: str,
    to_ts: str,
    *,
    salt: str,
    config: AuditConfig = DEFAULT_CONFIG,
    publisher: AlertPublisher | None = None,
    now: Callable[[], str] = utc_now_ts,
    republish: bool = False,
    reconsider: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RangeResult:
    """Audit ``[from_ts, to_ts)`` and replace its decisions and alerts in the store.

    An event already decided is decided with the knowledge cutoff its stored decision
    used (reference versions ledgered after it are ignored), so the replay reproduces
    it; new events, or all of them with ``reconsider``, with everything known now.
    Publishes the alerts that were not stored before with the same content (all of them
    with ``republish``, e.g. after a run whose delivery to Kafka failed)."""
    started = time.perf_counter()
    # only the rows are kept (not the decisions they were made from): they are written
    # after the range's old rows are replaced, once it is all decided
    rows: list[tuple[Any, ...]] = []
    plan = plan_range(
        store,
        from_ts,
        to_ts,
        lambda _placed, row: rows.append(row),
        salt=salt,
        config=config,
        now=now,
        reconsider=reconsider,
        progress=progress,
    )
    result, alerts, run = plan.result, plan.alerts, plan.result.audit_run
    report_broken_histories(plan.reviews.broken)
    before = store.alert_fingerprints(from_ts, to_ts)
    store.delete_range(from_ts, to_ts)
    store.insert_decisions(rows)
    version = time.time_ns()
    store.insert_alerts(
        [alert_row(a, created_at=plan.decided_at, audit_run=run, version=version) for a in alerts]
    )
    if publisher is not None:
        for a in alerts:
            if republish or before.get(a.alert_id) != alert_fingerprint(a):
                publisher.publish(a.alert_id, alert_document(a))
                result.published += 1
        if result.published and publisher.flush(30.0):
            raise StorageError("alerts could not all be delivered to Kafka")
    result.elapsed_s = time.perf_counter() - started
    return result
