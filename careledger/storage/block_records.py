"""Stored blocks as records of the blocks topic, for replicas (ADR 0017).

After each successful store write the processor publishes every block it stored to
``Settings.topic_blocks`` (key = chain id, so one chain's blocks stay in order in one
partition). A record carries what a replica needs to re-create the primary's rows
*exactly* with ``ChainStore.write_blocks`` and nothing it could not check:

* the header's canonical bytes and its Ed25519 signature (hex), as stored;
* per chained record, its Kafka offset, its canonical bytes (embedded verbatim as JSON:
  they are RFC 8785 JSON) and, for a source-signed access event, its attestation
  (ADR 0010);
* for the events that came in one *batch record* (ADR 0020: they share its offset), the
  batch once, on the first of them (``WireBatch``: the signed statement, its signature,
  and the entries dead-lettered alone as ``(batch index, leaf hash)``), from which the
  replica derives the very ``source_batches`` row the processor wrote.

Every denormalised column (``kinds.RecordKind.values``), leaf hash, header column,
attestation and batch column is derived again from those, the same way the processor derives
them, so nothing on the wire is stored without being recomputed. The replica checks
the bytes (signature, canonical form, Merkle root, offsets digest, attestation proofs,
batch roots, links) before storing them (``replica.verify``).

A large block is split into *parts* (``part`` of ``parts``), each carrying the header
and signature, and a slice of the records starting at index ``first_index``; one part
holds at least one record and about ``MAX_PART_BYTES`` of canonical bytes. The
processor produces the parts of one block one after another to one partition.

``stored_block_records`` reads blocks back from a store as the same material
(``BlockMaterial``): what the processor republishes after a crash (``republish``) and
what ``careledger restore`` verifies in a replica before it copies anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.errors import InfrastructureError, ValidationError
from careledger_core.source import Attestation, BatchStatement, SignatureB64

__all__ = [
    "BLOCK_RECORD_SCHEMA",
    "MAX_PART_BYTES",
    "BlockMaterial",
    "BlockPart",
    "BlockPublishError",
    "BlockRecordError",
    "WireBatch",
    "WireRecord",
    "decode_part",
    "encode_block",
    "encode_material",
    "material_of",
    "newest_per_chain",
    "published_height",
    "record_published",
    "stored_block_records",
]

BLOCK_RECORD_SCHEMA: Final = "careledger.block-record/1"
#: canonical bytes per part (a part always holds at least one record)
MAX_PART_BYTES: Final = 1 << 20
#: room counted per record besides its canonical bytes (offset, attestation, JSON)
_RECORD_OVERHEAD: Final = 1024


class BlockPublishError(InfrastructureError):
    """Blocks could not be delivered to the blocks topic (Kafka down, timeout)."""

    code = "BLOCK_PUBLISH_FAILED"


class BlockRecordError(ValidationError):
    """A blocks-topic record that is not a block part (malformed JSON, wrong fields)."""

    code = "BLOCK_RECORD_MALFORMED"


class WireBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The batch record (ADR 0020) that events came in, on the first of its events."""

    statement: BatchStatement
    signature: SignatureB64
    #: (batch index, leaf hash hex) of the entries dead-lettered alone
    skipped: tuple[tuple[int, str], ...] = ()


class WireRecord(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True
):
    """One chained record of a block: Kafka offset, canonical bytes, attestation, and
    the batch record it came in when it is the first event of one (ADR 0020)."""

    offset: int
    canonical: msgspec.Raw
    attestation: Attestation | None = None
    batch: WireBatch | None = None


class BlockPart(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One record of the blocks topic (``careledger.block-record/1``)."""

    schema: Literal["careledger.block-record/1"]
    chain_id: str
    height: int
    block_hash: str
    part: int
    parts: int
    first_index: int
    header: msgspec.Raw
    signature: str
    records: tuple[WireRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class BlockMaterial:
    """A block as bytes to check: the header's canonical bytes, the signature, the
    records; ``block_hash`` (hex) and ``chain_id``/``height`` as the carrier claims."""

    chain_id: str
    height: int
    block_hash: str
    header: bytes
    signature: str
    records: tuple[WireRecord, ...]


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(BlockPart)


def material_of(block: SealedBlock) -> BlockMaterial:
    """The material of a block the processor just sealed."""
    h = block.header
    records = []
    previous = -1
    for ev in block.events:
        batch = None
        if ev.batch is not None and ev.offset != previous:  # the record's first event
            info = ev.batch
            batch = WireBatch(
                statement=info.statement,
                signature=info.signature,
                skipped=tuple((i, leaf.hex()) for i, leaf in info.skipped),
            )
        previous = ev.offset
        records.append(
            WireRecord(
                offset=ev.offset,
                canonical=msgspec.Raw(ev.canonical),
                attestation=ev.attestation,
                batch=batch,
            )
        )
    return BlockMaterial(
        h.chain_id, h.height, block.block_hash.hex(), block.header_bytes, block.signature.hex(),
        tuple(records),
    )  # fmt: skip


def encode_material(m: BlockMaterial, max_part_bytes: int = MAX_PART_BYTES) -> list[bytes]:
    """The blocks-topic record values of one block, in part order."""
    groups: list[list[WireRecord]] = [[]]
    size = 0
    for record in m.records:
        cost = len(record.canonical) + _RECORD_OVERHEAD
        if groups[-1] and size + cost > max_part_bytes:
            groups.append([])
            size = 0
        groups[-1].append(record)
        size += cost
    header = msgspec.Raw(m.header)
    values = []
    first = 0
    for i, group in enumerate(groups):
        values.append(
            _ENCODER.encode(
                BlockPart(
                    schema=BLOCK_RECORD_SCHEMA,
                    chain_id=m.chain_id,
                    height=m.height,
                    block_hash=m.block_hash,
                    part=i,
                    parts=len(groups),
                    first_index=first,
                    header=header,
                    signature=m.signature,
                    records=tuple(group),
                )
            )
        )
        first += len(group)
    return values


def encode_block(block: SealedBlock, max_part_bytes: int = MAX_PART_BYTES) -> list[bytes]:
    """``encode_material(material_of(block))``."""
    return encode_material(material_of(block), max_part_bytes)


def decode_part(value: bytes | None) -> BlockPart:
    """Decode one record value; raises :class:`BlockRecordError` if it is not a part.

    Only the shape is checked here; nothing in it is trusted until verified.
    """
    if not value:
        raise BlockRecordError("empty record")
    try:
        part = _DECODER.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BlockRecordError(f"not a block record: {exc}") from exc
    if not (
        0 <= part.height < 2**63
        and 1 <= part.parts <= 1 << 20
        and 0 <= part.part < part.parts
        and 0 <= part.first_index < 2**32
        and all(0 <= r.offset < 2**63 for r in part.records)
    ):
        raise BlockRecordError("part, parts, height, index or offset out of range")
    if part.parts > 1 and not part.records:
        raise BlockRecordError("a part of a split block holds no record")
    return part


# --------------------------------------------------------------------------- from a store


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


_STATEMENT: Final = msgspec.json.Decoder(BatchStatement)


def _attestation(statement: Any, signature: Any, index: Any, proof: Any) -> Attestation | None:
    """An attestation row as the processor wrote it, or None if it does not decode."""
    try:
        proof_text = _text(proof)
        return Attestation(
            statement=_STATEMENT.decode(_raw(statement)),
            signature=_text(signature),
            index=int(index),
            proof=tuple(proof_text.split(",")) if proof_text else (),
        )
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError, TypeError):
        return None


def _batch(statement: Any, signature: Any, skipped: Any) -> WireBatch | None:
    """A ``source_batches`` row as the processor wrote it, or None if it does not decode."""
    try:
        text = _text(skipped)
        entries = []
        for part in text.split(",") if text else ():
            index, leaf = part.split(":")
            entries.append((int(index), leaf))
        return msgspec.convert(
            {
                "statement": _STATEMENT.decode(_raw(statement)),
                "signature": _text(signature),
                "skipped": entries,
            },
            WireBatch,
        )
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError, TypeError):
        return None


def stored_block_records(
    store: ChainStore, chain_id: str, from_height: int, to_height: int
) -> list[BlockMaterial]:
    """The stored blocks of ``chain_id`` with ``from_height <= height <= to_height`` as
    material, in height order: one per header row (several if a height has several),
    each with the record rows and attestation rows under its block hash, by index, and
    each ``source_batches`` row on the first record at its offset (ADR 0020).

    Rows are untrusted: an attestation or batch row that does not decode is left out
    (the block then fails verification if its signature depends on it: it does not,
    but the replica's attestation and batch checks and ``verify`` see the difference)."""
    headers = []
    for h in store.headers(chain_id, from_height):
        if h.height > to_height:
            break
        headers.append(h)
    if not headers:
        return []
    top = max(h.height for h in headers)
    records: dict[tuple[int, str], list[tuple[int, int, bytes]]] = {}
    for ev in store.events(chain_id, from_height, top):
        records.setdefault((ev.height, _text(ev.block_hash)), []).append(
            (ev.idx, ev.kafka_offset, _raw(ev.canonical))
        )
    attestations: dict[tuple[int, str, int], Attestation | None] = {}
    for height, digest, idx, statement, signature, index, proof in store.backend.execute(
        "SELECT height, block_hash, idx, statement, signature, batch_index, proof "
        f"FROM {store.db}.source_attestations "
        "WHERE chain_id = %(chain)s AND height >= %(from)s AND height <= %(to)s "
        "ORDER BY height, idx",
        {"chain": chain_id, "from": from_height, "to": top},
    ):
        key = (int(height), _text(digest), int(idx))
        attestations.setdefault(key, _attestation(statement, signature, index, proof))
    batches: dict[tuple[int, str, int], WireBatch | None] = {}
    for height, digest, offset, statement, signature, skipped in store.backend.execute(
        "SELECT height, block_hash, kafka_offset, statement, signature, skipped "
        f"FROM {store.db}.source_batches "
        "WHERE chain_id = %(chain)s AND height >= %(from)s AND height <= %(to)s "
        "ORDER BY height, kafka_offset",
        {"chain": chain_id, "from": from_height, "to": top},
    ):
        key = (int(height), _text(digest), int(offset))
        batches.setdefault(key, _batch(statement, signature, skipped))
    out = []
    for h in headers:
        digest = _text(h.block_hash)
        rows = sorted(records.get((h.height, digest), ()), key=lambda r: (r[0], r[1]))
        out.append(
            BlockMaterial(
                h.chain_id,
                h.height,
                digest,
                _raw(h.header),
                _text(h.signature),
                tuple(
                    WireRecord(
                        offset=offset,
                        canonical=msgspec.Raw(canonical),
                        attestation=attestations.get((h.height, digest, idx)),
                        batch=None
                        if k and rows[k - 1][1] == offset
                        else batches.get((h.height, digest, offset)),
                    )
                    for k, (idx, offset, canonical) in enumerate(rows)
                ),
            )
        )
    return out


# --------------------------------------------------------------------------- publications


def published_height(store: ChainStore, chain_id: str) -> int | None:
    """The newest height of ``chain_id`` the processor recorded as published to the
    blocks topic (``block_publications``), or None if it recorded none."""
    rows = store.backend.execute(
        f"SELECT count(), max(height) FROM {store.db}.block_publications "
        "WHERE chain_id = %(chain)s",
        {"chain": chain_id},
    )
    if not rows or int(rows[0][0]) == 0:
        return None
    return int(rows[0][1])


def record_published(store: ChainStore, heads: Sequence[tuple[str, int, str]]) -> None:
    """Record ``(chain id, height, block hash)`` of each chain's newest block published."""
    if heads:
        store.backend.insert(
            f"{store.db}.block_publications", ("chain_id", "height", "block_hash"), list(heads)
        )


def newest_per_chain(blocks: Sequence[SealedBlock]) -> list[tuple[str, int, str]]:
    """``(chain id, height, block hash)`` of the highest of ``blocks`` in each chain."""
    newest: dict[str, SealedBlock] = {}
    for block in blocks:
        h = block.header
        if h.chain_id not in newest or newest[h.chain_id].header.height < h.height:
            newest[h.chain_id] = block
    return [(c, b.header.height, b.block_hash.hex()) for c, b in sorted(newest.items())]
