"""Block headers (schema ``careledger.block/1``): canonical bytes, hash, validation.

A block commits to a run of Kafka offsets ``[first_offset, last_offset]`` of one chain
(one partition): ``event_count`` events (the Merkle leaves, root ``merkle_root``) plus
``dead_lettered`` offsets rejected as invalid plus ``absent_offsets`` offsets that never
reached the processor (compacted/aborted transactions); every offset is accounted for.
Blocks are hash-linked through ``prev_hash`` (the ``block_hash`` of block ``height-1``;
64 zeros for the genesis block at height 0) and signed with Ed25519 over
``SIGNING_CONTEXT + header_bytes(h)`` (see ``signing.py``).

For a block without events (only dead-lettered/absent offsets) ``merkle_root`` is the
empty-tree root SHA-256("") and the event times should repeat ``created_at``.

``event_offsets`` (ADR 0014) commits to *which* offsets of the range are the events:
``offsets_digest`` of the events' Kafka offsets in index order. Headers signed before it
existed have no such member (``None``) and keep their exact bytes; a header with it
``null`` is not canonical.

``first_append_time`` / ``last_append_time`` (ADR 0015) are the earliest and latest broker
append time (Kafka ``LogAppendTime``) of the block's source-attested events: the times
at which the processor decided their keys' status, so that ``verify`` can check the same
decision. Both or neither; absent (not ``null``) when the block has no attested event and
in headers signed before them.

``event_records`` (ADR 0020) is set when some of the block's events came in *batch
records* (one Kafka record per source-signed batch): several events then share an offset.
It is the number of offsets of the range whose record carries the block's events, and the
accounting becomes ``event_records + dead_lettered + absent_offsets`` = the range's size
(``dead_lettered`` counts whole records; an event dead-lettered alone out of a chained
batch is accounted for by its batch, see ``batch_record.py``). ``event_offsets`` then has an
offset once per event it carries, in index order (non-decreasing). Absent otherwise, so
headers of one-event records keep their exact bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from ._msgspec_errors import translate_validation_error
from .errors import HeaderValidationError
from .event import is_valid_timestamp
from .hashing import EMPTY_ROOT
from .jcs import MAX_SAFE_INTEGER

__all__ = [
    "BLOCK_SCHEMA",
    "GENESIS_PREV_HASH",
    "SIGNING_CONTEXT",
    "BlockHeader",
    "block_hash",
    "decode_header",
    "header_bytes",
    "make_chain_id",
    "offsets_digest",
]

BLOCK_SCHEMA: Final = "careledger.block/1"
GENESIS_PREV_HASH: Final = "0" * 64
#: Domain separation prefix of block signatures.
SIGNING_CONTEXT: Final = b"careledger-block-v1\n"
#: Domain separation prefix of ``offsets_digest``.
OFFSETS_CONTEXT: Final = b"careledger-event-offsets-v1\n"

_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_KEY_ID = re.compile(r"\A[0-9a-f]{16}\Z")
#: printable ASCII without space: safe as a checkpoint origin line and in file names.
_CHAIN_ID = re.compile(r"\A[\x21-\x7e]{1,256}\Z")
_EMPTY_ROOT_HEX: Final = EMPTY_ROOT.hex()

_INT_FIELDS: Final = (
    "height",
    "event_count",
    "first_offset",
    "last_offset",
    "dead_lettered",
    "absent_offsets",
)
_TIME_FIELDS: Final = ("first_event_time", "last_event_time", "created_at")


def make_chain_id(origin: str, topic: str, partition: int) -> str:
    """``"<origin>/<topic>/<partition>"``, e.g. ``careledger.local/careledger.access-events/2``."""
    chain_id = f"{origin}/{topic}/{partition}"
    if partition < 0 or not _CHAIN_ID.match(chain_id):
        raise HeaderValidationError("chain_id", f"invalid chain id {chain_id!r}")
    return chain_id


class BlockHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Header of one block; validated on construction and on decoding."""

    schema: Literal["careledger.block/1"] = BLOCK_SCHEMA
    chain_id: str
    height: int
    prev_hash: str
    merkle_root: str
    event_count: int
    first_offset: int
    last_offset: int
    dead_lettered: int
    absent_offsets: int
    first_event_time: str
    last_event_time: str
    created_at: str
    key_id: str
    #: ``offsets_digest`` of the events' Kafka offsets; None in headers signed before
    #: ADR 0014 (the member is then absent from the canonical bytes)
    event_offsets: str | None = None
    #: broker append times of the block's source-attested events, earliest and latest
    #: (ADR 0015); None when it has none and in headers signed before them
    first_append_time: str | None = None
    last_append_time: str | None = None
    #: offsets of the range whose (batch) record carries the block's events (ADR 0020);
    #: None when every event is a record of its own
    event_records: int | None = None

    def __post_init__(self) -> None:
        if self.schema != BLOCK_SCHEMA:
            raise HeaderValidationError("schema", f"must be {BLOCK_SCHEMA!r}")
        if not isinstance(self.chain_id, str) or not _CHAIN_ID.match(self.chain_id):
            raise HeaderValidationError(
                "chain_id", "must be 1..256 printable ASCII characters without spaces"
            )
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if type(value) is not int:
                raise HeaderValidationError(name, "must be an integer")
            if not 0 <= value <= MAX_SAFE_INTEGER:
                raise HeaderValidationError(name, "must be between 0 and 2^53-1")
        for name in ("prev_hash", "merkle_root"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _HEX64.match(value):
                raise HeaderValidationError(name, "must be 64 lowercase hex digits")
        if self.event_offsets is not None and (
            not isinstance(self.event_offsets, str) or not _HEX64.match(self.event_offsets)
        ):
            raise HeaderValidationError("event_offsets", "must be 64 lowercase hex digits")
        if not isinstance(self.key_id, str) or not _KEY_ID.match(self.key_id):
            raise HeaderValidationError("key_id", "must be 16 lowercase hex digits")
        for name in _TIME_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not is_valid_timestamp(value):
                raise HeaderValidationError(
                    name, "must be a UTC timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ"
                )
        if (self.first_append_time is None) != (self.last_append_time is None):
            raise HeaderValidationError(
                "first_append_time", "first_append_time and last_append_time go together"
            )
        if self.first_append_time is not None:
            for name in ("first_append_time", "last_append_time"):
                value = getattr(self, name)
                if not isinstance(value, str) or not is_valid_timestamp(value):
                    raise HeaderValidationError(
                        name, "must be a UTC timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ"
                    )
            assert self.last_append_time is not None
            if self.last_append_time < self.first_append_time:
                raise HeaderValidationError(
                    "last_append_time", "must not be before first_append_time"
                )
        if (self.height == 0) != (self.prev_hash == GENESIS_PREV_HASH):
            raise HeaderValidationError(
                "prev_hash", "must be 64 zeros exactly when height is 0 (genesis)"
            )
        if self.last_offset < self.first_offset:
            raise HeaderValidationError("last_offset", "must not be below first_offset")
        span = self.last_offset - self.first_offset + 1
        if self.event_records is not None:
            if type(self.event_records) is not int or not self.event_records >= 1:
                raise HeaderValidationError("event_records", "must be a positive integer")
            if self.event_records > self.event_count:
                raise HeaderValidationError(
                    "event_records", "cannot exceed event_count (a record carries >= 1 event)"
                )
            if self.event_records + self.dead_lettered + self.absent_offsets != span:
                raise HeaderValidationError(
                    "event_records",
                    "event_records + dead_lettered + absent_offsets must equal "
                    f"last_offset - first_offset + 1 = {span}",
                )
        elif self.event_count + self.dead_lettered + self.absent_offsets != span:
            raise HeaderValidationError(
                "event_count",
                "event_count + dead_lettered + absent_offsets must equal "
                f"last_offset - first_offset + 1 = {span}",
            )
        if self.event_count == 0 and self.merkle_root != _EMPTY_ROOT_HEX:
            raise HeaderValidationError(
                "merkle_root", "a block without events has the empty-tree root SHA-256('')"
            )


_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_DECODER: Final = msgspec.json.Decoder(BlockHeader)


_OPTIONAL: Final = ("event_offsets", "first_append_time", "last_append_time", "event_records")


def header_bytes(h: BlockHeader) -> bytes:
    """RFC 8785 canonical bytes of the header (what is hashed and signed); an optional
    member that is None (``event_offsets`` before ADR 0014, the append times before ADR
    0015 or without attested events, ``event_records`` without batch records) is left
    out."""
    if any(getattr(h, name) is None for name in _OPTIONAL):
        fields = msgspec.structs.asdict(h)
        for name in _OPTIONAL:
            if fields[name] is None:
                del fields[name]
        return _ENCODER.encode(fields)
    return _ENCODER.encode(h)


def block_hash(h: BlockHeader) -> bytes:
    """SHA-256 of the canonical header bytes (32 bytes; ``.hex()`` for storage)."""
    return hashlib.sha256(header_bytes(h)).digest()


def offsets_digest(offsets: Iterable[int]) -> str:
    """The ``event_offsets`` of a block: hex SHA-256 over ``OFFSETS_CONTEXT`` and each
    event's Kafka offset as 8 bytes big-endian, in index order. Raises ``ValueError``
    for an offset outside 0..2^64-1."""
    h = hashlib.sha256(OFFSETS_CONTEXT)
    for offset in offsets:
        if type(offset) is not int or not 0 <= offset < 2**64:
            raise ValueError(f"not a Kafka offset: {offset!r}")
        h.update(offset.to_bytes(8, "big"))
    return h.hexdigest()


def decode_header(data: bytes) -> BlockHeader:
    """Strictly decode canonical header bytes.

    Raises :class:`HeaderValidationError` for malformed JSON, unknown/missing fields,
    wrong types, failed validation, and for bytes that are valid but not canonical
    (whitespace, member order, escapes, duplicate members): only one byte string may
    stand for a header, or its hash would be ambiguous.
    """
    try:
        header = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise translate_validation_error(exc, HeaderValidationError, {}, {}) from exc
    except msgspec.DecodeError as exc:
        raise HeaderValidationError("$", f"invalid JSON: {exc}") from exc
    if header_bytes(header) != data:
        raise HeaderValidationError("$", "not in canonical form (RFC 8785)")
    return header
