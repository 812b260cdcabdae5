"""What the access auditor decides (pure value types, no logic beyond their own).

``AlertSeverity`` (ranked, with the points a flag of that severity scores), the
``Explanation`` of an access (``ExplanationKind``), a ``Flag`` raised under a
``RuleCode``, the ``ConsentVerdict`` a ``ConsentEvaluator`` returns and the
``AccessDecision`` about one access event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, Protocol

from careledger_core.event import AccessEvent
from careledger_core.reference import StaffBody
from careledger_core.rule_codes import RuleCode

__all__ = [
    "AccessDecision",
    "AlertSeverity",
    "ConsentEvaluator",
    "ConsentVerdict",
    "Explanation",
    "ExplanationKind",
    "Flag",
    "RuleCode",
]


class AlertSeverity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def points(self) -> int:
        """Contribution of one flag of this severity to a score."""
        return _POINTS[self]

    def raised(self) -> AlertSeverity:
        return _ORDER[min(self.rank + 1, len(_ORDER) - 1)]


_ORDER: Final = (
    AlertSeverity.INFO,
    AlertSeverity.LOW,
    AlertSeverity.MEDIUM,
    AlertSeverity.HIGH,
    AlertSeverity.CRITICAL,
)
_RANK: Final = {s: i for i, s in enumerate(_ORDER)}
_POINTS: Final = dict(zip(_ORDER, (0, 1, 3, 6, 10), strict=True))
_INFO, _LOW, _MEDIUM, _HIGH, _CRITICAL = _ORDER


class ExplanationKind(StrEnum):
    CONSENT = "consent"
    RELATIONSHIP = "relationship"
    TEAM = "team"
    DEPARTMENT = "department"
    GROUP = "group"
    ROLE = "role"


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why an access is allowed: the kind, the record that explains it, and how."""

    kind: ExplanationKind
    record_id: str | None = None  # relationship or consent record id
    relationship_kind: str | None = None  # encounter, appointment, care-team, ...
    via: str | None = None  # the actor, team, department, colleague or role

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": str(self.kind)}
        if self.record_id is not None:
            d["record_id"] = self.record_id
        if self.relationship_kind is not None:
            d["relationship_kind"] = self.relationship_kind
        if self.via is not None:
            d["via"] = self.via
        return d


@dataclass(frozen=True, slots=True)
class ConsentVerdict:
    """What a consent evaluator decided for one access."""

    decision: Literal["permit", "deny"]
    consent_id: str | None = None  # the deciding consent (record id or resource id)
    detail: str | None = None  # e.g. which provision matched
    #: a permit explains the access (False for a blanket opt-in that names nobody)
    explains: bool = True
    #: the deciding provision (indices from ``Consent.provision``; empty: the base rule)
    provision_path: tuple[int, ...] = ()
    #: the ledgered consent record (``<source>/<consent id>``) and version that decided:
    #: the same place the decision point names (None when not known)
    consent_record: str | None = None
    consent_version: int | None = None


class ConsentEvaluator(Protocol):
    """Adapter to ``verifiers.auditor.consent.evaluate_consent``: given the patient's
    active FHIR Consents (as of the event time), the access and the actor's directory
    entry, return permit/deny or None (no consent applies)."""

    def __call__(
        self,
        consents: list[dict[str, Any]],
        event: AccessEvent,
        actor: StaffBody | None,
    ) -> ConsentVerdict | None: ...


@dataclass(frozen=True, slots=True)
class Flag:
    code: RuleCode
    severity: AlertSeverity
    evidence: Mapping[str, Any] = field(default_factory=dict)
    #: a review the policy requires whatever the circumstances (a break-the-glass
    #: override that states its reason), not a suspicion: it still becomes an alert
    #: to review, but it is not a detection
    routine: bool = False

    @property
    def score(self) -> int:
        return self.severity.points

    def to_dict(self) -> dict[str, Any]:
        d = {
            "code": str(self.code),
            "severity": str(self.severity),
            "score": self.score,
            "evidence": dict(self.evidence),
        }
        if self.routine:
            d["routine"] = True
        return d


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """The auditor's decision about one access event."""

    event_id: str
    occurred_at: str
    actor_id: str
    patient_id: str
    explanation: Explanation | None
    #: explanation kinds searched, in order (empty for events about no patient)
    searched: tuple[str, ...]
    flags: tuple[Flag, ...]
    #: weight of the actor's confirmed past violations (REPEAT_OFFENDER), >= 1
    multiplier: float = 1.0
    #: a late flag about an earlier event (a break-the-glass start that never stopped)
    amends: bool = False

    @property
    def explained(self) -> bool:
        return self.explanation is not None

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def severity(self) -> AlertSeverity | None:
        if not self.flags:
            return None
        return max((f.severity for f in self.flags), key=_RANK.__getitem__)

    @property
    def score(self) -> float:
        return round(sum(f.score for f in self.flags) * self.multiplier, 3)

    def codes(self) -> tuple[RuleCode, ...]:
        return tuple(f.code for f in self.flags)

    def flag(self, code: RuleCode) -> Flag | None:
        for f in self.flags:
            if f.code == code:
                return f
        return None

    def to_dict(self) -> dict[str, Any]:
        severity = self.severity
        return {
            "event_id": self.event_id,
            "occurred_at": self.occurred_at,
            "actor_id": self.actor_id,
            "patient_id": self.patient_id,
            "explained": self.explained,
            "explanation": None if self.explanation is None else self.explanation.to_dict(),
            "searched": list(self.searched),
            "flags": [f.to_dict() for f in self.flags],
            "severity": None if severity is None else str(severity),
            "score": self.score,
            "multiplier": self.multiplier,
            "amends": self.amends,
        }


@dataclass(frozen=True, slots=True)
class RestoredDecision(AccessDecision):
    """A flagged decision read back from its stored row (``access_decisions``) for
    grouping alerts after a restart: the row names the patient only by pseudonym
    (``patient_ref``; empty: about no patient), and, if a follower grouped its flags
    (ADR 0048), the alert each flag went into (``alert_ids``: (rule, alert id) pairs)."""

    patient_ref: str = ""
    alert_ids: tuple[tuple[str, str], ...] = ()
