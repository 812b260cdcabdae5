"""The access event (schema ``careledger.access-event/1``) and its canonical bytes.

One event is one access by one actor to one patient's data (see docs/design.md for the
field table). Types are frozen msgspec Structs: unknown fields are rejected, optional
fields default to ``None`` (or an empty tuple for lists) and are *omitted* when encoded,
and an explicit JSON ``null`` is rejected.

Validation happens while decoding (``decode_event``, ``decode_and_canonicalize``) or
converting (``event_from_dict``, ``validate_event``): field types and bounds are msgspec
constraints checked in C, so decoding stays fast. Calling the Struct constructors directly
(``AccessEvent(...)``) checks only what ``__post_init__`` checks (calendar dates) — pass
such an event through ``validate_event`` before trusting it.

Canonical bytes are RFC 8785 (JCS). All member names are ASCII, there are no floats and
msgspec escapes strings exactly like JCS, so ``msgspec.json.Encoder(order="sorted")``
produces JCS output directly; the tests prove it equals ``jcs.canonicalize``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from ._msgspec_errors import join_path, translate_validation_error
from .errors import EventValidationError
from .hashing import leaf_hash

__all__ = [
    "EVENT_SCHEMA",
    "IDENTIFIER_REASONS",
    "ID_PATTERN",
    "TIMESTAMP_PATTERN",
    "AccessEvent",
    "Action",
    "Actor",
    "Client",
    "Coding",
    "Confidentiality",
    "ObjectRef",
    "Outcome",
    "Party",
    "Patient",
    "RawRef",
    "Sensitivity",
    "Source",
    "canonical_event_bytes",
    "decode_and_canonicalize",
    "decode_event",
    "event_from_dict",
    "event_leaf_hash",
    "event_to_dict",
    "is_valid_timestamp",
    "normalise_identifier",
    "validate_event",
]

EVENT_SCHEMA: Final = "careledger.access-event/1"

#: "YYYY-MM-DDTHH:MM:SS.ffffffZ" — UTC, exactly six fraction digits (ASCII digits only).
TIMESTAMP_PATTERN: Final = (
    r"\A[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z\Z"
)
_UUID_PATTERN: Final = r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
_SHA256_PATTERN: Final = r"\A[0-9a-f]{64}\Z"
_BASE64_PATTERN: Final = r"\A(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z"


#: Characters no identifier may hold (ADR 0026), fixed here rather than taken from the
#: running Python's Unicode tables so that what is valid cannot change with the
#: interpreter: C0/C1 controls, the format characters (zero-width space and joiners,
#: bidi controls, BOM, soft hyphen, ...), default-ignorable code points (variation
#: selectors, tags, Hangul fillers), line/paragraph separators, noncharacters and the
#: full-/half-width compatibility forms (U+3000, U+FF01-U+FFEE), which look like other
#: characters. U+FFFD stays allowed: the adapters put it for a lone surrogate
#: (INVALID_UNICODE, flagged). Identifiers must also be NFC and not begin or end with
#: white space.
_ID_FORBIDDEN: Final = (
    "\\x00-\\x1f\\x7f-\\x9f\\xad\\u034f\\u0600-\\u0605\\u061c\\u06dd\\u070f"
    "\\u0890\\u0891\\u08e2\\u115f\\u1160\\u17b4\\u17b5\\u180b-\\u180f"
    "\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\u3000\\u3164\\ufdd0-\\ufdef"
    "\\ufe00-\\ufe0f\\ufeff\\uff01-\\uffee\\ufff0-\\ufffb\\ufffe\\uffff"
    "\\U000110bd\\U000110cd\\U00013430-\\U0001343f\\U0001bca0-\\U0001bca3"
    "\\U0001d173-\\U0001d17a\\U000e0000-\\U000e0fff"
    "\\U0001fffe\\U0001ffff\\U0002fffe\\U0002ffff\\U0003fffe\\U0003ffff"
    "\\U0004fffe\\U0004ffff\\U0005fffe\\U0005ffff\\U0006fffe\\U0006ffff"
    "\\U0007fffe\\U0007ffff\\U0008fffe\\U0008ffff\\U0009fffe\\U0009ffff"
    "\\U000afffe\\U000affff\\U000bfffe\\U000bffff\\U000cfffe\\U000cffff"
    "\\U000dfffe\\U000dffff\\U000efffe\\U000effff\\U000ffffe\\U000fffff"
    "\\U0010fffe\\U0010ffff"
)
ID_PATTERN: Final = rf"\A(?=\S)[^{_ID_FORBIDDEN}]*(?<=\S)\Z"
_ID_REASON: Final = (
    "identifier must not contain invisible, control or full-width characters nor begin "
    "or end with white space (ADR 0026)"
)
_NOT_NFC: Final = "identifier must be in Unicode normalization form C (NFC) (ADR 0026)"
#: The reasons an :class:`EventValidationError` gives for an unusable identifier.
IDENTIFIER_REASONS: Final = frozenset({_ID_REASON, _NOT_NFC})

#: Human-readable reasons for pattern violations (msgspec reports the regex itself).
_PATTERN_REASONS: Final = {
    TIMESTAMP_PATTERN: "must be a UTC timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ (6 fraction digits)",
    _UUID_PATTERN: "must be a lowercase UUID 8-4-4-4-12",
    _SHA256_PATTERN: "must be 64 lowercase hex digits (SHA-256)",
    _BASE64_PATTERN: "must be standard padded base64",
    ID_PATTERN: _ID_REASON,
}

MAX_ID_LENGTH: Final = 256
MAX_TEXT_LENGTH: Final = 1024
MAX_URI_LENGTH: Final = 2048
MAX_DESCRIPTION_LENGTH: Final = 8192
MAX_QUERY_LENGTH: Final = 65536
MAX_LIST_LENGTH: Final = 64

# Identifiers (actor, patient, object, session, correlation ids) and codes. The
# patterns of the pattern-typed fields (identifiers, event id, timestamps, SHA-256, query)
# are not msgspec constraints: one regex call per field was half the cost of decoding an
# event. ``AccessEvent.__post_init__`` checks them all in ONE match of one combined
# pattern (``_ALL_FIELDS_RE``) and, only when that fails, field by field against the
# patterns above, to name the field (same field and reason as before).
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT_LENGTH)]
Uri = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URI_LENGTH)]
Description = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DESCRIPTION_LENGTH)]
Uuid = str
Timestamp = str
Sha256Hex = str
Base64 = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUERY_LENGTH)]
CodeList = Annotated[tuple[Code, ...], msgspec.Meta(max_length=MAX_LIST_LENGTH)]

Action = Literal["C", "R", "U", "D", "E"]
Outcome = Literal[0, 4, 8, 12]
Confidentiality = Literal["U", "L", "M", "N", "R", "V"]
AddressType = Literal["ip", "hostname", "uri"]
SourceType = Annotated[int, msgspec.Meta(ge=1, le=9)]

_ENUM_VALUES: Final[Mapping[str, str]] = {
    "schema": EVENT_SCHEMA,
    "action": "C, R, U, D, E",
    "outcome": "0, 4, 8, 12",
    "client.address_type": "ip, hostname, uri",
    "recipient.address_type": "ip, hostname, uri",
    "discloser.address_type": "ip, hostname, uri",
    "sensitivity.confidentiality": "U, L, M, N, R, V",
}


class _Base(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    kw_only=True,
    gc=False,
):
    """Frozen, holding only strings, numbers, tuples and such structs: an event can never
    be part of a reference cycle, so the garbage collector need not track it
    (``gc=False``). A processor holds hundreds of thousands of events in flight, and
    scanning them was a fifth of its CPU time (``docs/adr/0038``)."""


class Coding(_Base, frozen=True, kw_only=True):
    """A coded value: code system URI, code, optional display text."""

    system: Uri
    code: Code
    display: Text | None = None


class Actor(_Base, frozen=True, kw_only=True):
    """The human user who accessed the data."""

    id: Id
    name: Text | None = None
    roles: CodeList
    organization: Text | None = None
    department: Text | None = None
    is_requestor: bool


class Client(_Base, frozen=True, kw_only=True):
    """The workstation or application the access came from."""

    address: Uri
    address_type: AddressType
    workstation: Text | None = None


class Party(_Base, frozen=True, kw_only=True):
    """A party to an export or disclosure: who received the data (``recipient``) or who
    released it (``discloser``). ``role`` is the code that made it that party (DICOM
    110152 Destination Role ID, 110153 Source Role ID, 110154 Destination Media, ...);
    ``address`` is its network address or URI, as the record gives it."""

    id: Id
    name: Text | None = None
    role: Code | None = None
    organization: Text | None = None
    address: Uri | None = None
    address_type: AddressType | None = None


class Source(_Base, frozen=True, kw_only=True):
    """The system that emitted the audit record; type 1 (user device) … 9 (other)."""

    system: Text
    site: Text | None = None
    type: SourceType


class Patient(_Base, frozen=True, kw_only=True):
    """The patient whose data was accessed."""

    id: Id
    system: Uri | None = None


class ObjectRef(_Base, frozen=True, kw_only=True):
    """What was touched: resource type, id, role."""

    type: Code
    id: Id | None = None
    role: Code | None = None


class Sensitivity(_Base, frozen=True, kw_only=True):
    """v3-Confidentiality code and sensitivity labels (HIV, PSY, ...)."""

    confidentiality: Confidentiality
    labels: CodeList


class RawRef(_Base, frozen=True, kw_only=True):
    """Reference to the original source record: format, SHA-256 of its bytes, location."""

    format: Code
    sha256: Sha256Hex
    uri: Uri | None = None


_DAYS_IN_MONTH: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_TIMESTAMP_RE: Final = re.compile(TIMESTAMP_PATTERN)
_ID_RE: Final = re.compile(ID_PATTERN)


def is_valid_timestamp(value: str) -> bool:
    """True if ``value`` is a real instant in the ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` format."""
    return _TIMESTAMP_RE.match(value) is not None and _day_exists(value)


def _day_exists(ts: str) -> bool:
    """Calendar check for a string already matching TIMESTAMP_PATTERN (cheap for day <= 28).

    Garbage (possible only in directly constructed events) yields False, not a crash.
    """
    try:
        if ts[8:10] <= "28":
            return True
        year, month, day = int(ts[0:4]), int(ts[5:7]), int(ts[8:10])
        if month == 2 and day == 29:
            return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return day <= _DAYS_IN_MONTH[month]
    except (TypeError, ValueError, IndexError):
        return False


class AccessEvent(_Base, frozen=True, kw_only=True):
    """One access by one actor to one patient's data (``careledger.access-event/1``)."""

    schema: Literal["careledger.access-event/1"]
    event_id: Uuid
    occurred_at: Timestamp
    recorded_at: Timestamp
    event_type: Coding
    event_subtype: Annotated[tuple[Coding, ...], msgspec.Meta(max_length=MAX_LIST_LENGTH)] = ()
    action: Action
    outcome: Outcome
    outcome_desc: Description | None = None
    purpose_of_use: CodeList = ()
    actor: Actor
    client: Client | None = None
    session_ref: Id | None = None
    source: Source
    patient: Patient
    object: ObjectRef | None = None
    sensitivity: Sensitivity | None = None
    query: Base64 | None = None
    correlation_id: Id | None = None
    raw_ref: RawRef | None = None
    #: Exports and disclosures: who received the data and who released it (optional,
    #: omitted when absent, so events without them keep their canonical bytes).
    recipient: Party | None = None
    discloser: Party | None = None

    def __post_init__(self) -> None:
        # Every pattern-typed field in one regex match (see ``_ALL_FIELDS_RE``); absent
        # optional fields are empty slots. Only a failure walks the fields to name one.
        try:
            joined = self._joined()
        except TypeError:  # a directly constructed event holding a non-str
            raise self._pattern_problem() from None
        if _ALL_FIELDS_RE.match(joined) is None:
            raise self._pattern_problem()
        # The format is right; only the day of the month can still be wrong.
        if not _day_exists(self.occurred_at):
            raise EventValidationError("occurred_at", "no such calendar date")
        if not _day_exists(self.recorded_at):
            raise EventValidationError("recorded_at", "no such calendar date")
        # One spelling needs NFC as well (only non-ASCII text can fail it).
        if not joined.isascii():
            for field, value in self._identifiers():
                if not _is_nfc(value):
                    raise EventValidationError(field, _NOT_NFC)

    def _joined(self) -> str:
        """The pattern-typed fields joined by ``_SEP``: an absent optional field is an
        empty slot; a present but empty one is a lone ``_SEP``, which fails the match."""
        obj, raw, recipient, discloser = self.object, self.raw_ref, self.recipient, self.discloser
        session, correlation, query = self.session_ref, self.correlation_id, self.query
        return _SEP.join(
            (
                self.event_id,
                self.occurred_at,
                self.recorded_at,
                self.actor.id,
                self.patient.id,
                "" if obj is None or obj.id is None else obj.id or _SEP,
                "" if session is None else session or _SEP,
                "" if correlation is None else correlation or _SEP,
                "" if recipient is None else recipient.id or _SEP,
                "" if discloser is None else discloser.id or _SEP,
                "" if raw is None else raw.sha256 or _SEP,
                "" if query is None else query or _SEP,
            )
        )

    def _pattern_problem(self) -> EventValidationError:
        """The first pattern-typed field (in canonical member order) that fails its
        pattern: what msgspec reported when the patterns were type constraints."""
        for field, value, pattern in sorted(self._patterned()):
            if value is not None and (not isinstance(value, str) or not pattern.match(value)):
                return EventValidationError(field, _PATTERN_REASONS[pattern.pattern])
        # unreachable for str fields (the combined pattern is their conjunction); a
        # directly constructed event may hold non-str garbage
        return EventValidationError("$", "a field does not match its pattern")

    def _patterned(self) -> list[tuple[str, str | None, re.Pattern[str]]]:
        raw = self.raw_ref
        fields: list[tuple[str, str | None, re.Pattern[str]]] = [
            ("event_id", self.event_id, _UUID_RE),
            ("occurred_at", self.occurred_at, _TIMESTAMP_RE),
            ("recorded_at", self.recorded_at, _TIMESTAMP_RE),
            ("raw_ref.sha256", None if raw is None else raw.sha256, _SHA256_RE),
            ("query", self.query, _BASE64_RE),
        ]
        fields.extend((field, value, _ID_RE) for field, value in self._identifiers())
        return fields

    def _identifiers(self) -> tuple[tuple[str, str | None], ...]:
        obj, recipient, discloser = self.object, self.recipient, self.discloser
        return (
            ("actor.id", self.actor.id),
            ("patient.id", self.patient.id),
            ("object.id", None if obj is None else obj.id),
            ("session_ref", self.session_ref),
            ("correlation_id", self.correlation_id),
            ("recipient.id", None if recipient is None else recipient.id),
            ("discloser.id", None if discloser is None else discloser.id),
        )


_UUID_RE: Final = re.compile(_UUID_PATTERN)
_SHA256_RE: Final = re.compile(_SHA256_PATTERN)
_BASE64_RE: Final = re.compile(_BASE64_PATTERN)
_SEP: Final = "\x1f"  # a control character: no pattern-typed field may hold it


def _body(pattern: str) -> str:
    """A ``\\A…\\Z`` pattern without its anchors, as a group."""
    assert pattern.startswith("\\A") and pattern.endswith("\\Z")
    return f"(?:{pattern[2:-2]})"


#: ASCII identifiers (nearly all) take the first branch: printable ASCII, no space at
#: either end, is exactly what ID_PATTERN accepts of ASCII; others take ID_PATTERN.
_ID_BODY: Final = f"(?:[!-~](?:[ -~]*[!-~])?|{_body(ID_PATTERN)})"
#: The conjunction of the field patterns over ``_SEP``-joined values, in the order
#: ``AccessEvent.__post_init__`` joins them; optional fields may be empty (absent).
#: No field pattern admits ``_SEP``, so a value cannot spill into another slot
#: (tests/unit/test_event_patterns.py checks field by field against the patterns).
_ALL_FIELDS_RE: Final = re.compile(
    "\\A"
    + _SEP.join(
        (
            _body(_UUID_PATTERN),
            _body(TIMESTAMP_PATTERN),
            _body(TIMESTAMP_PATTERN),
            _ID_BODY,
            _ID_BODY,
            *(f"{_ID_BODY}?",) * 5,
            f"{_body(_SHA256_PATTERN)}?",
            _body(_BASE64_PATTERN),
        )
    )
    + "\\Z"
)

_WIDTH_MAP: Final = {
    cp: unicodedata.decomposition(chr(cp)).split(" ", 1)[1]
    for cp in (0x3000, *range(0xFF01, 0xFFEF))
    if unicodedata.decomposition(chr(cp)).startswith(("<wide>", "<narrow>"))
}


def _is_nfc(value: str | None) -> bool:
    return value is None or value.isascii() or unicodedata.is_normalized("NFC", value)


def normalise_identifier(value: str) -> str:
    """The one spelling of an identifier (ADR 0026): surrounding spaces removed,
    full-width and half-width forms mapped to their ordinary characters (the width
    mapping of RFC 8264, not all of NFKC), then NFC. Raises ``ValueError`` when what is
    left is empty or holds characters no identifier may hold (invisible, control). The
    result is accepted by the event's identifier fields (length aside); an identifier
    the core accepts is returned unchanged."""
    if not value.isascii():
        mapped = "".join(
            chr(int(_WIDTH_MAP[ord(c)], 16)) if ord(c) in _WIDTH_MAP else c for c in value
        )
        value = unicodedata.normalize("NFC", mapped)
    value = value.strip(" ")
    if not value:
        raise ValueError("an identifier must not be empty")
    if _ID_RE.match(value) is None:
        raise ValueError(f"unusable identifier: {_ID_REASON.split(' (', 1)[0]}")
    return value


_DECODER: Final = msgspec.json.Decoder(AccessEvent)
#: Sorted member names + msgspec's string escaping == RFC 8785 for these types.
_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def _translate(exc: msgspec.ValidationError) -> EventValidationError:
    return translate_validation_error(exc, EventValidationError, _PATTERN_REASONS, _ENUM_VALUES)


class _Obj(dict[str, Any]):
    """JSON object that remembers duplicate member names (for the slow diagnostic path)."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _find_problem(value: object, path: str) -> EventValidationError | None:
    """Walk a generic JSON tree for what msgspec cannot see: null, duplicate names,
    lone surrogates."""
    if value is None:
        return EventValidationError(path, "null is not allowed (omit the field instead)")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return EventValidationError(path, "lone surrogate: not valid Unicode")
        return None
    if isinstance(value, Mapping):
        for dup in getattr(value, "duplicates", ()):
            return EventValidationError(join_path(path, dup), "duplicate member name")
        for key, item in value.items():
            child = join_path(path, key)
            key_problem = _find_problem(key, child)
            if key_problem is not None:
                return key_problem
            problem = _find_problem(item, child)
            if problem is not None:
                return problem
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            problem = _find_problem(item, f"{path}[{i}]")
            if problem is not None:
                return problem
    return None


def _slow_parse(data: bytes) -> object:
    return json.loads(data, object_pairs_hook=_pairs_hook)


class _DuplicateName(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateName
    return obj


def _check_non_canonical_input(data: bytes) -> None:
    """What the typed decoder silently accepts: ``null`` for an optional field (decoded
    as absent) and duplicate member names (last one wins; other parsers may differ)."""
    suspicious = b"null" in data
    if not suspicious:
        try:
            json.loads(data, object_pairs_hook=_unique_pairs)
        except _DuplicateName:
            suspicious = True
    if suspicious:  # rare: walk the document to name the field
        problem = _find_problem(_slow_parse(data), "$")
        if problem is not None:
            raise problem


def _from_decode_error(exc: msgspec.DecodeError, data: bytes) -> EventValidationError:
    message = str(exc)
    if "UTF-8" in message:
        return EventValidationError("$", "not valid UTF-8")
    if b"\\u" in data:  # maybe a lone surrogate escape: find where
        try:
            problem = _find_problem(_slow_parse(data), "$")
        except ValueError:
            problem = None
        if problem is not None and problem.reason.startswith("lone surrogate"):
            return problem
    return EventValidationError("$", f"invalid JSON: {message}")


def decode_and_canonicalize(data: bytes) -> tuple[AccessEvent, bytes]:
    """Validate one wire message and return the event and its canonical (JCS) bytes.

    Raises :class:`EventValidationError` naming the offending field. Input that is already
    canonical (what producers send) takes the fast path; other input is additionally
    scanned for what the typed decoder would silently accept (``null`` for an optional
    field, duplicate member names).
    """
    try:
        event = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _translate(exc) from exc
    except msgspec.DecodeError as exc:
        raise _from_decode_error(exc, data) from exc
    canonical = _ENCODER.encode(event)
    if canonical != data:
        _check_non_canonical_input(data)
    return event, canonical


def decode_event(data: bytes) -> AccessEvent:
    """Validate and decode one wire message (JSON bytes) into an :class:`AccessEvent`."""
    return decode_and_canonicalize(data)[0]


def canonical_event_bytes(event: AccessEvent) -> bytes:
    """RFC 8785 canonical bytes of ``event`` (absent optional fields omitted).

    Does not re-validate field constraints; events from the decoders are valid.
    """
    try:
        return _ENCODER.encode(event)
    except UnicodeEncodeError as exc:
        problem = _find_problem(msgspec.to_builtins(event, str_keys=True), "$")
        if problem is not None:
            raise problem from exc
        raise EventValidationError("$", "not valid Unicode") from exc


def event_leaf_hash(event: AccessEvent) -> bytes:
    """Merkle leaf hash of an event: SHA-256(0x00 ‖ canonical bytes)."""
    return leaf_hash(canonical_event_bytes(event))


def event_from_dict(d: Mapping[str, object]) -> AccessEvent:
    """Validate a JSON-shaped mapping (as from ``json.loads``) into an :class:`AccessEvent`.

    Same rules as :func:`decode_event`: strict types, no ``null``, no unknown fields.
    """
    problem = _find_problem(d, "$")
    if problem is not None:
        raise problem
    try:
        return msgspec.convert(d, AccessEvent, strict=True)
    except msgspec.ValidationError as exc:
        raise _translate(exc) from exc


def event_to_dict(e: AccessEvent) -> dict[str, Any]:
    """JSON-shaped dict of ``e`` (lists, not tuples; absent optional fields omitted)."""
    result: dict[str, Any] = msgspec.json.decode(canonical_event_bytes(e))
    return result


def validate_event(e: AccessEvent) -> AccessEvent:
    """Fully validate an event built with the Struct constructors; returns an equal event."""
    if not isinstance(e, AccessEvent):
        raise EventValidationError("$", f"expected AccessEvent, got {type(e).__name__}")
    return event_from_dict(event_to_dict(e))
