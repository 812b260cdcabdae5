"""The RFC 6962 tree over a chain's block hashes, grown one block at a time.

A chain's checkpoint (``careledger_core.checkpoint``, ADR 0012) commits to the Merkle
Tree Hash of its blocks: leaf ``i`` is the 32-byte ``block_hash`` of block ``i``, leaf
hash = SHA-256(0x00 ‖ block_hash) (``block_leaf_hash``), interior nodes as RFC 6962.
Because it is an RFC 6962 tree, any two checkpoints of one chain are linked by an
RFC 9162 consistency proof of O(log n) hashes, which a standard witness can check.

``ChainTree`` is the tree's *frontier* (a compact range over ``[0, size)``): the roots of
the perfect subtrees in the binary decomposition of ``size``, largest (leftmost) first:
at most 64 hashes, one per set bit of ``size``. From it alone one can

* append a leaf in O(1) amortised hashing (``append``),
* compute the root in O(log n) (``root``),
* prove that this tree is a prefix of the tree grown by some new leaves, without the
  old leaves (``consistency_proof``): every node an RFC 9162 proof from size ``m``
  needs is either a frontier node of ``m``, a fold of its last frontier nodes, or built
  from leaves ``>= m`` only.

``consistency_roots`` (in ``merkle``: the walk ``verify_consistency`` also uses) returns
the (old, new) roots a proof implies instead of comparing them: with the new root
right and the old one different, the proof *shows* that the tree of the new root does
not extend the old checkpoint (a fork), whoever supplied the proof.

Pure: no I/O. Raises :class:`~careledger_core.errors.ValidationError` for bad input and
:class:`~careledger_core.errors.ProofError` for proofs of the wrong shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .errors import ValidationError
from .hashing import EMPTY_ROOT, HASH_SIZE, LEAF_PREFIX, NODE_PREFIX
from .merkle import consistency_roots, merkle_root

__all__ = [
    "MAX_TREE_SIZE",
    "ChainTree",
    "block_leaf_hash",
    "consistency_roots",
]

#: Tree sizes are u64 in C2SP; checkpoints cap them at 2^63 - 1.
MAX_TREE_SIZE: Final = 2**63 - 1

_sha256 = hashlib.sha256


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(NODE_PREFIX + left + right).digest()


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ValidationError(f"{what} is not a {HASH_SIZE}-byte hash", details={"what": what})
    return value


def block_leaf_hash(block_hash: bytes) -> bytes:
    """The leaf hash of a block in its chain's tree: SHA-256(0x00 ‖ 32-byte block hash)."""
    return _sha256(LEAF_PREFIX + _check_hash(block_hash, "block hash")).digest()


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _decomposition(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees ``[start, end)`` of ``[0, size)``, largest first."""
    spans = []
    start = 0
    for bit in range(size.bit_length() - 1, -1, -1):
        width = 1 << bit
        if size & width:
            spans.append((start, start + width))
            start += width
    return spans


@dataclass(frozen=True, slots=True)
class ChainTree:
    """The frontier of the tree over leaves ``[0, size)``; immutable (``append`` returns
    a new one), so a snapshot can be kept per published checkpoint."""

    size: int = 0
    nodes: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise ValidationError("tree size must be an integer in 0..2^63-1")
        if not isinstance(self.nodes, tuple) or len(self.nodes) != self.size.bit_count():
            raise ValidationError(
                "a frontier has one node per set bit of its size",
                details={"size": self.size},
            )
        for i, node in enumerate(self.nodes):
            _check_hash(node, f"frontier node {i}")

    # ------------------------------------------------------------------ building
    @classmethod
    def of_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> ChainTree:
        """The frontier after appending ``leaf_hashes`` to the empty tree."""
        return cls().extend(leaf_hashes)

    @classmethod
    def of_blocks(cls, block_hashes: Iterable[bytes]) -> ChainTree:
        """The frontier of a chain whose blocks have these ``block_hash`` values."""
        return cls().extend(block_leaf_hash(h) for h in block_hashes)

    def append(self, leaf_hash: bytes) -> ChainTree:
        """The frontier with one more leaf (a leaf *hash*, e.g. ``block_leaf_hash``)."""
        node = _check_hash(leaf_hash, "leaf hash")
        if self.size >= MAX_TREE_SIZE:
            raise ValidationError("tree is full")
        nodes = list(self.nodes)
        size = self.size
        while size & 1:  # carry: merge equal-sized subtrees, right to left
            node = _node(nodes.pop(), node)
            size >>= 1
        nodes.append(node)
        return ChainTree(self.size + 1, tuple(nodes))

    def extend(self, leaf_hashes: Iterable[bytes]) -> ChainTree:
        """The frontier with ``leaf_hashes`` appended (one validation at the end)."""
        nodes = list(self.nodes)
        size = self.size
        for leaf in leaf_hashes:
            node = _check_hash(leaf, "leaf hash")
            carry = size
            while carry & 1:
                node = _node(nodes.pop(), node)
                carry >>= 1
            nodes.append(node)
            size += 1
        return ChainTree(size, tuple(nodes))

    # ------------------------------------------------------------------ reading
    @property
    def root(self) -> bytes:
        """The RFC 6962 Merkle Tree Hash of the ``size`` leaves (``EMPTY_ROOT`` for 0)."""
        if not self.nodes:
            return EMPTY_ROOT
        root = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            root = _node(node, root)
        return root

    def consistency_proof(self, new_leaves: Sequence[bytes]) -> tuple[bytes, ...]:
        """RFC 9162 consistency proof from this tree (size ``m``) to the tree with
        ``new_leaves`` (leaf hashes) appended (size ``n = m + len(new_leaves)``).

        Equal to ``MerkleTree(all leaves).consistency_proof(m)``, computed from the
        frontier and the new leaves only: O(log n + len(new_leaves)) hashing.
        """
        for i, leaf in enumerate(new_leaves):
            _check_hash(leaf, f"new leaf {i}")
        old, new = self.size, self.size + len(new_leaves)
        if old == 0 or old == new:
            return ()
        spans = dict(zip(_decomposition(old), self.nodes, strict=True))

        def subtree_root(start: int, end: int) -> bytes:
            if start >= old:  # new leaves only
                return merkle_root(new_leaves[start - old : end - old])
            if end <= old:  # a run of frontier nodes (always aligned, see the module doc)
                covered = [(s, e) for (s, e) in spans if start <= s and e <= end]
                if not covered or covered[0][0] != start or covered[-1][1] != end:
                    raise ValidationError(  # pragma: no cover - RFC 9162 never asks for one
                        "subtree not covered by the frontier",
                        details={"start": start, "end": end},
                    )
                root = spans[covered[-1]]
                for span in reversed(covered[:-1]):
                    root = _node(spans[span], root)
                return root
            k = _largest_power_of_two_below(end - start)  # pragma: no cover - as above
            return _node(subtree_root(start, start + k), subtree_root(start + k, end))

        proof: list[bytes] = []

        def subproof(m: int, start: int, end: int, complete: bool) -> None:
            n = end - start
            if m == n:
                if not complete:
                    proof.append(subtree_root(start, end))
                return
            k = _largest_power_of_two_below(n)
            if m <= k:
                subproof(m, start, start + k, complete)
                proof.append(subtree_root(start + k, end))
            else:
                subproof(m - k, start + k, end, False)
                proof.append(subtree_root(start, start + k))

        subproof(old, 0, new, True)
        return tuple(proof)
