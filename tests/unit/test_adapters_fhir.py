"""FHIR AuditEvent (R4, R5) and ITI-20 Bundle ingest: published examples become valid access
events; non-conformant records are accepted and flagged; broken ones raise IngestError."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from careledger_core.errors import ValidationError
from careledger_core.event import AccessEvent, decode_event, event_to_dict, validate_event
from producers.adapters import (
    ERROR_CODES,
    ISSUE_CODES,
    IngestError,
    ParseResult,
    derived_event_id,
    parse_fhir,
    parse_fhir_audit_event,
    parse_fhir_bundle,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
RECEIVED = "2026-01-05T08:00:00.000000Z"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST = "http://hl7.org/fhir/restful-interaction"


def _bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_bytes(name))
    return doc


def _parse(data: bytes | dict[str, Any]) -> ParseResult:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse_fhir_audit_event(raw, received_at=RECEIVED)


def _codes(result: ParseResult) -> set[str]:
    return {i.code for i in result.issues}


def _only(result: ParseResult) -> AccessEvent:
    assert len(result.events) == 1
    return result.events[0]


def _assert_valid(result: ParseResult) -> None:
    """Every event is a valid wire event that points at the raw bytes."""
    for event in result.events:
        assert validate_event(event) == event
        assert decode_event(json.dumps(event_to_dict(event)).encode()) == event
        assert event.raw_ref is not None
        assert event.raw_ref.sha256 == hashlib.sha256(result.raw.data).hexdigest()
        assert event.raw_ref.format == result.raw.format
    assert {i.code for i in result.issues} <= ISSUE_CODES.keys()


FHIR_FIXTURES = sorted(
    str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.json") if p.parent.name != "atna"
)


# ----------------------------------------------------------------------------- examples
@pytest.mark.parametrize("name", FHIR_FIXTURES)
def test_published_fhir_examples_become_valid_events(name: str) -> None:
    result = _parse(_bytes(name))
    _assert_valid(result)
    assert result.events
    assert result.raw.data == _bytes(name)
    expected = (
        "fhir-r5-auditevent+json" if name.startswith("fhir-r5/") else ("fhir-r4-auditevent+json")
    )
    assert result.raw.format == expected
    assert "VERSION_MIXED" not in _codes(result)


def test_hl7_r4_search_without_patient_gives_one_event_for_patient_dash() -> None:
    result = _parse(_bytes("fhir-r4/audit-event-example-search.json"))
    e = _only(result)
    assert e.patient.id == "-" and e.patient.system == "urn:careledger:no-patient"
    assert "NO_PATIENT" in _codes(result)
    assert (e.event_type.code, e.event_subtype[0].code, e.action) == ("rest", "search", "E")
    assert e.actor.id == "95" and e.actor.name == "Grahame Grieve" and e.actor.is_requestor
    assert e.client is not None
    assert (e.client.address, e.client.address_type) == (
        "Workstation1.ehr.familyclinic.com",
        "hostname",
    )
    assert e.source.system == "hl7connect.healthintersections.com.au"
    assert (e.source.site, e.source.type) == ("Cloud", 3)
    assert e.query == (
        "aHR0cDovL2ZoaXItZGV2LmhlYWx0aGludGVyc2VjdGlvbnMuY29tLmF1L29wZW4vRW5jb3VudGVyP3BhcnRpY2lwYW50PTEz"
    )
    assert e.recorded_at == e.occurred_at == "2015-08-22T23:42:24.000000Z"


def test_hl7_r4_vread_of_a_patient_resource_infers_the_patient() -> None:
    result = _parse(_bytes("fhir-r4/audit-event-example-vread.json"))
    e = _only(result)
    assert e.patient.id == "example"
    assert "PATIENT_INFERRED" in _codes(result)
    assert e.object is not None and (e.object.type, e.object.id) == (
        "Patient",
        "example/_history/1",
    )


def test_hl7_r4_pix_query_reads_a_cx_patient_id_query_and_msh10() -> None:
    result = _parse(_bytes("fhir-r4/audit-event-example-pixQuery.json"))
    e = _only(result)
    assert (e.patient.id, e.patient.system) == ("e3cdfc81a0d24bd", "urn:oid:2.16.840.1.113883.4.2")
    assert e.event_type.system == DCM and e.event_type.code == "110112"
    assert e.event_subtype[0].system == "urn:ihe:event-type-code"  # urn:oid:1.3.6.1.4.1.19376.1.2
    assert e.correlation_id == "1.2.840.114350.1.13.0.1.7.1.1"  # MSH-10, base64-decoded
    assert e.query is not None and e.query.startswith("PD94bWwg")
    assert e.source.type == 9 and "SOURCE_TYPE_UNKNOWN" in _codes(result)


def test_hl7_r4_disclosure_maps_purpose_and_security_labels() -> None:
    result = _parse(_bytes("fhir-r4/auditevent-example-disclosure.json"))
    e = _only(result)
    assert (e.event_type.system, e.event_type.code) == (DCM, "110106")
    assert e.purpose_of_use == ("HMARKT",)
    assert e.outcome == 0 and e.outcome_desc == "Successful  Disclosure"
    assert e.sensitivity is not None
    assert e.sensitivity.confidentiality == "V"
    assert e.sensitivity.labels == ("STD", "DELAU")
    assert e.actor.id == "SomeIdiot@nowhere" and e.actor.department == "Location/1"
    # agent.policy names the consent policy, not a session (issue 11)
    assert e.session_ref is None
    assert e.patient.id == "example"
    # the subtype "Disclosure" names no code system: kept, flagged
    assert e.event_subtype[0].system == "urn:careledger:code-system:unspecified"
    assert "CODE_WITHOUT_SYSTEM" in _codes(result)


def test_balp_read_recorded_by_the_client() -> None:
    result = _parse(_bytes("balp/AuditEvent-ex-auditBasicReadClient.json"))
    e = _only(result)
    assert result.issues == ()
    assert e.action == "R" and e.event_subtype[0] == e.event_subtype[0].__class__(
        system=REST, code="read", display="read"
    )
    assert e.actor.id == "John Smith" and e.actor.roles == ("IRCP",)
    # for a read the client is the destination (110152)
    assert e.client is not None
    assert e.client.address == "2001:0db8:85a3:0000:0000:8a2e:0370:7334"
    assert (e.client.address_type, e.client.workstation) == ("ip", "myMachine.example.org")
    assert (e.source.system, e.source.type) == ("myMachine.example.org", 1)
    assert e.patient.id == "ex-patient"
    assert e.object is not None and (e.object.type, e.object.id, e.object.role) == (
        "List",
        "ex-list",
        "4",
    )
    assert e.correlation_id == "76d148b6-586d-11ec-bf63-0242ac130002"


def test_balp_query_recorded_by_the_server_takes_the_source_as_client() -> None:
    result = _parse(_bytes("balp/AuditEvent-ex-auditBasicQueryGetServer.json"))
    e = _only(result)
    assert result.issues == ()
    assert e.client is not None and e.client.workstation == "myMachine.example.org"
    assert (e.source.system, e.source.site, e.source.type) == (
        "Device/ex-device",
        "server.example.com",
        4,
    )
    assert e.correlation_id == "cc6d168e-5871-11ec-bf63-0242ac130002"
    assert e.object is None  # only a query entity besides the patient


def test_balp_consent_decision_keeps_purpose_and_organization() -> None:
    result = _parse(_bytes("balp/AuditEvent-ex-auditAuthZconsent.json"))
    e = _only(result)
    assert (e.event_type.code, e.event_subtype[0].code) == ("110113", "AuthZ-Consent")
    assert e.purpose_of_use == ("PATRQT",)
    assert e.actor.id == "Practitioner/ex-practitioner"
    assert e.actor.organization == "Organization/ex-organization"
    assert e.client is not None and e.client.address_type == "ip"  # the 110150 application
    assert e.source.type == 6
    assert e.object is not None and (e.object.type, e.object.id) == ("Consent", "ex-consent")


def test_balp_read_without_patient_is_one_event_for_patient_dash() -> None:
    result = _parse(_bytes("balp/AuditEvent-ex-auditBasicReadNoPatient.json"))
    assert _only(result).patient.id == "-"
    assert _codes(result) == {"NO_PATIENT"}


def test_hl7_r5_disclosure_normalises_outcome_success() -> None:
    result = _parse(_bytes("fhir-r5/auditevent-example-disclosure.json"))
    e = _only(result)
    assert result.raw.format == "fhir-r5-auditevent+json"
    assert e.outcome == 0 and "OUTCOME_TEXT" in _codes(result)
    assert e.outcome_desc == "Successful Disclosure"
    assert e.patient.id == "example"  # R5 AuditEvent.patient
    assert e.purpose_of_use == ("HMARKT",)
    assert e.client is not None and e.client.address == "custodian.net"  # networkString
    assert e.sensitivity is not None and e.sensitivity.confidentiality == "V"


def test_hl7_r5_break_glass_start_keeps_etreat() -> None:
    result = _parse(_bytes("fhir-r5/auditevent-example-breakglass-start.json"))
    e = _only(result)
    assert (e.event_type.code, e.event_subtype[0].code) == ("110113", "110127")
    assert e.purpose_of_use == ("ETREAT",)
    assert e.actor.id == "Practitioner/f001"


def test_ihe_mhd_r5_example_with_swapped_category_and_code_is_put_right() -> None:
    result = _parse(_bytes("fhir-r5/AuditEvent-ex-auditRetrieveDocument-responder.json"))
    e = _only(result)
    assert e.event_type.code == "rest"
    assert [c.code for c in e.event_subtype] == ["ITI-68", "read"]
    assert {"CODES_SWAPPED", "NO_REQUESTOR"} <= _codes(result)
    assert e.actor.is_requestor is False
    assert e.source.site == "server.example.com"  # R5 site is a Reference


# ----------------------------------------------------------------------------- ids
def test_same_bytes_give_the_same_event_ids() -> None:
    data = _bytes("balp/AuditEvent-ex-auditBasicReadClient.json")
    first, second = _parse(data), _parse(data)
    assert first.events == second.events
    sha = hashlib.sha256(data).hexdigest()
    assert first.events[0].event_id == derived_event_id(sha, 0)
    assert first.events[0].event_id[14] == "4" and first.events[0].event_id[19] in "89ab"


def test_a_uuid_source_id_is_the_event_id_when_one_patient_is_named() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    doc["id"] = "0F0E0D0C-1B1A-4928-8776-655443322110"
    assert _only(_parse(doc)).event_id == "0f0e0d0c-1b1a-4928-8776-655443322110"


def test_a_record_naming_several_patients_fans_out_with_derived_ids() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    doc["id"] = "0f0e0d0c-1b1a-4928-8776-655443322110"
    patient = doc["entity"][1]
    for pid in ("p2", "p3", "p2"):  # p2 twice: one event
        extra = copy.deepcopy(patient)
        extra["what"] = {"reference": f"Patient/{pid}"}
        doc["entity"].append(extra)
    result = _parse(doc)
    assert [e.patient.id for e in result.events] == ["ex-patient", "p2", "p3"]
    sha = result.raw.sha256
    assert [e.event_id for e in result.events] == [derived_event_id(sha, i) for i in range(3)]
    assert len({e.event_id for e in result.events}) == 3
    # everything but the patient and the id is the same
    stripped = {
        json.dumps({k: v for k, v in event_to_dict(e).items() if k not in ("patient", "event_id")})
        for e in result.events
    }
    assert len(stripped) == 1


# ----------------------------------------------------------------------------- times
@pytest.mark.parametrize(
    ("value", "expected", "issue"),
    [
        ("2020-04-29T11:49:00.1234567+02:00", "2020-04-29T09:49:00.123456Z", None),
        ("2020-04-29T09:49:00Z", "2020-04-29T09:49:00.000000Z", None),
        ("2012-10-25T22:04:27+11:00", "2012-10-25T11:04:27.000000Z", None),
        ("2021-01-01T00:30:00-05:30", "2021-01-01T06:00:00.000000Z", None),
        ("2020-04-29", "2020-04-29T00:00:00.000000Z", "DATE_ONLY_TIME"),
        ("2020-04", "2020-04-01T00:00:00.000000Z", "DATE_ONLY_TIME"),
        ("2020-04-29T09:49:00", "2020-04-29T09:49:00.000000Z", "TIME_WITHOUT_ZONE"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999999Z", "LEAP_SECOND"),
    ],
)
def test_times_become_utc_microseconds(value: str, expected: str, issue: str | None) -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    doc["recorded"] = value
    result = _parse(doc)
    assert _only(result).recorded_at == expected
    if issue is None:
        assert result.issues == ()
    else:
        assert issue in _codes(result)


def test_period_start_is_the_occurred_time() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    doc["period"] = {"start": "2020-04-29T09:48:59.5Z", "end": "2020-04-29T09:49:00Z"}
    e = _only(_parse(doc))
    assert (e.occurred_at, e.recorded_at) == (
        "2020-04-29T09:48:59.500000Z",
        "2020-04-29T09:49:00.000000Z",
    )


def test_missing_recorded_time_falls_back_to_event_time_then_received_at() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    del doc["recorded"]
    result = _parse(doc)
    assert _only(result).recorded_at == RECEIVED and "MISSING_RECORDED_TIME" in _codes(result)
    doc["period"] = {"start": "2020-04-29T09:48:00Z"}
    assert _only(_parse(doc)).recorded_at == "2020-04-29T09:48:00.000000Z"
    doc["recorded"] = "yesterday"
    result = _parse(doc)
    assert {"TIME_INVALID", "MISSING_RECORDED_TIME"} <= _codes(result)


# ----------------------------------------------------------------------------- leniency
def test_a_valid_but_non_conformant_record_is_accepted_with_issues() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    del doc["recorded"]  # recorded is 1..1
    doc["outcome"] = "success"  # the value set is 0/4/8/12
    doc["action"] = "read"  # the value set is C/R/U/D/E
    for agent in doc["agent"]:
        agent["requestor"] = False  # nobody requested
    doc["agent"][2]["who"] = {"display": "  "}  # an empty attribute
    doc["source"]["type"][0]["code"] = "11"  # not a source type
    doc["agent"][0]["network"]["type"] = "1"  # says hostname, is an IPv6 address
    doc["entity"][1]["role"]["code"] = "4"  # the patient entity loses its role
    result = _parse(doc)
    _assert_valid(result)
    e = _only(result)
    assert {
        "MISSING_RECORDED_TIME",
        "OUTCOME_TEXT",
        "ACTION_UNKNOWN",
        "NO_REQUESTOR",
        "SOURCE_TYPE_UNKNOWN",
        "NETWORK_TYPE_MISMATCH",
    } <= _codes(result)
    assert (e.outcome, e.action, e.recorded_at, e.source.type) == (0, "R", RECEIVED, 9)
    assert e.client is not None and e.client.address_type == "ip"
    assert e.actor.is_requestor is False


def test_wrong_json_types_are_coerced_or_ignored_and_flagged() -> None:
    doc = _doc("fhir-r4/audit-event-example-search.json")
    doc["outcome"] = 0
    doc["subtype"] = doc["subtype"][0]  # an object where an array belongs
    doc["agent"][0]["requestor"] = "true"
    doc["source"]["type"] = "3"
    result = _parse(doc)
    _assert_valid(result)
    e = _only(result)
    assert e.outcome == 0 and e.event_subtype[0].code == "search" and e.actor.is_requestor
    paths = {i.path for i in result.issues if i.code == "WRONG_TYPE"}
    assert {
        "AuditEvent.outcome",
        "AuditEvent.subtype",
        "AuditEvent.agent[0].requestor",
        "AuditEvent.source.type",
    } <= paths


def test_missing_action_is_derived_from_the_rest_interaction() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    del doc["action"]
    result = _parse(doc)
    assert _only(result).action == "R" and "ACTION_MISSING" in _codes(result)


def test_unknown_outcome_is_kept_as_text() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    doc["outcome"] = "partially"
    result = _parse(doc)
    e = _only(result)
    assert e.outcome == 0 and e.outcome_desc == "outcome: partially"
    assert "OUTCOME_UNKNOWN" in _codes(result)


def test_an_r4_r5_mix_is_read_and_flagged() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    doc["patient"] = {"reference": "Patient/other"}
    doc["authorization"] = [{"coding": [{"code": "TREAT"}]}]
    result = _parse(doc)
    assert "VERSION_MIXED" in _codes(result)
    assert [e.patient.id for e in result.events] == ["other", "ex-patient"]
    assert result.events[0].purpose_of_use == ("TREAT",)


def test_over_long_values_are_cut_to_the_model_bounds() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    doc["agent"][2]["who"] = {"identifier": {"value": "u" * 5000}, "display": "n" * 5000}
    result = _parse(doc)
    e = _only(result)
    assert len(e.actor.id) == 256 and e.actor.name is not None and len(e.actor.name) == 1024
    assert "VALUE_TRUNCATED" in _codes(result)


def test_lone_surrogates_are_replaced() -> None:
    raw = _bytes("balp/AuditEvent-ex-auditBasicReadClient.json").replace(
        b'"John Smith"', b'"John \\ud800Smith"'
    )
    result = _parse(raw)
    assert _only(result).actor.id == "John \ufffdSmith"
    assert "INVALID_UNICODE" in _codes(result)


def test_a_non_base64_query_is_encoded() -> None:
    doc = _doc("fhir-r4/audit-event-example-search.json")
    doc["entity"][0]["query"] = "GET /Patient?name=smith"
    result = _parse(doc)
    assert _only(result).query == "R0VUIC9QYXRpZW50P25hbWU9c21pdGg="
    assert "QUERY_NOT_BASE64" in _codes(result)


def test_duplicate_member_names_and_a_bom_are_flagged() -> None:
    raw = b"\xef\xbb\xbf" + _bytes("balp/AuditEvent-ex-auditBasicReadClient.json").replace(
        b'"action" : "R",', b'"action" : "C", "action" : "R",'
    )
    result = _parse(raw)
    assert _only(result).action == "R"
    assert {"DUPLICATE_KEY", "BYTE_ORDER_MARK"} <= _codes(result)
    assert result.raw.data == raw  # the hash is over the bytes as received


def test_transport_metadata_is_kept_read_only() -> None:
    transport = {"peer": "192.0.2.1", "path": "/fhir/AuditEvent"}
    result = parse_fhir_audit_event(
        _bytes("balp/AuditEvent-ex-auditBasicReadClient.json"),
        received_at=RECEIVED,
        transport=transport,
    )
    transport["peer"] = "changed"
    assert dict(result.raw.transport) == {"peer": "192.0.2.1", "path": "/fhir/AuditEvent"}
    with pytest.raises(TypeError):
        result.raw.transport["peer"] = "x"  # type: ignore[index]
    assert result.raw.received_at == RECEIVED


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "EMPTY"),
        (b"  \n", "EMPTY"),
        (b"\xff\xfe{}", "NOT_UTF8"),
        (b'{"resourceType": "AuditEvent",', "NOT_JSON"),
        (b'{"resourceType": "AuditEvent", "x": NaN}', "NOT_JSON"),
        (b"[" * 100_000, "NOT_JSON"),
        (b"1" * 5000, "NOT_JSON"),
        (b"[]", "NOT_AN_AUDIT_RECORD"),
        (b'{"resourceType": "Patient", "id": "x"}', "NOT_AN_AUDIT_RECORD"),
        (b'{"hello": "world"}', "NOT_AN_AUDIT_RECORD"),
    ],
)
def test_records_that_cannot_be_parsed_raise_ingest_error(data: bytes, code: str) -> None:
    with pytest.raises(IngestError) as info:
        _parse(data)
    err = info.value
    assert err.code == code and code in ERROR_CODES
    assert isinstance(err, ValidationError)
    assert err.sha256 == hashlib.sha256(data).hexdigest()
    assert err.to_dict()["code"] == code


def test_a_record_over_the_bound_is_too_large_before_parsing() -> None:
    data = b"{" + b" " * (64 * 1024) + b"}"
    with pytest.raises(IngestError) as info:
        parse_fhir_audit_event(data, received_at=RECEIVED, max_bytes=64 * 1024)
    assert info.value.code == "TOO_LARGE"
    assert info.value.details["size"] == len(data)


def test_the_bound_may_not_be_set_below_64_kib() -> None:
    with pytest.raises(ValueError):
        parse_fhir_audit_event(b"{}", received_at=RECEIVED, max_bytes=1024)


def test_received_at_must_be_an_event_timestamp() -> None:
    with pytest.raises(ValueError):
        parse_fhir_audit_event(b"{}", received_at="2026-01-05T08:00:00Z")


def test_a_missing_resource_type_with_the_shape_of_an_audit_event_is_accepted() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    del doc["resourceType"]
    assert "RESOURCE_TYPE_MISSING" in _codes(_parse(doc))


# ----------------------------------------------------------------------------- Bundles
def _bundle(*resources: object, kind: str = "batch") -> bytes:
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}",
            "resource": r,
            "request": {"method": "POST", "url": "AuditEvent"},
        }
        for i, r in enumerate(resources)
    ]
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": entries}).encode()


def test_a_bundle_is_answered_per_entry() -> None:
    good = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    r5 = _doc("fhir-r5/auditevent-example-disclosure.json")
    data = _bundle(good, {"resourceType": "Patient", "id": "p"}, r5, kind="transaction")
    result = parse_fhir_bundle(data, received_at=RECEIVED)
    _assert_valid(result)
    assert result.raw.format == "fhir-bundle+json"
    assert [e.index for e in result.entries] == [0, 1, 2]
    ok0, bad, ok2 = result.entries
    assert ok0.ok and ok0.format == "fhir-r4-auditevent+json" and len(ok0.events) == 1
    assert not bad.ok and bad.error is not None and bad.error.code == "NOT_AN_AUDIT_RECORD"
    assert bad.error.details["path"] == "Bundle.entry[1].resource"
    assert ok2.format == "fhir-r5-auditevent+json"
    assert result.events == ok0.events + ok2.events
    sha = hashlib.sha256(data).hexdigest()
    assert ok0.events[0].event_id == derived_event_id(sha, 0, entry_index=0)
    assert ok2.events[0].event_id == derived_event_id(sha, 0, entry_index=2)
    assert all(
        e.raw_ref is not None and e.raw_ref.format == "fhir-bundle+json" for e in result.events
    )
    assert any(i.path.startswith("Bundle.entry[2].resource.outcome") for i in result.issues)


def test_bundle_oddities_are_flagged_not_refused() -> None:
    doc = _doc("balp/AuditEvent-ex-auditBasicReadClient.json")
    doc["id"] = "0f0e0d0c-1b1a-4928-8776-655443322110"
    data = json.loads(_bundle(doc, doc, kind="collection"))
    data["entry"][1]["request"]["method"] = "PUT"
    result = parse_fhir_bundle(json.dumps(data).encode(), received_at=RECEIVED)
    assert {"BUNDLE_TYPE", "ENTRY_METHOD", "DUPLICATE_EVENT_ID"} <= _codes(result)
    empty = parse_fhir_bundle(b'{"resourceType": "Bundle", "type": "batch"}', received_at=RECEIVED)
    assert empty.events == () and _codes(empty) == {"BUNDLE_EMPTY"}


def test_parse_fhir_takes_an_audit_event_or_a_bundle() -> None:
    single = _bytes("balp/AuditEvent-ex-auditBasicReadClient.json")
    assert parse_fhir(single, received_at=RECEIVED).raw.format == "fhir-r4-auditevent+json"
    bundle = _bundle(_doc("balp/AuditEvent-ex-auditBasicReadClient.json"))
    assert parse_fhir(bundle, received_at=RECEIVED).raw.format == "fhir-bundle+json"
    with pytest.raises(IngestError) as info:
        parse_fhir_bundle(single, received_at=RECEIVED)
    assert info.value.code == "NOT_AN_AUDIT_RECORD"
