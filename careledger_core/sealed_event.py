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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
from nacl.bindings import crypto_box_beforenm
from nacl.exceptions import CryptoError

from ._aead import xchacha_decrypt, xchacha_encrypt
from ._msgspec_errors import translate_validation_error
from .errors import CareledgerError, EventValidationError, ValidationError
from .event import (
    EVENT_SCHEMA,
    MAX_LIST_LENGTH,
    AccessEvent,
    Action,
    Actor,
    Base64,
    Client,
    Code,
    CodeList,
    Coding,
    Description,
    Id,
    ObjectRef,
    Outcome,
    Party,
    Patient,
    RawRef,
    Sensitivity,
    Source,
    Text,
    Uri,
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
    unseal_bytes,
)

__all__ = [
    "NO_PATIENT_KEY_SYSTEM",
    "SEALED_EVENT_SCHEMA",
    "IngestOpening",
    "IngestRefusal",
    "OpenedEvent",
    "SealedAccessEvent",
    "SealedColumns",
    "decode_sealed_document",
    "decode_sealed_documents",
    "ingest_key",
    "ingest_nonce",
    "key_subject",
    "open_ingest",
    "open_ingest_batch",
    "open_stored",
    "open_with",
    "parse_opening",
    "read_sealed_columns",
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


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """Untracked by the garbage collector, as the events' structs (``event._Base``)."""


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


_DOCUMENTS: Final = msgspec.json.Decoder(list[SealedAccessEvent])


def decode_sealed_documents(documents: Sequence[bytes]) -> list[SealedAccessEvent] | None:
    """A batch's sealed documents in one decode, if every one is valid and canonical
    (what ``decode_sealed_document`` accepts); else None, and the caller decodes them one
    by one to say which failed and why. One call for the batch, not one per document:
    the per-call cost was a fifth of the processor's time on a sealed ledger."""
    if not documents:
        return []
    joined = b"[" + b",".join(documents) + b"]"
    try:
        decoded = _DOCUMENTS.decode(joined)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if len(decoded) != len(documents) or _ENCODER.encode(decoded) != joined:
        return None
    return decoded


class _ColumnsSource(msgspec.Struct, frozen=True, gc=False):
    system: str


class SealedColumns(msgspec.Struct, frozen=True, gc=False):
    """What a processor stores of a sealed document besides its bytes (the columns of
    ``careledger.storage.kinds.SEALED``) and the commitment it holds an opening
    against, read without validating the document again (:func:`read_sealed_columns`).
    The attribute names are :class:`SealedAccessEvent`'s."""

    event_id: str
    occurred_at: str
    action: Action
    outcome: Outcome
    source: _ColumnsSource
    sealed_commitment: str


_COLUMNS: Final = msgspec.json.Decoder(list[SealedColumns])


def read_sealed_columns(documents: Sequence[bytes]) -> list[SealedColumns] | None:
    """The stored columns of sealed documents that were already validated in full by
    :func:`decode_sealed_documents` (ADR 0039: by the worker that opened them, from the
    same bytes), in one call; None if they cannot be read (the caller then validates
    them itself). This checks only the columns' types: it is not a validation, and
    ``verify`` validates every stored document in full. About an eighth of the cost
    of :func:`decode_sealed_documents`, which the processor's loop would otherwise pay
    a second time for every event."""
    if not documents:
        return []
    try:
        read = _COLUMNS.decode(b"[" + b",".join(documents) + b"]")
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return read if len(read) == len(documents) else None


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
    """What an ingest ciphertext or a sealed part held: the salt, the sensitive part's
    canonical bytes (what is sealed again for storage), and the whole event."""

    salt: bytes
    event: AccessEvent
    body: bytes

    @property
    def sensitive(self) -> dict[str, Any]:
        """The sensitive part, decoded (its dotted paths to their values)."""
        part: dict[str, Any] = msgspec.json.decode(self.body)
        return part


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
    return xchacha_encrypt(salt + canonical(sensitive), leaf, ingest_nonce(leaf), key)


def open_ingest(
    key: bytes,
    document: bytes,
    ciphertext: bytes,
    leaf: bytes | None = None,
    public: SealedAccessEvent | None = None,
) -> OpenedEvent:
    """Open an event's ingest ciphertext with its batch's ingest key (:func:`ingest_key`)
    and check it against the sealed ``document`` (canonical bytes) it travels with
    (``leaf``: its leaf hash, and ``public``: the document decoded by
    :func:`decode_sealed_document`, when the caller has them).

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
    what = "the ingest ciphertext"
    if public is None:
        public, _ = decode_sealed_document(document)
    return _opened(public, plaintext[:SALT_BYTES], plaintext[SALT_BYTES:], what)


@dataclass(frozen=True, slots=True)
class IngestOpening:
    """An event of a batch opened with its ingest key (:func:`open_ingest_batch`): its
    index in the batch, its sealed document, the salt and the sensitive part's canonical
    bytes, whose data key seals it (:func:`key_subject`) and its actor's id."""

    index: int
    #: the document, validated; or its columns, read from a document validated by the
    #: worker that opened it (ADR 0039)
    document: SealedAccessEvent | SealedColumns
    salt: bytes
    body: bytes
    subject: tuple[str, str]
    actor_id: str


#: an event of a batch refused alone: (its index, code, reason, field)
IngestRefusal = tuple[int, str, str, str]


def open_ingest_batch(
    key: bytes,
    documents: Sequence[bytes],
    leaves: Sequence[bytes],
    ciphertexts: Sequence[bytes],
    max_event_bytes: int,
) -> tuple[list[IngestOpening], list[IngestRefusal]]:
    """Every event of a sealed batch opened with its ingest key (:func:`ingest_key`), or
    refused alone with its reason: larger than ``max_event_bytes``, a document that is
    not valid and canonical, a ciphertext that does not open for it, to its commitment,
    to a valid access event. ``documents`` are the batch's canonical documents, ``leaves``
    their leaf hashes. The documents are decoded in one call when every one is valid (the
    usual case), else one by one, so that each refused one is named with its reason."""
    openings: list[IngestOpening] = []
    refused: list[IngestRefusal] = []
    decoded = (
        decode_sealed_documents(documents)
        if max(map(len, documents), default=0) <= max_event_bytes
        else None
    )
    for i, (data, leaf, box) in enumerate(zip(documents, leaves, ciphertexts, strict=True)):
        if decoded is None and len(data) > max_event_bytes:
            reason = f"event of {len(data)} bytes exceeds the limit of {max_event_bytes}"
            refused.append((i, "EVENT_TOO_LARGE", reason, "$"))
            continue
        try:
            document = decode_sealed_document(data)[0] if decoded is None else decoded[i]
            opened = open_ingest(key, data, box, leaf, document)
        except (ValidationError, SealError) as exc:
            refused.append((i, exc.code, str(exc), getattr(exc, "field", "$")))
            continue
        event = opened.event
        openings.append(
            IngestOpening(i, document, opened.salt, opened.body, key_subject(event), event.actor.id)
        )
    return openings, refused


def open_with(
    document: bytes, salt: bytes, sensitive: dict[str, Any], *, what: str = "the opening"
) -> OpenedEvent:
    """The whole event of a sealed ``document`` (canonical bytes) and its opening:
    ``salt`` and ``sensitive`` must open the document's commitment. Raises
    :class:`SealError` (``COMMITMENT_MISMATCH``, ``SEALED_MALFORMED``) or
    :class:`EventValidationError`."""
    public, _ = decode_sealed_document(document)
    return _opened(public, salt, canonical(sensitive), what)


class _Sensitive(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    gc=False,
):
    """A sensitive part (the dotted paths of ``careledger_core.sealing.SENSITIVE_PATHS``)
    typed as :class:`AccessEvent` types those fields: decoding it checks what the event's
    decoder checks of them (types, lengths, required members, no unknown path); the
    patterns and NFC are checked by the event's constructor, as for any event."""

    patient: Patient
    actor_id: Id = msgspec.field(name="actor.id")
    actor_name: Text | None = msgspec.field(default=None, name="actor.name")
    client: Client | None = None
    session_ref: Id | None = None
    object_id: Id | None = msgspec.field(default=None, name="object.id")
    outcome_desc: Description | None = None
    query: Base64 | None = None
    correlation_id: Id | None = None
    raw_ref_uri: Uri | None = msgspec.field(default=None, name="raw_ref.uri")
    recipient: Party | None = None
    discloser: Party | None = None


_SENSITIVE: Final = msgspec.json.Decoder(_Sensitive)


def _opened(public: SealedAccessEvent, salt: bytes, body: bytes, what: str) -> OpenedEvent:
    """The event of a validated sealed document and the canonical bytes of its sensitive
    part: they must be the canonical JSON of a sensitive part, open the commitment the
    document signs, and make a valid access event with the public part.

    The event is built from the two typed parts, not by joining dictionaries, encoding
    and decoding them again: the same checks at about half the cost on the processor's
    per-event path. ``tests/unit/test_sealed_rebuild.py`` holds it to that reference,
    outcome and error code, on valid and hostile parts."""
    try:
        part = _SENSITIVE.decode(body)
    except msgspec.ValidationError as exc:
        raise _first_objection(public, salt, body, what) from exc
    except msgspec.DecodeError:
        raise SealError(code="SEALED_MALFORMED", message=f"{what} is not JSON") from None
    if _ENCODER.encode(part) != body:  # not canonical, or a member null or out of order
        raise _first_objection(public, salt, body, what)
    _check_commitment(public, salt, body, what)
    return OpenedEvent(salt, _event_of(public, part), body)


def _check_commitment(public: SealedAccessEvent, salt: bytes, body: bytes, what: str) -> None:
    if commitment_of_bytes(salt, body) != bytes.fromhex(public.sealed_commitment):
        raise SealError(
            code="COMMITMENT_MISMATCH",
            message=f"{what} does not open the commitment the source signed",
        )


def _first_objection(
    public: SealedAccessEvent, salt: bytes, body: bytes, what: str
) -> CareledgerError:
    """Why a part the fast path refused is refused: the reference's error, from the
    checks in the order they always ran (canonical JSON, the commitment, the paths,
    then the whole event decoded). Only refused parts pay for this."""
    try:
        sensitive = parse_part(body, what)
        _check_commitment(public, salt, body, what)
        document = msgspec.to_builtins(public)
        del document["sealed_commitment"]
        document["schema"] = EVENT_SCHEMA
        decode_and_canonicalize(canonical(join_into(document, sensitive)))
    except CareledgerError as err:
        return err
    return EventValidationError("$", f"{what} does not make a valid access event")


def _event_of(public: SealedAccessEvent, part: _Sensitive) -> AccessEvent:
    """The access event of a sealed document's public part and its sensitive part."""
    obj, raw = public.object, public.raw_ref
    if obj is None and part.object_id is not None:
        raise EventValidationError("object.type", "missing required field")
    if raw is None and part.raw_ref_uri is not None:
        raise EventValidationError("raw_ref.format", "missing required field")
    pa = public.actor
    raw_ref = None
    if raw is not None:
        raw_ref = RawRef(format=raw.format, sha256=raw.sha256, uri=part.raw_ref_uri)
    return AccessEvent(
        schema=EVENT_SCHEMA,
        event_id=public.event_id,
        occurred_at=public.occurred_at,
        recorded_at=public.recorded_at,
        event_type=public.event_type,
        event_subtype=public.event_subtype,
        action=public.action,
        outcome=public.outcome,
        outcome_desc=part.outcome_desc,
        purpose_of_use=public.purpose_of_use,
        actor=Actor(
            id=part.actor_id,
            name=part.actor_name,
            roles=pa.roles,
            organization=pa.organization,
            department=pa.department,
            is_requestor=pa.is_requestor,
        ),
        client=part.client,
        session_ref=part.session_ref,
        source=public.source,
        patient=part.patient,
        object=None if obj is None else ObjectRef(type=obj.type, id=part.object_id, role=obj.role),
        sensitivity=public.sensitivity,
        query=part.query,
        correlation_id=part.correlation_id,
        raw_ref=raw_ref,
        recipient=part.recipient,
        discloser=part.discloser,
    )


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
    public, _ = decode_sealed_document(document)
    salt, body = unseal_bytes(data_key, leaf_hash(document), sealed)
    return _opened(public, salt, body, "the sealed part")
