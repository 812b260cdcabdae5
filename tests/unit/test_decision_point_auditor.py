"""The access auditor and the decision point use the same evaluation: an access the
patient's consent denied is an alert that cites the deciding consent and provision,
and the decision point, asked the same question, gives the same answer."""

from __future__ import annotations

import uuid
from typing import Any

from careledger_core.event import event_from_dict
from careledger_core.reference import REFERENCE_SCHEMA, reference_from_dict
from careledger_core.rule_codes import RuleCode
from verifiers.auditor.alerts import group_alerts
from verifiers.auditor.consent.policy_table import PolicyTable
from verifiers.auditor.decision_point import ConsentLedger, LedgeredConsent, Question, answer
from verifiers.auditor.history import AccessHistory
from verifiers.auditor.rules import core_consent_evaluator, evaluate
from verifiers.auditor.state import ReferenceState

T0 = "2026-01-01T00:00:00.000000Z"
AT = "2026-03-02T10:00:00.000000Z"
CHAIN = "careledger/careledger.consents/0"


def consent_record() -> Any:
    """Permit all, except dr-b (provision 0), and except research for everyone (1)."""
    return reference_from_dict(
        {
            "schema": REFERENCE_SCHEMA,
            "kind": "consent",
            "record_id": "c-9",
            "version": 1,
            "recorded_at": T0,
            "effective_at": T0,
            "body": {
                "resourceType": "Consent",
                "id": "c-9",
                "status": "active",
                "subject": {"reference": "Patient/p-9"},
                "decision": "permit",
                "provision": [
                    {"actor": [{"reference": {"reference": "Practitioner/dr-b"}}]},
                    {"purpose": [{"code": "HRESCH"}]},
                ],
            },
        }
    )


def access(actor: str, purpose: str) -> Any:
    return event_from_dict(
        {
            "schema": "careledger.access-event/1",
            "event_id": str(uuid.uuid4()),
            "occurred_at": AT,
            "recorded_at": AT,
            "event_type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest",
            },
            "action": "R",
            "outcome": 0,
            "purpose_of_use": [purpose],
            "actor": {"id": actor, "roles": ["nurse"], "is_requestor": True},
            "source": {"system": "ehr", "type": 4},
            "patient": {"id": "p-9"},
        }
    )


def test_a_consent_denied_access_is_an_alert_citing_the_consent_and_provision() -> None:
    state = ReferenceState([consent_record()])
    for actor, purpose, path in (("dr-b", "TREAT", [0]), ("dr-c", "HRESCH", [1])):
        event = access(actor, purpose)
        decision = evaluate(
            event, state.as_of(AT), AccessHistory(), consent_evaluator=core_consent_evaluator
        )
        flag = decision.flag(RuleCode.CONSENT_DENIED)
        assert flag is not None
        assert flag.evidence["consent_id"] == "c-9"
        assert flag.evidence["provision_path"] == path
        [alert] = [
            a for a in group_alerts([decision], salt="s") if a.rule == RuleCode.CONSENT_DENIED
        ]
        sample = alert.evidence["samples"][0]
        assert sample["consent_id"] == "c-9" and sample["provision_path"] == path
        # the decision point, asked the same question then, gives the same answer
        ledger = ConsentLedger(PolicyTable())
        ledger.apply([LedgeredConsent(consent_record(), CHAIN, 1, 0, T0)], {CHAIN: 1})
        question = Question(
            patient_id="p-9",
            actor_id=actor,
            action="R",
            actor_roles=("nurse",),
            purposes=(purpose,),
        )
        got = answer(ledger, question, AT)
        assert got["outcome"] == "deny" and got["provision_path"] == path
        assert got["reason"] == flag.evidence["detail"]
