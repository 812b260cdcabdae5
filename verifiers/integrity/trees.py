"""The signed checkpoint roots against the tree of the stored block hashes (ADR 0012).

Every tree checkpoint (size ``n``, root ``r``) says: the first ``n`` blocks of the chain
hash to ``r`` (RFC 6962 over their block hashes). ``check_trees`` streams the stored
block hashes of each chain once (``careledger.storage.trees.stored_block_hashes``, 32
bytes per block), grows the tree (``ChainTree``, O(log n) memory) and compares its root
at the size of every checkpoint read. For the checkpoints at or below the stored
prefix it can build (heights 0.. with one well-formed row each; a gap or two rows at
one height stop it there, and fsck reports those):

* a checkpoint above every matching one that does not match: the stored history was
  rewritten or truncated below it (``CHECKPOINT_ROOT_MISMATCH``: chain, size, both
  roots, and the largest size that still matches, so the changed blocks lie between);
* a checkpoint below a matching one that does not match: two signed checkpoints that
  cannot both be true, since a tree whose root is the larger one's has another root at
  the smaller size (``CHECKPOINT_INCONSISTENT``: a fork or rollback in the checkpoint
  log, whichever the store happens to hold).

One finding of each kind per chain (the smallest size), with the number of
checkpoints concerned. Checkpoints above the stored prefix are not compared here: a
stored chain shorter than a checkpoint is ``CHAIN_TRUNCATED`` (fsck, against the known
head), and the checkpoints' consistency among themselves is checked from their proofs
(``verifiers.integrity.checkpoint_log``).

Cost: one read of ``(height, block_hash)`` per block, one leaf hash and O(1) amortised
node hashes per block, O(log n) per checkpoint compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from careledger.storage.store import ChainStore
from careledger.storage.trees import stored_block_hashes
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.findings import Finding, FindingCode
from verifiers.integrity.checkpoint_log import SeenCheckpoint
from verifiers.integrity.fsck import VerifyCancelled

__all__ = ["TreeCheck", "check_trees"]

C = FindingCode
_CANCEL_EVERY = 10_000


@dataclass
class TreeCheck:
    """What comparing the checkpoints with the stored trees found."""

    findings: list[Finding] = field(default_factory=list)
    chains: int = 0
    compared: int = 0
    matched: int = 0
    mismatched: int = 0
    above_store: int = 0  # sizes beyond the stored prefix that could be built
    #: chains whose stored prefix stops before the head (gap, fork, malformed hash)
    broken: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "chains": self.chains,
            "compared": self.compared,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "above_store": self.above_store,
            "stored_prefix_broken_at": dict(sorted(self.broken.items())),
        }


def check_trees(
    store: ChainStore,
    trees: Mapping[str, list[SeenCheckpoint]],
    chains: Iterable[str],
    *,
    cancel: Callable[[], bool] | None = None,
) -> TreeCheck:
    """Compare the tree checkpoints of ``chains`` with the stored block hashes."""
    result = TreeCheck()
    for chain in chains:
        checkpoints = sorted(trees.get(chain, ()), key=lambda s: s.size)
        if checkpoints:
            result.chains += 1
            _check_chain(store, chain, checkpoints, result, cancel)
    return result


def _check_chain(
    store: ChainStore,
    chain: str,
    checkpoints: list[SeenCheckpoint],
    result: TreeCheck,
    cancel: Callable[[], bool] | None,
) -> None:
    compared: list[tuple[SeenCheckpoint, bytes]] = []
    tree = ChainTree()
    index = 0
    pending: tuple[int, bytes | None] | None = None
    broken_at: int | None = None

    def commit(height: int, value: bytes | None) -> bool:
        nonlocal tree, index
        if value is None or height != tree.size:
            return False
        tree = tree.append(block_leaf_hash(value))
        while index < len(checkpoints) and checkpoints[index].size == tree.size:
            compared.append((checkpoints[index], tree.root))
            index += 1
        return True

    for n, (height, value) in enumerate(stored_block_hashes(store, chain)):
        if cancel is not None and n % _CANCEL_EVERY == 0 and cancel():
            raise VerifyCancelled()
        if index >= len(checkpoints):
            break  # every checkpoint compared: the rest of the chain is fsck's
        if pending is not None and height == pending[0]:
            broken_at = height  # two rows at one height: which one is the chain's?
            pending = None
            break
        if pending is not None and not commit(*pending):
            broken_at = pending[0] if pending[1] is None else tree.size
            pending = None
            break
        pending = (height, value)
    if pending is not None and not commit(*pending):
        broken_at = pending[0] if pending[1] is None else tree.size
    if broken_at is not None and index < len(checkpoints):
        result.broken[chain] = broken_at
    result.above_store += len(checkpoints) - index
    _classify(chain, compared, result)


def _classify(chain: str, compared: list[tuple[SeenCheckpoint, bytes]], result: TreeCheck) -> None:
    result.compared += len(compared)
    matched = [cp for cp, root in compared if root == cp.checkpoint.root_hash]
    result.matched += len(matched)
    mismatched = [(cp, root) for cp, root in compared if root != cp.checkpoint.root_hash]
    result.mismatched += len(mismatched)
    if not mismatched:
        return
    top = max((cp.size for cp in matched), default=0)
    rewritten = [(cp, root) for cp, root in mismatched if cp.size > top]
    contradicted = [(cp, root) for cp, root in mismatched if cp.size < top]
    if rewritten:
        cp, root = rewritten[0]
        where = (
            f"a block in {top}..{cp.height} was changed (the checkpoint of size {top} "
            "still matches)"
            if top
            else f"a block in 0..{cp.height} was changed"
        )
        result.findings.append(
            Finding.of(
                C.CHECKPOINT_ROOT_MISMATCH,
                chain,
                f"the stored blocks 0..{cp.height} hash to {root.hex()[:16]}…, not to the "
                f"root {cp.root_hex[:16]}… of the signed checkpoint of size {cp.size}: the "
                f"stored history was rewritten; {where}",
                height=cp.height,
                details={
                    "source": "checkpoint",
                    "size": cp.size,
                    "checkpoint_root": cp.root_hex,
                    "stored_root": root.hex(),
                    "last_matching_size": top,
                    "mismatching_checkpoints": len(rewritten),
                    "largest_mismatching_size": rewritten[-1][0].size,
                    "checkpoint": cp.describe(),
                },
            )
        )
    if contradicted:
        cp, root = contradicted[0]
        newer = min((m for m in matched if m.size > cp.size), key=lambda m: m.size)
        result.findings.append(
            Finding.of(
                C.CHECKPOINT_INCONSISTENT,
                chain,
                f"the signed checkpoint of size {cp.size} (root {cp.root_hex[:16]}…) is not "
                f"a prefix of the signed checkpoint of size {newer.size}, which the stored "
                f"blocks match (their root at size {cp.size} is {root.hex()[:16]}…): the log "
                "signed two histories (a fork, or a rollback)",
                height=cp.height,
                details={
                    "source": "checkpoint",
                    "how": "stored tree",
                    "older": cp.describe(),
                    "newer": newer.describe(),
                    "stored_root_at_older_size": root.hex(),
                    "contradicted_checkpoints": len(contradicted),
                },
            )
        )
