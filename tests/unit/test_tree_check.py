"""The signed roots against the stored tree (``verifiers.integrity.trees``), over a
fake store that answers the two block-hash queries; the real ClickHouse in
tests/integration/test_checkpoint_trees.py."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import pytest

from careledger.storage.trees import (
    ChainTreeError,
    chain_block_hashes,
    stored_consistency_proof,
    stored_root,
)
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.checkpoint import Checkpoint
from careledger_core.findings import FindingCode
from careledger_core.merkle import verify_consistency
from verifiers.integrity.checkpoint_log import SeenCheckpoint
from verifiers.integrity.trees import check_trees

CHAIN = "careledger.local/careledger.access-events/0"
C = FindingCode


def hashes(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + b"block %d" % i).digest() for i in range(n)]


class FakeBackend:
    """Rows (height, block_hash hex, prev_hash hex) of one chain's ``blocks`` table."""

    name = "fake"

    def __init__(self, rows: list[tuple[int, bytes, str]]) -> None:
        self.rows = sorted(rows, key=lambda r: (r[0], r[1]))

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        p = dict(params or {})
        if sql.startswith("SELECT max(height), count()"):
            return [(max((r[0] for r in self.rows), default=0), len(self.rows))]
        if "prev_hash" in sql:
            return [(h, v, prev.encode()) for h, v, prev in reversed(self.rows)]
        if re.search(r"SELECT height, block_hash FROM", sql):
            return [(h, v) for h, v, _ in self.rows if p["from"] <= h < p["to"]]
        raise AssertionError(sql)

    def insert(self, *a: Any) -> None:  # pragma: no cover - never called
        raise AssertionError

    def close(self) -> None:
        pass


class FakeStore:
    def __init__(self, rows: list[tuple[int, bytes, str]]) -> None:
        self.backend = FakeBackend(rows)
        self.db = "fake"


def chain_rows(values: list[bytes]) -> list[tuple[int, bytes, str]]:
    prev = ["0" * 64] + [v.hex() for v in values[:-1]]
    return [(i, v.hex().encode(), prev[i]) for i, v in enumerate(values)]


def seen(values: list[bytes], size: int, offset: int = 0) -> SeenCheckpoint:
    root = ChainTree.of_blocks(values[:size]).root
    cp = Checkpoint(CHAIN, size, root, (f"careledger-head {values[size - 1].hex()}",))
    return SeenCheckpoint(cp, 0, offset, note=f"note {size}")


def check(rows: list[tuple[int, bytes, str]], cps: list[SeenCheckpoint]) -> Any:
    return check_trees(FakeStore(rows), {CHAIN: cps}, [CHAIN])  # type: ignore[arg-type]


GENUINE = hashes(10)


def test_every_checkpoint_of_an_intact_chain_matches() -> None:
    result = check(chain_rows(GENUINE), [seen(GENUINE, s) for s in (1, 3, 4, 9, 10)])
    assert result.findings == []
    assert result.summary() == {
        "chains": 1,
        "compared": 5,
        "matched": 5,
        "mismatched": 0,
        "above_store": 0,
        "stored_prefix_broken_at": {},
    }


def test_rewritten_middle_block_is_a_root_mismatch_naming_the_range() -> None:
    rewritten = GENUINE[:4] + hashes(6, b"rewritten")  # block 4 and everything after
    result = check(chain_rows(rewritten), [seen(GENUINE, s) for s in (2, 4, 6, 8, 10)])
    assert [(f.code, f.chain_id, f.height) for f in result.findings] == [
        (C.CHECKPOINT_ROOT_MISMATCH, CHAIN, 5)
    ]
    d = result.findings[0].details
    assert (d["size"], d["last_matching_size"], d["mismatching_checkpoints"]) == (6, 4, 3)
    assert d["checkpoint_root"] == ChainTree.of_blocks(GENUINE[:6]).root.hex()
    assert d["stored_root"] == ChainTree.of_blocks(rewritten[:6]).root.hex()
    assert "a block in 4..5 was changed" in result.findings[0].message


def test_a_smaller_checkpoint_contradicting_a_matching_larger_one_is_inconsistent() -> None:
    forged_small = seen(GENUINE[:2] + hashes(2, b"rolled back"), 4, offset=9)
    cps = [seen(GENUINE, 2), forged_small, seen(GENUINE, 10)]
    result = check(chain_rows(GENUINE), cps)
    assert [(f.code, f.height) for f in result.findings] == [(C.CHECKPOINT_INCONSISTENT, 3)]
    d = result.findings[0].details
    assert (d["older"]["size"], d["newer"]["size"], d["how"]) == (4, 10, "stored tree")  # type: ignore[index]


def test_checkpoints_above_a_truncated_store_are_left_to_fsck() -> None:
    result = check(chain_rows(GENUINE[:6]), [seen(GENUINE, s) for s in (3, 6, 8, 10)])
    assert result.findings == []
    assert (result.matched, result.above_store) == (2, 2)


def test_a_gap_or_two_rows_at_one_height_stop_the_comparison_there() -> None:
    gap = [r for r in chain_rows(GENUINE) if r[0] != 5]
    result = check(gap, [seen(GENUINE, s) for s in (5, 8)])
    assert result.findings == [] and result.broken == {CHAIN: 5} and result.matched == 1
    fork = [*chain_rows(GENUINE), (3, hashes(1, b"x")[0].hex().encode(), GENUINE[2].hex())]
    result = check(fork, [seen(GENUINE, s) for s in (3, 8)])
    assert result.findings == [] and result.broken == {CHAIN: 3} and result.matched == 1
    bad = [(h, b"zz" if h == 2 else v, p) for h, v, p in chain_rows(GENUINE)]
    assert check(bad, [seen(GENUINE, 8)]).broken == {CHAIN: 2}


# --------------------------------------------------------------------------- glue


def test_stored_proofs_between_any_two_sizes_verify() -> None:
    store: Any = FakeStore(chain_rows(GENUINE))
    for n in range(1, 11):
        root = stored_root(store, CHAIN, n)
        assert root == ChainTree.of_blocks(GENUINE[:n]).root
        for m in range(0, n + 1):
            proof = stored_consistency_proof(store, CHAIN, m, n)
            verify_consistency(m, n, ChainTree.of_blocks(GENUINE[:m]).root, root, proof)


def test_the_processor_chain_follows_the_links_through_a_fork() -> None:
    """Two writers at height 6: the chain is the one the head links to."""
    other = hashes(1, b"zombie")[0]
    rows = [*chain_rows(GENUINE[:7]), (6, other.hex().encode(), GENUINE[5].hex())]
    store: Any = FakeStore(rows)
    assert chain_block_hashes(store, CHAIN, head_hash=GENUINE[6]) == GENUINE[:7]
    assert chain_block_hashes(store, CHAIN, head_hash=other) == [*GENUINE[:6], other]
    with pytest.raises(ChainTreeError):
        chain_block_hashes(FakeStore([r for r in rows if r[0] != 3]), CHAIN)  # type: ignore[arg-type]
    assert [block_leaf_hash(h) for h in GENUINE[:1]] == [ChainTree.of_blocks(GENUINE[:1]).root]
