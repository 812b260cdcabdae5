"""Consent evaluation on synthetic FHIR R4 and R5 Consents (tests/fixtures/fhir, written
for careledger; the published examples are in test_consent_published): which
accesses a patient's consents permit or deny, which provision decided, and why; and the
helpers the other consent tests share (``test_consent_matching``: which rule is
reported and how criteria match; ``test_consent_api``: malformed resources, the API
surface and properties)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from verifiers.auditor.consent import (
    ConsentDecision,
    ConsentRequest,
    evaluate_consent,
    is_active,
    parse_consent,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
VERSIONS = ("r4", "r5")
NOW = "2024-06-15T08:00:00.000000Z"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def load(name: str, version: str) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads((FIXTURES / version / f"consent-{name}.json").read_text())
    return resource


def request(**overrides: Any) -> ConsentRequest:
    fields: dict[str, Any] = {
        "patient_id": "f001",
        "at": NOW,
        "actor_id": "nurse-1",
        "actor_roles": ("nurse",),
        "purposes": ("TREAT",),
        "action": "R",
    }
    fields.update(overrides)
    return ConsentRequest(**fields)


def decide(consents: list[dict[str, Any]], **overrides: Any) -> ConsentDecision:
    return evaluate_consent(consents, request(**overrides))


def r5_consent(cid: str, decision: str, provisions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": "active",
        "subject": {"reference": "Patient/f001"},
        "decision": decision,
        "provision": provisions,
    }


def prcp(reference: str) -> dict[str, Any]:
    return {
        "role": {"coding": [{"system": PARTICIPATION, "code": "PRCP"}]},
        "reference": {"reference": reference},
    }


def test_every_fixture_parses_in_its_own_version() -> None:
    for version in VERSIONS:
        files = sorted((FIXTURES / version).glob("*.json"))
        assert len(files) == 7
        for path in files:
            policy = parse_consent(json.loads(path.read_text()))
            assert policy.fhir_version == version.upper()
            assert policy.patient_id == "f001"
            assert policy.status == "active"


# ------------------------------------------------------------------ emergency-only permit


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("purpose", ["ETREAT", "BTG"])
def test_emergency_only_consent_permits_emergency_treatment_and_break_the_glass(
    version: str, purpose: str
) -> None:
    consent = load("Emergency", version)
    decision = decide([consent], purposes=(purpose,))
    assert decision.outcome == "permit"
    assert decision.consent_id == consent["id"]
    assert decision.provision_path == (0,)


@pytest.mark.parametrize("version", VERSIONS)
def test_emergency_only_consent_denies_treatment_by_an_actor_outside_the_care_team(
    version: str,
) -> None:
    decision = decide([load("Emergency", version)], actor_id="clerk-9", purposes=("TREAT",))
    assert decision.outcome == "deny"
    assert decision.provision_path == ()  # the consent's base decision
    assert "base decision" in decision.reason


# ------------------------------------------------------------------ deny one practitioner


@pytest.mark.parametrize("version", VERSIONS)
def test_denying_one_practitioner_denies_that_practitioner_and_permits_others(
    version: str,
) -> None:
    consent = load("notThem", version)
    denied = decide([consent], actor_id="f204")
    assert (denied.outcome, denied.consent_id, denied.provision_path) == (
        "deny",
        consent["id"],
        (0,),
    )
    for other in ("nurse-1", "f007"):
        permitted = decide([consent], actor_id=other)
        assert (permitted.outcome, permitted.provision_path) == ("permit", ())


@pytest.mark.parametrize("version", VERSIONS)
def test_a_denied_practitioner_cannot_export_or_update_either(version: str) -> None:
    consent = load("notThem", version)
    for action in ("E", "U"):
        assert decide([consent], actor_id="f204", action=action).outcome == "deny"
    # the provision names access and correct only: collecting new data is not withheld
    assert decide([consent], actor_id="f204", action="C").outcome == "permit"


@pytest.mark.parametrize("version", VERSIONS)
def test_denying_an_organisation_matches_the_actors_organisation(version: str) -> None:
    consent = load("notOrg", version)
    assert decide([consent], actor_organization="f001").outcome == "deny"
    assert decide([consent], actor_organization="f002").outcome == "permit"
    assert decide([consent], actor_organization=None).outcome == "permit"


# ------------------------------------------------------------------ time-bounded


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("at", "outcome"),
    [
        ("2014-12-31T23:59:59.999999Z", "permit"),
        ("2015-01-01T00:00:00.000000Z", "deny"),
        ("2015-01-20T12:00:00.000000Z", "deny"),
        ("2015-02-01T23:59:59.999999Z", "deny"),  # a period's end includes its whole day
        ("2015-02-02T00:00:00.000000Z", "permit"),
    ],
)
def test_time_bounded_deny_applies_inside_its_period_only(
    version: str, at: str, outcome: str
) -> None:
    assert decide([load("notTime", version)], at=at).outcome == outcome


def test_r4_root_provision_period_bounds_that_rule_not_the_consent() -> None:
    # R4 provision.period: "the timeframe in this rule is valid" -- the root rule's own
    # timeframe (R4 has no Consent.period); outside it the policyRule's base decides.
    consent = load("notThem", "r4")
    consent["provision"]["period"] = {"start": "2020-01-01", "end": "2020-12-31"}
    inside = decide([consent], actor_id="f204", at="2020-06-01T00:00:00.000000Z")
    assert (inside.outcome, inside.provision_path) == ("deny", (0,))
    outside = decide([consent], actor_id="f204", at="2021-01-01T00:00:00.000000Z")
    assert (outside.outcome, outside.provision_path) == ("permit", ())
    assert parse_consent(consent).period is None


def test_r4_datetime_is_when_the_consent_was_recorded_not_when_it_starts() -> None:
    consent = load("notThem", "r4")
    assert consent["dateTime"] == "2015-11-18"
    assert decide([consent], actor_id="f204", at="2001-01-01T00:00:00.000000Z").outcome == "deny"


def test_r5_consent_period_bounds_the_consent_with_time_zones_and_partial_dates() -> None:
    consent = load("notThem", "r5")
    consent["period"] = {"start": "2024-06-15T10:00:00+02:00", "end": "2024-07"}
    cases = {
        "2024-06-15T07:59:59.999999Z": "no-consent",
        "2024-06-15T08:00:00.000000Z": "deny",  # 10:00 at +02:00
        "2024-07-31T23:59:59.999999Z": "deny",  # end "2024-07" covers all of July
        "2024-08-01T00:00:00.000000Z": "no-consent",
    }
    for at, outcome in cases.items():
        assert decide([consent], actor_id="f204", at=at).outcome == outcome, at


def test_a_year_only_period_covers_the_whole_year() -> None:
    consent = load("Out", "r5")
    consent["period"] = {"start": "2015", "end": "2015"}
    assert is_active(consent, "2015-12-31T23:59:59.999999Z")
    assert not is_active(consent, "2016-01-01T00:00:00.000000Z")
    assert not is_active(consent, "2014-12-31T23:59:59.999999Z")


# ------------------------------------------------------------------ opt-out


@pytest.mark.parametrize("version", VERSIONS)
def test_opt_out_denies_everything_except_its_nested_exception(version: str) -> None:
    consent = load("Out", version)
    for overrides in (
        {"actor_id": "nurse-1"},
        {"actor_id": "f204", "action": "E"},
        {"actor_id": "f007", "purposes": ("HPAYMT",)},  # the exception is for treatment
        {"actor_id": "nurse-1", "purposes": ("ETREAT",)},
    ):
        assert decide([consent], **overrides).outcome == "deny", overrides
    exception = decide([consent], actor_id="f007", purposes=("TREAT",))
    assert exception.outcome == "permit"
    assert exception.provision_path == ((0, 0) if version == "r4" else (0,))


def test_r4_policy_rule_sets_the_base_decision() -> None:
    assert parse_consent(load("Out", "r4")).base == "deny"  # OPTOUT: the patient dissents
    assert parse_consent(load("notThem", "r4")).base == "permit"  # OPTIN: the patient assents
    consent = load("notThem", "r4")
    consent["policyRule"] = "http://hl7.org/fhir/ConsentPolicy/opt-out"  # STU3-style URI
    assert parse_consent(consent).base == "deny"


def test_r4_without_policy_rule_takes_the_base_from_the_root_provision_type() -> None:
    consent = load("notOrg", "r4")
    del consent["policyRule"]
    policy = parse_consent(consent)
    # a typed root provision with criteria is an exception to the opposite base
    assert (policy.base, policy.inferred_base) == (None, "permit")
    assert policy.alternatives[0][0].effect == "deny"
    assert decide([consent], actor_organization="f001").outcome == "deny"
    assert decide([consent], actor_organization="f002").outcome == "permit"


# ------------------------------------------------------------------ nested provisions


@pytest.mark.parametrize("version", VERSIONS)
def test_the_deepest_matching_provision_wins(version: str) -> None:
    consent = load("nested", version)
    offset = (0,) if version == "r4" else ()  # R4's single root provision is index 0
    hiv = ("N", "HIV")
    plain = decide([consent], actor_id="nurse-1", security_labels=("N",))
    assert plain.outcome == "permit"
    nurse = decide([consent], actor_id="nurse-1", security_labels=hiv)
    assert (nurse.outcome, nurse.provision_path) == ("deny", (*offset, 0))
    physician = decide([consent], actor_id="f007", security_labels=hiv)
    assert (physician.outcome, physician.provision_path) == ("permit", (*offset, 0, 0))
    export = decide([consent], actor_id="f007", security_labels=hiv, action="E")
    assert (export.outcome, export.provision_path) == ("deny", (*offset, 0, 0, 0))
    assert "disclose" in export.reason
    billing = decide([consent], actor_id="f007", security_labels=hiv, purposes=("HPAYMT",))
    assert (billing.outcome, billing.provision_path) == ("deny", (*offset, 0))


def test_r5_nested_provisions_flip_their_parent() -> None:
    policy = parse_consent(load("nested", "r5"))
    assert policy.base == "permit"
    level1 = policy.provisions[0]
    level2 = level1.provisions[0]
    level3 = level2.provisions[0]
    assert [p.effect for p in (level1, level2, level3)] == ["deny", "permit", "deny"]
    assert not any(p.typed for p in (level1, level2, level3))


def test_r5_decision_deny_makes_top_level_provisions_permits() -> None:
    policy = parse_consent(load("Emergency", "r5"))
    assert (policy.base, policy.provisions[0].effect) == ("deny", "permit")


def test_r4_untyped_root_provision_is_an_exception_to_the_policy_rule() -> None:
    policy = parse_consent(load("notThem", "r4"))
    assert (policy.base, policy.provisions[0].effect, policy.provisions[0].typed) == (
        "permit",
        "deny",
        False,
    )


def test_an_untyped_container_never_decides_by_itself() -> None:
    consent = load("notTime", "r4")  # root provision holds only a nested deny
    decision = decide([consent], at="2016-01-01T00:00:00.000000Z")
    assert (decision.outcome, decision.provision_path) == ("permit", ())
    assert "policyRule OPTIN" in decision.reason


def test_sibling_provisions_equally_deep_resolve_to_deny() -> None:
    consent = r5_consent(
        "siblings",
        "deny",
        [
            {"purpose": [{"code": "TREAT"}]},  # permit treatment
            {"purpose": [{"code": "TREAT"}], "provision": [{"actor": [prcp("Practitioner/x")]}]},
        ],
    )
    # for Practitioner/x the nested deny (depth 2) beats the depth-1 permit
    assert decide([consent], actor_id="x").provision_path == (1, 0)
    assert decide([consent], actor_id="x").outcome == "deny"
    assert decide([consent], actor_id="y").outcome == "permit"


# ------------------------------------------------------------------ which consents count


@pytest.mark.parametrize(
    "status", ["draft", "proposed", "rejected", "inactive", "entered-in-error"]
)
@pytest.mark.parametrize("version", VERSIONS)
def test_consents_that_are_not_active_are_ignored(status: str, version: str) -> None:
    revoked = load("notThem", version)
    revoked["status"] = status
    decision = decide([revoked], actor_id="f204")
    assert (decision.outcome, decision.consent_id) == ("no-consent", None)
    assert status in decision.reason
    # an active consent still decides next to the ignored one
    assert decide([revoked, load("Out", version)], actor_id="f204").outcome == "deny"
    assert not is_active(revoked, NOW)
    assert is_active(load("notThem", version), NOW)


@pytest.mark.parametrize("version", VERSIONS)
def test_another_patients_consent_is_ignored(version: str) -> None:
    theirs = load("notThem", version)
    theirs["patient" if version == "r4" else "subject"] = {"reference": "Patient/someone-else"}
    decision = decide([theirs], actor_id="f204")
    assert decision.outcome == "no-consent"
    assert decide([theirs], patient_id="someone-else", actor_id="f204").outcome == "deny"


def test_no_consents_at_all_is_no_consent() -> None:
    decision = evaluate_consent([], request())
    assert decision == ConsentDecision(
        "no-consent", None, (), f"no active consent of patient f001 covers {NOW}"
    )


def test_treatment_and_advance_directive_consents_do_not_govern_access() -> None:
    consent = load("Out", "r4")
    consent["scope"] = {"coding": [{"code": "treatment"}]}
    del consent["policyRule"]
    consent["provision"] = {"actor": [prcp("Practitioner/f007")]}  # no base decision needed
    policy = parse_consent(consent)
    assert (policy.governs_access, policy.base) == (False, None)
    assert decide([consent]).outcome == "no-consent"


# ------------------------------------------------------------------ conflicts


def test_conflicting_consents_resolve_to_deny() -> None:
    refusal = load("notThem", "r4")  # f204 may not access
    grant = load("grantor", "r5")  # ... but a later consent grants f204 read access
    grant["id"] = "grant-f204"
    grant["provision"][0]["actor"][1] = prcp("Practitioner/f204")
    assert decide([grant], actor_id="f204").outcome == "permit"
    decision = decide([refusal, grant], actor_id="f204")
    assert (decision.outcome, decision.consent_id) == ("deny", "consent-notThem-r4")
    assert "deny wins over the permit of Consent/grant-f204" in decision.reason


def test_one_denying_consent_outweighs_several_permitting_ones() -> None:
    permitting = [load("notThem", "r5"), load("notOrg", "r5"), load("nested", "r4")]
    assert decide(permitting).outcome == "permit"
    decision = decide([*permitting, load("Out", "r5")])
    assert (decision.outcome, decision.consent_id) == ("deny", "consent-Out-r5")
