"""A realistic signed ledger of batch records (ADR 0020), written straight to ClickHouse,
for ``careledger benchmark-verify``.

No processor and no Kafka: the blocks are sealed here the way the processor seals them
(one offset per source-signed batch record, its events sharing it, ``event_records``,
the offsets digest with an offset once per event, broker append times), signed with a
fresh processor key, and stored with ``ChainStore.write_blocks``. The source's key is
registered by a fresh registrar on the sources chain (sealed by the processor's own
``PartitionChain``), so ``verify`` runs every source check too.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import msgspec

from careledger.storage.kinds import ACCESS, REFERENCE
from careledger.storage.store import BatchInfo, ChainedEvent, ChainStore, SealedBlock
from careledger_core.block import (
    GENESIS_PREV_HASH,
    BlockHeader,
    block_hash,
    header_bytes,
    offsets_digest,
)
from careledger_core.event import canonical_event_bytes, decode_and_canonicalize
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import merkle_root
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes
from careledger_core.signing import SigningKey, format_public_key
from careledger_core.source import KeyEventStatement, sign_batch, sign_key_event, timestamp_of
from processors.chainer import PartitionChain

SOURCE_ID = "bench-ehr"


@dataclass(frozen=True)
class BenchLedger:
    """What was written and the keys a verifier must trust."""

    chains: list[str]
    events: int
    blocks: int
    processor_key: str  # "ed25519:<base64>"
    registrar_key: str


def _key_event(source: SigningKey, registrar: SigningKey, valid_from: str) -> bytes:
    statement = msgspec.convert(
        {
            "source_id": SOURCE_ID,
            "key_id": source.key_id,
            "public_key": base64.b64encode(source.public_key.raw).decode(),
            "status": "active",
            "valid_from": valid_from,
            "registrar_key_id": registrar.key_id,
        },
        KeyEventStatement,
    )
    record = ReferenceRecord(
        kind="source-key",
        record_id=f"{SOURCE_ID}/{source.key_id}",
        version=1,
        recorded_at=valid_from,
        effective_at=valid_from,
        body={
            "statement": msgspec.to_builtins(statement),
            "signature": sign_key_event(registrar, statement),
        },
    )
    return canonical_reference_bytes(record)


def _payloads(count: int, start: dt.datetime) -> Iterator[bytes]:
    from producers.simulator.events import simulate
    from producers.simulator.model import HospitalModel

    model = HospitalModel(seed=7, staff=400, patients=3000)
    for event in simulate(model, count=count, seed=7, start=start):
        yield canonical_event_bytes(event)


def _seal(
    chain_id: str,
    height: int,
    prev_hash: str,
    first_offset: int,
    batches: Sequence[tuple[BatchInfo, list[bytes]]],
    key: SigningKey,
    now: float,
) -> SealedBlock:
    events: list[ChainedEvent] = []
    offset = first_offset
    for info, entries in batches:
        for i, data in enumerate(entries):
            event, canonical = decode_and_canonicalize(data)
            events.append(
                ChainedEvent(
                    offset, event, canonical, leaf_hash(canonical), batch=info, batch_index=i
                )
            )
        offset += 1
    times = [ACCESS.time_of(e.event) for e in events]
    header = BlockHeader(
        chain_id=chain_id,
        height=height,
        prev_hash=prev_hash,
        merkle_root=merkle_root([e.leaf_hash for e in events]).hex(),
        event_count=len(events),
        first_offset=first_offset,
        last_offset=offset - 1,
        dead_lettered=0,
        absent_offsets=0,
        first_event_time=min(times),
        last_event_time=max(times),
        created_at=timestamp_of(now),
        key_id=key.key_id,
        event_offsets=offsets_digest(e.offset for e in events),
        first_append_time=timestamp_of(now - 1),
        last_append_time=timestamp_of(now),
        event_records=len(batches),
    )
    return SealedBlock(
        header, header_bytes(header), block_hash(header), key.sign_header(header), events
    )


def build_ledger(
    store: ChainStore,
    chain_ids: Sequence[str],
    sources_chain: str,
    *,
    events: int,
    batch_size: int = 500,
    block_events: int = 1000,
) -> BenchLedger:
    """Write ``events`` simulated access events, signed in batches of ``batch_size`` and
    sealed in blocks of about ``block_events``, spread round-robin over ``chain_ids``
    (one source, one sequence), plus the source key's registration on ``sources_chain``."""
    processor = SigningKey.from_seed(os.urandom(32))
    registrar = SigningKey.from_seed(os.urandom(32))
    source = SigningKey.from_seed(os.urandom(32))
    epoch = os.urandom(8).hex()
    base = dt.datetime.now(dt.UTC).timestamp() - 3600.0
    valid_from = timestamp_of(base - 86_400.0)

    reg = PartitionChain(sources_chain, max_event_bytes=65536, kind=REFERENCE, next_offset=0)
    rejected = reg.add(0, _key_event(source, registrar, valid_from), SOURCE_ID.encode(), base, base)
    if rejected is not None:
        raise RuntimeError(f"the source key registration was rejected: {rejected}")
    sealed = reg.seal(processor, now=base)
    if sealed is None:
        raise RuntimeError("the source key registration did not seal")
    store.write_blocks([sealed])

    start = dt.datetime.fromtimestamp(base - 86_400.0 / 2, dt.UTC)
    payloads = _payloads(events, start)
    per_block = max(1, block_events // batch_size)
    state = {c: (0, GENESIS_PREV_HASH, 0) for c in chain_ids}  # height, prev, next offset
    seq = 1
    written = blocks = 0
    pending: list[SealedBlock] = []
    turn = 0
    while written < events:
        chain = chain_ids[turn % len(chain_ids)]
        turn += 1
        height, prev, offset = state[chain]
        now = base + 60.0 + turn * 0.01
        batches: list[tuple[BatchInfo, list[bytes]]] = []
        for _ in range(per_block):
            entries = [
                p for _, p in zip(range(min(batch_size, events - written)), payloads, strict=False)
            ]
            if not entries:
                break
            atts = sign_batch(
                source,
                source_id=SOURCE_ID,
                epoch=epoch,
                first_seq=seq,
                event_leaf_hashes=[leaf_hash(e) for e in entries],
                signed_at=timestamp_of(now - 2.0),
            )
            seq += len(entries)
            written += len(entries)
            batches.append((BatchInfo(atts[0].statement, atts[0].signature), entries))
        block = _seal(chain, height, prev, offset, batches, processor, now)
        state[chain] = (height + 1, block.block_hash.hex(), block.header.last_offset + 1)
        pending.append(block)
        blocks += 1
        if sum(len(b.events) for b in pending) >= 20_000:
            store.write_blocks(pending)
            pending = []
    if pending:
        store.write_blocks(pending)
    return BenchLedger(
        chains=list(chain_ids),
        events=written,
        blocks=blocks,
        processor_key=format_public_key(processor.public_key),
        registrar_key=format_public_key(registrar.public_key),
    )
