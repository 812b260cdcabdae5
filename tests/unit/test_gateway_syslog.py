"""RFC 5424 header parsing for the gateway: odd PRI values, NILVALUEs, SD, legacy headers."""

from __future__ import annotations

import pytest

from producers.gateway.syslog import SyslogError, parse_syslog

XML = b'<?xml version="1.0" encoding="UTF-8"?><AuditMessage></AuditMessage>'


def test_typical_atna_header() -> None:
    m = parse_syslog(
        b"<85>1 2026-11-29T10:15:30.123Z pacs.hospital.example PACS 4711 IHE+RFC-3881 - " + XML
    )
    assert (m.pri, m.facility, m.severity, m.version) == (85, 10, 5, 1)
    assert m.timestamp == "2026-11-29T10:15:30.123Z"
    assert (m.hostname, m.app_name, m.procid, m.msgid) == (
        "pacs.hospital.example",
        "PACS",
        "4711",
        "IHE+RFC-3881",
    )
    assert m.structured_data is None
    assert m.msg == XML
    assert m.issues == ()
    t = m.transport()
    assert t["pri"] == "85" and t["hostname"] == "pacs.hospital.example"
    assert t["app_name"] == "PACS" and t["procid"] == "4711" and t["msgid"] == "IHE+RFC-3881"


@pytest.mark.parametrize(
    ("pri", "facility", "severity", "issue"),
    [
        (b"0", 0, 0, None),
        (b"7", 0, 7, None),
        (b"13", 1, 5, None),
        (b"191", 23, 7, None),
        (b"192", 24, 0, "SYSLOG_PRI_RANGE"),
        (b"999", 124, 7, "SYSLOG_PRI_RANGE"),
        (b"085", 10, 5, "SYSLOG_PRI_ZERO"),
    ],
)
def test_any_pri_value_is_accepted(
    pri: bytes, facility: int, severity: int, issue: str | None
) -> None:
    m = parse_syslog(b"<" + pri + b">1 - - - - DICOM+RFC3881 - " + XML)
    assert (m.facility, m.severity) == (facility, severity)
    assert [i.code for i in m.issues] == ([issue] if issue else [])


@pytest.mark.parametrize("bad", [b"", b"85>1 - - -", b"<>1 - -", b"<1234>1 - -", b"<a>1"])
def test_no_pri_is_refused(bad: bytes) -> None:
    with pytest.raises(SyslogError) as info:
        parse_syslog(bad + b" " + XML)
    assert info.value.code == "SYSLOG_NO_PRI"


def test_nil_values_and_structured_data_with_escapes() -> None:
    m = parse_syslog(
        b'<34>1 - - - - - [ex@32473 iut="3" note="a \\"quoted\\" ] here"][origin ip="10.0.0.1"] '
        + XML
    )
    assert m.hostname is m.app_name is m.procid is m.msgid is m.timestamp is None
    assert (
        m.structured_data == '[ex@32473 iut="3" note="a \\"quoted\\" ] here"][origin ip="10.0.0.1"]'
    )
    assert m.msg == XML


def test_bom_and_empty_msg() -> None:
    bom = b"\xef\xbb\xbf"
    m = parse_syslog(b"<85>1 - h a p IHE+RFC-3881 - " + bom + XML)
    assert m.msg == bom + XML
    assert parse_syslog(b"<85>1 - h a p IHE+RFC-3881 -").msg == b""


def test_unexpected_msgid_is_an_issue_not_a_refusal() -> None:
    m = parse_syslog(b"<85>1 - h a p AUDIT - " + XML)
    assert [i.code for i in m.issues] == ["SYSLOG_MSGID"]


def test_bad_timestamp_and_version_are_issues() -> None:
    m = parse_syslog(b"<85>2 yesterday h a p IHE+RFC-3881 - " + XML)
    assert {i.code for i in m.issues} == {"SYSLOG_VERSION", "SYSLOG_TIMESTAMP"}
    assert m.version == 2


def test_rfc3164_header_with_xml_is_accepted_with_an_issue() -> None:
    m = parse_syslog(b"<85>Nov 29 10:15:30 pacs PACS[4711]: " + XML)
    assert m.version is None
    assert m.msg == XML
    assert [i.code for i in m.issues] == ["SYSLOG_NOT_RFC5424"]
    assert m.transport()["pri"] == "85"


def test_non_5424_without_xml_is_refused() -> None:
    with pytest.raises(SyslogError) as info:
        parse_syslog(b"<85>Nov 29 10:15:30 pacs PACS[4711]: user logged in")
    assert info.value.code == "SYSLOG_NOT_RFC5424"


def test_unclosed_structured_data_falls_back_to_the_xml() -> None:
    m = parse_syslog(b'<85>1 - h a p IHE+RFC-3881 [x a="b" ' + XML)
    assert m.msg == XML
    assert "SYSLOG_NOT_RFC5424" in {i.code for i in m.issues}
