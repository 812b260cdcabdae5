"""Sealed raw records (ADR 0037): the ingest gateway's received bytes on a ledger that
keeps no identifier in clear.

A raw record (``careledger.raw_record``) may name several patients (a Bundle of
AuditEvents, a query's results), and its bytes are the same for all of them: erasing
any one of them must destroy the bytes. So the record is sealed under a **record key**
derived from the data keys of every patient it names::

    record key = HMAC-SHA256(key = k_1 || ... || k_n,
                             RAW_KEY_CONTEXT || record id || id_1 || ... || id_n)

(``k_i`` the data keys, ``id_i`` their ids, in the order of the ids). Nothing stores the
record key: it exists while every one of those data keys exists, and destroying any of
them (``careledger erase``, retention expiry) destroys it, with no key row to find and
delete. A record that names no patient (a login, a query with no result) is under the
key of a **day of its sender** (:data:`RAW_KEY_SYSTEM`, ``<source>/<YYYY-MM-DD>``):
one key per sender per day, expired by the retention job like any subject.

* In transit, the gateway seals the **payload** (``JCS({"patients": [{"id",
  "system"}, ...]}) || "\\n" || the raw envelope's canonical bytes``) whole to the
  processor's ingest key (a sealed box) behind the line ``careledger.sealed-raw-transit/1``
  (binary: a raw record is large, so no base64 on the way): the raw topic holds no
  identifier in clear.
* At rest, the processor draws a salt and chains the **sealed raw document**
  (``careledger.sealed-raw-record/1``): the envelope's public fields (record id, SHA-256
  of the bytes, format, times, sender, protocol, issue count) and ``sealed_commitment =
  SHA-256(RAW_COMMITMENT_CONTEXT || salt || payload)``. The payload is sealed with the
  salt under the record key (XChaCha20-Poly1305, the leaf hash as associated data); the
  row's ``data_key_id`` lists the data key ids, comma-separated. ``verify`` derives the
  record key, opens the payload, checks it against the commitment and the document, and
  checks that the keys are exactly those of the patients the payload names.

Pure: no I/O and no randomness (the salt and the transit sealing are the caller's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

from careledger.raw_record import (
    MAX_ENVELOPE_BYTES,
    RawRecordEnvelope,
    decode_and_canonicalize_raw,
)
from careledger_core.errors import CareledgerError, ValidationError
from careledger_core.hashing import leaf_hash
from careledger_core.sealing import KEY_BYTES, SALT_BYTES, SealError, seal_bytes, unseal_bytes

__all__ = [
    "MAX_RAW_PATIENTS",
    "MAX_RAW_TRANSIT_BYTES",
    "RAW_COMMITMENT_CONTEXT",
    "RAW_KEY_CONTEXT",
    "RAW_KEY_SYSTEM",
    "RAW_TRANSIT_SCHEMA",
    "SEALED_RAW_SCHEMA",
    "OpenedRaw",
    "RawPatient",
    "RawPayload",
    "SealedRawDocument",
    "check_payload",
    "check_raw_opening",
    "decode_sealed_raw",
    "is_raw_transit",
    "join_key_ids",
    "open_raw",
    "open_raw_row",
    "open_raw_transit",
    "raw_commitment",
    "raw_key",
    "raw_payload",
    "raw_subjects",
    "raw_transit",
    "seal_raw",
    "sealed_raw_document",
    "split_key_ids",
]

SEALED_RAW_SCHEMA: Final = "careledger.sealed-raw-record/1"
RAW_TRANSIT_SCHEMA: Final = "careledger.sealed-raw-transit/1"
RAW_COMMITMENT_CONTEXT: Final = b"careledger.raw-commitment/1\x00"
RAW_KEY_CONTEXT: Final = b"careledger.raw-record-key/1\x00"
#: the identifier system of a sender's day: the subject of its records that name no
#: patient
RAW_KEY_SYSTEM: Final = "urn:careledger:raw-records"
#: the most patients one raw record may name (a Bundle's fan-out)
MAX_RAW_PATIENTS: Final = 4096
_KEY_ID_HEX: Final = 32
_HEX64: Final = r"\A[0-9a-f]{64}\Z"
_UUID: Final = r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
_TIMESTAMP: Final = (
    r"\A[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z\Z"
)
_Text = Annotated[str, msgspec.Meta(max_length=4096)]


class SealedRawDocument(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """The public part of a raw record (no byte of what was received, no peer address)
    and the commitment to the rest."""

    schema: Literal["careledger.sealed-raw-record/1"]
    record_id: Annotated[str, msgspec.Meta(pattern=_UUID)]
    sha256: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    format: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    received_at: Annotated[str, msgspec.Meta(pattern=_TIMESTAMP)]
    source_id: _Text = ""
    protocol: _Text = ""
    issue_count: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0
    sealed_commitment: Annotated[str, msgspec.Meta(pattern=_HEX64)]


class RawPatient(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    system: _Text
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class RawPayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The head of a payload: whom the record names (the envelope follows it)."""

    patients: Annotated[tuple[RawPatient, ...], msgspec.Meta(max_length=MAX_RAW_PATIENTS)] = ()


_DOCUMENT: Final = msgspec.json.Decoder(SealedRawDocument)
_PAYLOAD: Final = msgspec.json.Decoder(RawPayload)
_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_TRANSIT_LINE: Final = RAW_TRANSIT_SCHEMA.encode() + b"\n"
#: a transit record's largest size: what the raw topic takes (a larger one is refused by
#: the gateway as too large to seal)
MAX_RAW_TRANSIT_BYTES: Final = MAX_ENVELOPE_BYTES


def _invalid(reason: str) -> ValidationError:
    return ValidationError(
        reason, details={"field": "$", "reason": reason}, code="RAW_RECORD_INVALID"
    )


def raw_payload(envelope: bytes, patients: Iterable[tuple[str, str]]) -> bytes:
    """The canonical payload of a raw envelope and the patients it names (deduplicated,
    sorted). Raises ``ValidationError`` for more than :data:`MAX_RAW_PATIENTS`."""
    named = sorted({(system, pid) for system, pid in patients if pid})
    if len(named) > MAX_RAW_PATIENTS:
        raise _invalid(f"a raw record may name at most {MAX_RAW_PATIENTS} patients")
    head = _ENCODER.encode({"patients": [{"system": s, "id": i} for s, i in named]})
    return head + b"\n" + envelope


def raw_subjects(
    patients: Sequence[RawPatient], source_id: str, protocol: str, received_at: str
) -> list[tuple[str, str]]:
    """The subjects whose data keys make a raw record's key: its patients, or, if it
    names none, its sender's day."""
    if patients:
        return [(p.system, p.id) for p in patients]
    return [(RAW_KEY_SYSTEM, f"{source_id or protocol or 'unknown'}/{received_at[:10]}")]


def raw_key(record_id: str, keys: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The record key of a raw record from the data keys ``(key id, key)`` of its
    subjects (module doc; any order: they are sorted by id)."""
    if not keys:
        raise SealError(code="BAD_INPUT", message="a raw record key needs at least one data key")
    ordered = sorted(set(keys))
    for key_id, key in ordered:
        if type(key) is not bytes or len(key) != KEY_BYTES or type(key_id) is not bytes:
            raise SealError(code="BAD_INPUT", message=f"data keys must be {KEY_BYTES} bytes")
    message = RAW_KEY_CONTEXT + record_id.encode() + b"".join(i for i, _ in ordered)
    return hmac.new(b"".join(k for _, k in ordered), message, hashlib.sha256).digest()


def join_key_ids(key_ids: Iterable[bytes]) -> str:
    """The ``data_key_id`` column of a raw record: its key ids (hex), sorted, comma-joined."""
    return ",".join(sorted({k.hex() for k in key_ids}))


def split_key_ids(column: str) -> list[bytes]:
    """The key ids of a ``data_key_id`` column; raises ``ValueError`` if malformed."""
    parts = column.split(",") if column else []
    if not parts or any(len(p) != _KEY_ID_HEX for p in parts) or parts != sorted(set(parts)):
        raise ValueError("not a sorted list of data key ids")
    return [bytes.fromhex(p) for p in parts]


def decode_sealed_raw(data: bytes) -> tuple[SealedRawDocument, bytes]:
    """Validate a sealed raw document; (document, canonical bytes). Raises
    ``ValidationError`` (``RAW_RECORD_INVALID``): the received bytes or transport
    details are unknown fields, refused."""
    try:
        document = _DOCUMENT.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _invalid(f"not a sealed raw record: {exc}") from None
    canonical = _ENCODER.encode(document)
    if canonical != data:
        raise _invalid("a sealed raw record must be its canonical (RFC 8785) bytes")
    return document, canonical


def raw_commitment(salt: bytes, payload: bytes) -> bytes:
    """``SHA-256(RAW_COMMITMENT_CONTEXT || salt || payload)``."""
    if type(salt) is not bytes or len(salt) != SALT_BYTES:
        raise SealError(code="BAD_INPUT", message=f"salt must be {SALT_BYTES} bytes")
    return hashlib.sha256(RAW_COMMITMENT_CONTEXT + salt + payload).digest()


def sealed_raw_document(envelope: RawRecordEnvelope, commitment_: bytes) -> bytes:
    """The canonical sealed document of a raw envelope with the commitment to its payload."""
    if len(commitment_) != 32:
        raise SealError(code="BAD_INPUT", message="a commitment is 32 bytes")
    document = SealedRawDocument(
        schema="careledger.sealed-raw-record/1",
        record_id=envelope.record_id,
        sha256=envelope.sha256,
        format=envelope.format,
        received_at=envelope.received_at,
        source_id=envelope.source_id,
        protocol=envelope.protocol,
        issue_count=len(envelope.issues),
        sealed_commitment=commitment_.hex(),
    )
    return decode_sealed_raw(_ENCODER.encode(document))[1]


def seal_raw(record_key: bytes, document: bytes, salt: bytes, payload: bytes) -> bytes:
    """The sealed part: ``nonce || XChaCha20-Poly1305(record key, salt || payload, AAD =
    the document's leaf hash)``."""
    return seal_bytes(record_key, leaf_hash(document), salt, payload)


@dataclass(frozen=True, slots=True)
class OpenedRaw:
    """A payload opened (or taken from transit): the envelope and the patients named."""

    payload: bytes
    envelope: RawRecordEnvelope
    envelope_bytes: bytes
    patients: tuple[RawPatient, ...]

    @property
    def subjects(self) -> list[tuple[str, str]]:
        e = self.envelope
        return raw_subjects(self.patients, e.source_id, e.protocol, e.received_at)


def check_payload(payload: bytes) -> OpenedRaw:
    """A payload's envelope and patients, validated (canonical bytes both). Raises
    ``SealError`` (``SEALED_MALFORMED``)."""
    head, sep, envelope_bytes = payload.partition(b"\n")
    try:
        if not sep:
            raise ValueError("no envelope after the patients")
        parsed = _PAYLOAD.decode(head)
        envelope, canonical = decode_and_canonicalize_raw(envelope_bytes)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError, CareledgerError) as exc:
        raise SealError(
            code="SEALED_MALFORMED", message=f"the sealed raw record is not valid: {exc}"
        ) from None
    if canonical != envelope_bytes or _ENCODER.encode(parsed) != head:
        raise SealError(code="SEALED_MALFORMED", message="the sealed raw record is not canonical")
    named = [(p.system, p.id) for p in parsed.patients]
    if named != sorted(set(named)):
        raise SealError(code="SEALED_MALFORMED", message="the patients are not sorted and unique")
    return OpenedRaw(payload, envelope, envelope_bytes, parsed.patients)


def check_raw_opening(document: bytes, salt: bytes, payload: bytes) -> OpenedRaw:
    """``salt`` and ``payload`` must open the commitment of ``document`` and be a valid
    payload whose envelope has the document's public fields. Raises ``SealError``
    (``COMMITMENT_MISMATCH``, ``SEALED_MALFORMED``) or ``ValidationError``."""
    doc, _ = decode_sealed_raw(document)
    if not hmac.compare_digest(raw_commitment(salt, payload), bytes.fromhex(doc.sealed_commitment)):
        raise SealError(
            code="COMMITMENT_MISMATCH",
            message="the sealed part does not open the commitment the document holds",
        )
    opened = check_payload(payload)
    e = opened.envelope
    public = (e.record_id, e.sha256, e.format, e.received_at, e.source_id, e.protocol)
    if (*public, len(e.issues)) != (
        doc.record_id,
        doc.sha256,
        doc.format,
        doc.received_at,
        doc.source_id,
        doc.protocol,
        doc.issue_count,
    ):
        raise SealError(
            code="SEALED_MALFORMED",
            message="the sealed raw record's public fields are not the document's",
        )
    return opened


def open_raw(record_key: bytes, document: bytes, sealed: bytes) -> OpenedRaw:
    """A stored sealed raw record opened with its record key (:func:`raw_key`)."""
    salt, payload = unseal_bytes(record_key, leaf_hash(document), sealed)
    return check_raw_opening(document, salt, payload)


def open_raw_row(
    document: SealedRawDocument,
    canonical: bytes,
    sealed_base64: str,
    data_keys: Sequence[tuple[bytes, bytes]],
) -> OpenedRaw:
    """A ``raw_records`` row opened: its record key derived from the data keys (id, key)
    its ``data_key_id`` lists, in that order, its ``sealed`` column (base64) decoded and
    opened against ``canonical``. Raises ``CareledgerError`` when it does not open (a key
    that is not the one sealed under, a changed byte, a column that is not base64)."""
    try:
        sealed = base64.b64decode(sealed_base64, validate=True)
    except binascii.Error as exc:
        raise _invalid(f"the sealed column is not base64: {exc}") from None
    return open_raw(raw_key(document.record_id, data_keys), canonical, sealed)


# --------------------------------------------------------------------------- transit


def raw_transit(sealed_box: bytes) -> bytes:
    """The transit record of a sealed box (the caller seals)."""
    return _TRANSIT_LINE + sealed_box


def is_raw_transit(data: bytes) -> bool:
    """Whether ``data`` claims to be a transit record (it may still not open)."""
    return data.startswith(_TRANSIT_LINE)


def open_raw_transit(ingest_private: bytes, data: bytes) -> OpenedRaw:
    """The payload a transit record carries, opened with the ingest key and validated.
    Raises ``SealError`` (``SEALED_MALFORMED``, ``SEALED_UNOPENED``)."""
    if len(data) > MAX_RAW_TRANSIT_BYTES:
        raise SealError(code="SEALED_MALFORMED", message="the transit record is too large")
    if not is_raw_transit(data):
        raise SealError(code="SEALED_MALFORMED", message="not a sealed raw record in transit")
    try:
        payload = bytes(SealedBox(PrivateKey(ingest_private)).decrypt(data[len(_TRANSIT_LINE) :]))
    except CryptoError:
        raise SealError(
            code="SEALED_UNOPENED", message="the transit envelope does not open with the ingest key"
        ) from None
    return check_payload(payload)
