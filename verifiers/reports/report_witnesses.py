"""``careledger access-report`` under a witness policy (ADR 0019): find, per chain the
report cites, the newest checkpoint a quorum of witnesses cosigned, check it against the
stored blocks, and attach it with the inclusion proofs of the report's blocks.

Where the cosigned checkpoints come from (``careledger.cosigned_checkpoints``):

1. the witnesses with a ``url`` in the witnesses file, asked for the latest checkpoint
   they cosigned per cited chain (``careledger witness`` serves it; litewitness does
   not);
2. the checkpoints topic, read backwards from its end one window at a time, until every
   cited chain has a quorum checkpoint covering all its lines (or the topic's start).

Every note is verified under the trusted keys and its cosignatures counted under the
policy (:class:`verifiers.reports.quorum.QuorumCheckpoints`): neither Kafka nor a
witness is trusted. The chosen checkpoint's root must be reproduced by the stored
block hashes (``careledger.storage.trees.chain_block_hashes``: one read of the chain's
32-byte hashes), else the report states a problem (exit 1) and falls back to the
largest quorum checkpoint the store does reproduce.

"Cannot tell" (:attr:`ExportWitnessing.unavailable`, exit 2): a cited chain has no
covering quorum checkpoint among what was read, and the checkpoints topic could not be
read (so one may exist). Lines whose blocks are newer than the newest quorum checkpoint
with the topic read are "not yet witnessed" (exit 3), decided by the report's self-check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from careledger.cosigned_checkpoints import (
    DEFAULT_WINDOW,
    CheckpointNotes,
    CheckpointsUnavailable,
    fetch_from_witnesses,
)
from careledger.storage.store import ChainStore
from careledger.storage.trees import ChainTreeError, chain_block_hashes
from careledger.witnesses import WitnessSet
from careledger_core.signing import PublicKey
from verifiers.reports.quorum import (
    QuorumCheckpoint,
    QuorumCheckpoints,
    attach_witnessing,
    cited_chains,
    select_checkpoint,
)

__all__ = ["ExportWitnessing", "witness_report"]

log = logging.getLogger("careledger.access_report.witnesses")


@dataclass
class ExportWitnessing:
    """What attaching the witnessed checkpoints gave."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: why the policy could not be applied ("cannot tell"), else None
    unavailable: str | None = None


def _covered(collector: QuorumCheckpoints, needed: dict[str, int]) -> bool:
    return all(collector.largest(chain) >= size for chain, size in needed.items())


def _gather(
    settings: Any,
    collector: QuorumCheckpoints,
    witnesses: WitnessSet,
    needed: dict[str, int],
    timeout_s: float,
    window: int,
    out: ExportWitnessing,
) -> None:
    fetched = fetch_from_witnesses(witnesses, needed, timeout_s)
    for _name, note in fetched.notes:
        collector.add(note)
    for name, error in sorted(fetched.errors.items()):
        out.warnings.append(f"witness {name} could not be asked for its checkpoints: {error}")
    if _covered(collector, needed):
        return
    try:
        with CheckpointNotes(settings, timeout_s=timeout_s) as topic:
            for notes in topic.windows(window):
                for note in notes:
                    collector.add(note)
                if _covered(collector, needed):
                    return
    except CheckpointsUnavailable as exc:
        short = sorted(c for c, n in needed.items() if collector.largest(c) < n)
        out.unavailable = (
            f"{exc.message}; no quorum-cosigned checkpoint covering the report's blocks of "
            f"{', '.join(short)} was found elsewhere"
            + (
                f" (witnesses not answering: {', '.join(sorted(fetched.errors))})"
                if fetched.errors
                else ""
            )
        )


def _stored_hashes(
    store: ChainStore, chain: str, candidates: list[QuorumCheckpoint], out: ExportWitnessing
) -> list[bytes] | None:
    try:
        return chain_block_hashes(store, chain)
    except ChainTreeError as first:
        # two rows at a height or a broken link: the chain of the witnessed head
        try:
            return chain_block_hashes(store, chain, head_hash=candidates[0].checkpoint.head_hash)
        except ChainTreeError:
            out.problems.append(
                f"the stored blocks of {chain} do not form one chain ({first.message}): "
                "no witnessed proof for its lines (see careledger verify)"
            )
            return None


def witness_report(
    doc: MutableMapping[str, Any],
    store: ChainStore,
    settings: Any,
    trusted: Iterable[PublicKey],
    witnesses: WitnessSet,
    policy_json: dict[str, Any],
    *,
    timeout_s: float = 10.0,
    window: int = DEFAULT_WINDOW,
) -> ExportWitnessing:
    """Attach to ``doc`` (built by ``build_report``, in place) each cited chain's newest
    quorum-cosigned checkpoint the store reproduces, and the block inclusion proofs.
    Raises ``StorageError`` if the store cannot be read."""
    out = ExportWitnessing()
    needed = cited_chains(doc)
    collector = QuorumCheckpoints(trusted, witnesses.policy, needed)
    if needed:
        _gather(settings, collector, witnesses, needed, timeout_s, window, out)
    chosen: dict[str, QuorumCheckpoint] = {}
    hashes: dict[str, list[bytes]] = {}
    for chain in sorted(needed):
        candidates = collector.candidates(chain)
        if not candidates:
            continue
        stored = _stored_hashes(store, chain, candidates, out)
        if stored is None:
            continue
        cp, problems = select_checkpoint(chain, candidates, stored)
        out.problems += problems
        if cp is not None:
            chosen[chain], hashes[chain] = cp, stored
    out.problems += attach_witnessing(doc, chosen, hashes, policy_json)
    log.debug(
        "witnessed checkpoints: %d note(s) taken, %d ignored, %d of %d chain(s) attached",
        collector.taken,
        collector.ignored,
        len(chosen),
        len(needed),
    )
    return out
