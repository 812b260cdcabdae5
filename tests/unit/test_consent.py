"""Consent evaluation on FHIR R4 and R5 Consent examples (tests/fixtures/fhir): which
accesses a patient's consents permit or deny, which provision decided, and why."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.errors import ConsentFormatError, ValidationError
from careledger_core.event import EVENT_SCHEMA, event_from_dict
from verifiers.auditor.consent import (
    ConsentDecision,
    ConsentRequest,
    _specificity,
    consent_patient_id,
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


def test_r4_root_provision_period_is_the_validity_of_the_whole_consent() -> None:
    consent = load("notThem", "r4")
    consent["provision"]["period"] = {"start": "2020-01-01", "end": "2020-12-31"}
    inside = decide([consent], actor_id="f204", at="2020-06-01T00:00:00.000000Z")
    assert (inside.outcome, inside.provision_path) == ("deny", (0,))
    outside = decide([consent], actor_id="f204", at="2021-01-01T00:00:00.000000Z")
    assert (outside.outcome, outside.consent_id) == ("no-consent", None)
    assert "consent-notThem-r4" in outside.reason


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
    assert (policy.base, policy.provisions[0].effect) == ("permit", "deny")
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


# ------------------------------------------------------------------ which rule is reported

TREAT = [{"code": "TREAT"}]
ACCESS = [{"coding": [{"code": "access"}]}]
NURSE_ROLE = {"role": {"coding": [{"system": "urn:example:roles", "code": "nurse"}]}}


def permit_only(cid: str, provision: dict[str, Any]) -> dict[str, Any]:
    """Deny by default; ``provision`` (top level, so a permit) is the exception."""
    return r5_consent(cid, "deny", [provision])


@pytest.mark.parametrize("reverse", [False, True])
def test_a_blanket_permit_does_not_hide_the_permit_naming_the_practitioner(
    reverse: bool,
) -> None:
    blanket = r5_consent("a-blanket", "permit", [])  # permits everything; the lowest id
    named = permit_only("z-nurse-1", {"actor": [prcp("Practitioner/nurse-1")], "purpose": TREAT})
    consents = [named, blanket] if reverse else [blanket, named]
    decision = decide(consents)
    assert (decision.outcome, decision.consent_id, decision.provision_path) == (
        "permit",
        "z-nurse-1",
        (0,),
    )
    assert decision.reason.startswith("Consent/z-nurse-1 (R5) permits")


def test_within_one_consent_the_sibling_naming_the_actor_is_reported() -> None:
    consent = r5_consent(
        "treatment",
        "deny",
        [{"purpose": TREAT}, {"actor": [prcp("Practitioner/nurse-1")], "purpose": TREAT}],
    )
    assert decide([consent]).provision_path == (1,)
    assert decide([consent], actor_id="nurse-2").provision_path == (0,)


def test_the_most_specific_deny_is_reported() -> None:
    opt_out = load("Out", "r5")  # deny everything, reported so far for its id
    named = r5_consent("z-not-nurse-1", "permit", [{"actor": [prcp("Practitioner/nurse-1")]}])
    decision = decide([opt_out, named])
    assert (decision.outcome, decision.consent_id, decision.provision_path) == (
        "deny",
        "z-not-nurse-1",
        (0,),
    )
    assert decide([opt_out, named], actor_id="nurse-2").consent_id == "consent-Out-r5"


def test_specificity_order_actor_then_criteria_then_depth_then_id() -> None:
    """Peeling the reported permit off one at a time gives the documented order."""
    consents = [
        r5_consent("c-blanket", "permit", []),
        permit_only("c-purpose", {"purpose": TREAT}),
        permit_only("c-purpose-action", {"purpose": TREAT, "action": ACCESS}),
        # the same two criteria, the second one on a nested provision: deeper
        permit_only(
            "c-nested", {"purpose": TREAT, "provision": [{"type": "permit", "action": ACCESS}]}
        ),
        # a workforce role beats any number of other criteria ...
        permit_only("c-role", {"actor": [NURSE_ROLE]}),
        # ... the actor's organization beats a role, and the actor beats both
        permit_only("c-org", {"actor": [prcp("Organization/ward-3")]}),
        permit_only("c-person", {"actor": [prcp("Practitioner/nurse-1")]}),
        permit_only(
            "c-person-purpose", {"actor": [prcp("Practitioner/nurse-1")], "purpose": TREAT}
        ),
        # data-provenance entries match every actor: they name nobody
        permit_only(
            "b-custodian",
            {
                "actor": [
                    {
                        "role": {"coding": [{"system": PARTICIPATION, "code": "CST"}]},
                        "reference": {"reference": "Organization/f001"},
                    }
                ]
            },
        ),
    ]
    order = []
    left = list(consents)
    while left:
        decision = decide(left, actor_organization="ward-3")
        assert decision.outcome == "permit"
        order.append(decision.consent_id)
        left = [c for c in left if c["id"] != decision.consent_id]
    assert order == [
        "c-person-purpose",
        "c-person",
        "c-org",
        "c-role",
        "c-nested",
        "c-purpose-action",
        "c-purpose",
        "b-custodian",  # depth 1, no criteria counted: before the base decision
        "c-blanket",
    ]


def test_equally_specific_permits_are_reported_by_consent_id_whatever_their_order() -> None:
    twins = [
        permit_only(cid, {"actor": [prcp("Practitioner/nurse-1")], "purpose": TREAT})
        for cid in ("p-2", "p-10", "p-1")
    ]
    for consents in (twins, twins[::-1], twins[1:] + twins[:1]):
        decision = decide(consents)
        assert (decision.consent_id, decision.provision_path) == ("p-1", (0,))
    # equally specific siblings of one consent: the smallest path
    consent = r5_consent(
        "siblings",
        "deny",
        [{"purpose": TREAT}, {"purpose": [{"code": "TREAT"}, {"code": "ETREAT"}]}],
    )
    assert decide([consent]).provision_path == (0,)


# ------------------------------------------------------------------ matching details


@pytest.mark.parametrize("version", VERSIONS)
def test_a_read_only_grant_does_not_allow_disclosure(version: str) -> None:
    consent = load("grantor", version)
    assert decide([consent], actor_id="f007").outcome == "permit"
    assert decide([consent], actor_id="f007", action="E").outcome == "deny"
    assert decide([consent], actor_id="f007", action="U").outcome == "deny"
    # the custodian entry describes where the data is held, not who reads it
    assert decide([consent], actor_id="nurse-1").outcome == "deny"


def test_an_actor_can_be_named_by_a_workforce_role() -> None:
    consent = r5_consent(
        "physicians-only",
        "deny",
        [{"actor": [{"role": {"coding": [{"system": "urn:example:roles", "code": "physician"}]}}]}],
    )
    assert decide([consent], actor_roles=("physician",)).outcome == "permit"
    assert decide([consent], actor_roles=("nurse", "clerk")).outcome == "deny"


def test_actor_references_may_be_absolute_versioned_or_by_identifier() -> None:
    for reference in (
        {"reference": "https://fhir.example.org/r4/Practitioner/f204/_history/3"},
        {"reference": "PractitionerRole/f204"},
        {"identifier": {"system": "urn:example:staff", "value": "f204"}},
    ):
        consent = r5_consent("r", "permit", [{"actor": [{"reference": reference}]}])
        assert decide([consent], actor_id="f204").outcome == "deny", reference
        assert decide([consent], actor_id="f205").outcome == "permit", reference


def test_unresolvable_actor_references_never_match() -> None:
    consent = r5_consent("team", "permit", [{"actor": [prcp("CareTeam/ward-3")]}])
    assert decide([consent], actor_id="ward-3").outcome == "permit"


def test_a_confidentiality_label_covers_that_level_and_below() -> None:
    consent = r5_consent("no-restricted", "permit", [{"securityLabel": [{"code": "R"}]}])
    assert decide([consent], security_labels=("N",)).outcome == "deny"
    assert decide([consent], security_labels=("R", "PSY")).outcome == "deny"
    assert decide([consent], security_labels=("V",)).outcome == "permit"
    assert decide([consent], security_labels=()).outcome == "permit"


def test_a_provision_can_be_limited_to_a_class_of_data() -> None:
    consent = r5_consent("no-labs", "permit", [{"resourceType": [{"code": "Observation"}]}])
    assert decide([consent], data_class="Observation").outcome == "deny"
    assert decide([consent], data_class="MedicationRequest").outcome == "permit"
    r4 = load("notThem", "r4")
    r4["provision"] = {"class": [{"code": "Observation"}]}
    assert decide([r4], data_class="Observation").outcome == "deny"


def test_provisions_about_data_content_an_event_does_not_carry_never_match() -> None:
    consent = r5_consent(
        "no-hiv-test",
        "permit",
        [{"code": [{"coding": [{"system": "http://loinc.org", "code": "7918-6"}]}]}],
    )
    decision = decide([consent])
    assert (decision.outcome, decision.provision_path) == ("permit", ())


# ------------------------------------------------------------------ malformed resources


def _mutations() -> list[tuple[str, str, Any]]:
    """(fixture version, expected field, mutation of the resource)."""

    def set_(path: list[Any], value: Any) -> Any:
        def mutate(resource: dict[str, Any]) -> Any:
            target = resource
            for step in path[:-1]:
                target = target[step]
            if value is _DELETE:
                del target[path[-1]]
            else:
                target[path[-1]] = value
            return resource

        return mutate

    return [
        ("r4", "$", lambda r: ["not", "an", "object"]),
        ("r4", "resourceType", set_(["resourceType"], "Patient")),
        ("r4", "id", set_(["id"], _DELETE)),
        ("r4", "status", set_(["status"], _DELETE)),
        ("r4", "status", set_(["status"], "revoked")),
        ("r4", "subject", set_(["patient"], _DELETE)),
        ("r4", "patient.reference", set_(["patient", "reference"], "Group/ward-3")),
        ("r5", "subject.reference", set_(["subject", "reference"], "f001")),
        ("r4", "provision.type", set_(["provision", "type"], "maybe")),
        ("r5", "decision", set_(["decision"], "yes")),
        ("r4", "policyRule", set_(["policyRule"], _DELETE)),  # no base decision at all
        (
            "r5",
            "provision[0].period.start",
            set_(["provision", 0, "period"], {"start": "2015-13-01"}),
        ),
        (
            "r5",
            "provision[0].period.start",
            set_(["provision", 0, "period"], {"start": "2015-02-30"}),
        ),
        (
            "r5",
            "provision[0].period.end",
            set_(["provision", 0, "period"], {"end": "2015-01-01T10:00:00"}),  # no zone
        ),
        (
            "r5",
            "provision[0].period.end",
            set_(["provision", 0, "period"], {"start": "2016-01-01", "end": "2015-12-31"}),
        ),
        ("r5", "provision[0].actor[0]", set_(["provision", 0, "actor", 0], {})),
        (
            "r5",
            "provision[0].action[0].coding[0].code",
            set_(["provision", 0, "action", 0], {"coding": [{"system": "x"}]}),
        ),
        (
            "r5",
            "provision[0].action[0].coding",
            set_(["provision", 0, "action", 0], {"text": "read"}),
        ),
        (
            "r5",
            "provision[0].modifierExtension",
            set_(["provision", 0, "modifierExtension"], [{"url": "urn:x", "valueBoolean": True}]),
        ),
        ("r5", "provision", set_(["provision"], "everything")),
        (
            "r5",
            "provision[0].actor[0].reference.reference",
            set_(["provision", 0, "actor", 0, "reference", "reference"], "f204"),
        ),
    ]


_DELETE = object()


@pytest.mark.parametrize(("version", "field", "mutate"), _mutations())
def test_a_malformed_consent_raises_consent_format_error(
    version: str, field: str, mutate: Any
) -> None:
    resource = mutate(copy.deepcopy(load("notThem", version)))
    with pytest.raises(ConsentFormatError) as info:
        parse_consent(resource)
    assert info.value.code == "CONSENT_INVALID"
    assert isinstance(info.value, ValidationError)
    assert info.value.field == field, info.value.message


def test_a_malformed_consent_fails_the_whole_evaluation() -> None:
    broken = load("notThem", "r5")
    broken["decision"] = "perhaps"
    with pytest.raises(ConsentFormatError):
        evaluate_consent([load("Out", "r5"), broken], request())


def test_provisions_nested_too_deeply_are_rejected() -> None:
    provision: dict[str, Any] = {"purpose": [{"code": "TREAT"}]}
    for _ in range(40):
        provision = {"purpose": [{"code": "TREAT"}], "provision": [provision]}
    with pytest.raises(ConsentFormatError, match="nested deeper"):
        parse_consent(r5_consent("deep", "permit", [provision]))


# ------------------------------------------------------------------ API surface


def test_request_from_an_access_event() -> None:
    event = event_from_dict(
        {
            "schema": EVENT_SCHEMA,
            "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "occurred_at": "2024-06-15T08:00:00.500000Z",
            "recorded_at": "2024-06-15T08:00:01.000000Z",
            "event_type": {
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "110110",
            },
            "action": "E",
            "outcome": 0,
            "purpose_of_use": ["ETREAT", "BTG"],
            "actor": {
                "id": "f204",
                "roles": ["nurse"],
                "organization": "f001",
                "is_requestor": True,
            },
            "source": {"system": "ehr", "type": 4},
            "patient": {"id": "f001"},
            "object": {"type": "Observation", "id": "obs-1"},
            "sensitivity": {"confidentiality": "R", "labels": ["HIV"]},
        }
    )
    assert ConsentRequest.from_event(event) == ConsentRequest(
        patient_id="f001",
        at="2024-06-15T08:00:00.500000Z",
        actor_id="f204",
        actor_roles=("nurse",),
        actor_organization="f001",
        purposes=("ETREAT", "BTG"),
        action="E",
        security_labels=("R", "HIV"),
        data_class="Observation",
    )
    decision = evaluate_consent([load("notThem", "r4")], ConsentRequest.from_event(event))
    assert decision.outcome == "deny"


@pytest.mark.parametrize(
    "overrides",
    [
        {"at": "2024-06-15"},  # not an instant
        {"at": "2024-06-15T08:00:00"},  # no zone
        {"at": "2024-02-30T08:00:00Z"},
        {"action": "X"},
        {"actor_id": ""},
        {"purposes": "TREAT"},  # a string is not a tuple of codes
        {"data_class": ""},
    ],
)
def test_a_malformed_request_is_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        request(**overrides)


def test_request_lists_become_tuples_and_offsets_are_accepted() -> None:
    req = request(purposes=["TREAT"], at="2024-06-15T10:00:00+02:00")
    assert req.purposes == ("TREAT",)
    assert req.at_us == request().at_us


def test_decision_serialises_for_the_audit_record() -> None:
    decision = decide([load("notThem", "r5")], actor_id="f204")
    assert decision.to_dict() == {
        "outcome": "deny",
        "consent_id": "consent-notThem-r5",
        "provision_path": [0],
        "reason": "Consent/consent-notThem-r5 (R5) denies action R (access/use): provision[0]",
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_consent_patient_id(version: str) -> None:
    consent = load("Out", version)
    assert consent_patient_id(consent) == "f001"
    member = "patient" if version == "r4" else "subject"
    consent[member] = {"reference": "https://fhir.example.org/Patient/p-9/_history/2"}
    assert consent_patient_id(consent) == "p-9"


def test_parsed_policies_give_the_same_decisions_as_resources() -> None:
    resources = [load(name, version) for name in ("notThem", "Out") for version in VERSIONS]
    policies = [parse_consent(r) for r in resources]
    for actor in ("f204", "f007", "nurse-1"):
        assert decide(resources, actor_id=actor) == evaluate_consent(
            policies, request(actor_id=actor)
        )


# ------------------------------------------------------------------ properties

_NAMES = ("notThem", "notOrg", "notTime", "Out", "Emergency", "grantor", "nested")
_FIXTURES = [load(name, version) for name in _NAMES for version in VERSIONS]

_codes = st.sampled_from
_criteria = st.fixed_dictionaries(
    {},
    optional={
        "actor": st.lists(
            st.sampled_from(["Practitioner/f204", "Practitioner/f007", "Organization/f001"]).map(
                prcp
            ),
            min_size=1,
            max_size=2,
        ),
        "purpose": st.lists(
            _codes(["TREAT", "ETREAT", "HPAYMT"]).map(lambda c: {"code": c}), min_size=1
        ),
        "action": st.lists(
            _codes(["access", "correct", "disclose", "collect"]).map(
                lambda c: {"coding": [{"code": c}]}
            ),
            min_size=1,
        ),
        "securityLabel": st.lists(_codes(["HIV", "N", "R"]).map(lambda c: {"code": c}), min_size=1),
    },
)
_provision = st.recursive(
    _criteria,
    lambda children: st.tuples(_criteria, st.lists(children, min_size=1, max_size=2)).map(
        lambda t: {**t[0], "provision": t[1]}
    ),
    max_leaves=6,
)
_generated = st.builds(
    lambda cid, decision, provisions, status: {
        **r5_consent(cid, decision, provisions),
        "status": status,
    },
    st.sampled_from(["g1", "g2", "consent-Out-r5"]),  # ids may collide with fixtures
    st.sampled_from(["permit", "deny"]),
    st.lists(_provision, max_size=3),
    st.sampled_from(["active", "active", "inactive"]),
)
_consents = st.lists(st.one_of(st.sampled_from(_FIXTURES), _generated), max_size=6)
_requests = st.builds(
    request,
    actor_id=st.sampled_from(["f204", "f007", "nurse-1"]),
    actor_organization=st.sampled_from([None, "f001"]),
    purposes=st.lists(_codes(["TREAT", "ETREAT", "BTG", "HPAYMT"]), max_size=2).map(tuple),
    action=st.sampled_from(["C", "R", "U", "D", "E"]),
    security_labels=st.lists(_codes(["N", "R", "HIV"]), max_size=2).map(tuple),
    at=st.sampled_from([NOW, "2015-01-15T00:00:00.000000Z"]),
)


@settings(max_examples=300, deadline=None)
@given(consents=_consents, req=_requests)
def test_the_reported_rule_is_the_most_specific_with_the_outcome(
    consents: list[dict[str, Any]], req: ConsentRequest
) -> None:
    """Each consent alone reports its most specific rule with its outcome; together, the
    most specific of those with the overall outcome (then the smallest id and path)."""
    first = evaluate_consent(consents, req)
    if first.outcome == "no-consent":
        return
    candidates = []
    for consent in consents:
        alone = evaluate_consent([consent], req)
        if alone.outcome == first.outcome:
            names, kinds, depth = _specificity(parse_consent(consent), alone.provision_path, req)
            candidates.append((-names, -kinds, -depth, alone.consent_id, alone.provision_path))
    assert min(candidates)[3:] == (first.consent_id, first.provision_path)


@settings(max_examples=300, deadline=None)
@given(consents=_consents, req=_requests, data=st.data())
def test_evaluation_is_deterministic_and_independent_of_consent_order(
    consents: list[dict[str, Any]], req: ConsentRequest, data: st.DataObject
) -> None:
    first = evaluate_consent(consents, req)
    shuffled = data.draw(st.permutations(consents))
    assert evaluate_consent(shuffled, req) == first
    assert evaluate_consent(copy.deepcopy(consents), req) == first
    if first.outcome == "no-consent":
        assert (first.consent_id, first.provision_path) == (None, ())
    else:
        assert first.consent_id in {c["id"] for c in consents}
        # deny wins: a permit means no applicable consent denies on its own
        if first.outcome == "permit":
            for consent in consents:
                assert evaluate_consent([consent], req).outcome != "deny"
