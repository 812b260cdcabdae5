"""Consent evaluation: malformed resources and requests, the API surface (requests from
access events, decisions as audit records) and properties over generated consents
(helpers: ``test_consent``)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.errors import ConsentFormatError, ValidationError
from careledger_core.event import EVENT_SCHEMA, event_from_dict
from tests.unit.test_consent import (
    NOW,
    VERSIONS,
    decide,
    load,
    prcp,
    r5_consent,
    request,
)
from verifiers.auditor.consent import (
    ConsentRequest,
    consent_patient_id,
    evaluate_consent,
    parse_consent,
)
from verifiers.auditor.consent.evaluation import _specificity

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
        data_references=("Observation/obs-1",),
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
        "decided_by": "consent",
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
