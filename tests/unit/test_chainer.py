"""The per-partition chainer: offsets accounting, resume, replays, sealing."""

from __future__ import annotations

import hashlib

import pytest

from careledger.storage.store import ChainHead
from careledger_core.block import GENESIS_PREV_HASH, block_hash, decode_header
from careledger_core.event import canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import merkle_root
from careledger_core.signing import SigningKey
from processors.chainer import OffsetGap, PartitionChain
from producers.simulator import HospitalModel, simulate

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger test key").digest())
CHAIN = "careledger.local/careledger.access-events/0"


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return [canonical_event_bytes(e) for e in simulate(HospitalModel(seed=1), count=50, seed=1)]


def test_sealed_block_commits_to_events_offsets_and_signature(payloads: list[bytes]) -> None:
    chain = PartitionChain(CHAIN, max_event_bytes=65536)
    for offset, value in enumerate(payloads[:10], start=100):
        assert chain.add(offset, value, b"k", 0.0, now=0.0) is None
    block = chain.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    h = block.header
    assert (h.height, h.prev_hash, h.first_offset, h.last_offset, h.event_count) == (
        0,
        GENESIS_PREV_HASH,
        100,
        109,
        10,
    )
    assert h.merkle_root == merkle_root([leaf_hash(p) for p in payloads[:10]]).hex()
    assert decode_header(block.header_bytes) == h
    assert block.block_hash == block_hash(h)
    KEY.public_key.verify_header(h, block.signature)
    # The next block links to this one and continues the offset range.
    chain.add(110, payloads[10], None, 0.0, now=0.0)
    nxt = chain.seal(KEY, now=1_800_000_001.0)
    assert nxt is not None
    assert nxt.header.prev_hash == block.block_hash.hex()
    assert (nxt.header.height, nxt.header.first_offset) == (1, 110)


def test_dead_lettered_records_are_accounted_in_the_offset_range(payloads: list[bytes]) -> None:
    chain = PartitionChain(CHAIN, max_event_bytes=65536)
    assert chain.add(0, payloads[0], None, 0.0, 0.0) is None
    rejected = chain.add(1, b"{not json", None, 0.0, 0.0)
    assert (
        rejected is not None and rejected.code == "EVENT_INVALID" and rejected.value == b"{not json"
    )
    too_big = chain.add(2, b"x" * 70000, None, 0.0, 0.0)
    assert too_big is not None and too_big.code == "EVENT_TOO_LARGE"
    empty = chain.add(3, None, None, 0.0, 0.0)
    assert empty is not None and empty.code == "EVENT_EMPTY"
    assert chain.add(4, payloads[1], None, 0.0, 0.0) is None
    block = chain.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    h = block.header
    assert (h.event_count, h.dead_lettered, h.first_offset, h.last_offset) == (2, 3, 0, 4)
    assert [e.offset for e in block.events] == [0, 4]


def test_a_range_of_only_dead_letters_is_sealed_as_an_empty_block() -> None:
    chain = PartitionChain(CHAIN, max_event_bytes=65536)
    chain.add(0, b"garbage", None, 0.0, 0.0)
    block = chain.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    assert (block.header.event_count, block.header.dead_lettered) == (0, 1)
    assert block.header.merkle_root == hashlib.sha256(b"").hexdigest()


def test_replayed_records_at_or_below_the_head_are_skipped(payloads: list[bytes]) -> None:
    head = ChainHead(CHAIN, height=4, block_hash="ab" * 32, last_offset=41)
    chain = PartitionChain.resume(CHAIN, head, 65536)
    assert chain.add(40, payloads[0], None, 0.0, 0.0) is None
    assert chain.add(41, payloads[1], None, 0.0, 0.0) is None
    assert chain.duplicates_skipped == 2 and not chain.pending
    chain.add(42, payloads[2], None, 0.0, 0.0)
    block = chain.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    assert (block.header.height, block.header.prev_hash, block.header.first_offset) == (
        5,
        "ab" * 32,
        42,
    )


def test_a_position_ahead_of_the_head_is_refused_not_skipped(payloads: list[bytes]) -> None:
    head = ChainHead(CHAIN, height=0, block_hash="cd" * 32, last_offset=9)
    chain = PartitionChain.resume(CHAIN, head, 65536)
    with pytest.raises(OffsetGap) as info:
        chain.add(15, payloads[0], None, 0.0, 0.0)
    assert (info.value.expected, info.value.got) == (10, 15)
    assert not chain.pending


def test_offsets_missing_from_kafka_are_recorded_as_absent(payloads: list[bytes]) -> None:
    head = ChainHead(CHAIN, height=0, block_hash="cd" * 32, last_offset=9)
    chain = PartitionChain.resume(CHAIN, head, 65536)
    chain.accept_gap(12)
    chain.add(12, payloads[0], None, 0.0, 0.0)
    block = chain.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    assert (block.header.first_offset, block.header.absent_offsets, block.header.event_count) == (
        10,
        2,
        1,
    )


def test_block_is_due_at_max_events_or_max_age(payloads: list[bytes]) -> None:
    chain = PartitionChain(CHAIN, max_event_bytes=65536)
    assert not chain.due(now=100.0, max_events=2, max_age_s=1.0)
    chain.add(0, payloads[0], None, 0.0, now=100.0)
    assert not chain.due(now=100.5, max_events=2, max_age_s=1.0)
    assert chain.due(now=101.0, max_events=2, max_age_s=1.0)
    chain.add(1, payloads[1], None, 0.0, now=100.6)
    assert chain.due(now=100.6, max_events=2, max_age_s=1.0)


def test_a_new_chain_starts_at_the_earliest_offset_not_at_the_first_record_seen(
    payloads: list[bytes],
) -> None:
    chain = PartitionChain.resume(CHAIN, None, 65536, earliest_offset=17)
    with pytest.raises(OffsetGap) as info:
        chain.add(300, payloads[0], None, 0.0, 0.0)
    assert info.value.expected == 17
    chain.add(17, payloads[0], None, 0.0, 0.0)
    block = chain.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    assert (block.header.height, block.header.first_offset) == (0, 17)


def test_sealing_grows_the_chain_tree_and_a_resumed_chain_waits_for_its_tree(
    payloads: list[bytes],
) -> None:
    """ADR 0012: the chain's frontier grows with each sealed block; a chain resumed from
    a stored head has no tree until the processor rebuilds it from the store."""
    from careledger_core.chain_tree import ChainTree, block_leaf_hash

    chain = PartitionChain(CHAIN, max_event_bytes=65536)
    sealed = []
    for b in range(5):
        for i in range(5):
            assert chain.add(b * 5 + i, payloads[b * 5 + i], b"k", 0.0, now=0.0) is None
        block = chain.seal(KEY, now=1_800_000_000.0 + b)
        assert block is not None
        sealed.append(block)
        assert chain.tree is not None and chain.tree.size == b + 1
        assert chain.tree.root == merkle_root([block_leaf_hash(s.block_hash) for s in sealed])
    last = sealed[-1]
    head = ChainHead(CHAIN, 4, last.block_hash.hex(), last.header.last_offset)
    resumed = PartitionChain.resume(CHAIN, head, max_event_bytes=65536)
    assert resumed.tree is None
    resumed.tree = ChainTree.of_blocks(s.block_hash for s in sealed)
    assert resumed.add(25, payloads[25], b"k", 0.0, now=0.0) is None
    block = resumed.seal(KEY, now=1_800_000_010.0)
    assert block is not None and resumed.tree is not None
    assert (
        resumed.tree.root
        == ChainTree.of_blocks([*(s.block_hash for s in sealed), block.block_hash]).root
    )
    # A tree of the wrong size is dropped rather than extended into a wrong root.
    resumed.tree = ChainTree.of_blocks(s.block_hash for s in sealed[:2])
    assert resumed.add(26, payloads[26], b"k", 0.0, now=0.0) is None
    assert resumed.seal(KEY, now=1_800_000_011.0) is not None and resumed.tree is None
