"""The sealed access event (ADR 0037): what a ledger that keeps no identifier in clear
chains, and how the processor opens what the source sealed to it.

A source splits each event (:func:`careledger_core.sealing.split`) and sends, in a batch
record (``careledger.signed-batch/1`` with ``sealed_key`` and ``sealed``):

* the **sealed document** (schema ``careledger.sealed-access-event/1``): the event's
  public part plus ``sealed_commitment``, canonical JCS bytes. This is what the source
  signs and what becomes the ledger's leaf. :func:`decode_sealed_document` validates it:
  the public fields as strictly as an access event's, and nothing that names, numbers
  or locates a person (such a field is an unknown field, refused);
* the **ingest ciphertext**: ``XChaCha20-Poly1305(K, salt || JCS(sensitive), AAD =
  the document's leaf hash)`` where ``K = X25519(ephemeral, ingest key)`` through
  HSalsa20 (:func:`ingest_key`), the ephemeral public key sent once per record
  (``sealed_key``; a producer keeps one per epoch), so that sealing costs one AEAD per
  event, not one key agreement. :func:`open_ingest` opens it, checks that it opens the
  signed commitment, and rebuilds the whole access event, validated like any other (so
  a sensitive part that is not a valid patient, actor, ... is refused).

Pure: no I/O and no randomness (drawing the ephemeral key and the salts is
``careledger.ingest_keys``'s). Errors:
:class:`~careledger_core.errors.EventValidationError` for a document that is not valid,
:class:`~careledger_core.sealing.SealError` for a ciphertext that does not open to its
commitment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
from nacl.bindings import crypto_box_beforenm
from nacl.exceptions import CryptoError

from ._aead import xchacha_decrypt, xchacha_encrypt
from ._msgspec_errors import translate_validation_error
from .errors import EventValidationError, ValidationError
from .event import (
    EVENT_SCHEMA,
    MAX_LIST_LENGTH,
    AccessEvent,
    Action,
    Code,
    CodeList,
    Coding,
    Outcome,
    Sensitivity,
    Source,
    Text,
    decode_and_canonicalize,
    is_valid_timestamp,
)
from .hashing import leaf_hash
from .sealing import (
    SALT_BYTES,
    SealError,
    canonical,
    commitment_of_bytes,
    join_into,
    parse_part,
    unseal,
)

__all__ = [
    "NO_PATIENT_KEY_SYSTEM",
    "SEALED_EVENT_SCHEMA",
    "OpenedEvent",
    "SealedAccessEvent",
    "decode_sealed_document",
    "ingest_key",
    "ingest_nonce",
    "key_subject",
    "open_ingest",
    "open_stored",
    "open_with",
    "parse_opening",
    "seal_for_ingest_with",
    "sealed_document",
]

SEALED_EVENT_SCHEMA: Final = "careledger.sealed-access-event/1"
_HEX64: Final = r"\A[0-9a-f]{64}\Z"
_UUID: Final = r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
#: an ingest ciphertext: the salt, at least "{}", the 16-byte tag
_MIN_CIPHERTEXT: Final = SALT_BYTES + 2 + 16
INGEST_NONCE_CONTEXT: Final = b"careledger.ingest-nonce/1\x00"
_PATTERN_REASONS: Final = {
    _HEX64: "must be 64 lowercase hex digits (SHA-256)",
    _UUID: "must be a lowercase UUID 8-4-4-4-12",
}


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class PublicActor(_Base, frozen=True, kw_only=True):
    """An actor's roles and place, without who they are."""

    roles: CodeList
    organization: Text | None = None
    department: Text | None = None
    is_requestor: bool


class PublicObject(_Base, frozen=True, kw_only=True):
    type: Code
    role: Code | None = None


class PublicRawRef(_Base, frozen=True, kw_only=True):
    format: Code
    sha256: Annotated[str, msgspec.Meta(pattern=_HEX64)]


class SealedAccessEvent(_Base, frozen=True, kw_only=True):
    """The public part of an access event and the commitment to the rest."""

    schema: Literal["careledger.sealed-access-event/1"]
    event_id: Annotated[str, msgspec.Meta(pattern=_UUID)]
    occurred_at: str
    recorded_at: str
    event_type: Coding
    event_subtype: Annotated[tuple[Coding, ...], msgspec.Meta(max_length=MAX_LIST_LENGTH)] = ()
    action: Action
    outcome: Outcome
    purpose_of_use: CodeList = ()
    actor: PublicActor
    source: Source
    object: PublicObject | None = None
    sensitivity: Sensitivity | None = None
    raw_ref: PublicRawRef | None = None
    sealed_commitment: Annotated[str, msgspec.Meta(pattern=_HEX64)]

    def __post_init__(self) -> None:
        for name in ("occurred_at", "recorded_at"):
            if not is_valid_timestamp(getattr(self, name)):
                raise ValueError(
                    f"{name} must be a UTC timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ (6 fraction "
                    "digits)"
                )


#: the identifier system of the subject whose data key seals an event about no patient
#: (a login, a console view, a decision): one subject per source and day recorded
NO_PATIENT_KEY_SYSTEM: Final = "urn:careledger:no-patient-events"
_NO_PATIENT_ID: Final = "-"


def key_subject(event: AccessEvent) -> tuple[str, str]:
    """Whose data key seals ``event``: its patient ``(system, id)``; for an event about no
    patient (id ``"-"``), its source's day ``(NO_PATIENT_KEY_SYSTEM,
    "<source.system>/<YYYY-MM-DD of recorded_at>")``, so that such events expire day by
    day with their retention, not under one key that a steady flow of logins would keep
    alive for ever. Both parts are in the event's public document or its opening, so
    ``verify`` recomputes it."""
    if event.patient.id != _NO_PATIENT_ID:
        return event.patient.system or "", event.patient.id
    return NO_PATIENT_KEY_SYSTEM, f"{event.source.system}/{event.recorded_at[:10]}"


_DECODER: Final = msgspec.json.Decoder(SealedAccessEvent)
_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def decode_sealed_document(data: bytes) -> tuple[SealedAccessEvent, bytes]:
    """Validate a sealed document; (document, its canonical bytes). Raises
    :class:`EventValidationError`: a field out of bounds, one that names a person (an
    unknown field here), or bytes that are not canonical."""
    try:
        document = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise translate_validation_error(
            exc, EventValidationError, _PATTERN_REASONS, {"schema": SEALED_EVENT_SCHEMA}
        ) from exc
    except msgspec.DecodeError as exc:
        raise EventValidationError("$", f"invalid JSON: {exc}") from exc
    canonical = _ENCODER.encode(document)
    if canonical != data:
        raise EventValidationError(
            "$", "a sealed document must be sent as its canonical (RFC 8785) bytes"
        )
    return document, canonical


def sealed_document(public: dict[str, Any], commitment_: bytes) -> bytes:
    """The canonical sealed document of an event's public part (from ``split``)."""
    if public.get("schema") != EVENT_SCHEMA:
        raise ValidationError("the public part is not an access event's")
    if len(commitment_) != 32:
        raise ValidationError("a commitment is 32 bytes")
    data = canonical(
        {**public, "schema": SEALED_EVENT_SCHEMA, "sealed_commitment": commitment_.hex()}
    )
    decode_sealed_document(data)  # a public part that still names someone is refused
    return data


@dataclass(frozen=True, slots=True)
class OpenedEvent:
    """What an ingest ciphertext held: the salt, the sensitive part, and the whole event."""

    salt: bytes
    sensitive: dict[str, Any]
    event: AccessEvent
    #: the sensitive part's canonical bytes (what is sealed again for storage)
    body: bytes = b""


def ingest_key(peer_public: bytes, own_private: bytes) -> bytes:
    """The key a batch's events are sealed under for ingest: X25519 between the batch's
    ephemeral key and the processor's ingest key, through HSalsa20 (``crypto_box``'s
    precomputation). Deterministic: the processor computes it once per ephemeral key."""
    if len(peer_public) != 32 or len(own_private) != 32:
        raise SealError(code="BAD_INPUT", message="X25519 keys are 32 bytes")
    try:
        return bytes(crypto_box_beforenm(peer_public, own_private))
    except CryptoError:
        raise SealError(code="SEALED_UNOPENED", message="not a usable ephemeral key") from None


def ingest_nonce(leaf_hash_: bytes) -> bytes:
    """The nonce of an event's ingest ciphertext: from its document's leaf hash (unique:
    every document carries a fresh salt's commitment)."""
    return hashlib.sha256(INGEST_NONCE_CONTEXT + leaf_hash_).digest()[:24]


def seal_for_ingest_with(
    key: bytes, document: bytes, salt: bytes, sensitive: Mapping[str, Any]
) -> bytes:
    """``XChaCha20-Poly1305(key, salt || JCS(sensitive), AAD = leaf hash of document)``."""
    leaf = leaf_hash(document)
    return bytes(xchacha_encrypt(salt + canonical(sensitive), leaf, ingest_nonce(leaf), key))


def open_ingest(
    key: bytes, document: bytes, ciphertext: bytes, leaf: bytes | None = None
) -> OpenedEvent:
    """Open an event's ingest ciphertext with its batch's ingest key (:func:`ingest_key`)
    and check it against the sealed ``document`` (canonical bytes) it travels with
    (``leaf``: its leaf hash, when the caller has it).

    Raises :class:`SealError` (``SEALED_MALFORMED``, ``SEALED_UNOPENED``: not this
    document's, or not under this key; ``COMMITMENT_MISMATCH``) or
    :class:`EventValidationError` (the rebuilt event is not a valid access event)."""
    if len(ciphertext) < _MIN_CIPHERTEXT:
        raise SealError(code="SEALED_MALFORMED", message="the ingest ciphertext is too short")
    if leaf is None:
        leaf = leaf_hash(document)
    try:
        plaintext = xchacha_decrypt(ciphertext, leaf, ingest_nonce(leaf), key)
    except CryptoError:
        raise SealError(
            code="SEALED_UNOPENED",
            message="the ingest ciphertext does not open for this document with its batch's key",
        ) from None
    salt, sensitive = parse_opening(plaintext)
    what = "the ingest ciphertext"
    return _opened(document, salt, sensitive, plaintext[SALT_BYTES:], what)


def open_with(
    document: bytes, salt: bytes, sensitive: dict[str, Any], *, what: str = "the opening"
) -> OpenedEvent:
    """The whole event of a sealed ``document`` (canonical bytes) and its opening:
    ``salt`` and ``sensitive`` must open the document's commitment. Raises
    :class:`SealError` (``COMMITMENT_MISMATCH``, ``BAD_INPUT``) or
    :class:`EventValidationError`."""
    return _opened(document, salt, sensitive, canonical(sensitive), what)


def _opened(
    document: bytes, salt: bytes, sensitive: dict[str, Any], body: bytes, what: str
) -> OpenedEvent:
    """:func:`open_with`, ``body`` being ``sensitive``'s canonical bytes (checked by the
    caller): the commitment is over them, and the document decoded here is joined in
    place (no copies on the processor's per-event path)."""
    public = msgspec.json.decode(document)
    signed = bytes.fromhex(public.pop("sealed_commitment"))
    if commitment_of_bytes(salt, body) != signed:
        raise SealError(
            code="COMMITMENT_MISMATCH",
            message=f"{what} does not open the commitment the source signed",
        )
    public["schema"] = EVENT_SCHEMA
    event, _ = decode_and_canonicalize(canonical(join_into(public, sensitive)))
    return OpenedEvent(salt, sensitive, event, body)


def parse_opening(opening: bytes) -> tuple[bytes, dict[str, Any]]:
    """``salt || JCS(sensitive)`` (a report's proof of a sealed line) taken apart.
    Raises :class:`SealError` ``SEALED_MALFORMED``."""
    salt, body = opening[:SALT_BYTES], opening[SALT_BYTES:]
    if len(salt) != SALT_BYTES:
        raise SealError(code="SEALED_MALFORMED", message="the opening is too short")
    return salt, parse_part(body, "the opening")


def open_stored(data_key: bytes, document: bytes, sealed: bytes) -> OpenedEvent:
    """A stored sealed event opened with its patient's data key: the sealed part must
    open for this document's leaf, to the commitment the document signs, and rebuild a
    valid event. Raises :class:`SealError` or :class:`EventValidationError` (or
    ``EventValidationError`` for a document that is not a sealed document)."""
    commitment_ = bytes.fromhex(decode_sealed_document(document)[0].sealed_commitment)
    salt, sensitive = unseal(data_key, leaf_hash(document), sealed, commitment_)
    return open_with(document, salt, sensitive)
