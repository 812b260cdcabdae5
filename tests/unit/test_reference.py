"""Reference-data records: strict envelope and per-kind bodies with exact field paths,
canonical bytes that equal a generic RFC 8785 encoder, lossless round trips, vectors."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from careledger_core.errors import CareledgerError, ReferenceValidationError, ValidationError
from careledger_core.hashing import leaf_hash
from careledger_core.reference import (
    REFERENCE_SCHEMA,
    CareRelationshipBody,
    ConsentBody,
    PatientBody,
    ReferenceRecord,
    Shift,
    StaffBody,
    canonical_reference_bytes,
    decode_and_canonicalize_reference,
    decode_reference,
    reference_from_dict,
    reference_leaf_hash,
    reference_to_dict,
    thaw,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "references.json"
T0 = "2026-11-02T08:00:00.000000Z"


def envelope(kind: str, record_id: str, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "schema": REFERENCE_SCHEMA,
        "kind": kind,
        "record_id": record_id,
        "version": 1,
        "recorded_at": T0,
        "effective_at": T0,
        **extra,
        "body": body,
    }


CONSENT_R4 = envelope(
    "consent",
    "c-r4",
    {
        "resourceType": "Consent",
        "status": "active",
        "patient": {"reference": "Patient/MRN1"},
        "provision": {
            "type": "permit",
            "period": {"start": "2026-01-01", "end": "2027-01-01"},
            "provision": [{"type": "deny", "actor": [{"reference": {"reference": "E9"}}]}],
        },
    },
)
CONSENT_R5 = envelope(
    "consent",
    "c-r5",
    {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": "https://fhir.example/Patient/MRN2/_history/3"},
        "decision": "deny",
        "period": {"start": "2026-01-01T00:00:00Z", "end": "2026-12-31T23:59:59Z"},
        "provision": [{"purpose": [{"code": "ETREAT"}], "provision": [{"period": {}}]}],
        "extension": [{"url": "urn:x", "valueDecimal": 1.5}, None],
    },
)
RELATIONSHIP = envelope(
    "care-relationship",
    "ENC1",
    {
        "patient_id": "MRN1",
        "kind": "encounter",
        "practitioner_id": "E1",
        "team_id": "T1",
        "department": "CARD",
        "start": "2026-11-01T08:00:00.000000Z",
        "end": "2026-11-03T08:00:00.000000Z",
    },
)
STAFF = envelope(
    "staff",
    "E1",
    {
        "user_id": "E1",
        "family_name": "Smith",
        "given_name": "Ana",
        "roles": ["nurse"],
        "department": "CARD",
        "manager_id": "E2",
        "status": "active",
        "start_date": "2020-02-29",
        "end_date": "2030-01-01",
        "address": {"line": "1 Road", "city": "Town", "postcode": "AB1 2CD"},
        "phone": "+1 555 0100",
        "patient_id": "MRN9",
        "shifts": [{"days": [5, 6], "start_hour": 23, "end_hour": 7}],
        "teams": ["T1"],
    },
)
PATIENT = envelope(
    "patient",
    "MRN1",
    {
        "patient_id": "MRN1",
        "family_name": "Smith",
        "given_name": "Bo",
        "address": {"line": "2 Road", "city": "Town", "postcode": "AB1 2CE"},
        "phone": "+1 555 0101",
        "vip": True,
        "employee_user_id": "E7",
        "emergency_contacts": [
            {"family_name": "Smith", "given_name": "Al", "phone": "+1 555 0102", "user_id": "E3"}
        ],
        "confidentiality": "V",
        "sensitivity_labels": ["CEL"],
    },
)
EXAMPLES = {
    "consent-r4": CONSENT_R4,
    "consent-r5": CONSENT_R5,
    "care-relationship": RELATIONSHIP,
    "staff": STAFF,
    "patient": PATIENT,
}


def wire(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------- positive


@pytest.mark.parametrize("name", EXAMPLES)
def test_round_trip_through_dict_and_wire(name: str) -> None:
    doc = EXAMPLES[name]
    rec = reference_from_dict(doc)
    assert reference_to_dict(rec) == doc
    again, canonical = decode_and_canonicalize_reference(wire(doc))
    assert again == rec
    assert decode_reference(canonical) == rec
    assert decode_and_canonicalize_reference(canonical)[1] == canonical  # fixed point


@pytest.mark.parametrize("name", EXAMPLES)
def test_canonical_bytes_equal_a_generic_rfc8785_encoder(name: str) -> None:
    rec = reference_from_dict(EXAMPLES[name])
    assert canonical_reference_bytes(rec) == rfc8785.dumps(EXAMPLES[name])
    assert reference_leaf_hash(rec) == leaf_hash(canonical_reference_bytes(rec))


def test_canonical_bytes_do_not_depend_on_member_order_whitespace_or_escapes() -> None:
    pretty = json.dumps(dict(reversed(list(STAFF.items()))), indent=3, ensure_ascii=True)
    a = decode_and_canonicalize_reference(pretty.encode("ascii"))[1]
    b = decode_and_canonicalize_reference(wire(STAFF))[1]
    assert a == b
    # and they are stable across calls and copies
    rec = reference_from_dict(STAFF)
    assert canonical_reference_bytes(rec) == canonical_reference_bytes(copy.deepcopy(rec)) == b


def test_explicit_retracted_false_is_dropped_and_true_is_kept() -> None:
    plain = decode_and_canonicalize_reference(wire(PATIENT))[1]
    explicit = decode_and_canonicalize_reference(wire(dict(PATIENT, retracted=False)))[1]
    assert plain == explicit
    retracted = reference_from_dict(dict(PATIENT, retracted=True))
    assert retracted.retracted
    assert b'"retracted":true' in canonical_reference_bytes(retracted)
    assert reference_to_dict(retracted)["retracted"] is True


def test_subject_id_and_typed_bodies_per_kind() -> None:
    r4 = reference_from_dict(CONSENT_R4)
    assert isinstance(r4.parsed, ConsentBody)
    assert (r4.subject_id, r4.parsed.fhir_version, r4.parsed.status) == ("MRN1", "R4", "active")
    r5 = reference_from_dict(CONSENT_R5)
    assert isinstance(r5.parsed, ConsentBody)
    assert (r5.subject_id, r5.parsed.fhir_version) == ("MRN2", "R5")
    rel = reference_from_dict(RELATIONSHIP)
    assert isinstance(rel.parsed, CareRelationshipBody)
    assert (rel.subject_id, rel.parsed.kind, rel.parsed.team_id) == ("MRN1", "encounter", "T1")
    staff = reference_from_dict(STAFF)
    assert isinstance(staff.parsed, StaffBody)
    assert staff.subject_id == "E1"
    assert staff.parsed.shifts == (Shift(days=(5, 6), start_hour=23, end_hour=7),)
    assert staff.parsed.address is not None and staff.parsed.address.postcode == "AB1 2CD"
    patient = reference_from_dict(PATIENT)
    assert isinstance(patient.parsed, PatientBody)
    assert patient.subject_id == "MRN1"
    assert patient.parsed.vip and patient.parsed.emergency_contacts[0].user_id == "E3"
    assert patient.key == ("patient", "MRN1")


def test_overnight_shift_covers_the_next_morning() -> None:
    shift = Shift(days=(4,), start_hour=23, end_hour=7)  # Friday night
    assert shift.covers(4, 23) and shift.covers(5, 0) and shift.covers(5, 6)
    assert not shift.covers(5, 7) and not shift.covers(4, 22) and not shift.covers(3, 23)
    day = Shift(days=(0,), start_hour=7, end_hour=15)
    assert day.covers(0, 7) and day.covers(0, 14) and not day.covers(0, 15)


def test_bodies_are_immutable_and_thaw_gives_plain_json() -> None:
    rec = reference_from_dict(CONSENT_R5)
    with pytest.raises(TypeError):
        rec.body["status"] = "inactive"  # type: ignore[index]
    with pytest.raises(TypeError):
        rec.body["subject"].update(reference="Patient/X")
    plain = thaw(rec.body)
    plain["status"] = "inactive"
    assert rec.body["status"] == "active"
    assert plain["extension"][1] is None


def test_the_input_dict_can_change_afterwards_without_changing_the_record() -> None:
    doc = copy.deepcopy(PATIENT)
    rec = reference_from_dict(doc)
    before = canonical_reference_bytes(rec)
    doc["body"]["family_name"] = "Changed"
    assert canonical_reference_bytes(reference_from_dict(PATIENT)) == before
    assert rec.body["family_name"] == "Smith"


def test_records_pickle_and_hash() -> None:
    rec = reference_from_dict(STAFF)
    assert pickle.loads(pickle.dumps(rec)) == rec
    assert hash(rec) == hash(reference_from_dict(STAFF))
    assert {rec, reference_from_dict(STAFF)} == {rec}


def test_direct_construction_validates_too() -> None:
    rec = ReferenceRecord(
        kind="patient",
        record_id="MRN1",
        version=2,
        recorded_at=T0,
        effective_at=T0,
        body={"patient_id": "MRN1", "family_name": "A", "given_name": "B", "vip": False},
    )
    assert rec.subject_id == "MRN1"
    with pytest.raises(ReferenceValidationError) as info:
        ReferenceRecord(
            kind="patient",
            record_id="MRN1",
            version=0,
            recorded_at=T0,
            effective_at=T0,
            body={},
        )
    assert info.value.field == "version"


def test_error_is_a_field_validation_error_with_its_own_code() -> None:
    with pytest.raises(ReferenceValidationError) as info:
        reference_from_dict(dict(PATIENT, version="1"))
    err = info.value
    assert isinstance(err, ValidationError) and isinstance(err, CareledgerError)
    assert err.code == "REFERENCE_INVALID"
    assert err.to_dict()["details"] == {"field": "version", "reason": err.reason}
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.field, again.code) == (ReferenceValidationError, "version", err.code)


def test_checked_in_reference_vectors() -> None:
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    cases = {c["name"]: c for c in doc["cases"]}
    assert {"consent-r4", "consent-r5", "care-relationship", "staff", "patient"} <= set(cases)
    for case in cases.values():
        rec, canonical = decode_and_canonicalize_reference(bytes.fromhex(case["input_hex"]))
        assert canonical.hex() == case["canonical_hex"]
        assert canonical == case["canonical"].encode("utf-8")
        assert leaf_hash(canonical).hex() == case["leaf_hash"]
        assert (rec.kind, rec.subject_id) == (case["kind"], case["subject_id"])
        if "same_canonical_as" in case:
            assert case["canonical_hex"] == cases[case["same_canonical_as"]]["canonical_hex"]


# --------------------------------------------------------------------------- negative

Mutation = Callable[[dict[str, Any]], object]


def _set(path: str, value: Any) -> Mutation:
    """Set (or, with value _DEL, delete) a dotted path such as 'body.shifts.0.days'."""

    def mutate(doc: dict[str, Any]) -> None:
        parts = path.split(".")
        target: Any = doc
        for p in parts[:-1]:
            target = target[int(p)] if isinstance(target, list) else target[p]
        last = parts[-1]
        if value is _DEL:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


_DEL = object()

# (case id, base document, mutation, expected field, reason fragment)
MALFORMED: list[tuple[str, dict[str, Any], Mutation, str, str]] = [
    # envelope
    ("wrong-schema", PATIENT, _set("schema", "careledger.reference/2"), "schema", "expected"),
    ("missing-schema", PATIENT, _set("schema", _DEL), "schema", "missing"),
    ("unknown-kind", PATIENT, _set("kind", "diagnosis"), "kind", "expected one of"),
    ("kind-not-a-string", PATIENT, _set("kind", 3), "kind", "wrong type"),
    ("empty-record-id", PATIENT, _set("record_id", ""), "record_id", "empty"),
    ("record-id-too-long", PATIENT, _set("record_id", "x" * 257), "record_id", "at most 256"),
    ("version-zero", PATIENT, _set("version", 0), "version", "range"),
    ("version-as-string", PATIENT, _set("version", "1"), "version", "wrong type"),
    ("version-as-bool", PATIENT, _set("version", True), "version", "wrong type"),
    ("version-as-float", PATIENT, _set("version", 1.0), "version", "wrong type"),
    ("version-too-big", PATIENT, _set("version", 2**53), "version", "range"),
    # one past the store's UInt32 column: valid JSON, but it could never be stored and
    # would stall its partition
    ("version-unstorable", PATIENT, _set("version", 2**32), "version", "range"),
    (
        "recorded-at-milliseconds",
        PATIENT,
        _set("recorded_at", "2026-11-02T08:00:00.000Z"),
        "recorded_at",
        "6 fraction digits",
    ),
    (
        "effective-at-impossible-date",
        PATIENT,
        _set("effective_at", "2026-02-29T08:00:00.000000Z"),
        "effective_at",
        "timestamp",
    ),
    ("retracted-not-bool", PATIENT, _set("retracted", "yes"), "retracted", "wrong type"),
    ("retracted-null", PATIENT, _set("retracted", None), "retracted", "null"),
    ("unknown-envelope-field", PATIENT, _set("note", "x"), "note", "unknown field"),
    ("body-not-an-object", PATIENT, _set("body", [1]), "body", "wrong type"),
    ("body-missing", PATIENT, _set("body", _DEL), "body", "missing"),
    # consent
    (
        "consent-wrong-resource-type",
        CONSENT_R4,
        _set("body.resourceType", "Patient"),
        "body.resourceType",
        "Consent",
    ),
    ("consent-no-status", CONSENT_R4, _set("body.status", _DEL), "body.status", "missing"),
    (
        "consent-unknown-status",
        CONSENT_R4,
        _set("body.status", "revoked"),
        "body.status",
        "expected one of",
    ),
    ("consent-no-patient", CONSENT_R4, _set("body.patient", _DEL), "body.subject", "missing"),
    (
        "consent-patient-not-a-patient",
        CONSENT_R4,
        _set("body.patient", {"reference": "Group/1"}),
        "body.patient.reference",
        "Patient",
    ),
    (
        "consent-patient-without-reference",
        CONSENT_R4,
        _set("body.patient", {"display": "x"}),
        "body.patient.reference",
        "missing",
    ),
    (
        "consent-r5-subject-not-a-patient",
        CONSENT_R5,
        _set("body.subject.reference", "Practitioner/E1"),
        "body.subject.reference",
        "Patient",
    ),
    (
        "consent-r4-and-r5-disagree",
        CONSENT_R5,
        _set("body.patient", {"reference": "Patient/Z"}),
        "body.subject",
        "different",
    ),
    (
        "consent-bad-decision",
        CONSENT_R5,
        _set("body.decision", "maybe"),
        "body.decision",
        "expected one of",
    ),
    (
        "consent-period-start-not-a-datetime",
        CONSENT_R5,
        _set("body.period.start", "yesterday"),
        "body.period.start",
        "FHIR dateTime",
    ),
    (
        "consent-period-time-without-zone",
        CONSENT_R5,
        _set("body.period.start", "2026-01-01T00:00:00"),
        "body.period.start",
        "zone",
    ),
    (
        "consent-period-ends-before-start",
        CONSENT_R5,
        _set("body.period.end", "2025-01-01T00:00:00Z"),
        "body.period.end",
        "before",
    ),
    (
        "consent-nested-provision-bad-type",
        CONSENT_R4,
        _set("body.provision.provision.0.type", "allow"),
        "body.provision.provision[0].type",
        "expected one of",
    ),
    (
        "consent-nested-provision-bad-period",
        CONSENT_R5,
        _set("body.provision.0.provision.0.period", {"end": "2026-02-30"}),
        "body.provision[0].provision[0].period.end",
        "FHIR dateTime",
    ),
    (
        "consent-provision-not-an-object",
        CONSENT_R4,
        _set("body.provision", "permit"),
        "body.provision",
        "wrong type",
    ),
    (
        "consent-big-integer",
        CONSENT_R5,
        _set("body.extension.0.valueInteger", 2**60),
        "body.extension[0].valueInteger",
        "2^53",
    ),
    # care relationship
    (
        "relationship-unknown-kind",
        RELATIONSHIP,
        _set("body.kind", "visit"),
        "body.kind",
        "expected one of",
    ),
    (
        "relationship-no-patient",
        RELATIONSHIP,
        _set("body.patient_id", _DEL),
        "body.patient_id",
        "missing",
    ),
    (
        "relationship-nobody-linked",
        RELATIONSHIP,
        lambda d: [d["body"].pop(k) for k in ("practitioner_id", "team_id", "department")],
        "body",
        "at least one",
    ),
    (
        "relationship-bad-start",
        RELATIONSHIP,
        _set("body.start", "2026-11-01"),
        "body.start",
        "timestamp",
    ),
    (
        "relationship-end-before-start",
        RELATIONSHIP,
        _set("body.end", "2026-10-01T00:00:00.000000Z"),
        "body.end",
        "before",
    ),
    ("relationship-null-end", RELATIONSHIP, _set("body.end", None), "body.end", "null"),
    (
        "relationship-unknown-field",
        RELATIONSHIP,
        _set("body.ward", "3B"),
        "body.ward",
        "unknown field",
    ),
    ("relationship-empty-team", RELATIONSHIP, _set("body.team_id", ""), "body.team_id", "empty"),
    # staff
    ("staff-user-id-differs", STAFF, _set("body.user_id", "E9"), "body.user_id", "record_id"),
    (
        "staff-unknown-status",
        STAFF,
        _set("body.status", "retired"),
        "body.status",
        "expected one of",
    ),
    ("staff-roles-not-a-list", STAFF, _set("body.roles", "nurse"), "body.roles", "wrong type"),
    ("staff-empty-role", STAFF, _set("body.roles", ["nurse", ""]), "body.roles[1]", "empty"),
    (
        "staff-bad-start-date",
        STAFF,
        _set("body.start_date", "2021-02-29"),
        "body.start_date",
        "YYYY-MM-DD",
    ),
    (
        "staff-end-before-start",
        STAFF,
        _set("body.end_date", "2019-01-01"),
        "body.end_date",
        "before",
    ),
    ("staff-own-manager", STAFF, _set("body.manager_id", "E1"), "body.manager_id", "own"),
    (
        "staff-address-missing-postcode",
        STAFF,
        _set("body.address.postcode", _DEL),
        "body.address.postcode",
        "missing",
    ),
    (
        "staff-shift-day-out-of-range",
        STAFF,
        _set("body.shifts.0.days", [7]),
        "body.shifts[0].days[0]",
        "range",
    ),
    (
        "staff-shift-duplicate-day",
        STAFF,
        _set("body.shifts.0.days", [1, 1]),
        "body.shifts[0].days[1]",
        "duplicate",
    ),
    (
        "staff-shift-no-days",
        STAFF,
        _set("body.shifts.0.days", []),
        "body.shifts[0].days",
        "empty",
    ),
    (
        "staff-shift-end-hour-25",
        STAFF,
        _set("body.shifts.0.end_hour", 25),
        "body.shifts[0].end_hour",
        "range",
    ),
    (
        "staff-shift-start-hour-24",
        STAFF,
        _set("body.shifts.0.start_hour", 24),
        "body.shifts[0].start_hour",
        "range",
    ),
    (
        "staff-shift-zero-length",
        STAFF,
        _set("body.shifts.0.end_hour", 23),
        "body.shifts[0].end_hour",
        "end at the hour",
    ),
    (
        "staff-shift-unknown-field",
        STAFF,
        _set("body.shifts.0.site", "MAIN"),
        "body.shifts[0].site",
        "unknown field",
    ),
    (
        "staff-missing-department",
        STAFF,
        _set("body.department", _DEL),
        "body.department",
        "missing",
    ),
    ("staff-null-phone", STAFF, _set("body.phone", None), "body.phone", "null"),
    ("staff-teams-not-codes", STAFF, _set("body.teams", [1]), "body.teams[0]", "wrong type"),
    # patient
    (
        "patient-id-differs",
        PATIENT,
        _set("body.patient_id", "MRN2"),
        "body.patient_id",
        "record_id",
    ),
    ("patient-vip-not-bool", PATIENT, _set("body.vip", "no"), "body.vip", "wrong type"),
    ("patient-vip-missing", PATIENT, _set("body.vip", _DEL), "body.vip", "missing"),
    (
        "patient-bad-confidentiality",
        PATIENT,
        _set("body.confidentiality", "X"),
        "body.confidentiality",
        "expected one of",
    ),
    (
        "patient-contact-without-family-name",
        PATIENT,
        _set("body.emergency_contacts.0.family_name", _DEL),
        "body.emergency_contacts[0].family_name",
        "missing",
    ),
    (
        "patient-contact-not-an-object",
        PATIENT,
        _set("body.emergency_contacts", ["Smith"]),
        "body.emergency_contacts[0]",
        "wrong type",
    ),
    (
        "patient-label-empty",
        PATIENT,
        _set("body.sensitivity_labels", [""]),
        "body.sensitivity_labels[0]",
        "empty",
    ),
    (
        "patient-too-many-labels",
        PATIENT,
        _set("body.sensitivity_labels", ["X"] * 65),
        "body.sensitivity_labels",
        "at most 64",
    ),
    (
        "patient-family-name-too-long",
        PATIENT,
        _set("body.family_name", "x" * 1025),
        "body.family_name",
        "at most 1024",
    ),
    ("patient-null-in-body", PATIENT, _set("body.phone", None), "body.phone", "null"),
]


@pytest.mark.parametrize(
    ("base", "mutate", "field", "reason"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_record_names_the_field(
    base: dict[str, Any], mutate: Mutation, field: str, reason: str
) -> None:
    doc = copy.deepcopy(base)
    mutate(doc)
    with pytest.raises(ReferenceValidationError) as info:
        reference_from_dict(doc)
    assert info.value.field == field, info.value
    assert reason in info.value.reason, info.value
    # the wire path agrees
    with pytest.raises(ReferenceValidationError) as wire_info:
        decode_reference(wire(doc))
    assert wire_info.value.field == field


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (b"\xff{}", "$", "UTF-8"),
        (b"{", "$", "invalid JSON"),
        (b"[]", "$", "wrong type"),
        (b'{"schema": NaN}', "$", "NaN"),
        (wire(PATIENT).replace(b'"vip":true', b'"vip":true,"vip":false'), "body.vip", "duplicate"),
        (
            wire(PATIENT).replace(b'"kind":', b'"kind":"staff","kind":'),
            "kind",
            "duplicate",
        ),
        (wire(PATIENT).replace(b'"Bo"', b'"\\ud800"'), "body.given_name", "surrogate"),
        (wire(CONSENT_R5).replace(b"1.5", b"1e400"), "body.extension[0].valueDecimal", "NaN"),
    ],
    ids=[
        "invalid-utf8",
        "truncated-json",
        "array",
        "nan",
        "duplicate-in-body",
        "duplicate-in-envelope",
        "lone-surrogate",
        "infinite-number",
    ],
)
def test_malformed_wire_input_names_the_field(data: bytes, field: str, reason: str) -> None:
    with pytest.raises(ReferenceValidationError) as info:
        decode_reference(data)
    assert info.value.field == field, info.value
    assert reason in info.value.reason, info.value
