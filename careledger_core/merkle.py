"""RFC 6962 / RFC 9162 Merkle trees: roots, inclusion proofs and consistency proofs.

The Merkle Tree Hash (MTH) of ``n`` leaf hashes splits at the largest power of two
``k < n``: ``MTH(D) = node_hash(MTH(D[:k]), MTH(D[k:]))``. Computed level by level, this
means an odd node at the end of a level is *promoted* to the next level unchanged — it is
never paired with a copy of itself (duplicating it, as Bitcoin did, lets two different
leaf lists share a root: CVE-2012-2459).

Functions take *leaf hashes* (``leaf_hash(canonical_event_bytes)``), never raw leaves.
Verification functions raise :class:`~careledger_core.errors.ProofError`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from .errors import ProofError, ValidationError
from .hashing import EMPTY_ROOT, HASH_SIZE, NODE_PREFIX

__all__ = [
    "MerkleTree",
    "consistency_proof",
    "consistency_roots",
    "inclusion_proof",
    "merkle_root",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

_sha256 = hashlib.sha256


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(NODE_PREFIX + left + right).digest()


def _check_leaf_hashes(leaf_hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(leaf_hashes):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise ValidationError(f"leaf hash {i} is not {HASH_SIZE} bytes", details={"index": i})


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) & 1:
        nxt.append(level[-1])  # promoted, not duplicated
    return nxt


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash of ``leaf_hashes``; ``EMPTY_ROOT`` for no leaves."""
    _check_leaf_hashes(leaf_hashes)
    if not leaf_hashes:
        return EMPTY_ROOT
    level: Sequence[bytes] = leaf_hashes
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def _largest_power_of_two_below(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """All levels of one tree, for producing many proofs without rehashing.

    ``MerkleTree(leaf_hashes).inclusion_proof(i)`` costs O(log n) after the O(n) build.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        _check_leaf_hashes(leaf_hashes)
        levels = [list(leaf_hashes)]
        while len(levels[-1]) > 1:
            levels.append(_next_level(levels[-1]))
        self._levels: tuple[tuple[bytes, ...], ...] = tuple(tuple(lv) for lv in levels)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        return self._levels[-1][0] if self.size else EMPTY_ROOT

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def inclusion_proof(self, index: int) -> tuple[bytes, ...]:
        """RFC 9162 audit path for leaf ``index``, ordered from the leaf upwards."""
        if not 0 <= index < self.size:
            raise ValidationError(
                f"leaf index {index} out of range for tree size {self.size}",
                details={"index": index, "tree_size": self.size},
            )
        proof: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                proof.append(level[sibling])
            index >>= 1
        return tuple(proof)

    def _subtree_root(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``, where ``start`` is aligned as in RFC 9162."""
        size = end - start
        if size & (size - 1) == 0:  # a perfect, aligned subtree: stored in a level
            height = size.bit_length() - 1
            return self._levels[height][start >> height]
        k = _largest_power_of_two_below(size)
        return _node(self._subtree_root(start, start + k), self._subtree_root(start + k, end))

    def consistency_proof(self, old_size: int) -> tuple[bytes, ...]:
        """RFC 9162 proof that the first ``old_size`` leaves are a prefix of this tree."""
        if not 0 <= old_size <= self.size:
            raise ValidationError(
                f"old size {old_size} out of range for tree size {self.size}",
                details={"old_size": old_size, "tree_size": self.size},
            )
        if old_size in (0, self.size):
            return ()
        proof: list[bytes] = []
        self._subproof(old_size, 0, self.size, True, proof)
        return tuple(proof)

    def _subproof(self, m: int, start: int, end: int, complete: bool, out: list[bytes]) -> None:
        n = end - start
        if m == n:
            if not complete:
                out.append(self._subtree_root(start, end))
            return
        k = _largest_power_of_two_below(n)
        if m <= k:
            self._subproof(m, start, start + k, complete, out)
            out.append(self._subtree_root(start + k, end))
        else:
            self._subproof(m - k, start + k, end, False, out)
            out.append(self._subtree_root(start, start + k))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> tuple[bytes, ...]:
    """RFC 9162 inclusion proof (audit path) of leaf ``index``."""
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> tuple[bytes, ...]:
    """RFC 9162 consistency proof from the tree of the first ``old_size`` leaves."""
    return MerkleTree(leaf_hashes).consistency_proof(old_size)


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash", details={"what": what})
    return value


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """Recompute the root implied by an inclusion proof (RFC 9162 §2.1.3.2)."""
    _check_hash(leaf_hash, "leaf hash")
    if not 0 <= index < tree_size:
        raise ProofError(
            f"leaf index {index} out of range for tree size {tree_size}",
            details={"index": index, "tree_size": tree_size},
        )
    fn, sn = index, tree_size - 1
    r = leaf_hash
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
        if sn == 0:
            raise ProofError(
                "inclusion proof is too long",
                details={"proof_length": len(proof), "index": index, "tree_size": tree_size},
            )
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            "inclusion proof is too short",
            details={"proof_length": len(proof), "index": index, "tree_size": tree_size},
        )
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    ``tree_size`` and ``root`` must come from the same authenticated source (a signed
    block header or checkpoint): for sizes whose audit paths have the same shape, a
    proof cannot tell them apart. Raises :class:`ProofError` otherwise.
    """
    _check_hash(root, "root")
    computed = root_from_inclusion_proof(leaf_hash, index, tree_size, proof)
    if not hmac.compare_digest(computed, root):
        raise ProofError(
            "inclusion proof does not lead to the root",
            details={"index": index, "tree_size": tree_size, "computed_root": computed.hex()},
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``old_size``, ``old_root``) is a prefix of (``new_size``,
    ``new_root``), per RFC 9162 §2.1.4.2. Raises :class:`ProofError` otherwise."""
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    sizes = {"old_size": old_size, "new_size": new_size, "proof_length": len(proof)}
    if not 0 <= old_size <= new_size:
        raise ProofError(f"sizes {old_size} -> {new_size} cannot be consistent", details=sizes)
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofError("consistency proof must be empty for these sizes", details=sizes)
        if old_size == 0 and not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise ProofError("the root of the empty tree is not SHA-256('')", details=sizes)
        if old_size == new_size and not hmac.compare_digest(old_root, new_root):
            raise ProofError("equal sizes but different roots", details=sizes)
        return
    fr, sr = consistency_roots(old_size, new_size, proof, old_root)
    if not hmac.compare_digest(fr, old_root):
        raise ProofError("consistency proof does not lead to the old root", details=sizes)
    if not hmac.compare_digest(sr, new_root):
        raise ProofError("consistency proof does not lead to the new root", details=sizes)


def consistency_roots(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes
) -> tuple[bytes, bytes]:
    """The (old root, new root) an RFC 9162 consistency proof implies.

    RFC 9162 §2.1.4.2 without the two final comparisons (``verify_consistency`` makes
    them). When ``old_size`` is a power of two the proof does not contain the old root:
    ``old_root`` is the starting node, so the old root returned is ``old_root`` itself
    and only the new root can disagree. Requires ``0 < old_size < new_size``; raises
    :class:`ProofError` if the proof has the wrong length for the sizes.
    """
    sizes = {"old_size": old_size, "new_size": new_size, "proof_length": len(proof)}
    if not 0 < old_size < new_size:
        raise ProofError("consistency roots need 0 < old size < new size", details=sizes)
    if not proof:
        raise ProofError("consistency proof is empty", details=sizes)
    path = [_check_hash(p, f"proof[{i}]") for i, p in enumerate(proof)]
    if old_size & (old_size - 1) == 0:
        path.insert(0, _check_hash(old_root, "old root"))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long", details=sizes)
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short", details=sizes)
    return fr, sr
