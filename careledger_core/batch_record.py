"""Batch records: one Kafka record per source-signed batch (ADR 0020).

A :class:`~careledger_core.source.BatchStatement` signs the RFC 6962 root of the entries
``uint64_be(first_seq + i) || leaf_hash(event_i)`` (``source.batch_entry``). Sending one
Kafka record per event repeated the statement, the signature and an inclusion proof in
every record; a *batch record* (``careledger.signed-batch/1``) carries them once, with the
events in order::

    {"events":[<event JSON>,...],"schema":"careledger.signed-batch/1",
     "signature":"<base64 Ed25519>","statement":{...}}

An event's leaf hash is the SHA-256 leaf hash of its bytes *as they stand in the record*
(the SDK writes canonical RFC 8785 bytes), so the receiver recomputes one root per record
and checks one signature, and a well-signed record holding one malformed event can still
chain the others: the malformed event's entry stays in the root, its bytes go to the
dead-letter topic, and its index and leaf hash are stored next to the batch so that
``verify`` can recompute the signed root from the chained events and the skipped entries
(:func:`batch_root`).

Pure: no I/O. :func:`open_batch_record` raises ``SourceEnvelopeError`` (a
``ValidationError``: dead-letter the record) for a malformed envelope and
``SourceAuthError`` with code ``BAD_PROOF`` (quarantine the record) when the events are
not the ones the statement signs. The signature is checked by the caller
(``BatchVerifier.verify_signature``): it needs the registry.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec

from .errors import ValidationError
from .hashing import leaf_hash
from .merkle import merkle_root
from .signing import SigningKey
from .source import (
    BATCH_CONTEXT,
    MAX_BATCH_SIZE,
    BatchStatement,
    SignatureB64,
    SourceAuthError,
    SourceEnvelopeError,
    batch_entry,
    statement_bytes,
)

__all__ = [
    "SIGNED_BATCH_SCHEMA",
    "OpenedBatch",
    "batch_root",
    "encode_batch_record",
    "looks_batch",
    "open_batch_record",
    "read_checked_batch_record",
    "read_opened_batch_record",
    "sign_batch_record",
]

SIGNED_BATCH_SCHEMA: Final = "careledger.signed-batch/1"
#: an ingest box's largest base64 form (a sensitive part carries at most a query of
#: 64 KiB in base64, plus names and identifiers)
SEALED_BOX_MAX_B64: Final = 262_144


class SignedBatchRecord(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """The Kafka record of a signed batch (``careledger.signed-batch/1``)."""

    schema: Literal["careledger.signed-batch/1"]
    statement: BatchStatement
    signature: SignatureB64
    events: Annotated[
        tuple[msgspec.Raw, ...], msgspec.Meta(min_length=1, max_length=MAX_BATCH_SIZE)
    ]
    #: sealed events (ADR 0037): the base64 ephemeral X25519 key the record's events are
    #: sealed to the ingest key with, and per event the base64 ingest ciphertext of its
    #: sensitive part (the events are then sealed documents); not signed: each must open
    #: to the commitment its signed document holds
    sealed_key: Annotated[str, msgspec.Meta(max_length=64)] = ""
    sealed: Annotated[
        tuple[Annotated[str, msgspec.Meta(max_length=SEALED_BOX_MAX_B64)], ...],
        msgspec.Meta(max_length=MAX_BATCH_SIZE),
    ] = ()


_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_DECODER: Final = msgspec.json.Decoder(SignedBatchRecord)
_PREFIX: Final = re.compile(rb'\A\s*\{\s*"(?:events|schema|signature|statement)"')
_SCHEMA_BYTES: Final = b'"careledger.signed-batch/1"'


@dataclass(frozen=True, slots=True)
class OpenedBatch:
    """A decoded batch record whose events are the signed batch's (signature unchecked)."""

    statement: BatchStatement
    signature: str
    #: each event's bytes as they stand in the record, in batch order
    events: tuple[bytes, ...]
    #: ``leaf_hash(events[i])``: the hash the batch entry ``i`` binds to its seq
    leaf_hashes: tuple[bytes, ...]
    #: sealed events (ADR 0037): each event's ingest ciphertext, decoded, and the
    #: record's ephemeral key; empty otherwise
    sealed: tuple[bytes, ...] = ()
    sealed_key: bytes = b""
    #: a sealed record the processor's worker opened from these bytes
    #: (:func:`read_opened_batch_record`, ADR 0039): ``leaf_hashes`` and the root check
    #: are the worker's, and ``sealed`` is left empty (not decoded again)
    sealed_ahead: bool = False


def encode_batch_record(
    statement: BatchStatement,
    signature: str,
    canonical_events: Sequence[bytes],
    sealed: Sequence[bytes] = (),
    sealed_key: bytes = b"",
) -> bytes:
    """The Kafka record value of one signed batch (the events' canonical bytes inside,
    and for sealed events each one's ingest box)."""
    if len(canonical_events) != statement.size:
        raise ValidationError(
            f"a batch record of {statement.size} events cannot hold {len(canonical_events)}"
        )
    if sealed and (len(sealed) != len(canonical_events) or len(sealed_key) != 32):
        raise ValidationError("a sealed batch needs its ephemeral key and one ciphertext per event")
    return _ENCODER.encode(
        SignedBatchRecord(
            schema=SIGNED_BATCH_SCHEMA,
            statement=statement,
            signature=signature,
            events=tuple(msgspec.Raw(e) for e in canonical_events),
            sealed_key=base64.b64encode(sealed_key).decode() if sealed else "",
            sealed=tuple(base64.b64encode(b).decode() for b in sealed),
        )
    )


def looks_batch(data: bytes) -> bool:
    """Cheap test: does this record claim to be a batch record (not one event)? The
    schema is looked for from the end: the sorted encoding puts it after the events, so
    a forward search read the whole record (~150 µs for 500 events), a reverse one the
    last kilobytes (the same answer wherever it is)."""
    return _PREFIX.match(data) is not None and data.rfind(_SCHEMA_BYTES) != -1


def batch_root(first_seq: int, leaf_hashes: Sequence[bytes]) -> bytes:
    """The root a statement signs for these events' leaf hashes, in batch order."""
    return merkle_root([batch_entry(first_seq + i, h) for i, h in enumerate(leaf_hashes)])


def _decode(data: bytes) -> SignedBatchRecord:
    try:
        return _DECODER.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise SourceEnvelopeError(f"invalid signed batch record: {exc}") from exc


def open_batch_record(data: bytes) -> OpenedBatch:
    """Decode a batch record and check that its events are the signed batch's entries.

    Raises ``SourceEnvelopeError`` (malformed record: dead-letter it whole) or
    ``SourceAuthError`` ``BAD_PROOF`` (the events are not what the statement signs:
    quarantine it whole). Nothing about the events' content is validated here.
    """
    record = _decode(data)
    st = record.statement
    events = tuple(bytes(e) for e in record.events)
    details = {"source_id": st.source_id, "key_id": st.key_id, "first_seq": st.first_seq}
    if len(events) != st.size:
        raise SourceAuthError(
            f"the record holds {len(events)} events, the statement signs {st.size}",
            code="BAD_PROOF",
            details=details,
        )
    leaves = tuple(leaf_hash(e) for e in events)
    if batch_root(st.first_seq, leaves).hex() != st.root:
        raise SourceAuthError(
            "the record's events are not the signed batch", code="BAD_PROOF", details=details
        )
    if record.sealed and len(record.sealed) != len(events):
        raise SourceEnvelopeError(
            f"the record holds {len(events)} events and {len(record.sealed)} ingest ciphertexts"
        )
    try:
        boxes = tuple(base64.b64decode(b, validate=True) for b in record.sealed)
        sealed_key = base64.b64decode(record.sealed_key, validate=True)
    except binascii.Error:
        raise SourceEnvelopeError("an ingest ciphertext or the sealed key is not base64") from None
    if bool(boxes) != (len(sealed_key) == 32):
        raise SourceEnvelopeError("sealed events need the record's 32-byte sealed_key")
    return OpenedBatch(st, record.signature, events, leaves, boxes, sealed_key)


def read_opened_batch_record(data: bytes, leaf_hashes: Sequence[bytes]) -> OpenedBatch:
    """A sealed batch record that :func:`open_batch_record` opened in the processor's
    worker process from these same bytes (ADR 0039), read again for what the event loop
    needs: the statement, the signature, the events' bytes and the ephemeral key. The
    events' ``leaf_hashes`` and the root check are the worker's; the ingest ciphertexts
    are not decoded. Raises ``SourceEnvelopeError`` when the bytes are not a sealed batch
    record of that many events (the caller then opens the record itself)."""
    record = _read_again(data, leaf_hashes)
    if len(record.sealed) != len(record.events):
        raise SourceEnvelopeError("the opening does not fit the record")
    try:
        sealed_key = base64.b64decode(record.sealed_key, validate=True)
    except binascii.Error:
        raise SourceEnvelopeError("the sealed key is not base64") from None
    if len(sealed_key) != 32:
        raise SourceEnvelopeError("sealed events need the record's 32-byte sealed_key")
    return OpenedBatch(
        record.statement,
        record.signature,
        tuple(bytes(e) for e in record.events),
        tuple(leaf_hashes),
        (),
        sealed_key,
        sealed_ahead=True,
    )


def read_checked_batch_record(data: bytes, leaf_hashes: Sequence[bytes]) -> OpenedBatch:
    """A batch record of events in clear that :func:`open_batch_record` opened in the
    processor's worker process from these same bytes (ADR 0042), read again for the
    statement, the signature and the events' bytes; the events' ``leaf_hashes`` and the
    root check are the worker's. Raises ``SourceEnvelopeError`` when the bytes are not a
    batch record of that many events in clear (the caller then opens the record
    itself, and a sealed one is refused as it always was)."""
    record = _read_again(data, leaf_hashes)
    if record.sealed or record.sealed_key:
        raise SourceEnvelopeError("the checking does not fit the record")
    return OpenedBatch(
        record.statement,
        record.signature,
        tuple(bytes(e) for e in record.events),
        tuple(leaf_hashes),
    )


def _read_again(data: bytes, leaf_hashes: Sequence[bytes]) -> SignedBatchRecord:
    """The record, when it holds as many events as the statement signs and the worker
    gave leaf hashes for (each 32 bytes)."""
    record = _decode(data)
    if not (
        len(record.events) == record.statement.size == len(leaf_hashes)
        and all(type(h) is bytes and len(h) == 32 for h in leaf_hashes)
    ):
        raise SourceEnvelopeError("the worker's answer does not fit the record")
    return record


def sign_batch_record(
    key: SigningKey,
    *,
    source_id: str,
    epoch: str,
    first_seq: int,
    canonical_events: Sequence[bytes],
    signed_at: str,
    signed_by: str | None = None,
    sealed: Sequence[bytes] = (),
    sealed_key: bytes = b"",
) -> tuple[BatchStatement, str, bytes]:
    """Sign one batch and encode its record: (statement, signature, record value).

    The statement and signature are exactly those of ``source.sign_batch`` over the same
    events (Ed25519 is deterministic), without building any per-event inclusion proof.
    Raises ``ValidationError`` for an empty batch or a statement field out of range.
    """
    if not canonical_events:
        raise ValidationError("a batch has at least one event")
    root = batch_root(first_seq, [leaf_hash(e) for e in canonical_events])
    fields: dict[str, object] = {
        "source_id": source_id,
        "key_id": key.key_id,
        "epoch": epoch,
        "first_seq": first_seq,
        "size": len(canonical_events),
        "root": root.hex(),
        "signed_at": signed_at,
    }
    if signed_by is not None:
        fields["signed_by"] = signed_by
    try:
        statement = msgspec.convert(fields, BatchStatement)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"cannot sign this batch: {exc}") from exc
    signature = base64.b64encode(key.sign(BATCH_CONTEXT + statement_bytes(statement))).decode()
    record = encode_batch_record(statement, signature, canonical_events, sealed, sealed_key)
    return statement, signature, record
