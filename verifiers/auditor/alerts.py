"""Alerts: flagged decisions grouped into reviewable units (pure).

A burst — one actor opening 300 records — is one alert with its 300 event ids, not 300
alerts: ``group_alerts`` groups one actor's flags of one rule while consecutive flags are
less than ``window`` apart (and the group spans less than ``max_span``). Patients appear
only as pseudonymous references (``patient_pseudonym``: truncated SHA-256 over a
deployment salt and the patient id), never by id or name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._time import US_PER_DAY, US_PER_HOUR, ts_to_us
from .history import NO_PATIENT_ID
from .rules import AccessDecision, AlertSeverity, RuleCode

__all__ = ["ALERT_STATUSES", "Alert", "alert_id", "group_alerts", "patient_pseudonym"]

ALERT_STATUSES: Final = ("open", "acknowledged", "resolved", "false-positive")
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


def alert_id(rule: str, actor_id: str, first_event_id: str) -> str:
    """Stable id of an alert: the same group of the same replay gets the same id."""
    data = "\x00".join(("careledger-alert/1", rule, actor_id, first_event_id)).encode()
    return hashlib.sha256(data).hexdigest()[:32]


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
) -> list[Alert]:
    """Group flagged decisions into alerts (deterministic: the input order does not
    matter). Flags below ``min_severity`` are left out; a group of
    NO_EXPLANATION / VIP / FAMILY flags over ``burst_patients`` or more patients is
    raised one severity level."""
    ordered = sorted(decisions, key=lambda d: (d.occurred_at, d.event_id, d.amends))
    open_groups: dict[tuple[str, RuleCode], _Group] = {}
    done: list[_Group] = []
    for d in ordered:
        t_us = ts_to_us(d.occurred_at)
        for f in d.flags:
            if f.severity.rank < min_severity.rank:
                continue
            key = (d.actor_id, f.code)
            g = open_groups.get(key)
            if g is not None and (t_us - g.last_us > window_us or t_us - g.first_us > max_span_us):
                done.append(g)
                g = None
            if g is None:
                g = open_groups[key] = _Group(
                    rule=f.code,
                    actor_id=d.actor_id,
                    first_us=t_us,
                    last_us=t_us,
                    first_at=d.occurred_at,
                    last_at=d.occurred_at,
                    severity=f.severity,
                )
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
            if d.patient_id != NO_PATIENT_ID:
                ref = patient_pseudonym(d.patient_id, salt)
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
    done.extend(open_groups.values())
    alerts = [_finish(g, burst_patients) for g in done]
    alerts.sort(key=lambda a: (a.first_at, a.rule, a.actor_id, a.alert_id))
    return alerts


def _finish(g: _Group, burst_patients: int = 20) -> Alert:
    severity = g.severity
    if g.rule in _ESCALATE_ON_BURST and len(g.patients) >= burst_patients:
        severity = severity.raised()
    patients = tuple(g.patients)
    flagged = tuple(g.flagged)
    return Alert(
        alert_id=alert_id(g.rule, g.actor_id, flagged[0]),
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
