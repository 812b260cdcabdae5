"""The chain trees behind the processor's checkpoints (ADR 0012): each chain's tree
rebuilt from the store when the chain is loaded, and a write's checkpoint updates made
from the trees remembered before and after each block it sealed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from careledger.storage.store import ChainStore, SealedBlock
from careledger.storage.trees import ChainTreeError, stored_tree
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from processors.records import ChainUpdate

__all__ = ["BlockTrees", "chain_updates", "loaded_tree"]

log = logging.getLogger("careledger.processor")

#: the chain tree before and after each sealed block not yet published, by block hash
BlockTrees = dict[bytes, tuple[ChainTree, ChainTree]]


def loaded_tree(store: ChainStore, chain_id: str, head_hash: str, size: int) -> ChainTree | None:
    """The chain's tree rebuilt from the stored block hashes: O(n) 32-byte reads.

    If the stored chain is broken (a gap, a bad link), chaining goes on but no
    checkpoint is published for it: a checkpoint must commit to a well-formed tree.
    """
    try:
        tree = stored_tree(store, chain_id, head_hash=bytes.fromhex(head_hash))
    except (ChainTreeError, ValueError) as exc:
        log.error("chain %s: no checkpoints until the chain is repaired: %s", chain_id, exc)
        return None
    if tree.size != size:
        log.error(
            "chain %s: %d linked blocks below a head at height %d; no checkpoints",
            chain_id,
            tree.size,
            size - 1,
        )
        return None
    return tree


def chain_updates(trees: BlockTrees, sealed: Sequence[SealedBlock]) -> list[ChainUpdate]:
    """The checkpoint of each chain's newest block in ``sealed`` (stored by now), with a
    consistency proof from the chain's previous checkpoint; their trees leave
    ``trees``."""
    by_chain: dict[str, list[SealedBlock]] = {}
    for block in sealed:
        by_chain.setdefault(block.header.chain_id, []).append(block)
    updates = []
    for blocks in by_chain.values():
        found = [trees.pop(b.block_hash, None) for b in blocks]
        first, last = found[0], found[-1]
        if first is None or last is None or any(t is None for t in found):
            continue  # the tree is unknown (see ``loaded_tree``): no checkpoint
        old, new = first[0], last[1]
        leaves = [block_leaf_hash(b.block_hash) for b in blocks]
        if new.size != old.size + len(leaves) or new.size != blocks[-1].header.height + 1:
            continue  # pragma: no cover - blocks of one chain are sealed in order
        updates.append(ChainUpdate(blocks[-1].header, new, old.size, old.consistency_proof(leaves)))
    return updates
