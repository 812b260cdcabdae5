"""Issue 11 part 5 (e, f): a UDP datagram is hashed as received; the same record chained
twice is recognised as one access (verifiers/integrity/duplicates.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec

from careledger_core.event import canonical_event_bytes
from careledger_core.findings import FindingCode, Severity
from producers.adapters import parse_dicom_audit_xml, parse_fhir
from producers.gateway.framing import datagram
from producers.gateway.syslog import parse_syslog
from verifiers.integrity.duplicates import duplicate_findings, identity_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
RECEIVED = "2026-01-05T08:00:00.000000Z"
XML = (FIXTURES / "atna" / "rfc3881-openatna-partid.xml").read_bytes()
HEADER = b"<85>1 2026-01-05T08:00:00Z pacs.example PACS 4711 IHE+RFC-3881 - "


# ----------------------------------------------------------------------------- (f)
def test_a_datagram_is_the_bytes_received_trailing_newline_included() -> None:
    sent = HEADER + XML + b"\n"
    frame = datagram(sent)
    assert frame.data == sent and frame.framing == "datagram"
    assert hashlib.sha256(frame.data).hexdigest() == hashlib.sha256(sent).hexdigest()
    # ... and its MSG, newline and all, still parses to the same access
    msg = parse_syslog(frame.data).msg
    assert msg.endswith(b"\n")
    with_lf = parse_dicom_audit_xml(msg, received_at=RECEIVED).events
    without = parse_dicom_audit_xml(XML, received_at=RECEIVED).events
    assert [identity_key(canonical_event_bytes(e)) for e in with_lf] == [
        identity_key(canonical_event_bytes(e)) for e in without
    ]
    # the event ids differ (derived from other bytes): identity is not the event id
    assert [e.event_id for e in with_lf] != [e.event_id for e in without]


# ----------------------------------------------------------------------------- (e)
def _canonical(name: str) -> bytes:
    data = (FIXTURES / name).read_bytes()
    (event,) = parse_fhir(data, received_at=RECEIVED).events
    return canonical_event_bytes(event)


def _resent(canonical: bytes, event_id: str, raw_sha: str) -> bytes:
    doc = msgspec.json.decode(canonical)
    doc["event_id"] = event_id
    doc["raw_ref"]["sha256"] = raw_sha
    return msgspec.json.encode(doc, order="sorted")


def test_the_same_record_twice_is_one_finding_naming_both_positions() -> None:
    one = _canonical("balp/AuditEvent-ex-auditPrivacyDisclosure-source.json")
    two = _resent(one, "11111111-1111-4111-8111-111111111111", "ab" * 32)
    other = _canonical("balp/AuditEvent-ex-auditPrivacyDisclosure-recipient.json")
    rows = [("c0", 3, 1, 40, two), ("c0", 1, 0, 10, one), ("c0", 2, 0, 20, other)]
    (f,) = duplicate_findings(rows)
    assert f.code is FindingCode.DUPLICATE_EVENT and f.severity is Severity.INFO
    assert (f.chain_id, f.height, f.event_index) == ("c0", 3, 1)
    assert f.event_id == "11111111-1111-4111-8111-111111111111"
    first, dup = f.details["first"], f.details["duplicate"]
    assert isinstance(first, dict) and isinstance(dup, dict)
    assert (first["height"], first["index"], first["kafka_offset"]) == (1, 0, 10)
    assert (dup["height"], dup["index"], dup["kafka_offset"]) == (3, 1, 40)
    assert f.details["same_raw_record"] is False
    assert "c0@1#0" in f.message


def test_one_row_stored_twice_is_not_a_duplicate_access() -> None:
    one = _canonical("balp/AuditEvent-ex-auditPrivacyDisclosure-source.json")
    assert duplicate_findings([("c0", 1, 0, 10, one), ("c0", 1, 0, 10, one)]) == []


def test_a_different_access_is_not_a_duplicate() -> None:
    one = _canonical("balp/AuditEvent-ex-auditPrivacyDisclosure-source.json")
    doc = msgspec.json.decode(one)
    doc["occurred_at"] = "2020-04-29T09:49:00.000001Z"
    later = msgspec.json.encode(doc, order="sorted")
    assert duplicate_findings([("c0", 1, 0, 10, one), ("c0", 2, 0, 11, later)]) == []


def test_bytes_that_are_no_event_are_left_to_the_event_checks() -> None:
    one = _canonical("balp/AuditEvent-ex-auditPrivacyDisclosure-source.json")
    assert identity_key(b"{not json") is None
    assert duplicate_findings([("c0", 1, 0, 10, b"{"), ("c0", 1, 1, 10, one)]) == []
