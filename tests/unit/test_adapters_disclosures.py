"""Issue 11 part 5: ingest mapping of exports and disclosures, roles, escaping, fan-out.

Every record here is a published example kept byte for byte under
tests/fixtures/ingest/ (sources and licences in its README); where an attack needs a
shape no published example has (participants in another order, a second patient, the
DICOM dialect of an RFC 3881 message), the test derives it from a published example in
test code and says so.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from careledger_core.errors import EventValidationError
from careledger_core.event import (
    AccessEvent,
    Party,
    canonical_event_bytes,
    decode_event,
    event_to_dict,
    validate_event,
)
from producers.adapters import ParseResult, parse_dicom_audit_xml, parse_fhir
from producers.adapters._values import unescape_once
from verifiers.reports.proofs import disclosed_by, is_disclosure, recipient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
RECEIVED = "2026-01-05T08:00:00.000000Z"


def _bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _fhir(data: bytes | dict[str, Any]) -> ParseResult:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    result = parse_fhir(raw, received_at=RECEIVED)
    for e in result.events:
        assert validate_event(e) == e
    return result


def _xml(data: bytes) -> ParseResult:
    result = parse_dicom_audit_xml(data, received_at=RECEIVED)
    for e in result.events:
        assert validate_event(e) == e
    return result


def _only(result: ParseResult) -> AccessEvent:
    assert len(result.events) == 1
    return result.events[0]


def _codes(result: ParseResult) -> set[str]:
    return {i.code for i in result.issues}


# ============================================================ (a) recipient and discloser
def test_balp_privacy_disclosure_at_the_source_keeps_both_sides() -> None:
    e = _only(_fhir(_bytes("balp/AuditEvent-ex-auditPrivacyDisclosure-source.json")))
    assert e.recipient == Party(
        id="myMachine.example.org",
        role="110152",
        address="http://server.example.com/fhir",
        address_type="uri",
    )
    assert e.discloser == Party(
        id="model number ABC, serial number 1234",
        role="110153",
        address="myDevice.example.com",
        address_type="hostname",
    )
    # the access came from the disclosing device, not from the recipient
    assert e.client is not None and e.client.address == "myDevice.example.com"
    assert e.actor.id == "Patient/ex-patient" and e.actor.is_requestor
    # recorded with action R, yet a disclosure with a named recipient
    assert e.action == "R" and is_disclosure(e)
    assert recipient(e) == "myMachine.example.org at http://server.example.com/fhir"
    assert disclosed_by(e) == "model number ABC, serial number 1234 at myDevice.example.com"


def test_balp_privacy_disclosure_at_the_recipient_is_not_a_disclosure_of_ours() -> None:
    e = _only(_fhir(_bytes("balp/AuditEvent-ex-auditPrivacyDisclosure-recipient.json")))
    assert e.recipient is not None and e.recipient.id == "Device/ex-device"
    assert e.discloser is not None and e.discloser.id == "myMachine.example.org"
    assert e.discloser.address_type == "ip"
    assert e.client is not None and e.client.address == e.discloser.address
    assert e.event_type.code == "110107" and not is_disclosure(e)  # a receipt (Import)


@pytest.mark.parametrize(
    "name",
    ["fhir-r4/auditevent-example-disclosure.json", "fhir-r5/auditevent-example-disclosure.json"],
)
def test_hl7_example_disclosure_r4_and_r5_name_the_recipient(name: str) -> None:
    e = _only(_fhir(_bytes(name)))
    assert e.recipient == Party(
        id="Practitioner/example",
        name="Where",
        role="110152",
        address="marketing.land",
        address_type="hostname",
    )
    assert e.discloser is not None and e.discloser.id == "SomeIdiot@nowhere"
    assert e.discloser.address == "custodian.net"
    # before issue 11 the accounting named the discloser (the actor) as the recipient
    assert is_disclosure(e)
    assert recipient(e) == "Where (Practitioner/example) at marketing.land"
    assert e.actor.id == "SomeIdiot@nowhere"


def test_hl7_example_media_export_names_the_destination_media() -> None:
    e = _only(_fhir(_bytes("fhir-r4/audit-event-example-media.json")))
    assert e.recipient == Party(id="Media title: Hello World", role="110154")
    assert e.discloser == Party(id="ExportToMedia.app", role="110153")
    assert e.actor.name == "Grahame Grieve"


def test_rfc3881_export_keeps_the_destination_out_of_the_client() -> None:
    e = _only(_xml(_bytes("atna/rfc3881-openatna-partid.xml")))
    assert e.event_type.code == "110106" and e.action == "R"
    assert e.recipient == Party(
        id="http://208.37.137.112/xds/DocumentRepository_Service",
        role="110152",
        address="208.37.137.112",
        address_type="ip",
    )
    assert e.discloser == Party(id="me", role="110153", address="207.65.232.226", address_type="ip")
    # two requestors: the physician (a person) is the actor; the client is the source
    assert e.actor.id == "asaip" and e.actor.roles == ("Physician",)
    assert e.client is not None and e.client.address == "207.65.232.226"
    assert is_disclosure(e)


def _as_dicom_dialect(data: bytes) -> bytes:
    """The same RFC 3881 message in the DICOM coded-value dialect (test-only shape)."""
    data = re.sub(
        rb'(<(?:EventID|EventTypeCode|RoleIDCode|ParticipantObjectIDTypeCode)\b[^>]*?) code="',
        rb'\1 csd-code="',
        data,
    )
    return data.replace(b'displayName="', b'originalText="')


def test_dicom_dialect_maps_the_same_parties() -> None:
    rfc = _only(_xml(_bytes("atna/rfc3881-openatna-partid.xml")))
    dicom_result = _xml(_as_dicom_dialect(_bytes("atna/rfc3881-openatna-partid.xml")))
    assert dicom_result.raw.format == "dicom-audit+xml"
    dicom = _only(dicom_result)
    assert (dicom.recipient, dicom.discloser, dicom.client, dicom.actor) == (
        rfc.recipient,
        rfc.discloser,
        rfc.client,
        rfc.actor,
    )


def test_a_read_is_no_transfer_and_has_no_parties() -> None:
    e = _only(_fhir(_bytes("balp/AuditEvent-ex-auditBasicReadClient.json")))
    assert e.recipient is None and e.discloser is None
    assert e.client is not None and e.client.workstation == "myMachine.example.org"


def test_events_without_parties_keep_their_canonical_bytes() -> None:
    e = _only(_fhir(_bytes("balp/AuditEvent-ex-auditBasicReadClient.json")))
    data = canonical_event_bytes(e)
    assert b"recipient" not in data and b"discloser" not in data
    d = _only(_fhir(_bytes("balp/AuditEvent-ex-auditPrivacyDisclosure-source.json")))
    assert decode_event(canonical_event_bytes(d)) == d
    bad = json.loads(canonical_event_bytes(d))
    bad["recipient"]["address_type"] = "smoke-signal"
    with pytest.raises(EventValidationError, match=r"recipient\.address_type"):
        decode_event(json.dumps(bad).encode())


@pytest.mark.parametrize(
    "name",
    ["fhir-r4/auditevent-example-disclosure.json", "fhir-r5/auditevent-example-disclosure.json"],
)
def test_a_consent_policy_uri_is_not_a_session(name: str) -> None:
    assert b'"http://consent.com/yes"' in _bytes(name)
    assert _only(_fhir(_bytes(name))).session_ref is None


def test_a_token_id_in_policy_is_still_the_session() -> None:
    doc = json.loads(_bytes("fhir-r4/auditevent-example-disclosure.json"))
    doc["agent"][0]["policy"] = ["http://consent.com/yes", "_a7e0d4c1-saml-assertion"]
    assert _only(_fhir(doc)).session_ref == "_a7e0d4c1-saml-assertion"


# ============================================================ (b) roles, not positions
def _reverse_participants(data: bytes) -> bytes:
    root = ElementTree.fromstring(data)
    parts = [c for c in root if c.tag == "ActiveParticipant"]
    first = list(root).index(parts[0])
    for p in parts:
        root.remove(p)
    for i, p in enumerate(reversed(parts)):
        root.insert(first + i, p)
    return ElementTree.tostring(root)


def _mapped(e: AccessEvent) -> tuple[Any, ...]:
    return (e.actor, e.client, e.recipient, e.discloser)


@pytest.mark.parametrize(
    "name",
    [
        "atna/rfc3881-openatna-partid.xml",
        "atna/rfc3881-openatna-no-source.xml",
        "atna/rfc3881-openatna-Repository-ITI-42.xml",
        "atna/dicom-four-patients.xml",
    ],
)
def test_xml_participants_in_another_order_map_the_same(name: str) -> None:
    data = _bytes(name)
    before = _xml(data).events
    after = _xml(_reverse_participants(data)).events
    assert [_mapped(e) for e in before] == [_mapped(e) for e in after]


@pytest.mark.parametrize(
    "name",
    [
        "balp/AuditEvent-ex-auditPrivacyDisclosure-source.json",
        "balp/AuditEvent-ex-auditPrivacyDisclosure-recipient.json",
        "balp/AuditEvent-ex-auditBasicReadClient.json",
        "balp/AuditEvent-ex-auditBasicQueryGetServer.json",
        "fhir-r4/auditevent-example-disclosure.json",
        "fhir-r4/audit-event-example-media.json",
        "fhir-r5/auditevent-example-disclosure.json",
    ],
)
def test_fhir_agents_in_another_order_map_the_same(name: str) -> None:
    doc = json.loads(_bytes(name))
    before = _only(_fhir(doc))
    doc["agent"] = list(reversed(doc["agent"]))
    after = _only(_fhir(doc))
    assert _mapped(before) == _mapped(after)


# ============================================================ (c) unescape exactly once
def test_double_escaped_patient_authority_is_unescaped_once() -> None:
    data = _bytes("atna/rfc3881-openatna-no-source.xml")
    assert b"&amp;amp;1.3.6.1.4.1.21367.2005.3.7&amp;amp;ISO" in data  # as published
    result = _xml(data)
    e = _only(result)
    assert (e.patient.id, e.patient.system) == ("SELF-5", "urn:oid:1.3.6.1.4.1.21367.2005.3.7")
    assert "DOUBLE_ESCAPED" in _codes(result)
    # the raw record keeps the bytes as received
    assert result.raw.data == data


def test_single_escaped_authority_is_not_touched() -> None:
    result = _xml(_bytes("atna/rfc3881-openatna-partid.xml"))
    assert _only(result).patient.system == "urn:oid:1.3.6.1.4.1.21367.2010.1.2.300"
    assert "DOUBLE_ESCAPED" not in _codes(result)


def test_unescape_is_one_pass_never_repeated() -> None:
    assert unescape_once("SELF-5^^^&amp;1.2&amp;ISO") == ("SELF-5^^^&1.2&ISO", True)
    assert unescape_once("&amp;amp;") == ("&amp;", True)  # a triple escape stays once-escaped
    assert unescape_once("a&b") == ("a&b", False)


# ============================================================ (d) fan-out, other patients out
def _second_patient(doc: dict[str, Any], reference: str) -> dict[str, Any]:
    """The published record with one more Patient resource touched (test-only shape)."""
    out = copy.deepcopy(doc)
    extra = copy.deepcopy(out["entity"][0])
    extra["what"] = {"reference": reference}
    extra.pop("role", None)
    out["entity"].append(extra)
    return out


def test_two_patient_resources_without_patient_role_fan_out_to_both() -> None:
    doc = json.loads(_bytes("fhir-r4/audit-event-example-vread.json"))
    assert _only(_fhir(doc)).patient.id == "example"
    result = _fhir(_second_patient(doc, "Patient/pat-two"))
    assert [e.patient.id for e in result.events] == ["example", "pat-two"]
    assert "PATIENT_INFERRED" in _codes(result)
    for e in result.events:
        # an event never names the other patient's resource as its object
        if e.object is not None and e.object.type == "Patient" and e.object.id is not None:
            assert e.object.id.split("/_history/")[0] == e.patient.id


def test_per_patient_events_of_a_multi_patient_query_do_not_copy_the_query() -> None:
    doc = json.loads(_bytes("balp/AuditEvent-ex-auditBasicQueryGetServer.json"))
    single = _only(_fhir(doc))
    assert single.query is not None  # one patient: the query is kept
    patient_entity = next(e for e in doc["entity"] if (e.get("role") or {}).get("code") == "1")
    two = copy.deepcopy(doc)
    other = copy.deepcopy(patient_entity)
    other["what"] = {"reference": "Patient/someone-else"}
    two["entity"].append(other)
    result = _fhir(two)
    assert len(result.events) == 2
    assert all(e.query is None for e in result.events)
    assert "QUERY_WITHHELD" in _codes(result)
    for e in result.events:
        others = {x.patient.id for x in result.events} - {e.patient.id}
        text = json.dumps(event_to_dict(e))
        assert not any(o in text for o in others)
    # the raw record keeps the whole query
    assert b'"query"' in result.raw.data
