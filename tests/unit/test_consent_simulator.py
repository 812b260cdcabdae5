"""The simulator's consents mean what the simulator means by them, under the
specification's semantics (ADR 0021): research permits, opt-outs and emergency-only
consents with their exceptions, and the denial of one practitioner."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from careledger_core.reference import ReferenceRecord
from producers.simulator import DEFAULT_START, HospitalModel
from producers.simulator.scenarios import simulate_audit_scenario
from verifiers.auditor.consent import ConsentRequest, evaluate_consent, parse_consent
from verifiers.auditor.consent.policy_table import EMPTY_POLICY_TABLE

AT = "2030-01-01T00:00:00Z"  # after every simulated consent was signed


@pytest.fixture(scope="module")
def consents() -> dict[str, list[ReferenceRecord]]:
    scenario = simulate_audit_scenario(HospitalModel(seed=7), 4_000, 7, DEFAULT_START, 0.01)
    kinds: dict[str, list[ReferenceRecord]] = {}
    for rec in scenario.reference_records:
        if rec.kind == "consent":
            kinds.setdefault(rec.record_id.split("-")[1], []).append(rec)
    return kinds


def decide(rec: ReferenceRecord, **fields: object) -> str:
    body = dict(rec.body)
    policy = parse_consent(body)
    base: dict[str, object] = {
        "patient_id": policy.patient_id,
        "at": AT,
        "actor_id": "stranger",
        "actor_roles": ("physician",),
        "purposes": ("TREAT",),
        "action": "R",
    }
    base.update(fields)
    request = ConsentRequest(**base)  # type: ignore[arg-type]
    return evaluate_consent([policy], request, policy_table=EMPTY_POLICY_TABLE).outcome


def _care_team(rec: ReferenceRecord) -> list[str]:
    prov = rec.body["provision"]
    # R4: the root and its nested provisions; R5: the top-level provisions
    nodes = [prov, *prov.get("provision", ())] if isinstance(prov, Mapping) else list(prov)
    ids = []
    for node in nodes:
        for actor in node.get("actor", ()):
            ids.append(actor["reference"]["reference"].split("/")[-1])
    return ids


def test_simulator_makes_every_kind(consents: dict[str, list[ReferenceRecord]]) -> None:
    assert {"research", "optout", "emergency", "deny"} <= set(consents)


def test_emergency_only_r4_consent(consents: dict[str, list[ReferenceRecord]]) -> None:
    for rec in consents["emergency"]:
        team = _care_team(rec)
        assert decide(rec, purposes=("ETREAT",)) == "permit"
        assert decide(rec, purposes=("TREAT",)) == "deny"
        if team:
            assert decide(rec, actor_id=team[0], purposes=("TREAT",)) == "permit"


def test_opt_out_r5_consent(consents: dict[str, list[ReferenceRecord]]) -> None:
    for rec in consents["optout"]:
        team = _care_team(rec)
        assert decide(rec, purposes=("ETREAT",)) == "permit"
        assert decide(rec, purposes=("TREAT",)) == "deny"
        if team:
            assert decide(rec, actor_id=team[0], purposes=("TREAT",)) == "permit"


def test_research_consent_permits_researchers(consents: dict[str, list[ReferenceRecord]]) -> None:
    for rec in consents["research"]:
        assert decide(rec, actor_roles=("researcher",), purposes=("HRESCH",)) == "permit"


def test_deny_one_practitioner(consents: dict[str, list[ReferenceRecord]]) -> None:
    for rec in consents["deny"]:
        denied = _care_team(rec)[0]
        assert decide(rec, actor_id=denied) == "deny"
        assert decide(rec, actor_id="someone-else") == "permit"
