"""The RFC 6962 tree of a chain, read from the stored block hashes (ADR 0012).

A chain's checkpoints commit to the Merkle tree over its block hashes
(``careledger_core.chain_tree``). Everyone who needs that tree from ClickHouse reads it
here, so the processor, the verifier and the tools on top (a witness client asking for
cosignatures, ``careledger restore``) agree on what "the stored tree" is:

* ``stored_block_hashes`` streams ``(height, block hash)`` rows of one chain in height
  order, page by page (32 bytes per block: millions of blocks stay cheap). Rows are
  untrusted: a malformed hash comes back as ``None``, several rows at one height
  come back as they are.
* ``chain_block_hashes`` is the chain as the processor continues it: one block per
  height 0..head, each the ``prev_hash`` of the next. One row per height is the fast
  path; if a height has several rows (two writers, a fork), the chain is walked back
  from the head by ``prev_hash``. A gap, a malformed hash or a broken link raises
  ``ChainTreeError``.
* ``stored_tree`` (the frontier, to grow from), ``stored_root`` and
  ``stored_consistency_proof`` / ``stored_inclusion_proof`` between any sizes: O(n)
  reads of 32-byte hashes, O(n) hashing.

The verifier does not use ``chain_block_hashes``: it compares every size of every
checkpoint with ``stored_block_hashes`` directly and reports what does not match
(``verifiers.integrity.trees``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

from careledger.storage.store import ChainStore
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.errors import IntegrityError
from careledger_core.merkle import MerkleTree

__all__ = [
    "ChainTreeError",
    "chain_block_hashes",
    "stored_block_hashes",
    "stored_consistency_proof",
    "stored_inclusion_proof",
    "stored_root",
    "stored_tree",
]

#: Heights read per query.
PAGE_SIZE: Final = 100_000
_HEX64 = re.compile(rb"\A[0-9a-f]{64}\Z")


class ChainTreeError(IntegrityError):
    """The stored blocks of a chain do not form one chain from height 0 (a gap, a
    malformed hash, a broken link): its tree cannot be built from the store."""

    code = "CHAIN_TREE_UNAVAILABLE"


def _hash(value: Any) -> bytes | None:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", errors="replace")
    return bytes.fromhex(raw.decode("ascii")) if _HEX64.match(raw) else None


def stored_block_hashes(
    store: ChainStore, chain_id: str, *, from_height: int = 0, page_size: int = PAGE_SIZE
) -> Iterator[tuple[int, bytes | None]]:
    """``(height, block hash)`` of every stored header row of ``chain_id`` with
    ``height >= from_height``, in height order (``None`` for a malformed hash)."""
    top = store.backend.execute(
        f"SELECT max(height), count() FROM {store.db}.blocks WHERE chain_id = %(chain)s",
        {"chain": chain_id},
    )
    if not top or int(top[0][1]) == 0:
        return
    last = int(top[0][0])
    start = from_height
    while start <= last:
        rows = store.backend.execute(
            f"SELECT height, block_hash FROM {store.db}.blocks "
            "WHERE chain_id = %(chain)s AND height >= %(from)s AND height < %(to)s "
            "ORDER BY height, block_hash",
            {"chain": chain_id, "from": start, "to": start + page_size},
        )
        for height, value in rows:
            yield int(height), _hash(value)
        start += page_size


def chain_block_hashes(
    store: ChainStore, chain_id: str, *, head_hash: bytes | None = None
) -> list[bytes]:
    """The block hashes of the chain from height 0 to its head (``head_hash``, or the
    highest stored block), one per height, each linked to the next by ``prev_hash``."""
    hashes: list[bytes] = []
    forked = False
    for height, value in stored_block_hashes(store, chain_id):
        if height == len(hashes) - 1:
            forked = True  # a second row at one height: resolve by the links below
            break
        if height != len(hashes):
            raise ChainTreeError(
                f"chain {chain_id} has no stored block at height {len(hashes)}",
                details={"chain_id": chain_id, "height": len(hashes)},
            )
        if value is None:
            raise ChainTreeError(
                f"chain {chain_id}: malformed block hash at height {height}",
                details={"chain_id": chain_id, "height": height},
            )
        hashes.append(value)
    if not forked and (head_hash is None or (hashes and hashes[-1] == head_hash)):
        return hashes
    return _walk_back(store, chain_id, head_hash)


def _walk_back(store: ChainStore, chain_id: str, head_hash: bytes | None) -> list[bytes]:
    rows = store.backend.execute(
        f"SELECT height, block_hash, prev_hash FROM {store.db}.blocks "
        "WHERE chain_id = %(chain)s ORDER BY height DESC, block_hash",
        {"chain": chain_id},
    )
    by_hash: dict[bytes, tuple[int, bytes | None]] = {}
    for height, value, prev in rows:
        h = _hash(value)
        if h is not None:
            by_hash.setdefault(h, (int(height), _hash(prev)))
    if head_hash is None:
        if not rows or (head := _hash(rows[0][1])) is None:
            raise ChainTreeError(f"chain {chain_id}: no well-formed head block")
        head_hash = head
    chain: list[bytes] = []
    current: bytes | None = head_hash
    expected = None
    while current is not None:
        entry = by_hash.get(current)
        if entry is None or (expected is not None and entry[0] != expected):
            raise ChainTreeError(
                f"chain {chain_id}: the link to block {current.hex()[:16]}… is broken",
                details={"chain_id": chain_id, "block_hash": current.hex()},
            )
        height, prev = entry
        chain.append(current)
        if height == 0:
            break
        current, expected = prev, height - 1
    else:
        raise ChainTreeError(f"chain {chain_id}: a block names a malformed prev_hash")
    chain.reverse()
    return chain


def _prefix(store: ChainStore, chain_id: str, size: int) -> list[bytes]:
    hashes = chain_block_hashes(store, chain_id)
    if not 0 <= size <= len(hashes):
        raise ChainTreeError(
            f"chain {chain_id} has {len(hashes)} stored blocks, not {size}",
            details={"chain_id": chain_id, "stored": len(hashes), "size": size},
        )
    return hashes[:size]


def stored_tree(store: ChainStore, chain_id: str, *, head_hash: bytes | None = None) -> ChainTree:
    """The frontier of the stored chain (up to ``head_hash`` if given)."""
    return ChainTree.of_blocks(chain_block_hashes(store, chain_id, head_hash=head_hash))


def stored_root(store: ChainStore, chain_id: str, size: int) -> bytes:
    """The RFC 6962 root over the first ``size`` stored blocks of ``chain_id``."""
    return ChainTree.of_blocks(_prefix(store, chain_id, size)).root


def stored_consistency_proof(
    store: ChainStore, chain_id: str, old_size: int, new_size: int
) -> tuple[bytes, ...]:
    """RFC 9162 consistency proof from size ``old_size`` to ``new_size`` of the stored
    chain (what a witness's ``add-checkpoint`` needs, from whatever size it last saw)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"sizes {old_size} -> {new_size}")
    leaves = [block_leaf_hash(h) for h in _prefix(store, chain_id, new_size)]
    return MerkleTree(leaves).consistency_proof(old_size)


def stored_inclusion_proof(
    store: ChainStore, chain_id: str, height: int, size: int
) -> tuple[bytes, ...]:
    """RFC 9162 inclusion proof of block ``height`` in the tree of ``size`` blocks."""
    leaves = [block_leaf_hash(h) for h in _prefix(store, chain_id, size)]
    return MerkleTree(leaves).inclusion_proof(height)
