"""The public value types of the ingest adapters: raw records, results, issues, errors."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from careledger_core.errors import ValidationError
from careledger_core.event import AccessEvent, is_valid_timestamp

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ERROR_CODES",
    "FORMAT_DICOM_XML",
    "FORMAT_FHIR_BUNDLE",
    "FORMAT_FHIR_R4",
    "FORMAT_FHIR_R5",
    "FORMAT_RFC3881_XML",
    "ISSUE_CODES",
    "MIN_MAX_BYTES",
    "Conformance",
    "EntryResult",
    "IngestError",
    "ParseResult",
    "RawRecord",
]

#: Default bound on one received record (bytes, before any decoding).
DEFAULT_MAX_BYTES: Final = 1024 * 1024
#: ``max_bytes`` may not be set below this: IHE ATNA requires at least 32 KiB, we promise 64.
MIN_MAX_BYTES: Final = 64 * 1024

FORMAT_FHIR_R4: Final = "fhir-r4-auditevent+json"
FORMAT_FHIR_R5: Final = "fhir-r5-auditevent+json"
FORMAT_FHIR_BUNDLE: Final = "fhir-bundle+json"
FORMAT_DICOM_XML: Final = "dicom-audit+xml"
FORMAT_RFC3881_XML: Final = "rfc3881-audit+xml"

#: IngestError codes: the record cannot be turned into events at all (dead-letter it).
ERROR_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "TOO_LARGE": "the record is larger than the configured bound (max_bytes)",
        "EMPTY": "the record has no bytes (or only white space)",
        "NOT_UTF8": "the bytes are not UTF-8 (a leading byte order mark is allowed)",
        "NOT_JSON": "not a JSON document (syntax error, or nested too deeply)",
        "NOT_XML": "not a well-formed XML document",
        "XML_FORBIDDEN": "the XML has a DTD, an entity declaration or an external reference",
        "NOT_AN_AUDIT_RECORD": "well-formed, but not a FHIR AuditEvent / Bundle or an "
        "ATNA AuditMessage",
        "UNMAPPABLE": "the record parsed but gives no valid access event (an adapter bug: "
        "report it with the record)",
        "INVALID_IDENTIFIER": "an identifier holds invisible or control characters (zero "
        "width, bidi, BOM, C0/C1 controls): refused, never guessed at (ADR 0026)",
    }
)

#: Conformance issue codes: the record was accepted (IHE BALP: never reject for
#: non-conformance) and the events carry the documented fallback.
ISSUE_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        # times
        "MISSING_RECORDED_TIME": "no recorded time; the event time is used, else received_at",
        "MISSING_EVENT_TIME": "no event time (XML EventDateTime); received_at is used",
        "TIME_INVALID": "a time could not be parsed; the next fallback time is used",
        "DATE_ONLY_TIME": "a date or partial date without a time; taken as 00:00:00 UTC",
        "TIME_WITHOUT_ZONE": "a time without a UTC offset; taken as UTC",
        "LEAP_SECOND": "second 60 (a leap second) taken as :59.999999",
        # codes
        "ACTION_MISSING": "no action; derived from the REST interaction, else E",
        "ACTION_UNKNOWN": "action not one of C, R, U, D, E; mapped by name, else E",
        "OUTCOME_MISSING": "no outcome; taken as 0 (success: the access is assumed to "
        "have happened)",
        "OUTCOME_TEXT": "outcome given as a word (e.g. 'success'); normalised to 0/4/8/12",
        "OUTCOME_UNKNOWN": "outcome not recognised; taken as 0, the value is kept in outcome_desc",
        "MISSING_EVENT_TYPE": "no event type; a placeholder coding is used",
        "CODES_SWAPPED": "the event type and subtype codes were given the other way round",
        "CODE_WITHOUT_SYSTEM": "a coding without a code system; a placeholder system is used",
        "EMPTY_VALUE": "an attribute or element that must carry a value is empty",
        "WRONG_TYPE": "a value has the wrong JSON type or shape; it was ignored or coerced",
        "PURPOSE_NOT_ACTREASON": "a purpose of use outside v3-ActReason was ignored",
        "CONFIDENTIALITY_UNKNOWN": "a confidentiality code outside U/L/M/N/R/V was kept as a label",
        "QUERY_NOT_BASE64": "the query is not valid base64; its text was base64-encoded",
        "VALUE_TRUNCATED": "a value longer than the event model allows was shortened",
        "LIST_TRUNCATED": "a list longer than the event model allows was shortened",
        "INVALID_UNICODE": "a string held a lone surrogate; it was replaced by U+FFFD",
        "IDENTIFIER_NORMALISED": "an identifier in full-width forms or not in NFC was "
        "written in its one spelling (ADR 0026)",
        # participants
        "NO_REQUESTOR": "no agent/participant is marked as requestor; the most "
        "human-looking one is the actor",
        "NO_ACTOR": "no usable agent/participant; actor id '-'",
        "NO_SOURCE": "no audit source identification; source system '-'",
        "SOURCE_TYPE_UNKNOWN": "source type missing or not 1..9; taken as 9 (other)",
        "NETWORK_TYPE_MISMATCH": "the network address type does not match the address; "
        "the address decides",
        # patients
        "NO_PATIENT": "the record names no patient; one event with patient '-'",
        "PATIENT_INFERRED": "no patient entity/participant; the patient was taken from a "
        "Patient resource the record touches",
        "PATIENT_UNIDENTIFIED": "a patient entity/participant without a usable "
        "identifier was skipped",
        "PATIENT_ROLE_MISSING": "a person object with a patient id type but no role "
        "was taken as a patient",
        "QUERY_WITHHELD": "the record names several patients: each patient's event is "
        "without the query, which may name the others (the raw record keeps it)",
        "DOUBLE_ESCAPED": "an XML value was escaped twice (&amp;amp;): its entity "
        "references were unescaped once more",
        # documents
        "VERSION_MIXED": "the AuditEvent mixes FHIR R4 and R5 element names",
        "RESOURCE_TYPE_MISSING": "no resourceType; the shape says AuditEvent",
        "DUPLICATE_KEY": "a JSON object repeats a member name; the last one is used",
        "BYTE_ORDER_MARK": "the JSON starts with a byte order mark (ignored)",
        "XML_ENCODING_DECLARED": "the XML declaration names an encoding other than UTF-8; "
        "the bytes were read as UTF-8",
        "MISPLACED_VALUE": "a value in the wrong place was read anyway "
        "(e.g. AuditSourceIdentification@code for the source type)",
        # bundles
        "BUNDLE_TYPE": "the Bundle is not of type batch or transaction",
        "BUNDLE_EMPTY": "the Bundle has no entries",
        "ENTRY_METHOD": "a Bundle entry's request is not a POST of an AuditEvent",
        "DUPLICATE_EVENT_ID": "two entries give the same event id",
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class RawRecord:
    """The exact bytes as received, their SHA-256 (taken before any decoding) and where
    they came from. ``transport`` holds transport metadata (syslog PRI, HOSTNAME,
    APP-NAME, MSGID, peer, HTTP path, ...) exactly as the gateway passes it."""

    data: bytes
    sha256: str
    format: str
    received_at: str
    transport: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    @staticmethod
    def digest(data: bytes) -> str:
        """Lowercase hex SHA-256 of ``data``."""
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def of(
        cls,
        data: bytes,
        *,
        format: str,
        received_at: str,
        transport: Mapping[str, str] | None = None,
    ) -> RawRecord:
        """A record for ``data``, hashing the bytes exactly as given."""
        check_received_at(received_at)
        return cls(
            data=bytes(data),
            sha256=cls.digest(data),
            format=format,
            received_at=received_at,
            transport=freeze_transport(transport),
        )


def check_received_at(received_at: str) -> None:
    """``received_at`` comes from the caller (the gateway's clock), so a bad one is a
    programming error: :class:`ValueError`, not an :class:`IngestError`."""
    if not isinstance(received_at, str) or not is_valid_timestamp(received_at):
        raise ValueError(
            f"received_at must be a timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ, got {received_at!r}"
        )


def freeze_transport(transport: Mapping[str, str] | None) -> Mapping[str, str]:
    """A read-only copy of the transport metadata (keys and values as strings)."""
    if not transport:
        return MappingProxyType({})
    return MappingProxyType({str(k): str(v) for k, v in transport.items()})


@dataclasses.dataclass(frozen=True, slots=True)
class Conformance:
    """One way a valid record departs from the standard; it was accepted regardless.

    ``code`` is one of :data:`ISSUE_CODES`; ``path`` locates the element
    (``AuditEvent.agent[1].requestor``, ``AuditMessage/ActiveParticipant[2]@UserID``).
    """

    code: str
    message: str
    path: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "path": self.path}


class IngestError(ValidationError):
    """The record cannot be parsed into access events at all; the gateway dead-letters it
    with its bytes. ``code`` is one of :data:`ERROR_CODES`; ``details`` carries the
    ``sha256`` and ``size`` of the received bytes (and ``path`` for a Bundle entry)."""

    code = "INGEST_INVALID"

    def __init__(self, code: str, message: str, **details: object) -> None:
        super().__init__(message, code=code, details=details)

    @property
    def sha256(self) -> str | None:
        value = self.details.get("sha256")
        return value if isinstance(value, str) else None


@dataclasses.dataclass(frozen=True, slots=True)
class EntryResult:
    """What became of one entry of a FHIR Bundle: events and issues, or an error.

    ``format`` is the entry's AuditEvent version (``fhir-r4-auditevent+json`` /
    ``fhir-r5-auditevent+json``), ``None`` when the entry failed. Issue paths start with
    ``Bundle.entry[i].resource``.
    """

    index: int
    full_url: str | None
    format: str | None
    events: tuple[AccessEvent, ...]
    issues: tuple[Conformance, ...]
    error: IngestError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(frozen=True, slots=True)
class ParseResult:
    """Events parsed from one received record.

    ``events`` has one event per patient the record names (or one with patient ``"-"``),
    each with ``raw_ref = RawRef(format=raw.format, sha256=raw.sha256)``. For a Bundle,
    ``entries`` has one :class:`EntryResult` per entry (in order) and ``events`` /
    ``issues`` are those of all entries that parsed, plus the Bundle's own issues.
    """

    events: tuple[AccessEvent, ...]
    issues: tuple[Conformance, ...]
    raw: RawRecord
    entries: tuple[EntryResult, ...] = ()

    @property
    def conformant(self) -> bool:
        return not self.issues
