"""Following the ledger (``careledger audit --follow``): ``Follower``.

Every ``audit_poll_interval_s``, apply the reference records and evaluate the access
events of the blocks committed since the last poll (cutoff: the newest ledger time
applied), insert their decisions, regroup the flagged decisions around the times of the
new flags and upsert (and publish) the alerts that are new or grew.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger_core.reference import ReferenceRecord

from .._time import ts_to_us, us_to_ts
from ..alerts import Alert, ClosedAlert, alert_id, group_alerts
from ..config import DEFAULT_CONFIG, AuditConfig
from ..decisions import RestoredDecision, RuleCode
from ..explanations import read_policy_table
from ..history import is_btg_start
from ..rules import AccessDecision, Auditor, core_consent_evaluator
from ..state import ReferenceState
from .decide import (
    NOTHING_KNOWN,
    LedgeredEvent,
    LedgeredReference,
    PlacedDecision,
    Position,
    StoredCutoffs,
    ledger_times,
    sort_decisions,
    warmup_us,
)
from .publish import AlertPublisher
from .reviews import report_broken_histories
from .rows import (
    DECISION_COLUMNS,
    FOLLOW_GROUPING,
    alert_document,
    alert_fingerprint,
    alert_row,
    decision_row,
    dumps,
    follow_run_id,
    restored_decision,
    utc_now_ts,
    with_alert_ids,
)
from .store import AuditSource

log = logging.getLogger("careledger.auditor")

#: flagged decisions kept in memory for regrouping: the grouping window plus max span
_REGROUP_US: Final = 25 * 3600 * 1_000_000


def tune_gc() -> None:
    """Fewer garbage collections in an auditor process: deciding an access allocates many
    short-lived objects next to a large, long-lived reference state and history, which
    the default thresholds scan again and again (~6 % of the time). Call once, in a
    process that runs the auditor (``audit --follow``, ``benchmark-audit``)."""
    gc.set_threshold(50_000, 20, 100)


#: what ``careledger audit --follow`` reads of a backlog in one poll at most (about): a
#: cycle holds ~7 kB per event (a 300,009-event cycle peaked at 2.07 GB)
MAX_CYCLE_EVENTS: Final = 50_000


def _near(times: Sequence[int], t_us: int, span_us: int) -> bool:
    """``t_us`` is within ``span_us`` of one of ``times`` (sorted)."""
    i = bisect.bisect_left(times, t_us - span_us)
    return i < len(times) and times[i] <= t_us + span_us


class Follower:
    """Audit newly committed blocks continuously (see the module docstring)."""

    def __init__(
        self,
        store: AuditSource,
        *,
        salt: str,
        config: AuditConfig = DEFAULT_CONFIG,
        publisher: AlertPublisher | None = None,
        from_ts: str | None = None,
        now: Callable[[], str] = utc_now_ts,
        warmup: bool = True,
        max_cycle_events: int | None = None,
        grouping: int = FOLLOW_GROUPING,
    ) -> None:
        self.store = store
        #: how alerts are regrouped (``follow_run_id``, ADR 0048): 3, written alerts
        #: anchor their flags and decision rows name them; 2, anchors only; 1, as runs
        #: made before (``verify`` replays each as it ran)
        self.grouping = grouping
        self.salt = salt
        #: a poll reads at most about this many events of the backlog (the oldest blocks
        #: first, by their signed time; None: all of it): what a cycle holds is bounded
        #: when the follower catches up (a replay reads what the run's rows say)
        self.max_cycle_events = max_cycle_events
        self.warmup = warmup
        self._warm_until: str | None = None
        self.warmed = 0
        self.config = config
        self.publisher = publisher
        self.from_ts = from_ts
        self.now = now
        #: ``follow:<token>``, completed at the first cycle with how this run started
        #: (``follow_run_id``): what ``verify`` needs to replay it (ADR 0016)
        self.token = secrets.token_hex(8)
        self.run_id = follow_run_id(self.token, grouping=grouping)
        #: called with each cycle's decisions before they are stored (``verify``)
        self.on_decided: Callable[[list[PlacedDecision]], None] | None = None
        self.state = ReferenceState()
        self.auditor = Auditor(self.state, config=config, consent_evaluator=core_consent_evaluator)
        self.cursors: dict[str, int] = {}
        #: the latest ledger time seen per reference chain (see ``ledger_times``)
        self.ledger_latest: dict[str, tuple[int, str]] = {}
        #: the knowledge cutoff of the last decisions made (None: none yet)
        self.known_at: str | None = None
        #: reference records that arrived ledgered no later than a cutoff already used
        #: (another processor's block committed late): a replay of the decisions made
        #: with that cutoff would see them
        self.late_records = 0
        self.btg_positions: dict[str, tuple[Position, int, str]] = {}
        self.recent: dict[str, list[AccessDecision]] = {}  # flagged, by actor
        #: the alerts this run wrote whose flags may still be regrouped, by actor
        self.written: dict[str, dict[str, _Written]] = {}
        #: earlier runs' flags are read back from the decisions stored before this
        #: instant (None: the first run, or no warm-up), once per actor
        self._restore_before: str | None = None
        self._restored: set[str] = set()
        self._latest_us = 0
        self.published: dict[str, str] = {}  # alert id -> fingerprint
        #: decided cycles not stored yet (oldest first), and the flags of the last one
        #: not grouped into alerts yet
        self._pending: list[CycleWrites] = []
        self._pending_flagged: list[AccessDecision] = []
        self._pending_at = ""
        self.started = False
        self.cycles = 0
        self.decided = 0
        self.alerts_sent = 0
        #: the alerts of the confirmed violations fed to the history, and the count of
        #: status changes the last read of the reviews reflects
        self._fed: set[str] = set()
        self._reviews = -1
        #: closed alerts (they take no more flags) and broken status histories reported
        self.closed: Mapping[str, ClosedAlert] = {}
        self.broken: set[str] = set()

    def _start(self) -> None:
        # resume after what earlier runs decided (every event of a block is decided
        # together), or from the beginning
        self.cursors = self.store.decided_heights()
        if self.warmup and self.cursors:
            # the first cycle replays the last warm-up window of what was decided (not
            # deciding it again), so windows are as if the follower had never stopped
            self._warm_until = self.store.last_decided_time()
        self.run_id = follow_run_id(
            self.token, self._warm_until, self.from_ts, grouping=self.grouping
        )
        self.started = True
        if self.warmup and self.cursors:
            # the flags earlier runs decided are read back per actor (``_restore_flags``)
            self._restore_before = self.now()

    def _restore_flags(self, by_actor: Mapping[str, list[AccessDecision]]) -> None:
        """The flags an uninterrupted run would group an actor's new ones with, read back
        from the rows earlier runs stored, the first time this run flags the actor.
        Without them, an actor's next flag after a restart opened a second alert next to
        the open one, and a cycle whose alerts were stored but not its decisions (killed
        between the two, ADR 0029) put its events into two alerts when decided again."""
        if self._restore_before is None:
            return
        actors = sorted(a for a in by_actor if a not in self._restored)
        if not actors:
            return
        times = [ts_to_us(d.occurred_at) for a in actors for d in by_actor[a]]
        rows = self.store.flagged_decisions(
            actors,
            us_to_ts(min(times) - _REGROUP_US),
            us_to_ts(max(times) + _REGROUP_US + 1),
            self._restore_before,
        )
        restored: dict[str, list[AccessDecision]] = {}
        for row in rows:
            d = restored_decision(row)
            if d is not None:
                restored.setdefault(d.actor_id, []).append(d)
        for actor, earlier in restored.items():
            mine = {(d.event_id, d.amends) for d in self.recent.get(actor, ())}
            self.recent.setdefault(actor, []).extend(
                d for d in earlier if (d.event_id, d.amends) not in mine
            )
            if self.grouping >= 3:
                self._seed_written(actor, earlier)
        self._restored.update(actors)

    def _seed_written(self, actor: str, earlier: Sequence[AccessDecision]) -> None:
        """The alerts earlier runs wrote, as their decision rows name them (grouping 3,
        ADR 0048): each anchors its flags as this run's own do. One whose first flag is
        not among those read back (it started before them) is not whole: left as
        written."""
        flags: dict[str, list[tuple[int, str, RuleCode]]] = {}
        for d in earlier:
            if not isinstance(d, RestoredDecision):
                continue
            codes = {str(f.code): f.code for f in d.flags}
            for rule, aid in d.alert_ids:
                code = codes.get(rule)
                if code is not None:  # (an id of a rule the row does not flag: ignored)
                    flags.setdefault(aid, []).append((ts_to_us(d.occurred_at), d.event_id, code))
        written = self.written.setdefault(actor, {})
        for aid, got in flags.items():
            if aid in written:
                continue  # this run wrote it since: it knows it as written now
            code = got[0][2]
            whole = any(
                aid in (alert_id(c, actor, e), alert_id(c, actor, e, late=True))
                for _t, e, c in got
                if c == code
            )
            times = [t for t, _e, _c in got]
            written[aid] = _Written(
                code, min(times), max(times), frozenset(e for _t, e, _c in got), whole
            )

    def _read_reviews(self, *, again: bool = False) -> None:
        """Read the reviews if a status changed since the last read (or ``again``): the
        closed alerts (they take no more flags) and the confirmed violations, fed to the
        history once per case, so an alert resolved while following weighs the actor's
        next accesses (REPEAT_OFFENDER) as in a range run. A broken status history is
        reported once and not counted."""
        changes = self.store.status_changes()
        if changes == self._reviews and not again:
            return
        reviews = self.store.reviews()
        for case in reviews.confirmed:
            # by alert id, not time: an alert read again (a range replay rewriting it) or
            # a second alert about the same accesses is not fed twice
            if self._fed.isdisjoint(case.alert_ids):
                self.auditor.history.record_confirmed_violation(case.actor_id, case.at)
            self._fed.update(case.alert_ids)
        broken = [a for a in reviews.broken if a not in self.broken]
        report_broken_histories(broken)
        counted = sorted(self._fed.intersection(broken))
        if counted:
            log.error(
                "alerts %s were counted as confirmed violations before their status history "
                "broke; a range replay does not count them",
                ", ".join(counted),
            )
        self.broken.update(broken)
        self.closed = reviews.closed
        self._reviews = changes

    def _warmup_events(self) -> tuple[list[LedgeredEvent], list[tuple[str, str, str]]]:
        """The events to replay into the windows and the cutoffs they were decided with
        (in ``occurred_at`` order, as ``StoredCutoffs`` reads them)."""
        if self._warm_until is None:
            return [], []
        until_us = ts_to_us(self._warm_until)
        lo = us_to_ts(until_us - warmup_us(self.config))
        hi = us_to_ts(until_us + 1)
        events = [
            le
            for le in self.store.events_between(lo, hi)
            if le.position.height <= self.cursors.get(le.position.chain_id, -1)
        ]
        return events, list(self.store.decision_cutoffs(lo, hi))

    def _apply_references(self, records: list[LedgeredReference]) -> None:
        late = 0
        used = self.known_at
        ledgered: list[tuple[ReferenceRecord, str]] = []
        for rec, t in ledger_times(records, self.ledger_latest):
            if used is not None and t <= used:
                late += 1
            ledgered.append((rec, t))
        self.state.apply_ledgered(ledgered)
        if late:
            self.late_records += late
            log.warning(
                "%d reference records were committed after decisions whose knowledge cutoff "
                "%s is not before their ledger time: a replay of those decisions may differ",
                late,
                used,
            )

    def read(self, cursors: Mapping[str, int]) -> ReadBatch:
        """What was committed above ``cursors`` (chain -> last height read): one poll.
        Reads only (no state of the follower changes): a pipeline's reader thread reads
        the next poll while the last one is decided."""
        heads = self.store.heads()
        ranges: dict[str, tuple[int, int]] = {}
        records: list[LedgeredReference] = []
        read: dict[str, int] = {}
        for chain, head in sorted(heads.items()):
            above = cursors.get(chain, -1)
            if head <= above:
                continue
            if self.store.is_reference(chain):
                records.extend(self.store.reference_records_of_chain(chain, above, head))
                read[chain] = head
            else:
                ranges[chain] = (above, head)
        if self.max_cycle_events:
            ranges = _capped(self.store, ranges, self.max_cycle_events)
        read.update((chain, upto) for chain, (_above, upto) in ranges.items())
        return ReadBatch(read, records, _events_of(self.store, ranges))

    def cycle(self) -> int:
        """One poll: read, decide, store; returns the number of new decisions."""
        if not self.started:
            self._start()
        # what an earlier cycle decided but could not store goes first (its events are
        # in the history already: they must not be evaluated again)
        self._store_pending()
        return self.decide(self.read(self.cursors), store=True)

    def decide(self, batch: ReadBatch, *, store: bool = False) -> int:
        """Decide a poll's events (``read`` from ``self.cursors``) and prepare what to
        store (``take_writes``; ``store``: store it now, as ``cycle`` does). Raises
        StorageError, unless ``store``, only before it changes anything (reading the
        reviews or the warm-up): the batch can be decided again."""
        if not self.started:
            self._start()
        # the flags of the cycle before, if their grouping failed, before new ones
        self._group_pending()
        self.cycles += 1
        self._read_reviews(again=self.cycles % 200 == 0)
        records, new = batch.records, batch.events
        warm, warm_cutoffs = self._warmup_events()
        # every read succeeded: from here on nothing is read twice
        self.cursors.update(batch.cursors)
        # the reference data committed so far first, then the events
        self._apply_references(records)
        # decide with what is known now: the newest ledger time applied
        cutoff = self.state.latest_known_at or NOTHING_KNOWN
        state = self.state
        # the consent policy table as configured now, for the whole cycle
        self.auditor.policy_table = read_policy_table()
        try:
            if self._warm_until is not None:
                stored = StoredCutoffs(warm_cutoffs)
                for le in warm:
                    # as it was decided (the same history as a range replay builds)
                    known = stored.at(le.event.occurred_at, le.event.event_id)
                    state.known_at = cutoff if known is None else known
                    if is_btg_start(le.event):
                        self.btg_positions[le.event.event_id] = (
                            le.position,
                            ts_to_us(le.event.occurred_at),
                            state.known_at,
                        )
                    for d in self.auditor.process(le.event):
                        if d.amends:  # due before the restart: decided then
                            self.btg_positions.pop(d.event_id, None)
                self.warmed = len(warm)
                self._warm_until = None
            if not new:
                return 0
            new.sort(key=lambda le: le.sort_key)
            batch_at = {le.event.event_id: le.position for le in new}
            placed: list[PlacedDecision] = []
            state.known_at = cutoff
            for le in new:
                if is_btg_start(le.event):
                    self.btg_positions[le.event.event_id] = (
                        le.position,
                        ts_to_us(le.event.occurred_at),
                        cutoff,
                    )
                for d in self.auditor.process(le.event):
                    pos = batch_at.get(d.event_id)
                    known_at = cutoff
                    if d.amends:
                        entry = self.btg_positions.pop(d.event_id, None)
                        pos, known_at = (None, cutoff) if entry is None else (entry[0], entry[2])
                    if pos is None:
                        continue
                    if self.from_ts is not None and d.occurred_at < self.from_ts:
                        continue
                    placed.append(PlacedDecision(d, pos, known_at))
        finally:
            state.known_at = None
            self.auditor.policy_table = None
        self.known_at = cutoff
        # bounded memory: a start's position is needed until its stop window is over
        latest = ts_to_us(new[-1].event.occurred_at)
        keep_us = 2 * self.config.btg_stop_window_us
        for eid, (_pos, t_us, _known) in list(self.btg_positions.items()):
            if latest - t_us > keep_us:
                del self.btg_positions[eid]
        decided_at = self.now()
        if self.on_decided is not None:
            self.on_decided(placed)
        self._pending.append(
            CycleWrites(
                [
                    decision_row(p, salt=self.salt, decided_at=decided_at, audit_run=self.run_id)
                    for p in sort_decisions(placed)
                ]
            )
        )
        self._pending_flagged = [p.decision for p in placed if p.decision.flagged]
        self._pending_at = decided_at
        self.decided += len(placed)
        if store:
            self._store_pending()
        return len(placed)

    def _group_pending(self) -> None:
        """The alerts of the last decided flags, added to the last cycle's writes (raises
        StorageError reading the reviews; the flags stay pending)."""
        if self._pending_flagged:
            rows, documents, named = self._alerts(self._pending_flagged, self._pending_at)
            self._pending[-1].add_alerts(rows, documents)
            if named:
                self._pending[-1].name_alerts(named)
            self._pending_flagged = []

    def take_writes(self) -> list[CycleWrites]:
        """The decided cycles' writes not stored yet, oldest first (each grouped)."""
        self._group_pending()
        out, self._pending = self._pending, []
        return out

    def _store_pending(self) -> None:
        """Store the decided cycles' writes (raises StorageError; the next cycle retries
        what is left, never a step that succeeded)."""
        self._group_pending()
        while self._pending:
            write_cycle(self._pending[0], self.store, self.publisher)
            self._pending.pop(0)

    def _alerts(
        self, flagged: list[AccessDecision], decided_at: str
    ) -> tuple[list[tuple[Any, ...]], list[tuple[str, dict[str, Any]]], _Named]:
        """The alerts that the flags make new or grow: their rows and documents (the
        follower remembers them as published: they are stored before the next cycle's),
        and (grouping 3) the alerts each flagged decision's flags went into, by (event
        id, amends), as the decision row names them."""
        # a review made during this cycle: an alert closed now must not take these flags
        self._read_reviews()
        latest = max(self._latest_us, max(ts_to_us(d.occurred_at) for d in flagged))
        by_actor: dict[str, list[AccessDecision]] = {}
        for d in flagged:
            by_actor.setdefault(d.actor_id, []).append(d)
        self._restore_flags(by_actor)
        # alerts group one actor's flags: only the actors flagged now are regrouped, with
        # their flags around the times of the new ones (an event committed after events
        # that occurred much later, e.g. a back-filled batch, is grouped at its own time)
        regroup: list[AccessDecision] = []
        keep: dict[str, list[AccessDecision]] = {}
        anchors: set[str] = set()
        for actor, new in by_actor.items():
            known = [*self.recent.get(actor, ()), *new]
            span = (0, -1)
            if self.grouping == 1:
                times = sorted({ts_to_us(d.occurred_at) for d in new})
                near = [d for d in known if _near(times, ts_to_us(d.occurred_at), _REGROUP_US)]
                regroup.extend(near)
            else:
                near, span = self._anchored(actor, new, known, anchors, regroup)
            near_ids = {id(d) for d in near}
            keep_from = self._keep_from(actor, latest)
            keep[actor] = [
                d for d in known if id(d) in near_ids or ts_to_us(d.occurred_at) >= keep_from
            ]
            if self.grouping > 1 and actor in self.written:
                # forgotten with their flags: none in the span regrouped, none kept after
                lo, hi = span
                self.written[actor] = {
                    aid: w
                    for aid, w in self.written[actor].items()
                    if w.last_us >= keep_from or (w.first_us <= hi and w.last_us >= lo)
                }
        touched = {d.event_id for d in flagged}
        changed: list[Alert] = []
        assigned: dict[tuple[str, bool, str], str] | None = {} if self.grouping >= 3 else None
        for a in group_alerts(
            regroup,
            salt=self.salt,
            closed=self.closed,
            late_flag_delay_us=self.config.btg_stop_window_us,
            anchors=anchors,
            assigned=assigned,
            assign_only=touched,
        ):
            if touched.isdisjoint(a.event_ids):
                continue
            if self.published.get(a.alert_id) != alert_fingerprint(a):
                changed.append(a)
        rows = [
            alert_row(a, created_at=decided_at, audit_run=self.run_id, version=time.time_ns())
            for a in changed
        ]
        documents = [(a.alert_id, alert_document(a)) for a in changed]
        self.recent.update(keep)
        self._latest_us = latest
        if self.grouping > 1:
            for a in changed:
                flagged_ids = a.event_ids[int(a.evidence["related_events"]) :]
                self.written.setdefault(a.actor_id, {})[a.alert_id] = _Written(
                    a.rule, ts_to_us(a.first_at), ts_to_us(a.last_at), frozenset(flagged_ids)
                )
        if self.cycles % 1000 == 0:  # forget the flags of actors quiet for a day
            self._forget(latest)
        for a in changed:
            self.published[a.alert_id] = alert_fingerprint(a)
        self.alerts_sent += len(changed)
        if len(self.published) > 200_000:
            for key in list(self.published)[:100_000]:
                del self.published[key]
        return rows, documents, _named(flagged, assigned) if assigned else {}

    def _anchored(
        self,
        actor: str,
        new: list[AccessDecision],
        known: list[AccessDecision],
        anchors: set[str],
        regroup: list[AccessDecision],
    ) -> tuple[list[AccessDecision], tuple[int, int]]:
        """The flags of ``actor`` to regroup with its ``new`` ones (grouping 2-3, ADR 0048):
        those of ``known`` from a day (the window plus the span) before the first new
        one to a day after the last, widened to the whole of every alert this run wrote
        that the span cuts into. Added to ``regroup``; the ids of the written alerts whose
        flags are all there go to ``anchors`` (their first flag starts them again), and
        the flags of a written alert that are not all there any more (forgotten) are left
        out: that alert stays as written, none of its flags lands in another. Returns the
        flags of ``known`` taken (the ones to keep) and the span they were taken from."""
        times = [ts_to_us(d.occurred_at) for d in new]
        lo, hi = min(times) - _REGROUP_US, max(times) + _REGROUP_US
        written = self.written.get(actor, {})
        grown = bool(written)
        while grown:
            grown = False
            for w in written.values():
                if w.first_us <= hi and w.last_us >= lo and (w.first_us < lo or w.last_us > hi):
                    lo, hi, grown = min(lo, w.first_us), max(hi, w.last_us), True
        near = [d for d in known if lo <= ts_to_us(d.occurred_at) <= hi]
        if not written:
            regroup.extend(near)
            return near, (lo, hi)
        have = {(d.event_id, f.code) for d in near for f in d.flags}
        forgotten: set[tuple[str, RuleCode]] = set()
        for aid, w in written.items():
            if w.first_us > hi or w.last_us < lo:
                continue
            if w.whole and all((e, w.rule) in have for e in w.flagged):
                anchors.add(aid)
            else:
                forgotten.update((e, w.rule) for e in w.flagged)
        if not forgotten:
            regroup.extend(near)
            return near, (lo, hi)
        for d in near:
            flags = tuple(f for f in d.flags if (d.event_id, f.code) not in forgotten)
            if len(flags) == len(d.flags):
                regroup.append(d)
            elif flags:
                regroup.append(dataclasses.replace(d, flags=flags))
        return near, (lo, hi)

    def _keep_from(self, actor: str, latest_us: int) -> int:
        """The flags of ``actor`` kept for regrouping occurred from this time on: a day
        before the latest, or the first flag of a written alert whose last is after that
        (so an alert kept is kept whole, and can still grow)."""
        cut = latest_us - _REGROUP_US
        written = self.written.get(actor, {}).values()
        lowered = True
        while lowered:
            lowered = False
            for w in written:
                if w.first_us < cut <= w.last_us:
                    cut, lowered = w.first_us, True
        return cut

    def _forget(self, latest_us: int) -> None:
        """Forget the flags and written alerts that no new flag can regroup any more
        (actors quiet for a day). A written alert is forgotten with its last flag: one
        with some flags forgotten is still known, and left as written (``_anchored``)."""
        recent: dict[str, list[AccessDecision]] = {}
        written: dict[str, dict[str, _Written]] = {}
        for actor in [*self.recent, *(a for a in self.written if a not in self.recent)]:
            cut = self._keep_from(actor, latest_us)
            kept = [d for d in self.recent.get(actor, ()) if ts_to_us(d.occurred_at) >= cut]
            if kept:
                recent[actor] = kept
            alerts = {a: w for a, w in self.written.get(actor, {}).items() if w.last_us >= cut}
            if alerts:
                written[actor] = alerts
        self.recent, self.written = recent, written


@dataclass(frozen=True, slots=True)
class _Written:
    """An alert this run wrote (or an earlier run's, read back at a restart): its rule,
    its first and last flag's time, and the events it flagged (its related events left
    out)."""

    rule: RuleCode
    first_us: int
    last_us: int
    flagged: frozenset[str]
    #: every flag of it is known (an earlier run's, read back, may have started before)
    whole: bool = True


@dataclass(slots=True)
class ReadBatch:
    """One poll's reads: the heads read (chain -> height), the reference records and the
    access events of the blocks above the cursors up to them."""

    cursors: dict[str, int]
    records: list[LedgeredReference]
    events: list[LedgeredEvent]

    def extend(self, later: ReadBatch) -> None:
        """Add a later poll (read from this one's heads): as if read at once."""
        self.cursors.update(later.cursors)
        self.records.extend(later.records)
        self.events.extend(later.events)


@dataclass(slots=True)
class CycleWrites:
    """What one cycle stores, in this order (``write_cycle``): its alert rows, its alerts
    published, then its decision rows (one INSERT: all or none). Steps done are
    remembered, so a retry never repeats one."""

    decisions: list[tuple[Any, ...]]
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    documents: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stage: int = 0  # steps done: 1 alerts stored, 2 published, 3 decisions stored

    def add_alerts(
        self, rows: list[tuple[Any, ...]], documents: list[tuple[str, dict[str, Any]]]
    ) -> None:
        self.alerts.extend(rows)
        self.documents.extend(documents)

    def name_alerts(self, alert_ids: Mapping[tuple[str, int], str]) -> None:
        """Name in each decision row the alerts its flags went into (before the rows
        are stored)."""
        if self.stage >= 3:
            raise RuntimeError("the decision rows of this cycle are stored already")
        self.decisions = [
            with_alert_ids(r, ids) if (ids := alert_ids.get((r[0], r[_AMENDS]))) else r
            for r in self.decisions
        ]


def _named(
    flagged: Sequence[AccessDecision], assigned: Mapping[tuple[str, bool, str], str]
) -> dict[tuple[str, int], str]:
    """(event id, amends) -> the JSON object rule -> alert id of its flags' alerts."""
    out: dict[tuple[str, int], str] = {}
    for d in flagged:
        ids = {
            str(f.code): aid
            for f in d.flags
            if (aid := assigned.get((d.event_id, d.amends, f.code))) is not None
        }
        if ids:
            out[(d.event_id, int(d.amends))] = dumps(ids)
    return out


_AMENDS: Final = DECISION_COLUMNS.index("amends")
#: (event id, amends) -> the JSON object, rule -> alert id, its decision row names
_Named = dict[tuple[str, int], str]


def write_cycle(w: CycleWrites, store: AuditSource, publisher: AlertPublisher | None) -> None:
    """Store a cycle (raises StorageError; call again to finish: the steps done are not
    repeated). The decisions go last: they are what a restarted follower resumes after
    (``decided_heights``), so a cycle whose decisions are stored has its alerts stored and
    published, and one whose decisions are not is decided again, its alerts stored again
    under the same ids (an upsert) and published again (ADR 0029)."""
    if w.stage < 1:
        if w.alerts:
            store.insert_alerts(w.alerts)
        w.stage = 1
    if w.stage < 2:
        if publisher is not None and w.documents:
            for alert_id, document in w.documents:
                publisher.publish(alert_id, document)
            if publisher.flush(10.0):
                log.error("some alerts are not yet delivered to Kafka")
        w.stage = 2
    if w.stage < 3:
        if w.decisions:
            store.insert_decisions(w.decisions)
        w.stage = 3


def _capped(
    store: AuditSource, ranges: Mapping[str, tuple[int, int]], cap: int
) -> dict[str, tuple[int, int]]:
    """``ranges`` (chain -> (above, upto)) cut to the oldest blocks, by their signed
    time, holding about ``cap`` events (at least one block): a backlog is read a bounded
    cycle at a time, all chains advancing in time together. Each chain's part is the
    blocks right above ``above`` without a gap; a source that cannot say its blocks'
    sizes (``blocks_above``) is read whole."""
    blocks_above = getattr(store, "blocks_above", None)
    if blocks_above is None:
        return dict(ranges)
    blocks: list[tuple[str, int, int, str]] = blocks_above(ranges)
    if sum(n for _c, _h, n, _t in blocks) <= cap:
        return dict(ranges)
    taken: dict[str, set[int]] = {}
    events = 0
    for chain, height, n, _t in sorted(blocks, key=lambda b: (b[3], b[0], b[1])):
        if events >= cap:
            break
        taken.setdefault(chain, set()).add(height)
        events += n
    out: dict[str, tuple[int, int]] = {}
    for chain, (above, upto) in ranges.items():
        got, h = taken.get(chain, set()), above
        while h + 1 in got and h < upto:
            h += 1
        if h > above:
            out[chain] = (above, h)
    return out or dict(ranges)  # a gap in the blocks' list: never stall


def _events_of(store: AuditSource, ranges: Mapping[str, tuple[int, int]]) -> list[LedgeredEvent]:
    """The events of the blocks of ``ranges`` (chain -> (above, upto)): in one read if the
    source can (``AuditStore.events_of_chains``), else chain by chain."""
    by_chains = getattr(store, "events_of_chains", None)
    if by_chains is not None:
        events: list[LedgeredEvent] = by_chains(ranges)
        return events
    out: list[LedgeredEvent] = []
    for chain, (above, upto) in sorted(ranges.items()):
        out.extend(store.events_of_chain(chain, above, upto))
    return out
