"""The access auditor (a job of the verifiers wing): explanation-based auditing, privacy
rules and consent evaluation (pure, no I/O), and around them the runner that reads the
ledger and stores decisions and alerts (``runner``), the ``careledger audit`` command
(``cli``), the privacy team's alert workflow (``alerts_cli``, ``status_records``: status
changes against their ledgered records) and the checks ``careledger verify`` runs on the
auditor's rows (``verify``: every audit run replayed over the ledger, ADR 0016).

* ``state``: ``ReferenceState`` rebuilt from ledgered reference records, ``as_of(t)``;
* ``history``: ``AccessHistory``, bounded per-actor windows fed events in time order;
* ``rules``: ``evaluate(event, view, history) -> AccessDecision``, ``Auditor`` (the
  streaming driver); ``explanations``: the explanation search and the consent adapter;
  ``decisions``: ``AccessDecision``, ``Flag``, ``AlertSeverity``, ``RuleCode``, ...;
* ``consent``: FHIR R4/R5 Consent parsing and evaluation;
* ``alerts``: ``group_alerts(decisions) -> list[Alert]`` and patient pseudonyms.
"""

from .alerts import Alert, group_alerts, patient_pseudonym
from .config import DEFAULT_CONFIG, AuditConfig, RoleWindow
from .decisions import (
    AccessDecision,
    AlertSeverity,
    ConsentEvaluator,
    ConsentVerdict,
    Explanation,
    ExplanationKind,
    Flag,
    RuleCode,
)
from .history import AccessHistory
from .rules import Auditor, evaluate
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
