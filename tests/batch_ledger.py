"""Ledgers of batch records (ADR 0020) built in memory, for the verifier's and the
replica's attack tests.

A batch record (``careledger.signed-batch/1``) is one Kafka offset carrying a whole
source-signed batch; its chained events share that offset, and the entries dead-lettered
alone (``skipped``) stay in the signed root. The blocks are sealed here the way the
processor seals them (``event_records``, the offsets digest with an offset once per
event, the broker append times), signed with the ledger builder's processor key; the
source's key is registered on the sources chain by ``tests.ledger_builder``. Nothing here
needs the processor: ``ChainStore.write_blocks`` stores the blocks in a real database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from careledger.storage.kinds import ACCESS
from careledger.storage.store import BatchInfo, ChainedEvent, SealedBlock
from careledger_core.block import (
    GENESIS_PREV_HASH,
    BlockHeader,
    block_hash,
    header_bytes,
    offsets_digest,
)
from careledger_core.event import decode_and_canonicalize
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import merkle_root
from careledger_core.signing import SigningKey
from careledger_core.source import sign_batch, timestamp_of
from tests.ledger_builder import (
    ACCESS_CHAIN,
    EPOCH,
    PROCESSOR,
    SOURCE,
    SOURCE_ID,
    T0,
    access_payloads,
)

#: the bytes of a batch entry the processor dead-letters alone (not an access event)
BAD_ENTRY = b'{"schema":"careledger.access-event/1","broken":true}'


@dataclass(frozen=True)
class Batch:
    """A source-signed batch sent as one record: ``payloads`` in batch order; the
    entries at ``skipped`` are dead-lettered alone (their bytes are ``BAD_ENTRY``)."""

    payloads: Sequence[bytes]
    first_seq: int
    skipped: frozenset[int] = frozenset()
    key: SigningKey = SOURCE
    source_id: str = SOURCE_ID
    epoch: str = EPOCH
    signed_by: str | None = None
    #: sent as one signed event per record (``careledger.signed-event/1``), not a batch
    single: bool = False
    #: seconds after T0 it is signed at
    at: float = 0.0


@dataclass(frozen=True)
class Dead:
    """A record dead-lettered whole (not an access event at all)."""


def sign(batch: Batch) -> tuple[list[bytes], BatchInfo, list[object]]:
    """The batch's entry bytes, its ``BatchInfo`` and one attestation per entry."""
    entries = [BAD_ENTRY if i in batch.skipped else p for i, p in enumerate(batch.payloads)]
    leaves = [leaf_hash(e) for e in entries]
    atts = sign_batch(
        batch.key,
        source_id=batch.source_id,
        epoch=batch.epoch,
        first_seq=batch.first_seq,
        event_leaf_hashes=leaves,
        signed_at=timestamp_of(T0 + batch.at),
        signed_by=batch.signed_by,
    )
    skipped = tuple((i, leaves[i]) for i in sorted(batch.skipped))
    info = BatchInfo(atts[0].statement, atts[0].signature, skipped)
    return entries, info, list(atts)


def chained(
    offset: int, batch: Batch, signed: tuple[list[bytes], BatchInfo, list[object]]
) -> list[ChainedEvent]:
    entries, info, atts = signed
    out = []
    for i, data in enumerate(entries):
        if i in batch.skipped:
            continue
        event, canonical = decode_and_canonicalize(data)
        assert canonical == data
        if batch.single:
            from careledger_core.source import Attestation

            att = atts[i]
            assert isinstance(att, Attestation)
            out.append(ChainedEvent(offset, event, canonical, leaf_hash(canonical), att))
        else:
            out.append(
                ChainedEvent(
                    offset, event, canonical, leaf_hash(canonical), batch=info, batch_index=i
                )
            )
    return out


def seal(
    chain_id: str,
    height: int,
    prev_hash: str,
    first_offset: int,
    records: Sequence[Batch | Dead | list[ChainedEvent]],
    *,
    key: SigningKey = PROCESSOR,
    created: float | None = None,
) -> SealedBlock:
    """One block over ``records`` (one offset each, from ``first_offset``); a
    ``list[ChainedEvent]`` is a record chained as given (its offsets are replaced)."""
    events: list[ChainedEvent] = []
    dead = 0
    carrying = 0
    offset = first_offset
    for rec in records:
        if isinstance(rec, Dead):
            dead += 1
        elif isinstance(rec, Batch):
            if rec.single:
                for i in range(len(rec.payloads)):
                    one = Batch([rec.payloads[i]], rec.first_seq + i, key=rec.key, single=True)
                    events += chained(offset, one, sign(one))
                    carrying += 1
                    offset += 1
                continue
            events += chained(offset, rec, sign(rec))
            carrying += 1
        else:
            events += [
                ChainedEvent(
                    offset, e.event, e.canonical, e.leaf_hash, e.attestation, e.batch, e.batch_index
                )
                for e in rec
            ]
            carrying += 1
        offset += 1
    now = T0 + 60 * height if created is None else created
    times = [ACCESS.time_of(e.event) for e in events]
    header = BlockHeader(
        chain_id=chain_id,
        height=height,
        prev_hash=prev_hash,
        merkle_root=merkle_root([e.leaf_hash for e in events]).hex(),
        event_count=len(events),
        first_offset=first_offset,
        last_offset=offset - 1,
        dead_lettered=dead,
        absent_offsets=0,
        first_event_time=min(times) if times else timestamp_of(now),
        last_event_time=max(times) if times else timestamp_of(now),
        created_at=timestamp_of(now),
        key_id=key.key_id,
        event_offsets=offsets_digest(e.offset for e in events),
        first_append_time=timestamp_of(now - 5) if events else None,
        last_append_time=timestamp_of(now) if events else None,
        event_records=carrying if carrying else None,
    )
    return SealedBlock(
        header, header_bytes(header), block_hash(header), key.sign_header(header), events
    )


def chain_of(
    blocks: Sequence[Sequence[Batch | Dead | list[ChainedEvent]]],
    chain_id: str = ACCESS_CHAIN,
    *,
    first_offset: int = 0,
) -> list[SealedBlock]:
    """Blocks from height 0, each over its records, their offset ranges touching."""
    out: list[SealedBlock] = []
    prev = GENESIS_PREV_HASH
    offset = first_offset
    for height, records in enumerate(blocks):
        block = seal(chain_id, height, prev, offset, records)
        out.append(block)
        prev = block.block_hash.hex()
        offset = block.header.last_offset + 1
    return out


def payloads(count: int, seed: int = 5) -> list[bytes]:
    """``count`` distinct canonical access events."""
    out = access_payloads(count, seed=seed)
    assert len({hashlib.sha256(p).digest() for p in out}) == count
    return out


def standard_batches(p: Sequence[bytes] | None = None) -> list[list[Batch | Dead]]:
    """The records of the standard batch ledger, block by block (seq 1..17, 16 chained):

    * height 0: offset 0 batch A (seq 1-4, idx 0-3), 1 dead-lettered, 2 batch B (seq 5-7,
      entry 1 = seq 6 dead-lettered alone; idx 4-5), 3 one signed event (seq 8, idx 6);
    * height 1: offset 4 batch C (seq 9-11, idx 0-2), 5 batch D (seq 12-15, idx 3-6);
    * height 2: offset 6 batch E (seq 16-17, idx 0-1), 7 dead-lettered.
    """
    p = list(p if p is not None else payloads(20))
    return [
        [
            Batch(p[0:4], 1),
            Dead(),
            Batch(p[4:7], 5, skipped=frozenset({1})),
            Batch(p[7:8], 8, single=True),
        ],
        [Batch(p[8:11], 9), Batch(p[11:15], 12)],
        [Batch(p[15:17], 16), Dead()],
    ]


def batch_ledger(chain_id: str = ACCESS_CHAIN) -> list[SealedBlock]:
    """The standard batch ledger (``standard_batches``) on ``chain_id``."""
    return chain_of(standard_batches(), chain_id)
