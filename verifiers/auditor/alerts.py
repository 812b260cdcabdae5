"""Alerts: flagged decisions grouped into reviewable units (pure).

A burst — one actor opening 300 records — is one alert with its 300 event ids, not 300
alerts: ``group_alerts`` groups one actor's flags of one rule while consecutive flags are
less than ``window`` apart (and the group spans less than ``max_span``). Patients appear
only as pseudonymous references (``patient_pseudonym``: truncated SHA-256 over a
deployment salt and the patient id), never by id or name.

A reviewer's verdict is about the alert as it was when it was closed (``resolved`` or
``false-positive``): a closed alert does not grow. ``group_alerts`` is told which alert
ids are closed and when (``ClosedAlert``) and cuts their groups there, so a later snoop
is a new, open alert; the ids stay those of the first event, so a replay gives the
same alerts.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from ._time import US_PER_DAY, US_PER_HOUR, ts_to_us
from .config import DEFAULT_CONFIG
from .decisions import AccessDecision, AlertSeverity, Flag, RestoredDecision, RuleCode
from .history import NO_PATIENT_ID

__all__ = [
    "ALERT_STATUSES",
    "CLOSED_STATUSES",
    "Alert",
    "AlertGrouper",
    "ClosedAlert",
    "alert_id",
    "cached_pseudonym",
    "group_alerts",
    "patient_pseudonym",
]

ALERT_STATUSES: Final = ("open", "acknowledged", "assigned", "resolved", "false-positive")
#: final statuses: the alert is closed and takes no more flags
CLOSED_STATUSES: Final = frozenset({"resolved", "false-positive"})
_PSEUDONYM_CONTEXT: Final = b"careledger-patient-ref/1\x00"
#: rules whose bursts over many patients are worse than any single access
_ESCALATE_ON_BURST: Final = frozenset(
    {RuleCode.NO_EXPLANATION, RuleCode.VIP_OR_SENSITIVE_UNEXPLAINED, RuleCode.FAMILY}
)
#: evidence keys that would identify the patient (or are moved to event_ids)
_PRIVATE_KEYS: Final = frozenset({"employee_user_id", "related_event_ids"})
MAX_EVIDENCE_SAMPLES: Final = 20


def patient_pseudonym(patient_id: str, salt: bytes | str, length: int = 32) -> str:
    """Stable pseudonymous reference of a patient: hex SHA-256 of a context string, the
    length-prefixed salt and the patient id, truncated to ``length`` hex digits.

    Without the salt it cannot be reversed by hashing candidate ids; keep the salt
    secret and stable per deployment (changing it changes every reference)."""
    if not 8 <= length <= 64:
        raise ValueError("length must be 8..64 hex digits")
    s = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
    digest = hashlib.sha256(
        _PSEUDONYM_CONTEXT + len(s).to_bytes(4, "big") + s + patient_id.encode("utf-8")
    ).hexdigest()
    return digest[:length]


@lru_cache(maxsize=1 << 16)
def cached_pseudonym(patient_id: str, salt: bytes | str) -> str:
    """``patient_pseudonym(patient_id, salt)`` (a pure function), hashed once per patient
    while it is among the most recent 65,536."""
    return patient_pseudonym(patient_id, salt)


def alert_id(rule: str, actor_id: str, first_event_id: str, *, late: bool = False) -> str:
    """Stable id of an alert: the same group of the same replay gets the same id.
    ``late``: the alert of a late flag (``AccessDecision.amends``) raised after the alert
    of its event was closed, which must not take that alert's id."""
    parts: tuple[str, ...] = ("careledger-alert/1", rule, actor_id, first_event_id)
    if late:
        parts = (*parts, "late")
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ClosedAlert:
    """An alert a reviewer closed: it takes no flag that occurred after ``closed_at``
    (the time of the status change that closed it) nor after ``last_at`` (its last event
    as stored when it was closed, if known: a flag committed after the review, even one
    that occurred before it, was not reviewed). A late flag (a break-the-glass start
    without a stop) counts as raised ``late_flag_delay`` after its event."""

    closed_at: str
    last_at: str | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    rule: RuleCode
    severity: AlertSeverity
    score: float
    actor_id: str
    #: the patient's pseudonym when the alert concerns exactly one patient
    patient_ref: str | None
    patient_refs: tuple[str, ...]
    #: related (unflagged) events first, then the flagged ones in time order
    event_ids: tuple[str, ...]
    first_at: str
    last_at: str
    evidence: Mapping[str, Any]
    explanations_searched: tuple[str, ...]
    status: str = "open"

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "rule": str(self.rule),
            "severity": str(self.severity),
            "score": self.score,
            "actor_id": self.actor_id,
            "patient_ref": self.patient_ref,
            "patient_refs": list(self.patient_refs),
            "event_ids": list(self.event_ids),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "evidence": dict(self.evidence),
            "explanations_searched": list(self.explanations_searched),
            "status": self.status,
        }


@dataclass(slots=True)
class _Group:
    alert_id: str
    rule: RuleCode
    actor_id: str
    first_us: int
    last_us: int
    first_at: str
    last_at: str
    severity: AlertSeverity
    score: float = 0.0
    flagged: dict[str, None] = field(default_factory=dict)
    related: dict[str, None] = field(default_factory=dict)
    patients: dict[str, None] = field(default_factory=dict)
    searched: dict[str, None] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    amended: int = 0
    #: every flag of the group is a routine review item (``Flag.routine``)
    routine: bool = True
    #: (closed_at, cut) in µs when the alert is closed: it takes no flag after them
    closed: tuple[int, int] | None = None


def _public(evidence: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in evidence.items():
        if k in _PRIVATE_KEYS:
            continue
        if isinstance(v, Mapping):
            out[k] = _public(v)
        elif isinstance(v, list | tuple):
            out[k] = [_public(x) if isinstance(x, Mapping) else x for x in v]
        else:
            out[k] = v
    return out


def group_alerts(
    decisions: Iterable[AccessDecision],
    *,
    salt: bytes | str,
    window_us: int = US_PER_HOUR,
    max_span_us: int = US_PER_DAY,
    min_severity: AlertSeverity = AlertSeverity.LOW,
    burst_patients: int = 20,
    closed: Mapping[str, ClosedAlert] | None = None,
    late_flag_delay_us: int = DEFAULT_CONFIG.btg_stop_window_us,
    anchors: Collection[str] = (),
    assigned: dict[tuple[str, bool, str], str] | None = None,
    assign_only: Collection[str] | None = None,
) -> list[Alert]:
    """Group flagged decisions into alerts (deterministic: the input order does not
    matter). Flags below ``min_severity`` are left out; a group of
    NO_EXPLANATION / VIP / FAMILY flags over ``burst_patients`` or more patients is
    raised one severity level.

    ``closed``: the alerts a reviewer closed, by id. A closed alert does not grow:

    * the flag it started with starts it again (whatever flags came before are another
      alert), so it keeps its id;
    * a flag that occurred after the close (or after the alert's stored last event) starts
      a new alert;
    * a late flag (``amends``, raised ``late_flag_delay_us`` after its event: the
      break-the-glass stop window) raised after the close is an alert of its own, with an
      id of its own (``alert_id(..., late=True)``).

    ``anchors``: ids of alerts already written (by a follower, ADR 0048). The flag an
    anchored alert started with starts it again, as a closed one's does, so a flag that
    arrived late and occurred before it does not take its id and its flags away: given
    every flag of each anchored alert, no flag lands in two alerts. ``assigned``, if
    given, is told the alert of each flag (of the events ``assign_only`` names, if
    given): (event id, amends, rule) -> alert id.

    ``AlertGrouper`` does the same as the decisions are made."""
    grouper = AlertGrouper(
        salt=salt,
        window_us=window_us,
        max_span_us=max_span_us,
        min_severity=min_severity,
        burst_patients=burst_patients,
        closed=closed,
        late_flag_delay_us=late_flag_delay_us,
        anchors=anchors,
        assigned=assigned,
        assign_only=assign_only,
    )
    for d in decisions:
        grouper.add(d)
    return grouper.alerts()


class AlertGrouper:
    """``group_alerts`` fed one decision at a time, holding only what can still change
    (ADR 0045): told that no decision older than a time can come any more
    (``settled``), it groups the decisions before it in order, and finishes each group
    no later flag can join (quiet for more than ``window_us``, or spanning more than
    ``max_span_us``). ``alerts()`` gives what ``group_alerts`` gives over the same
    decisions."""

    def __init__(
        self,
        *,
        salt: bytes | str,
        window_us: int = US_PER_HOUR,
        max_span_us: int = US_PER_DAY,
        min_severity: AlertSeverity = AlertSeverity.LOW,
        burst_patients: int = 20,
        closed: Mapping[str, ClosedAlert] | None = None,
        late_flag_delay_us: int = DEFAULT_CONFIG.btg_stop_window_us,
        anchors: Collection[str] = (),
        assigned: dict[tuple[str, bool, str], str] | None = None,
        assign_only: Collection[str] | None = None,
    ) -> None:
        self._salt = salt
        self._anchors = frozenset(anchors)
        self._assigned = assigned
        self._assign_only = assign_only
        self._window_us = window_us
        self._max_span_us = max_span_us
        self._min_rank = min_severity.rank
        self._burst = burst_patients
        self._late_us = late_flag_delay_us
        self._closed_us: dict[str, tuple[int, int]] = {}
        for aid, c in (closed or {}).items():
            at_us = ts_to_us(c.closed_at)
            cut = at_us if c.last_at is None else min(at_us, ts_to_us(c.last_at))
            self._closed_us[aid] = (at_us, cut)
        #: flagged decisions not yet grouped, by (occurred_at, event id, amends, arrival)
        self._waiting: list[tuple[str, str, bool, int, AccessDecision]] = []
        self._arrived = 0
        self._open: dict[tuple[str, RuleCode], _Group] = {}
        self._done: list[Alert] = []
        self._settled_calls = 0

    def add(self, d: AccessDecision) -> None:
        if d.flags:
            self._arrived += 1
            heapq.heappush(self._waiting, (d.occurred_at, d.event_id, d.amends, self._arrived, d))

    def settled(self, before: str) -> None:
        """No decision with ``occurred_at`` before ``before`` will be added any more."""
        waiting = self._waiting
        while waiting and waiting[0][0] < before:
            self._take(heapq.heappop(waiting)[4])
        self._settled_calls += 1
        if self._settled_calls % _SWEEP_EVERY == 0:
            self._finish_quiet(ts_to_us(before))

    def _finish_quiet(self, now_us: int) -> None:
        # a flag at ``now_us`` or later ends these groups before it joins them (the
        # first test of ``_take``): they are final
        quiet = [
            key
            for key, g in self._open.items()
            if now_us - g.last_us > self._window_us or now_us - g.first_us > self._max_span_us
        ]
        for key in quiet:
            self._done.append(_finish(self._open.pop(key), self._burst))

    @property
    def held(self) -> int:
        """Decisions waiting and groups open (what bounds the memory)."""
        return len(self._waiting) + len(self._open)

    def finished(self) -> list[Alert]:
        """The alerts finished since the last call, handed over: no later decision can
        change them (``alerts()`` then gives only those not yet handed over)."""
        done, self._done = self._done, []
        return done

    def alerts(self) -> list[Alert]:
        """Every alert not handed over by ``finished``, in (first_at, rule, actor, id)
        order (the input is all in)."""
        while self._waiting:
            self._take(heapq.heappop(self._waiting)[4])
        self._done.extend(_finish(g, self._burst) for g in self._open.values())
        self._open.clear()
        self._done.sort(key=lambda a: (a.first_at, a.rule, a.actor_id, a.alert_id))
        return self._done

    def _takes(self, window: tuple[int, int], d: AccessDecision, t_us: int) -> bool:
        closed_at, cut = window
        return t_us + self._late_us <= closed_at if d.amends else t_us <= cut

    def _start(self, aid: str, d: AccessDecision, f: Flag, t_us: int) -> _Group:
        return _Group(
            alert_id=aid,
            rule=f.code,
            actor_id=d.actor_id,
            first_us=t_us,
            last_us=t_us,
            first_at=d.occurred_at,
            last_at=d.occurred_at,
            severity=f.severity,
            closed=self._closed_us.get(aid),
        )

    def _take(self, d: AccessDecision) -> None:
        """One flagged decision, in (occurred_at, event id, amends) order."""
        closed_us, open_groups, salt = self._closed_us, self._open, self._salt
        anchors = self._anchors
        t_us = ts_to_us(d.occurred_at)
        for f in d.flags:
            if f.severity.rank < self._min_rank:
                continue
            key = (d.actor_id, f.code)
            g = open_groups.get(key)
            # the id of an alert this flag would start (only needed to recognise one
            # closed or anchored)
            own = alert_id(f.code, d.actor_id, d.event_id) if closed_us or anchors else ""
            if g is not None and (
                t_us - g.last_us > self._window_us or t_us - g.first_us > self._max_span_us
            ):
                self._done.append(_finish(g, self._burst))
                del open_groups[key]
                g = None
            own_closed = closed_us.get(own)
            late = False
            if own_closed is not None and (g is None or g.alert_id != own):
                # this flag started an alert that is closed now: it starts it again
                if d.amends and not self._takes(own_closed, d, t_us):
                    late = True
                else:
                    if g is not None:
                        self._done.append(_finish(g, self._burst))
                    g = open_groups[key] = self._start(own, d, f, t_us)
            elif g is not None and g.alert_id != own and own in anchors:
                # this flag started an alert already written: it starts it again
                self._done.append(_finish(g, self._burst))
                g = open_groups[key] = self._start(own, d, f, t_us)
            elif g is not None and g.closed is not None and not self._takes(g.closed, d, t_us):
                if d.amends:
                    late = True
                else:  # after the close: a new alert
                    self._done.append(_finish(g, self._burst))
                    del open_groups[key]
                    g = None
            if late:
                # raised after the alert of its event was closed; it does not interrupt
                # that alert (later flags may still belong to it)
                side = self._start(alert_id(f.code, d.actor_id, d.event_id, late=True), d, f, t_us)
                _add(side, d, f, t_us, salt)
                self._done.append(_finish(side, self._burst))
                if self._assigned is not None and self._assigns(d):
                    self._assigned[(d.event_id, d.amends, f.code)] = side.alert_id
                continue
            if g is None:
                g = open_groups[key] = self._start(
                    own or alert_id(f.code, d.actor_id, d.event_id), d, f, t_us
                )
            _add(g, d, f, t_us, salt)
            if self._assigned is not None and self._assigns(d):
                self._assigned[(d.event_id, d.amends, f.code)] = g.alert_id

    def _assigns(self, d: AccessDecision) -> bool:
        return self._assign_only is None or d.event_id in self._assign_only


#: ``settled`` calls between two looks for groups no flag can join any more
_SWEEP_EVERY: Final = 256


def _add(g: _Group, d: AccessDecision, f: Flag, t_us: int, salt: bytes | str) -> None:
    if t_us >= g.last_us:
        g.last_us, g.last_at = t_us, d.occurred_at
    if f.severity.rank > g.severity.rank:
        g.severity = f.severity
    g.score += f.score * d.multiplier
    g.amended += d.amends
    g.routine = g.routine and f.routine
    for rel in f.evidence.get("related_event_ids", ()):
        if rel not in g.flagged:
            g.related[rel] = None
    g.related.pop(d.event_id, None)
    g.flagged[d.event_id] = None
    ref = None
    if isinstance(d, RestoredDecision):
        ref = d.patient_ref or None
    elif d.patient_id != NO_PATIENT_ID:
        ref = cached_pseudonym(d.patient_id, salt)
    if ref is not None:
        g.patients[ref] = None
    for s in d.searched:
        g.searched[s] = None
    if len(g.samples) < MAX_EVIDENCE_SAMPLES:
        sample: dict[str, Any] = {"event_id": d.event_id, "occurred_at": d.occurred_at}
        if ref is not None:
            sample["patient_ref"] = ref
        sample["severity"] = str(f.severity)
        if f.routine:
            sample["routine"] = True
        sample.update(_public(f.evidence))
        g.samples.append(sample)


def _finish(g: _Group, burst_patients: int = 20) -> Alert:
    severity = g.severity
    if g.rule in _ESCALATE_ON_BURST and len(g.patients) >= burst_patients:
        severity = severity.raised()
    patients = tuple(g.patients)
    flagged = tuple(g.flagged)
    return Alert(
        alert_id=g.alert_id,
        rule=g.rule,
        severity=severity,
        score=round(g.score, 3),
        actor_id=g.actor_id,
        patient_ref=patients[0] if len(patients) == 1 else None,
        patient_refs=tuple(sorted(patients)),
        event_ids=tuple(g.related) + flagged,
        first_at=g.first_at,
        last_at=g.last_at,
        evidence={
            "flagged_events": len(flagged),
            "related_events": len(g.related),
            "distinct_patients": len(patients),
            "late_flags": g.amended,
            # a review the policy requires (e.g. a break-the-glass with its reason),
            # not a suspicion: triage can sort these last
            "routine": g.routine,
            "samples": g.samples,
            "samples_truncated": max(0, len(flagged) - len(g.samples)),
        },
        explanations_searched=tuple(g.searched),
    )
