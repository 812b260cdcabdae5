"""The gateway's fast paths (issue 10) give exactly what the slow paths give.

The XML fast path (C parser without the defused hooks) must never accept what the
defused parser refuses; the remembered results of ``parse_time`` / ``make_coding`` must
still report every issue at the path of each call; the typed validation of mapped
events refuses what ``validate_event`` refuses, with the same message.
"""

from __future__ import annotations

import pytest

from careledger_core.event import Coding
from producers.adapters import IngestError, parse_dicom_audit_xml
from producers.adapters._draft import _validated
from producers.adapters._values import Issues, make_coding, parse_time
from producers.gateway.ingest import random_uuid, utc_now

T = "2026-11-29T09:15:01.000000Z"
BODY = (
    '<AuditMessage><EventIdentification EventActionCode="R" '
    'EventDateTime="2026-11-29T09:20:00Z" EventOutcomeIndicator="0">'
    '<EventID csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/>'
    '</EventIdentification><ActiveParticipant UserID="u1" UserIsRequestor="true"/>'
    '<AuditSourceIdentification AuditSourceID="pacs"/>'
    '<ParticipantObjectIdentification ParticipantObjectID="P1" '
    'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">'
    '<ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
    'originalText="Patient Number"/></ParticipantObjectIdentification></AuditMessage>'
)


@pytest.mark.parametrize(
    "prefix",
    [
        '<!DOCTYPE AuditMessage [<!ENTITY x "y">]>',
        '<?xml version="1.0"?><!-- a comment --><!DOCTYPE AuditMessage [<!ENTITY x "y">]>',
        '<!DOCTYPE AuditMessage SYSTEM "http://attacker.example/audit.dtd">',
        '<!DOCTYPE AuditMessage [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>',
    ],
)
def test_a_dtd_is_refused_whatever_precedes_it(prefix: str) -> None:
    with pytest.raises(IngestError) as info:
        parse_dicom_audit_xml((prefix + BODY).encode(), received_at=T)
    assert info.value.code == "XML_FORBIDDEN"


def test_an_entity_reference_without_a_dtd_is_not_xml() -> None:
    body = BODY.replace('UserID="u1"', 'UserID="&x;"')
    with pytest.raises(IngestError) as info:
        parse_dicom_audit_xml(body.encode(), received_at=T)
    assert info.value.code == "NOT_XML"
    assert "undefined entity" in info.value.message


def test_another_root_element_is_refused_by_the_fast_path_too() -> None:
    body = BODY.replace("AuditMessage", "Other")
    with pytest.raises(IngestError) as info:
        parse_dicom_audit_xml(body.encode(), received_at=T)
    assert info.value.code == "NOT_AN_AUDIT_RECORD"


def test_a_remembered_time_reports_its_issues_at_every_path() -> None:
    first, second = Issues(), Issues()
    assert parse_time("2026-11-29T09:20:00", first, "a.recorded") == ("2026-11-29T09:20:00.000000Z")
    assert parse_time("2026-11-29T09:20:00", second, "b.period.start") == (
        "2026-11-29T09:20:00.000000Z"
    )
    assert [(i.code, i.path) for i in first.freeze()] == [("TIME_WITHOUT_ZONE", "a.recorded")]
    assert [(i.code, i.path) for i in second.freeze()] == [("TIME_WITHOUT_ZONE", "b.period.start")]
    bad = Issues()
    assert parse_time("2026-02-30T10:00:00Z", bad, "x") is None
    assert parse_time("2026-02-30T10:00:00Z", bad, "y") is None
    assert [(i.code, i.path) for i in bad.freeze()] == [
        ("TIME_INVALID", "x"),
        ("TIME_INVALID", "y"),
    ]


def test_a_remembered_coding_reports_its_issues_at_every_path() -> None:
    first, second = Issues(), Issues()
    assert make_coding(None, "R", None, first, "p1") == Coding(
        system="urn:careledger:code-system:unspecified", code="R"
    )
    assert make_coding(None, "R", None, second, "p2") is make_coding(None, "R", None, Issues(), "")
    assert [(i.code, i.path) for i in first.freeze()] == [("CODE_WITHOUT_SYSTEM", "p1")]
    assert [(i.code, i.path) for i in second.freeze()] == [("CODE_WITHOUT_SYSTEM", "p2")]


def test_the_typed_validation_refuses_what_validate_event_refuses() -> None:
    from careledger_core.errors import EventValidationError
    from careledger_core.event import validate_event

    good = parse_dicom_audit_xml(BODY.encode(), received_at=T).events[0]
    assert _validated(good) == validate_event(good)
    import msgspec

    # a pattern is checked when the event is built (no typed decode needed)
    with pytest.raises(EventValidationError) as built:
        msgspec.structs.replace(good, occurred_at="2026-13-01T00:00:00.000000Z")
    assert built.value.field == "occurred_at"
    # a length is checked only by decoding: both paths name it alike
    bad = msgspec.structs.replace(good, outcome_desc="x" * 9000)
    with pytest.raises(EventValidationError) as fast:
        _validated(bad)
    with pytest.raises(EventValidationError) as slow:
        validate_event(bad)
    assert (fast.value.field, fast.value.message) == (slow.value.field, slow.value.message)


def test_receipt_times_and_record_ids_keep_their_shape() -> None:
    import uuid

    from careledger_core.event import is_valid_timestamp

    ids = {random_uuid() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    assert all(is_valid_timestamp(utc_now()) for _ in range(100))
