"""Sealed reference records (ADR 0037): consents, care relationships, the workforce
directory and patient demographics on a ledger that keeps no identifier in clear.

Reference records are not signed by their sources (the processor's block signature is
their first), so the processor, not the source, seals them:

* In transit, a source seals a record's canonical bytes whole to the processor's X25519
  ingest key (a sealed box, ``crypto_box_seal``) in a **transit envelope**
  (``careledger.sealed-reference-transit/1``: ``{"schema", "sealed"}``, base64);
  :func:`open_reference_transit` opens it. Kafka's reference topics then hold no
  identifier in clear (their records carry no key either).
* At rest, the processor draws a 32-byte salt and chains the **sealed reference
  document** (``careledger.sealed-reference/1``): the record's kind, version, times and
  retraction, and ``sealed_commitment = SHA-256(REFERENCE_COMMITMENT_CONTEXT || salt ||
  record bytes)``. That document is the leaf. The record bytes (the canonical record, with
  its id and body) are sealed with the salt under the data key of the record's subject
  (:func:`seal_reference`: XChaCha20-Poly1305 with the leaf hash as associated data), so
  destroying the key changes no leaf, root or signature.
* The side columns that make the table queryable are pseudonyms:
  ``subject_id`` the subject's (``patient_ref`` for a patient's records, the actor
  pseudonym for a staff record), ``record_id`` :func:`record_ref` (``HMAC(data key,
  kind || record id)``: the versions of one record share it, and it is unlinkable once
  the key is gone). ``verify`` recomputes both when it opens the record.

Which kinds are sealed: :data:`SEALED_REFERENCE_KINDS` (they name a person). The others
(:data:`CLEAR_REFERENCE_KINDS`: source keys and heartbeats, erasures and legal holds,
which name pseudonyms only) stay in clear on a sealed ledger.

Pure: no I/O and no randomness (the salt and the transit sealing are the caller's).
Errors: :class:`~careledger_core.errors.ReferenceValidationError` for a document that is
not valid, :class:`~careledger_core.sealing.SealError` for a sealed part or transit
envelope that does not open, or opens to something else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

from ._msgspec_errors import translate_validation_error
from .errors import ReferenceValidationError
from .event import is_valid_timestamp
from .hashing import leaf_hash
from .reference import (
    MAX_REFERENCE_VERSION,
    ReferenceRecord,
    decode_and_canonicalize_reference,
)
from .sealing import KEY_BYTES, SALT_BYTES, SealError, seal_bytes, unseal_bytes

__all__ = [
    "CLEAR_REFERENCE_KINDS",
    "MAX_TRANSIT_BYTES",
    "RECORD_REF_CONTEXT",
    "REFERENCE_COMMITMENT_CONTEXT",
    "REFERENCE_TRANSIT_SCHEMA",
    "SEALED_REFERENCE_KINDS",
    "SEALED_REFERENCE_SCHEMA",
    "STAFF_KEY_SYSTEM",
    "OpenedReference",
    "SealedReferenceDocument",
    "check_opening",
    "decode_sealed_reference",
    "is_reference_transit",
    "open_reference",
    "open_reference_transit",
    "record_ref",
    "reference_commitment",
    "reference_transit",
    "seal_reference",
    "sealed_reference_document",
]

SEALED_REFERENCE_SCHEMA: Final = "careledger.sealed-reference/1"
REFERENCE_TRANSIT_SCHEMA: Final = "careledger.sealed-reference-transit/1"
REFERENCE_COMMITMENT_CONTEXT: Final = b"careledger.reference-commitment/1\x00"
RECORD_REF_CONTEXT: Final = b"careledger.record-ref/1\x00"
#: the identifier system under which a staff member's data key is looked up (their
#: records are sealed under it; the events name them by the actor pseudonym)
STAFF_KEY_SYSTEM: Final = "urn:careledger:staff"
#: kinds that name a person: sealed on a sealed ledger, refused there in clear
SEALED_REFERENCE_KINDS: Final = ("consent", "care-relationship", "staff", "patient")
#: kinds that name no one (keys, heartbeats, pseudonyms): in clear on any ledger
CLEAR_REFERENCE_KINDS: Final = ("source-key", "source-heartbeat", "erasure", "legal-hold")
_HEX64: Final = r"\A[0-9a-f]{64}\Z"
#: the transit envelope's largest sealed box (base64): a reference record's limit with
#: the sealed box's 48 bytes, base64-expanded
MAX_TRANSIT_BYTES: Final = 4 * 1024 * 1024

SealedKind = Literal["consent", "care-relationship", "staff", "patient"]


class SealedReferenceDocument(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """The public part of a reference record and the commitment to the rest."""

    schema: Literal["careledger.sealed-reference/1"]
    kind: SealedKind
    version: Annotated[int, msgspec.Meta(ge=1, le=MAX_REFERENCE_VERSION)]
    recorded_at: str
    effective_at: str
    retracted: bool = False
    sealed_commitment: Annotated[str, msgspec.Meta(pattern=_HEX64)]

    def __post_init__(self) -> None:
        for name in ("recorded_at", "effective_at"):
            if not is_valid_timestamp(getattr(self, name)):
                raise ValueError(
                    f"{name} must be a UTC timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ (6 fraction "
                    "digits)"
                )

    @property
    def record_id(self) -> str:
        """What names the document in findings: its commitment (the record's id is sealed)."""
        return f"sealed:{self.sealed_commitment[:16]}"


_DECODER: Final = msgspec.json.Decoder(SealedReferenceDocument)
_ENCODER: Final = msgspec.json.Encoder(order="sorted")


class _Transit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    schema: Literal["careledger.sealed-reference-transit/1"]
    sealed: str


_TRANSIT: Final = msgspec.json.Decoder(_Transit)


def decode_sealed_reference(data: bytes) -> tuple[SealedReferenceDocument, bytes]:
    """Validate a sealed reference document; (document, its canonical bytes). Raises
    :class:`ReferenceValidationError` (an id, a body or any other unknown field is refused:
    the document must name no one)."""
    try:
        document = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise translate_validation_error(
            exc, ReferenceValidationError, {}, {"schema": SEALED_REFERENCE_SCHEMA}
        ) from exc
    except msgspec.DecodeError as exc:
        raise ReferenceValidationError("$", f"invalid JSON: {exc}") from exc
    canonical = _ENCODER.encode(document)
    if canonical != data:
        raise ReferenceValidationError(
            "$", "a sealed reference document must be its canonical (RFC 8785) bytes"
        )
    return document, canonical


def reference_commitment(salt: bytes, record: bytes) -> bytes:
    """``SHA-256(REFERENCE_COMMITMENT_CONTEXT || salt || record bytes)``."""
    if type(salt) is not bytes or len(salt) != SALT_BYTES:
        raise SealError(code="BAD_INPUT", message=f"salt must be {SALT_BYTES} bytes")
    return hashlib.sha256(REFERENCE_COMMITMENT_CONTEXT + salt + record).digest()


def sealed_reference_document(record: ReferenceRecord, commitment_: bytes) -> bytes:
    """The canonical sealed document of ``record`` (a kind of
    :data:`SEALED_REFERENCE_KINDS`) with the commitment to its bytes."""
    if record.kind not in SEALED_REFERENCE_KINDS:
        raise ReferenceValidationError("kind", f"{record.kind!r} records are not sealed")
    if len(commitment_) != 32:
        raise SealError(code="BAD_INPUT", message="a commitment is 32 bytes")
    document: dict[str, object] = {
        "schema": SEALED_REFERENCE_SCHEMA,
        "kind": record.kind,
        "version": record.version,
        "recorded_at": record.recorded_at,
        "effective_at": record.effective_at,
        "sealed_commitment": commitment_.hex(),
    }
    if record.retracted:
        document["retracted"] = True
    return decode_sealed_reference(_ENCODER.encode(document))[1]


def seal_reference(data_key: bytes, document: bytes, salt: bytes, record: bytes) -> bytes:
    """The sealed part of a reference record: ``nonce || XChaCha20-Poly1305(data key,
    salt || record bytes, AAD = the document's leaf hash)``."""
    return seal_bytes(data_key, leaf_hash(document), salt, record)


@dataclass(frozen=True, slots=True)
class OpenedReference:
    """A sealed reference document opened: the salt, the record's bytes, the record."""

    salt: bytes
    record_bytes: bytes
    record: ReferenceRecord


def check_opening(document: bytes, salt: bytes, record: bytes) -> OpenedReference:
    """``salt`` and ``record`` (bytes) must open the commitment of the sealed ``document``
    and be a valid, canonical reference record with the document's public fields. Raises
    :class:`SealError` (``COMMITMENT_MISMATCH``, ``SEALED_MALFORMED``) or
    :class:`ReferenceValidationError` (a ``document`` that is not one)."""
    doc, _ = decode_sealed_reference(document)
    if not hmac.compare_digest(
        reference_commitment(salt, record), bytes.fromhex(doc.sealed_commitment)
    ):
        raise SealError(
            code="COMMITMENT_MISMATCH",
            message="the sealed part does not open the commitment the document holds",
        )
    try:
        rec, canonical = decode_and_canonicalize_reference(record)
    except ReferenceValidationError as exc:
        raise SealError(
            code="SEALED_MALFORMED", message=f"the sealed record is not valid: {exc}"
        ) from None
    if canonical != record:
        raise SealError(code="SEALED_MALFORMED", message="the sealed record is not canonical")
    public = (rec.kind, rec.version, rec.recorded_at, rec.effective_at, rec.retracted)
    if public != (doc.kind, doc.version, doc.recorded_at, doc.effective_at, doc.retracted):
        raise SealError(
            code="SEALED_MALFORMED",
            message="the sealed record's kind, version, times or retraction are not the document's",
        )
    return OpenedReference(salt, record, rec)


def open_reference(data_key: bytes, document: bytes, sealed: bytes) -> OpenedReference:
    """A stored sealed reference record opened with its subject's data key: it must open
    for this document's leaf, to the document's commitment, and be the record the
    document describes. Raises :class:`SealError` or :class:`ReferenceValidationError`."""
    salt, record = unseal_bytes(data_key, leaf_hash(document), sealed)
    return check_opening(document, salt, record)


def record_ref(data_key: bytes, kind: str, record_id: str) -> str:
    """A reference record's pseudonymous id (hex): ``HMAC-SHA256(data key,
    RECORD_REF_CONTEXT || kind || 0x00 || record id)``."""
    if type(data_key) is not bytes or len(data_key) != KEY_BYTES:
        raise SealError(code="BAD_INPUT", message=f"data key must be {KEY_BYTES} bytes")
    message = RECORD_REF_CONTEXT + kind.encode() + b"\x00" + record_id.encode()
    return hmac.new(data_key, message, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- transit


def reference_transit(sealed_box: bytes) -> bytes:
    """The transit envelope of a sealed box (the caller seals: randomness is not here)."""
    return _ENCODER.encode(
        {"schema": REFERENCE_TRANSIT_SCHEMA, "sealed": base64.b64encode(sealed_box).decode()}
    )


def is_reference_transit(data: bytes) -> bool:
    """Whether ``data`` claims to be a transit envelope (it may still not open)."""
    return REFERENCE_TRANSIT_SCHEMA.encode() in data[:128]


def open_reference_transit(ingest_private: bytes, data: bytes) -> bytes:
    """The record bytes a transit envelope carries, opened with the ingest key. Raises
    :class:`SealError` (``SEALED_MALFORMED``, ``SEALED_UNOPENED``)."""
    if len(data) > MAX_TRANSIT_BYTES:
        raise SealError(code="SEALED_MALFORMED", message="the transit envelope is too large")
    try:
        envelope = _TRANSIT.decode(data)
        box = base64.b64decode(envelope.sealed, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error):
        raise SealError(
            code="SEALED_MALFORMED", message="not a sealed reference transit envelope"
        ) from None
    try:
        return bytes(SealedBox(PrivateKey(ingest_private)).decrypt(box))
    except CryptoError:
        raise SealError(
            code="SEALED_UNOPENED",
            message="the transit envelope does not open with the ingest key",
        ) from None
