"""Consent evaluation: which consent and provision are reported (the most specific rule
with the outcome) and the details of matching actors, actions, labels and data classes
(helpers: ``test_consent``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_consent import (
    PARTICIPATION,
    VERSIONS,
    decide,
    load,
    prcp,
    r5_consent,
)

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


def test_a_confidentiality_label_in_a_deny_withholds_that_level_and_above() -> None:
    """A denied level withholds data at that level or above, not below (IHE PCF
    not-restricted; ADR 0021); a permitted level is a clearance (that level and below)."""
    consent = r5_consent("no-restricted", "permit", [{"securityLabel": [{"code": "R"}]}])
    assert decide([consent], security_labels=("N",)).outcome == "permit"
    assert decide([consent], security_labels=("R", "PSY")).outcome == "deny"
    assert decide([consent], security_labels=("V",)).outcome == "deny"
    assert decide([consent], security_labels=()).outcome == "permit"
    cleared = r5_consent("up-to-r", "deny", [{"securityLabel": [{"code": "R"}]}])
    assert decide([cleared], security_labels=("N",)).outcome == "permit"
    assert decide([cleared], security_labels=("V",)).outcome == "deny"


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
