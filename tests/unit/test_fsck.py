"""The chain verifier's logic, over an in-memory reader (the real store: test_tamper.py).

Chains are built by the real chainer (``processors.chainer.PartitionChain``) from
simulated events and turned into the exact rows ``ChainStore.write_blocks`` stores
(strings as bytes, as the reader returns them). Each test tampers with the rows
the way someone with write access to ClickHouse could, and checks the exact
finding code and where it points.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Sequence

import msgspec
import pytest

from careledger.storage.store import SealedBlock, StoredEvent, StoredHeader
from careledger_core.block import BlockHeader, block_hash, header_bytes
from careledger_core.event import canonical_event_bytes, decode_event
from careledger_core.findings import Finding, FindingCode, Severity
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey, TrustedKeys
from processors.chainer import PartitionChain
from producers.simulator import HospitalModel, simulate
from verifiers.integrity.fsck import ChainReport, VerifiedHead, verify_chain

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger fsck test key").digest())
OTHER_KEY = SigningKey.from_seed(hashlib.sha256(b"someone else's key").digest())
TRUSTED = TrustedKeys([KEY.public_key])
CHAIN = "careledger.local/careledger.access-events/0"
C = FindingCode


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    model = HospitalModel(seed=3, staff=60, patients=300)
    return [canonical_event_bytes(e) for e in simulate(model, count=400, seed=3)]


def build_blocks(
    payloads: Sequence[bytes],
    *,
    chain_id: str = CHAIN,
    blocks: int = 5,
    per_block: int = 20,
    key: SigningKey = KEY,
    first_offset: int = 0,
) -> list[SealedBlock]:
    chain = PartitionChain(chain_id, max_event_bytes=65536)
    sealed: list[SealedBlock] = []
    offset = first_offset
    it = iter(payloads)
    for b in range(blocks):
        for _ in range(per_block):
            assert chain.add(offset, next(it), b"k", 0.0, 0.0) is None
            offset += 1
        block = chain.seal(key, now=1_800_000_000.0 + b)
        assert block is not None
        sealed.append(block)
    return sealed


def header_row(block: SealedBlock) -> StoredHeader:
    h = block.header
    return StoredHeader(
        h.chain_id,
        h.height,
        block.block_hash.hex().encode(),
        h.prev_hash.encode(),
        h.merkle_root.encode(),
        h.event_count,
        h.first_offset,
        h.last_offset,
        h.dead_lettered,
        h.absent_offsets,
        h.first_event_time.encode(),
        h.last_event_time.encode(),
        h.created_at.encode(),
        h.key_id.encode(),
        block.header_bytes,
        block.signature.hex().encode(),
    )


def event_rows(block: SealedBlock) -> list[StoredEvent]:
    h = block.header
    digest = block.block_hash.hex().encode()
    return [
        StoredEvent(
            h.chain_id,
            h.height,
            idx,
            digest,
            ev.offset,
            ev.event.event_id.encode(),
            ev.event.occurred_at.encode(),
            ev.event.actor.id.encode(),
            ev.event.patient.id.encode(),
            ev.event.action.encode(),
            ev.event.outcome,
            ev.event.source.system.encode(),
            dt.date.fromisoformat(ev.event.occurred_at[:10]),
            ev.canonical,
            ev.leaf_hash.hex().encode(),
        )
        for idx, ev in enumerate(block.events)
    ]


class FakeReader:
    """The ChainReader methods over two lists, with the store's ordering."""

    def __init__(self, blocks: Sequence[SealedBlock] = ()) -> None:
        self.header_rows: list[StoredHeader] = [header_row(b) for b in blocks]
        self.event_rows: list[StoredEvent] = [r for b in blocks for r in event_rows(b)]
        self.event_queries = 0

    def chain_ids(self) -> list[str]:
        return sorted(
            {h.chain_id for h in self.header_rows} | {e.chain_id for e in self.event_rows}
        )

    def headers(
        self, chain_id: str, from_height: int = 0, page_size: int = 500
    ) -> Iterator[StoredHeader]:
        rows = sorted(
            (h for h in self.header_rows if h.chain_id == chain_id and h.height >= from_height),
            key=lambda h: (h.height, h.block_hash),
        )
        yield from rows

    def events(self, chain_id: str, from_height: int, to_height: int) -> list[StoredEvent]:
        self.event_queries += 1
        return sorted(
            (
                e
                for e in self.event_rows
                if e.chain_id == chain_id and from_height <= e.height <= to_height
            ),
            key=lambda e: (e.height, e.idx, e.kafka_offset),
        )

    # -- tampering helpers ---------------------------------------------------------
    def event(self, height: int, idx: int) -> StoredEvent:
        return next(e for e in self.event_rows if e.height == height and e.idx == idx)

    def update_event(self, height: int, idx: int, **changes: object) -> StoredEvent:
        i = next(k for k, e in enumerate(self.event_rows) if e.height == height and e.idx == idx)
        self.event_rows[i] = dataclasses.replace(self.event_rows[i], **changes)  # type: ignore[arg-type]
        return self.event_rows[i]

    def delete_events(self, height: int, idx: int | None = None) -> None:
        self.event_rows = [
            e for e in self.event_rows if not (e.height == height and (idx is None or e.idx == idx))
        ]

    def header(self, height: int) -> StoredHeader:
        return next(h for h in self.header_rows if h.height == height)

    def update_header(self, height: int, **changes: object) -> None:
        i = next(k for k, h in enumerate(self.header_rows) if h.height == height)
        self.header_rows[i] = dataclasses.replace(self.header_rows[i], **changes)  # type: ignore[arg-type]

    def delete_header(self, height: int) -> None:
        self.header_rows = [h for h in self.header_rows if h.height != height]

    def replace_block_header(self, height: int, row: StoredHeader) -> None:
        """Swap in a forged header and point the block's event rows at its hash."""
        self.delete_header(height)
        self.header_rows.append(row)
        self.event_rows = [
            dataclasses.replace(e, block_hash=row.block_hash) if e.height == height else e
            for e in self.event_rows
        ]


def verify(reader: FakeReader, **kwargs: object) -> ChainReport:
    return verify_chain(reader, CHAIN, TRUSTED, **kwargs)  # type: ignore[arg-type]


def where(report: ChainReport) -> set[tuple[str, int | None, int | None]]:
    return {(str(f.code), f.height, f.event_index) for f in report.findings}


def codes(report: ChainReport) -> set[str]:
    return {str(f.code) for f in report.findings}


def only(report: ChainReport, code: FindingCode) -> Finding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, report.findings
    return found[0]


def resign(
    block: SealedBlock, key: SigningKey = KEY, **changes: object
) -> tuple[StoredHeader, str]:
    """A header row for ``block`` with header fields changed and signed by ``key``
    (what an attacker holding ``key`` could store). Returns (row, new hash hex)."""
    fields = msgspec.structs.asdict(block.header)
    fields.update(changes)
    fields.setdefault("key_id", key.key_id)
    if "key_id" not in changes:
        fields["key_id"] = key.key_id
    header = BlockHeader(**fields)
    forged = SealedBlock(
        header, header_bytes(header), block_hash(header), key.sign_header(header), block.events
    )
    return header_row(forged), block_hash(header).hex()


# --------------------------------------------------------------------------- intact


def test_intact_chain_verifies_clean(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    report = verify(FakeReader(blocks))
    assert report.findings == []
    assert report.result == "intact" and not report.tampered
    assert (report.blocks, report.events) == (5, 100)
    assert report.head == VerifiedHead(4, blocks[-1].block_hash.hex(), 99)
    assert report.summary()["head_height"] == 4


def test_streaming_in_small_batches_gives_the_same_result(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_event(3, 4, patient_id=b"forged")
    whole = verify(reader)
    reader.event_queries = 0
    small = verify(reader, page_size=2, batch_events=1)
    assert where(whole) == where(small) == {("EVENT_FIELD_MISMATCH", 3, 4)}
    assert small.events == whole.events == 100
    assert reader.event_queries == 6  # one per block, then the rows above the head


def test_empty_chain_is_intact() -> None:
    report = verify(FakeReader())
    assert report.findings == [] and report.head is None and report.result == "intact"


def test_block_with_dead_lettered_offsets_verifies(payloads: list[bytes]) -> None:
    chain = PartitionChain(CHAIN, max_event_bytes=65536)
    chain.add(0, payloads[0], None, 0.0, 0.0)
    assert chain.add(1, b"{not json", None, 0.0, 0.0) is not None
    chain.add(2, payloads[1], None, 0.0, 0.0)
    first = chain.seal(KEY, 1_800_000_000.0)
    chain.add(3, b"[]", None, 0.0, 0.0)  # a block of one dead-lettered record only
    second = chain.seal(KEY, 1_800_000_001.0)
    assert first is not None and second is not None
    report = verify(FakeReader([first, second]))
    assert report.findings == [] and report.events == 2 and report.blocks == 2


# --------------------------------------------------------------------------- events


WITHHELD = "(identifier withheld: read the row at this location)"


def test_modified_event_bytes(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    row = reader.event(2, 7)
    forged = row.canonical.replace(row.patient_id, b"P-FORGED", 1)
    assert forged != row.canonical
    reader.update_event(2, 7, canonical=forged)
    report = verify(reader)
    assert where(report) == {
        ("EVENT_HASH_MISMATCH", 2, 7),
        ("EVENT_FIELD_MISMATCH", 2, 7),
        ("MERKLE_ROOT_MISMATCH", 2, None),
    }
    finding = only(report, C.EVENT_HASH_MISMATCH)
    assert finding.event_id == row.event_id.decode() and finding.chain_id == CHAIN
    assert finding.severity == Severity.CRITICAL
    mismatch = only(report, C.EVENT_FIELD_MISMATCH)
    # the column is named, the patient ids are not (findings become alerts)
    assert mismatch.details["columns"] == {"patient_id": {"column": WITHHELD, "event": WITHHELD}}
    assert row.patient_id.decode() not in repr(mismatch.to_dict())
    assert "P-FORGED" not in repr(mismatch.to_dict())
    assert report.result == "tampered"


def test_modified_event_bytes_with_matching_leaf_hash(payloads: list[bytes]) -> None:
    """The attacker also rewrites the stored leaf hash: the signed root still tells."""
    reader = FakeReader(build_blocks(payloads))
    row = reader.event(1, 3)
    event = decode_event(row.canonical)
    forged = canonical_event_bytes(
        msgspec.structs.replace(event, actor=msgspec.structs.replace(event.actor, name="X"))
    )
    reader.update_event(1, 3, canonical=forged, leaf_hash=leaf_hash(forged).hex().encode())
    assert where(verify(reader)) == {("MERKLE_ROOT_MISMATCH", 1, None)}


def test_modified_denormalised_column(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_event(4, 19, outcome=8, action=b"D")
    report = verify(reader)
    assert where(report) == {("EVENT_FIELD_MISMATCH", 4, 19)}
    assert set(only(report, C.EVENT_FIELD_MISMATCH).details["columns"]) == {"outcome", "action"}


def test_modified_stored_leaf_hash(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_event(0, 0, leaf_hash=b"00" * 32)
    report = verify(reader)
    assert where(report) == {("EVENT_HASH_MISMATCH", 0, 0)}


def test_non_canonical_event_bytes(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    row = reader.event(2, 2)
    spaced = json.dumps(json.loads(row.canonical), indent=1).encode()
    reader.update_event(2, 2, canonical=spaced, leaf_hash=leaf_hash(spaced).hex().encode())
    report = verify(reader)
    assert where(report) == {("EVENT_NOT_CANONICAL", 2, 2), ("MERKLE_ROOT_MISMATCH", 2, None)}


def test_invalid_event_bytes(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_event(2, 5, canonical=b'{"schema":"nope"}')
    report = verify(reader)
    assert ("EVENT_NOT_CANONICAL", 2, 5) in where(report)
    assert ("EVENT_HASH_MISMATCH", 2, 5) in where(report)


def test_deleted_event(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.delete_events(3, 11)
    report = verify(reader)
    assert where(report) == {("EVENT_MISSING", 3, 11), ("EVENT_COUNT_MISMATCH", 3, None)}


def test_inserted_event_beyond_the_block(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    reader = FakeReader(blocks)
    forged = dataclasses.replace(reader.event(1, 0), idx=20, kafka_offset=39)
    reader.event_rows.append(forged)
    report = verify(reader)
    assert where(report) == {("EVENT_UNEXPECTED", 1, 20), ("EVENT_COUNT_MISMATCH", 1, None)}


def test_inserted_event_at_an_existing_index_keeps_the_signed_one(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    genuine = reader.event(2, 5)
    forged_bytes = payloads[399]
    forged_event = decode_event(forged_bytes)
    forged = dataclasses.replace(
        genuine,
        kafka_offset=genuine.kafka_offset - 1,  # sorts first in the store's order
        canonical=forged_bytes,
        leaf_hash=leaf_hash(forged_bytes).hex().encode(),
        event_id=forged_event.event_id.encode(),
    )
    reader.event_rows.append(forged)
    report = verify(reader)
    assert where(report) == {("EVENT_UNEXPECTED", 2, 5), ("EVENT_COUNT_MISMATCH", 2, None)}
    assert only(report, C.EVENT_UNEXPECTED).event_id == forged_event.event_id


def test_event_row_of_another_block_hash(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.event_rows.append(dataclasses.replace(reader.event(2, 5), block_hash=b"ab" * 32))
    report = verify(reader)
    assert where(report) == {("EVENT_UNEXPECTED", 2, 5)}


def test_swapped_events(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    a, b = reader.event(3, 4), reader.event(3, 9)
    reader.delete_events(3, 4)
    reader.delete_events(3, 9)
    reader.event_rows += [dataclasses.replace(a, idx=9), dataclasses.replace(b, idx=4)]
    report = verify(reader)
    assert where(report) == {
        ("EVENT_OUT_OF_ORDER", 3, 4),
        ("EVENT_OUT_OF_ORDER", 3, 9),
        ("MERKLE_ROOT_MISMATCH", 3, None),
    }
    assert all(
        f.details["reordered_root_matches"]
        for f in report.findings
        if f.code == C.EVENT_OUT_OF_ORDER
    )


def test_swapped_event_contents_keeping_offsets(payloads: list[bytes]) -> None:
    """Contents swapped, offsets left in place: only the root can tell."""
    reader = FakeReader(build_blocks(payloads))
    a, b = reader.event(3, 4), reader.event(3, 9)
    keep = ("chain_id", "height", "idx", "block_hash", "kafka_offset")
    reader.update_event(3, 4, **{k: getattr(b, k) for k in StoredEvent.__slots__ if k not in keep})
    reader.update_event(3, 9, **{k: getattr(a, k) for k in StoredEvent.__slots__ if k not in keep})
    assert where(verify(reader)) == {("MERKLE_ROOT_MISMATCH", 3, None)}


def test_event_offset_outside_the_block_range(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_event(1, 19, kafka_offset=500)
    report = verify(reader)
    assert where(report) == {("EVENT_OFFSET_OUT_OF_RANGE", 1, 19)}


def test_duplicate_event_id_in_a_block(payloads: list[bytes]) -> None:
    chain = PartitionChain(CHAIN, max_event_bytes=65536)
    for offset, value in enumerate([payloads[0], payloads[1], payloads[0]]):
        chain.add(offset, value, None, 0.0, 0.0)
    block = chain.seal(KEY, 1_800_000_000.0)
    assert block is not None
    report = verify(FakeReader([block]))
    assert where(report) == {("EVENT_DUPLICATE_ID", 0, 2)}
    assert only(report, C.EVENT_DUPLICATE_ID).severity == Severity.WARNING


# --------------------------------------------------------------------------- headers


def test_block_hash_column_altered(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_header(2, block_hash=b"cd" * 32)
    assert where(verify(reader)) == {("BLOCK_HASH_MISMATCH", 2, None)}


def test_merkle_root_column_altered(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_header(2, merkle_root=b"ef" * 32, event_count=19)
    report = verify(reader)
    assert where(report) == {("BLOCK_HEADER_MISMATCH", 2, None)}
    assert set(only(report, C.BLOCK_HEADER_MISMATCH).details["columns"]) == {
        "merkle_root",
        "event_count",
    }


def test_merkle_root_altered_in_the_header_bytes(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    reader = FakeReader(blocks)
    original = blocks[2].header.merkle_root
    forged = reader.header(2).header.replace(original.encode(), b"0" * 64)
    reader.update_header(2, header=forged)
    report = verify(reader)
    assert where(report) == {
        ("BLOCK_HASH_MISMATCH", 2, None),
        ("BLOCK_HEADER_MISMATCH", 2, None),
        ("SIGNATURE_INVALID", 2, None),
        ("MERKLE_ROOT_MISMATCH", 2, None),
        ("PREV_HASH_MISMATCH", 3, None),
    }


def test_non_canonical_header_bytes(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_header(1, header=reader.header(1).header.replace(b",", b", ", 1))
    report = verify(reader)
    assert ("BLOCK_HEADER_INVALID", 1, None) in where(report)
    # The block's events are still checked against the columns, and are fine.
    assert not any(f.code.startswith("EVENT_") for f in report.findings)


def test_bad_signature(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    sig = bytearray(bytes.fromhex(reader.header(3).signature.decode()))
    sig[10] ^= 1
    reader.update_header(3, signature=sig.hex().encode())
    report = verify(reader)
    assert where(report) == {("SIGNATURE_INVALID", 3, None)}


def test_garbage_signature_column(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_header(3, signature=b"not hex")
    assert where(verify(reader)) == {("SIGNATURE_INVALID", 3, None)}


def test_block_signed_by_an_unknown_key(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    reader = FakeReader(blocks)
    row, _ = resign(blocks[4], OTHER_KEY)
    reader.replace_block_header(4, row)
    report = verify(reader)
    assert where(report) == {("KEY_UNKNOWN", 4, None)}
    assert only(report, C.KEY_UNKNOWN).details["key_id"] == OTHER_KEY.key_id


def test_whole_chain_signed_by_an_unknown_key(payloads: list[bytes]) -> None:
    report = verify(FakeReader(build_blocks(payloads, key=OTHER_KEY)))
    assert where(report) == {("KEY_UNKNOWN", h, None) for h in range(5)}


def test_broken_previous_hash_link(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    reader = FakeReader(blocks)
    row, _ = resign(blocks[4], prev_hash="12" * 32)  # someone holding the key
    reader.replace_block_header(4, row)
    report = verify(reader)
    assert where(report) == {("PREV_HASH_MISMATCH", 4, None)}


def test_deleted_middle_block(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.delete_header(2)
    reader.delete_events(2)
    report = verify(reader)
    assert where(report) == {("HEIGHT_GAP", 2, None)}
    assert only(report, C.HEIGHT_GAP).details == {"missing_from": 2, "missing_to": 2}


def test_deleted_middle_header_leaves_orphan_events(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.delete_header(2)
    report = verify(reader)
    assert where(report) == {("HEIGHT_GAP", 2, None), ("EVENT_UNEXPECTED", 2, None)}
    assert only(report, C.EVENT_UNEXPECTED).details["rows"] == 20


def test_deleted_genesis_block(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.delete_header(0)
    reader.delete_events(0)
    assert where(verify(reader)) == {("HEIGHT_GAP", 0, None)}


def test_fork_extra_header_at_an_existing_height(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    reader = FakeReader(blocks)
    forged, forged_hash = resign(blocks[2], OTHER_KEY, created_at="2030-01-01T00:00:00.000000Z")
    reader.header_rows.append(forged)
    report = verify(reader)
    assert where(report) == {("HEIGHT_FORK", 2, None)}
    fork = only(report, C.HEIGHT_FORK)
    assert fork.details["chosen"] == blocks[2].block_hash.hex()
    assert {b["block_hash"] for b in fork.details["blocks"]} == {  # type: ignore[attr-defined]
        forged_hash,
        blocks[2].block_hash.hex(),
    }


def test_fork_signed_by_the_trusted_key_is_reported(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    reader = FakeReader(blocks)
    forged, _ = resign(blocks[4], created_at="2030-01-01T00:00:00.000000Z")
    reader.header_rows.append(forged)
    report = verify(reader)
    assert where(report) == {("HEIGHT_FORK", 4, None)}


def test_offset_gap_between_blocks(payloads: list[bytes]) -> None:
    chain = PartitionChain(CHAIN, max_event_bytes=65536)
    sealed = []
    offsets = [range(0, 10), range(15, 25)]  # offsets 10..14 were never chained
    it = iter(payloads)
    for n, rng in enumerate(offsets):
        chain.next_offset = rng.start
        for o in rng:
            chain.add(o, next(it), None, 0.0, 0.0)
        block = chain.seal(KEY, 1_800_000_000.0 + n)
        assert block is not None
        sealed.append(block)
    report = verify(FakeReader(sealed))
    assert where(report) == {("OFFSET_GAP", 1, None)}
    assert only(report, C.OFFSET_GAP).details == {"first_offset": 15, "expected": 10}


def test_offset_overlap_between_blocks(payloads: list[bytes]) -> None:
    chain = PartitionChain(CHAIN, max_event_bytes=65536)
    sealed = []
    it = iter(payloads)
    for n, rng in enumerate([range(0, 10), range(7, 17)]):
        chain.next_offset = rng.start
        for o in rng:
            chain.add(o, next(it), None, 0.0, 0.0)
        block = chain.seal(KEY, 1_800_000_000.0 + n)
        assert block is not None
        sealed.append(block)
    report = verify(FakeReader(sealed))
    assert where(report) == {("OFFSET_OVERLAP", 1, None)}


# --------------------------------------------------------------------------- chain ends


def test_uncommitted_events_above_the_head_are_info(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    reader = FakeReader(blocks[:4])  # the crash came between events and header of block 4
    reader.event_rows += event_rows(blocks[4])
    report = verify(reader)
    assert where(report) == {("UNCOMMITTED_EVENTS", 4, None)}
    finding = only(report, C.UNCOMMITTED_EVENTS)
    assert finding.severity == Severity.INFO
    assert report.result == "intact" and report.uncommitted_events == 20


def test_uncommitted_events_of_a_chain_without_blocks(payloads: list[bytes]) -> None:
    reader = FakeReader()
    reader.event_rows = event_rows(build_blocks(payloads)[0])
    report = verify(reader)
    assert where(report) == {("UNCOMMITTED_EVENTS", 0, None)} and report.result == "intact"


def test_truncated_chain_against_the_known_head(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    known = verify(FakeReader(blocks)).head
    assert known is not None
    reader = FakeReader(blocks[:3])
    report = verify(reader, known_head=known)
    assert where(report) == {("CHAIN_TRUNCATED", 3, None)}
    assert only(report, C.CHAIN_TRUNCATED).details["known_height"] == 4
    # Without the verifier's memory a truncated chain looks fine: that is why it keeps one.
    assert verify(reader).findings == []


def test_chain_truncated_to_nothing(payloads: list[bytes]) -> None:
    known = VerifiedHead(4, "ab" * 32, 99)
    report = verify(FakeReader(), known_head=known)
    assert where(report) == {("CHAIN_TRUNCATED", 0, None)}


def test_rewritten_chain_against_the_known_head(payloads: list[bytes]) -> None:
    """Someone with the signing key re-signs a different history from block 2 on."""
    blocks = build_blocks(payloads)
    known = verify(FakeReader(blocks)).head
    other = build_blocks(payloads[:40] + payloads[200:], blocks=5)
    assert other[1].block_hash == blocks[1].block_hash
    assert other[4].block_hash != blocks[4].block_hash
    report = verify(FakeReader(other), known_head=known)
    assert where(report) == {("CHAIN_REWRITTEN", 4, None)}


def test_incremental_verification_from_the_known_head(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    known = verify(FakeReader(blocks[:3])).head
    assert known is not None and known.height == 2
    reader = FakeReader(blocks)
    report = verify(reader, from_height=3, known_head=known)
    assert report.findings == []
    assert (report.blocks, report.events) == (2, 40)
    assert report.head == VerifiedHead(4, blocks[4].block_hash.hex(), 99)
    # A new block that does not link to the remembered one is caught.
    report = verify(reader, from_height=3, known_head=VerifiedHead(2, "77" * 32, 59))
    assert where(report) == {("CHAIN_REWRITTEN", 2, None), ("PREV_HASH_MISMATCH", 3, None)}


def test_from_height_without_known_head_links_to_the_stored_block(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.update_event(1, 1, leaf_hash=b"00" * 32)  # below the range: not rechecked
    report = verify(reader, from_height=2)
    assert report.findings == [] and report.blocks == 3 and report.events == 60


def test_findings_are_capped_but_counted(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    for e in list(reader.event_rows):
        reader.update_event(e.height, e.idx, leaf_hash=b"00" * 32)
    seen: list[Finding] = []
    report = verify(reader, max_findings=10, on_finding=seen.append)
    assert len(report.findings) == 10 and report.findings_dropped == 90
    assert report.counts["EVENT_HASH_MISMATCH"] == 100 == len(seen) == report.failures


def test_finding_dict_names_the_location(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    reader.delete_events(2, 3)
    missing = only(verify(reader), C.EVENT_MISSING).to_dict()
    assert missing["code"] == "EVENT_MISSING" and missing["chain_id"] == CHAIN
    assert (missing["height"], missing["event_index"], missing["severity"]) == (2, 3, "critical")
    json.dumps(missing)


def test_truncation_below_the_resume_point(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    known = verify(FakeReader(blocks)).head
    assert known is not None
    report = verify(FakeReader(blocks[:2]), from_height=known.height + 1, known_head=known)
    assert where(report) == {("CHAIN_TRUNCATED", 4, None)}


def test_hostile_event_bytes_never_crash_the_verifier(payloads: list[bytes]) -> None:
    reader = FakeReader(build_blocks(payloads))
    for n, junk in enumerate([b"\xff\xfe", b"", b"[" * 5000, b'{"schema":NaN}', b"null"]):
        reader.update_event(1, n, canonical=junk, leaf_hash=leaf_hash(junk).hex().encode())
    reader.update_header(2, header=b"\x00" * 10)
    report = verify(reader)
    assert {("EVENT_NOT_CANONICAL", 1, n) for n in range(5)} <= where(report)
    assert ("BLOCK_HEADER_INVALID", 2, None) in where(report)
