"""Reference-data records (schema ``careledger.reference/1``) and their canonical bytes.

The auditor explains and flags accesses against reference data — patient consents, care
relationships, the workforce directory and patient demographics. Every change to that
data is one *reference record*, ledgered (chained, Merkle-rooted, signed) exactly like an
access event, so the state behind any decision is tamper-evident and can be rebuilt as of
any instant.

Envelope (JSON object on the wire; ``null`` and unknown members are rejected)::

    schema        "careledger.reference/1"
    kind          "consent" | "care-relationship" | "staff" | "patient" | "source-key" |
                  "source-heartbeat" | "erasure" | "legal-hold" (ADR 0037,
                  ``reference_privacy``)
    record_id     stable id of the thing (consent id, relationship id, user id, patient id),
                  1..256 characters
    version       integer, 1 <= version <= 2**32 - 1 (the store's UInt32 column: a valid
                  record must be storable, or it would stall its partition); a higher
                  version supersedes lower ones of the same
                  (kind, record_id) from its effective_at on
    recorded_at   "YYYY-MM-DDTHH:MM:SS.ffffffZ": when the source recorded this version
    effective_at  same format: from when this version applies
    retracted     true: the record ends at effective_at (entered in error, revoked,
                  deleted); omitted when false (an explicit false is dropped)
    body          JSON object, validated per kind (see below)

Bodies (the typed views, their checks and their format) are in ``reference_bodies``;
frozen JSON and the field checks in ``reference_json``. Every public name of both is
importable from here.

Canonical bytes are generic RFC 8785 JCS of the envelope (bodies are free JSON: a FHIR
Consent may carry anything, floats included); the leaf hash is SHA-256(0x00 ‖ bytes), as
for events. Errors are :class:`~careledger_core.errors.ReferenceValidationError` with a
precise ``field`` path such as ``"body.period.start"`` or ``"body.shifts[0].end_hour"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn, cast

from .errors import ReferenceValidationError, ValidationError
from .hashing import leaf_hash
from .jcs import canonicalize
from .reference_bodies import (
    CONSENT_STATUSES,
    RELATIONSHIP_KINDS,
    STAFF_STATUSES,
    Address,
    CareRelationshipBody,
    ConsentBody,
    EmergencyContact,
    PatientBody,
    ReferenceBody,
    RelationshipKind,
    Shift,
    SourceHeartbeatBody,
    SourceKeyBody,
    StaffBody,
    StaffStatus,
    _parse_body,
)
from .reference_json import (
    FrozenJSONObject,
    _boolean,
    _fail,
    _freeze,
    _ident,
    _integer,
    _members,
    _timestamp,
    _wrong_type,
    thaw,
)

__all__ = [
    "CONSENT_STATUSES",
    "MAX_REFERENCE_VERSION",
    "REFERENCE_KINDS",
    "REFERENCE_SCHEMA",
    "RELATIONSHIP_KINDS",
    "STAFF_STATUSES",
    "Address",
    "CareRelationshipBody",
    "ConsentBody",
    "EmergencyContact",
    "FrozenJSONObject",
    "PatientBody",
    "ReferenceBody",
    "ReferenceKind",
    "ReferenceRecord",
    "RelationshipKind",
    "Shift",
    "SourceHeartbeatBody",
    "SourceKeyBody",
    "StaffBody",
    "StaffStatus",
    "canonical_reference_bytes",
    "decode_and_canonicalize_reference",
    "decode_reference",
    "reference_from_dict",
    "reference_leaf_hash",
    "reference_to_dict",
    "thaw",
]

REFERENCE_SCHEMA: Final = "careledger.reference/1"

#: The highest version a record may carry: the store keeps versions in a UInt32 column, and
#: a record that validates but cannot be stored would be retried forever and stall its
#: partition; it is rejected (and quarantined) instead.
MAX_REFERENCE_VERSION: Final = 2**32 - 1

ReferenceKind = Literal[
    "consent",
    "care-relationship",
    "staff",
    "patient",
    "source-key",
    "source-heartbeat",
    "erasure",
    "legal-hold",
]

REFERENCE_KINDS: Final[tuple[ReferenceKind, ...]] = (
    "consent",
    "care-relationship",
    "staff",
    "patient",
    "source-key",
    "source-heartbeat",
    "erasure",
    "legal-hold",
)

_ENVELOPE_REQUIRED: Final = (
    "schema",
    "kind",
    "record_id",
    "version",
    "recorded_at",
    "effective_at",
    "body",
)
_ENVELOPE_OPTIONAL: Final = ("retracted",)


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True, slots=True)
class ReferenceRecord:
    """One version of one reference-data record (``careledger.reference/1``).

    Validated on construction (``ReferenceValidationError``); ``body`` is kept as frozen
    JSON (its canonical form is what is ledgered) and ``parsed`` is its typed view.
    """

    kind: ReferenceKind
    record_id: str
    version: int
    recorded_at: str
    effective_at: str
    body: Mapping[str, Any] = field(hash=False)
    retracted: bool = False
    parsed: ReferenceBody = field(init=False, hash=False, compare=False, repr=False)
    _canonical: bytes | None = field(
        init=False, hash=False, compare=False, repr=False, default=None
    )

    def __post_init__(self) -> None:
        if self.kind not in REFERENCE_KINDS:
            if not isinstance(self.kind, str):
                _wrong_type("kind", "string", self.kind)
            expected = ", ".join(REFERENCE_KINDS)
            _fail("kind", f"invalid value {self.kind!r}; expected one of {expected}")
        fields: dict[str, Any] = {
            "record_id": self.record_id,
            "version": self.version,
            "recorded_at": self.recorded_at,
            "effective_at": self.effective_at,
            "retracted": self.retracted,
        }
        _ident(fields, "record_id", "$")
        _integer(fields, "version", "$", 1, MAX_REFERENCE_VERSION)
        _timestamp(fields, "recorded_at", "$")
        _timestamp(fields, "effective_at", "$")
        _boolean(fields, "retracted", "$")
        if not isinstance(self.body, Mapping):
            _wrong_type("body", "object", self.body)
        body = _freeze(self.body, "body", allow_null=self.kind == "consent")
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "parsed", _parse_body(self.kind, body, self.record_id))

    @property
    def subject_id(self) -> str:
        """Patient id (consent, care-relationship, patient) or user id (staff)."""
        return self.parsed.subject_id

    @property
    def key(self) -> tuple[str, str]:
        """``(kind, record_id)``: the identity that versions supersede within."""
        return (self.kind, self.record_id)


def reference_to_dict(rec: ReferenceRecord) -> dict[str, Any]:
    """Plain JSON-shaped dict of ``rec`` (``retracted`` omitted when false)."""
    d: dict[str, Any] = {
        "schema": REFERENCE_SCHEMA,
        "kind": rec.kind,
        "record_id": rec.record_id,
        "version": rec.version,
        "recorded_at": rec.recorded_at,
        "effective_at": rec.effective_at,
    }
    if rec.retracted:
        d["retracted"] = True
    d["body"] = thaw(rec.body)
    return d


def canonical_reference_bytes(rec: ReferenceRecord) -> bytes:
    """RFC 8785 canonical bytes of the envelope (``retracted`` omitted when false)."""
    cached = rec._canonical
    if cached is not None:
        return cached
    d: dict[str, Any] = {
        "schema": REFERENCE_SCHEMA,
        "kind": rec.kind,
        "record_id": rec.record_id,
        "version": rec.version,
        "recorded_at": rec.recorded_at,
        "effective_at": rec.effective_at,
        "body": rec.body,
    }
    if rec.retracted:
        d["retracted"] = True
    try:
        data = canonicalize(d)
    except ValidationError as exc:  # only possible for bodies changed behind our back
        path = str(exc.details.get("path", "$")).removeprefix("$.")
        raise ReferenceValidationError(path, exc.message) from exc
    object.__setattr__(rec, "_canonical", data)
    return data


def reference_leaf_hash(rec: ReferenceRecord) -> bytes:
    """Merkle leaf hash of a record: SHA-256(0x00 ‖ canonical bytes)."""
    return leaf_hash(canonical_reference_bytes(rec))


def reference_from_dict(d: Mapping[str, object]) -> ReferenceRecord:
    """Validate a JSON-shaped mapping (as from ``json.loads``) into a record."""
    if not isinstance(d, Mapping):
        _wrong_type("$", "object", d)
    for dup in getattr(d, "duplicates", ()):
        _fail(dup, "duplicate member name")
    _members(d, "$", _ENVELOPE_REQUIRED, _ENVELOPE_OPTIONAL)
    for name, value in d.items():
        if value is None:
            _fail(str(name), "null is not allowed (omit the field instead)")
    if d["schema"] != REFERENCE_SCHEMA:
        if not isinstance(d["schema"], str):
            _wrong_type("schema", "string", d["schema"])
        _fail("schema", f"invalid value {d['schema']!r}; expected {REFERENCE_SCHEMA}")
    kind = d["kind"]
    if not isinstance(kind, str):
        _wrong_type("kind", "string", kind)
    body = d["body"]
    if not isinstance(body, Mapping):
        _wrong_type("body", "object", body)
    return ReferenceRecord(
        kind=cast(ReferenceKind, kind),
        record_id=cast(str, d["record_id"]),
        version=cast(int, d["version"]),
        recorded_at=cast(str, d["recorded_at"]),
        effective_at=cast(str, d["effective_at"]),
        retracted=cast(bool, d.get("retracted", False)),
        body=body,
    )


class _DupObject(dict[str, Any]):
    """A parsed JSON object that had duplicate member names."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    dup = _DupObject(pairs)
    seen: set[str] = set()
    dup.duplicates = []
    for key, _ in pairs:
        if key in seen:
            dup.duplicates.append(key)
        seen.add(key)
    return dup


class _NonFinite(Exception):
    pass


def _parse_constant(name: str) -> NoReturn:
    raise _NonFinite(name)


def decode_and_canonicalize_reference(data: bytes) -> tuple[ReferenceRecord, bytes]:
    """Validate one wire message; return the record and its canonical (JCS) bytes."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        _fail("$", "not valid UTF-8")
    try:
        doc = json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_parse_constant)
    except _NonFinite as exc:
        _fail("$", f"{exc} is not JSON")
    except (ValueError, RecursionError) as exc:
        _fail("$", f"invalid JSON: {exc}")
    if not isinstance(doc, dict):
        _wrong_type("$", "object", doc)
    rec = reference_from_dict(doc)
    return rec, canonical_reference_bytes(rec)


def decode_reference(data: bytes) -> ReferenceRecord:
    """Validate and decode one wire message (JSON bytes) into a :class:`ReferenceRecord`."""
    return decode_and_canonicalize_reference(data)[0]
