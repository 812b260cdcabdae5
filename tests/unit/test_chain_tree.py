"""The tree over a chain's block hashes (ADR 0012): frontier, proofs, checkpoints.

Properties checked with hypothesis: the frontier's root is ``merkle_root`` for every
size; the frontier's consistency proof is RFC 9162's (``MerkleTree.consistency_proof``)
and verifies between every pair of small sizes; a proof that reaches the new root from
another old root is recognised as a fork.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.block import GENESIS_PREV_HASH, BlockHeader, block_hash
from careledger_core.chain_tree import ChainTree, block_leaf_hash, consistency_roots
from careledger_core.checkpoint import (
    HEAD_EXTENSION,
    Checkpoint,
    checkpoint_for,
    format_checkpoint,
    format_consistency,
    parse_checkpoint,
    parse_consistency,
    sign_note,
    verify_checkpoint,
)
from careledger_core.errors import CheckpointError, ProofError, ValidationError
from careledger_core.hashing import EMPTY_ROOT, leaf_hash
from careledger_core.merkle import MerkleTree, merkle_root, verify_consistency
from careledger_core.signing import SigningKey

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger test key").digest())


def leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + b"block %d" % i) for i in range(n)]


LEAVES = leaves(80)


# --------------------------------------------------------------------------- frontier


def test_empty_tree_is_the_empty_root() -> None:
    assert ChainTree().root == EMPTY_ROOT == merkle_root([])
    assert ChainTree().size == 0 and ChainTree().nodes == ()


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=300))
def test_frontier_root_is_merkle_root_for_every_size(n: int) -> None:
    data = leaves(n, b"p")
    tree = ChainTree.of_leaf_hashes(data)
    assert tree.size == n
    assert len(tree.nodes) == bin(n).count("1")  # O(log n) hashes kept
    assert tree.root == merkle_root(data)


def test_frontier_root_matches_at_every_size_while_growing() -> None:
    tree = ChainTree()
    for n, leaf in enumerate(LEAVES, start=1):
        tree = tree.append(leaf)
        assert tree.root == merkle_root(LEAVES[:n]), n


def test_consistency_proofs_between_all_pairs_of_small_sizes() -> None:
    for n in range(1, 40):
        full = MerkleTree(LEAVES[:n])
        new_root = full.root
        for m in range(0, n + 1):
            old = ChainTree.of_leaf_hashes(LEAVES[:m])
            proof = old.consistency_proof(LEAVES[m:n])
            assert proof == full.consistency_proof(m), (m, n)
            verify_consistency(m, n, old.root, new_root, proof)
            if 0 < m < n:
                assert consistency_roots(m, n, proof, old.root) == (old.root, new_root)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.data())
def test_consistency_proof_from_the_frontier_is_rfc9162s(n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(min_value=0, max_value=n))
    all_leaves = leaves(n, b"h")
    old = ChainTree.of_leaf_hashes(all_leaves[:m])
    new = old.extend(all_leaves[m:])
    proof = old.consistency_proof(all_leaves[m:])
    assert proof == MerkleTree(all_leaves).consistency_proof(m)
    verify_consistency(m, n, old.root, new.root, proof)


def test_a_proof_to_the_new_root_from_another_old_root_shows_a_fork() -> None:
    """Two histories that share nothing after block 2: a proof about the second one's
    tree, checked against the first one's checkpoint at size 5, gives its own root at 5."""
    genuine = LEAVES[:5]
    forked = LEAVES[:2] + leaves(6, b"fork")
    old = ChainTree.of_leaf_hashes(genuine)
    fork_old = ChainTree.of_leaf_hashes(forked[:5])
    fork_new = fork_old.extend(forked[5:])
    proof = fork_old.consistency_proof(forked[5:])
    implied_old, implied_new = consistency_roots(5, 8, proof, old.root)
    assert implied_new == fork_new.root
    assert implied_old == fork_old.root != old.root
    with pytest.raises(ProofError):
        verify_consistency(5, 8, old.root, fork_new.root, proof)


def test_consistency_roots_rejects_wrong_shapes() -> None:
    tree = ChainTree.of_leaf_hashes(LEAVES[:5])
    proof = tree.consistency_proof(LEAVES[5:9])
    with pytest.raises(ProofError):
        consistency_roots(5, 9, proof[:-1], tree.root)
    with pytest.raises(ProofError):
        consistency_roots(5, 9, (*proof, proof[0]), tree.root)
    with pytest.raises(ProofError):
        consistency_roots(0, 9, proof, tree.root)
    with pytest.raises(ProofError):
        consistency_roots(5, 9, (), tree.root)


def test_frontier_rejects_bad_input() -> None:
    with pytest.raises(ValidationError):
        ChainTree(3, (LEAVES[0],))  # 3 = 0b11 needs two nodes
    with pytest.raises(ValidationError):
        ChainTree().append(b"short")
    with pytest.raises(ValidationError):
        ChainTree(-1, ())
    with pytest.raises(ValidationError):
        block_leaf_hash(b"\x00" * 31)
    assert block_leaf_hash(b"\x07" * 32) == leaf_hash(b"\x07" * 32)


# --------------------------------------------------------------------------- checkpoints


def _header(height: int, prev: str) -> BlockHeader:
    return BlockHeader(
        chain_id="careledger.test/careledger.access-events/0",
        height=height,
        prev_hash=prev,
        merkle_root=EMPTY_ROOT.hex(),
        event_count=0,
        first_offset=height,
        last_offset=height,
        dead_lettered=1,
        absent_offsets=0,
        first_event_time="2026-01-01T00:00:00.000000Z",
        last_event_time="2026-01-01T00:00:00.000000Z",
        created_at="2026-01-01T00:00:00.000000Z",
        key_id=KEY.key_id,
    )


def _chain(n: int) -> list[BlockHeader]:
    headers: list[BlockHeader] = []
    prev = GENESIS_PREV_HASH
    for h in range(n):
        headers.append(_header(h, prev))
        prev = block_hash(headers[-1]).hex()
    return headers


def test_checkpoint_of_a_chain_is_the_tree_root_over_its_block_hashes() -> None:
    headers = _chain(5)
    tree = ChainTree.of_blocks(block_hash(h) for h in headers)
    cp = checkpoint_for(headers[-1], tree)
    assert (cp.origin, cp.size) == (headers[-1].chain_id, 5)
    assert cp.root_hash == merkle_root([block_leaf_hash(block_hash(h)) for h in headers])
    assert cp.extensions == (f"{HEAD_EXTENSION} {block_hash(headers[-1]).hex()}",)
    assert cp.is_tree and cp.head_hash == block_hash(headers[-1])
    note = sign_note(format_checkpoint(cp), "careledger.test", KEY)
    assert verify_checkpoint(note, {"careledger.test": KEY.public_key}) == cp
    with pytest.raises(CheckpointError):
        checkpoint_for(headers[-1], ChainTree.of_blocks(block_hash(h) for h in headers[:4]))


def test_legacy_checkpoint_names_its_head_by_its_root() -> None:
    cp = Checkpoint("o/t/0", 3, b"\x05" * 32)
    assert not cp.is_tree and cp.head_hash == b"\x05" * 32


@pytest.mark.parametrize(
    "line",
    [f"{HEAD_EXTENSION} {'AB' * 32}", f"{HEAD_EXTENSION} {'ab' * 31}", HEAD_EXTENSION],
)
def test_a_malformed_head_line_is_refused(line: str) -> None:
    cp = parse_checkpoint(f"o/t/0\n3\n{'A' * 43}=\n{line}\n")
    with pytest.raises(CheckpointError):
        cp.head_hash  # noqa: B018


def test_two_head_lines_are_refused() -> None:
    line = f"{HEAD_EXTENSION} {'ab' * 32}"
    cp = parse_checkpoint(f"o/t/0\n3\n{'A' * 43}=\n{line}\n{line}\n")
    with pytest.raises(CheckpointError):
        cp.head_hash  # noqa: B018


def test_consistency_text_round_trips_and_is_strict() -> None:
    proof = ChainTree.of_leaf_hashes(LEAVES[:5]).consistency_proof(LEAVES[5:13])
    text = format_consistency(5, proof)
    assert text.startswith("old 5\n") and text.count("\n") == 1 + len(proof)
    assert parse_consistency(text) == (5, proof)
    assert parse_consistency("old 0\n") == (0, ())
    for bad in ("old 5", "old 05\n", "new 5\n", "old 5\nnot base64!\n", "old 5\nAAAA\n", ""):
        with pytest.raises(CheckpointError):
            parse_consistency(bad)
