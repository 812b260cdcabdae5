"""The access auditor: explanation-based auditing and privacy rules (pure, no I/O).

* ``state``: ``ReferenceState`` rebuilt from ledgered reference records, ``as_of(t)``;
* ``history``: ``AccessHistory``, bounded per-actor windows fed events in time order;
* ``rules``: ``evaluate(event, view, history) -> AccessDecision``, ``RuleCode``,
  ``Auditor`` (the streaming driver);
* ``alerts``: ``group_alerts(decisions) -> list[Alert]`` and patient pseudonyms.
"""

from .alerts import Alert, group_alerts, patient_pseudonym
from .config import DEFAULT_CONFIG, AuditConfig, RoleWindow
from .history import AccessHistory
from .rules import (
    AccessDecision,
    AlertSeverity,
    Auditor,
    ConsentEvaluator,
    ConsentVerdict,
    Explanation,
    ExplanationKind,
    Flag,
    RuleCode,
    evaluate,
)
from .state import ActiveRelationship, ReferenceState, ReferenceView

__all__ = [
    "DEFAULT_CONFIG",
    "AccessDecision",
    "AccessHistory",
    "ActiveRelationship",
    "Alert",
    "AlertSeverity",
    "AuditConfig",
    "Auditor",
    "ConsentEvaluator",
    "ConsentVerdict",
    "Explanation",
    "ExplanationKind",
    "Flag",
    "ReferenceState",
    "ReferenceView",
    "RoleWindow",
    "RuleCode",
    "evaluate",
    "group_alerts",
    "patient_pseudonym",
]
