"""RFC 5424 syslog messages: the header the gateway records, the MSG it parses.

    SYSLOG-MSG = "<" PRIVAL ">" VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID
                 SP MSGID SP STRUCTURED-DATA [SP MSG]

IHE ATNA puts a DICOM PS3.15 / RFC 3881 ``AuditMessage`` in MSG (MSGID typically
``IHE+RFC-3881`` or ``DICOM+RFC3881``), UTF-8 with or without a byte order mark.

Parsing is lenient where that loses nothing: any PRI value of one to three digits is
accepted (ATNA: "any PRI value"; one above 191 or with leading zeros is a conformance
issue), and a message that is not RFC 5424 at all but still carries an audit message
(e.g. an RFC 3164 "BSD" header) is accepted with a ``SYSLOG_NOT_RFC5424`` issue, the
XML taken from where it starts. What has no PRI, or no XML, is a :class:`SyslogError`.

Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

__all__ = ["ATNA_MSGIDS", "SyslogError", "SyslogIssue", "SyslogMessage", "parse_syslog"]

#: MSGIDs IHE ATNA senders use for audit messages.
ATNA_MSGIDS: Final = frozenset({"IHE+RFC-3881", "DICOM+RFC3881", "IHE+RFC3881", "DICOM+RFC-3881"})
_NIL: Final = "-"
_PRI: Final = re.compile(rb"<([0-9]{1,3})>")
_TIMESTAMP: Final = re.compile(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})\Z"
)
_BOM: Final = b"\xef\xbb\xbf"
#: Where an audit message starts in a MSG we could not parse as RFC 5424.
_XML_START: Final = re.compile(rb"(\xef\xbb\xbf)?<(\?xml|AuditMessage)\b")
_FIELD_LIMITS: Final = (("HOSTNAME", 255), ("APP-NAME", 48), ("PROCID", 128), ("MSGID", 32))


class SyslogError(Exception):
    """Not a syslog message the gateway can take (no PRI, or nothing to parse)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SyslogIssue:
    """A departure from RFC 5424 that did not stop the message being read."""

    code: str
    message: str
    path: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "path": self.path}


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    pri: int
    version: int | None  # None: not an RFC 5424 header
    timestamp: str | None
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    structured_data: str | None
    msg: bytes
    issues: tuple[SyslogIssue, ...] = field(default=())

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8

    def transport(self) -> dict[str, str]:
        """The header as raw-record transport metadata (absent / NILVALUE fields left out)."""
        out = {"pri": str(self.pri), "facility": str(self.facility), "severity": str(self.severity)}
        for name, value in (
            ("syslog_version", None if self.version is None else str(self.version)),
            ("syslog_timestamp", self.timestamp),
            ("hostname", self.hostname),
            ("app_name", self.app_name),
            ("procid", self.procid),
            ("msgid", self.msgid),
            ("structured_data", self.structured_data),
        ):
            if value is not None:
                out[name] = value
        return out


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def parse_syslog(frame: bytes) -> SyslogMessage:
    """Parse one framed syslog message. Raises :class:`SyslogError`."""
    m = _PRI.match(frame)
    if m is None:
        raise SyslogError("SYSLOG_NO_PRI", "the message does not start with <PRI>")
    issues: list[SyslogIssue] = []
    pri_text = m.group(1)
    pri = int(pri_text)
    if pri > 191:
        issues.append(
            SyslogIssue("SYSLOG_PRI_RANGE", f"PRI {pri} is above 191 (RFC 5424 6.2.1)", "PRI")
        )
    elif len(pri_text) > 1 and pri_text.startswith(b"0"):
        issues.append(SyslogIssue("SYSLOG_PRI_ZERO", "PRI has leading zeros", "PRI"))
    rest = frame[m.end() :]
    try:
        return _rfc5424(pri, rest, issues)
    except _NotRfc5424 as exc:
        return _legacy(pri, rest, issues, str(exc))


class _NotRfc5424(Exception):
    pass


def _token(rest: bytes, pos: int, name: str) -> tuple[str, int]:
    """One SP-terminated header field starting at ``pos``."""
    sp = rest.find(b" ", pos)
    if sp < 0:
        raise _NotRfc5424(f"the header ends before {name}")
    value = rest[pos:sp]
    if not value:
        raise _NotRfc5424(f"{name} is empty (two spaces)")
    return _text(value), sp + 1


def _rfc5424(pri: int, rest: bytes, issues: list[SyslogIssue]) -> SyslogMessage:
    i = 0
    while i < len(rest) and i < 3 and rest[i : i + 1].isdigit():
        i += 1
    if i == 0 or rest[i : i + 1] != b" " or rest[0:1] == b"0":
        raise _NotRfc5424("no VERSION after PRI")
    version = int(rest[:i])
    if version != 1:
        issues.append(SyslogIssue("SYSLOG_VERSION", f"VERSION is {version}, not 1", "VERSION"))
    pos = i + 1
    timestamp, pos = _token(rest, pos, "TIMESTAMP")
    if timestamp != _NIL and not _TIMESTAMP.match(timestamp):
        issues.append(
            SyslogIssue("SYSLOG_TIMESTAMP", "TIMESTAMP is not an RFC 3339 date-time", "TIMESTAMP")
        )
    values: list[str | None] = []
    for name, limit in _FIELD_LIMITS:
        value, pos = _token(rest, pos, name)
        if len(value) > limit:
            issues.append(
                SyslogIssue("SYSLOG_FIELD_LENGTH", f"{name} is longer than {limit}", name)
            )
        values.append(None if value == _NIL else value)
    hostname, app_name, procid, msgid = values
    sd_end = _structured_data_end(rest, pos)
    structured = _text(rest[pos:sd_end])
    if sd_end < len(rest):
        if rest[sd_end : sd_end + 1] != b" ":
            raise _NotRfc5424("STRUCTURED-DATA is not followed by SP")
        msg = rest[sd_end + 1 :]
    else:
        msg = b""
    if msgid is not None and msgid not in ATNA_MSGIDS:
        issues.append(
            SyslogIssue(
                "SYSLOG_MSGID",
                f"MSGID {msgid!r} is none of the ATNA audit message ids "
                "(IHE+RFC-3881, DICOM+RFC3881)",
                "MSGID",
            )
        )
    return SyslogMessage(
        pri=pri,
        version=version,
        timestamp=None if timestamp == _NIL else timestamp,
        hostname=hostname,
        app_name=app_name,
        procid=procid,
        msgid=msgid,
        structured_data=None if structured == _NIL else structured,
        msg=msg,
        issues=tuple(issues),
    )


def _structured_data_end(rest: bytes, pos: int) -> int:
    """The index just past STRUCTURED-DATA starting at ``pos`` (NILVALUE or SD-ELEMENTs)."""
    if rest[pos : pos + 1] == b"-":
        return pos + 1
    if rest[pos : pos + 1] != b"[":
        raise _NotRfc5424("STRUCTURED-DATA is neither '-' nor '['")
    i = pos
    while i < len(rest) and rest[i : i + 1] == b"[":
        i += 1
        in_quotes = False
        while True:
            if i >= len(rest):
                raise _NotRfc5424("an SD-ELEMENT is not closed")
            c = rest[i]
            if in_quotes:
                if c == 0x5C:  # backslash: escapes the next character
                    i += 2
                    continue
                if c == 0x22:
                    in_quotes = False
            elif c == 0x22:
                in_quotes = True
            elif c == 0x5D:  # ]
                i += 1
                break
            i += 1
    return i


def _legacy(pri: int, rest: bytes, issues: list[SyslogIssue], why: str) -> SyslogMessage:
    """Not RFC 5424; take the audit message from where its XML starts, if there is one."""
    m = _XML_START.search(rest)
    if m is None:
        raise SyslogError(
            "SYSLOG_NOT_RFC5424", f"not an RFC 5424 message ({why}) and no audit XML found"
        )
    issues.append(
        SyslogIssue(
            "SYSLOG_NOT_RFC5424",
            f"not an RFC 5424 header ({why}); the audit message was taken from byte "
            f"{m.start()} of the message",
            "HEADER",
        )
    )
    return SyslogMessage(
        pri=pri,
        version=None,
        timestamp=None,
        hostname=None,
        app_name=None,
        procid=None,
        msgid=None,
        structured_data=None,
        msg=rest[m.start() :],
        issues=tuple(issues),
    )


def has_bom(msg: bytes) -> bool:
    return msg.startswith(_BOM)
