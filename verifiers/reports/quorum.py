"""The exporter's side of witnessed access reports (ADR 0019), pure: which cosigned
checkpoint to attach per chain, and the inclusion proofs of the report's blocks in it.

* :class:`QuorumCheckpoints` takes checkpoint notes from anywhere (the checkpoints
  topic, the witnesses' own ``GET /<hash>/checkpoint``, the processor's notes and the
  cosigner's republications), unverified. A note counts only if a trusted key signed it
  under its origin (``open_log_checkpoint``) and it is a tree checkpoint of a chain the
  report cites. The valid cosignatures of the policy's witnesses are merged per
  checkpoint (chain, size, root) over all its copies: cosignatures sign the note text,
  not the other lines, so the copies of one checkpoint can be joined into one note that
  carries the log's signature line and one valid cosignature line per witness
  (:attr:`QuorumCheckpoint.note`). A forged cosignature line is never copied.
* :func:`select_checkpoint` picks, per chain, the largest quorum checkpoint whose root
  the stored block hashes reproduce; every larger one the store does not reproduce is a
  problem (the store was rewritten or truncated after the witnesses cosigned it:
  ``careledger verify`` locates it).
* :func:`attach_witnessing` writes ``doc["checkpoints"]`` and, for each line whose
  block the chain's checkpoint covers, ``proof.block_inclusion`` = ``{"tree_size",
  "audit_path"}`` (RFC 9162, leaf = ``block_leaf_hash(block hash)`` at the block's
  height). A line whose block is newer gets no proof: ``verify-proof`` reports it as
  not yet witnessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.checkpoint import Checkpoint
from careledger_core.cosignature import WitnessPolicy, check_quorum, split_note
from careledger_core.errors import CheckpointError, SignatureError
from careledger_core.merkle import MerkleTree
from careledger_core.signing import PublicKey
from verifiers.reports.witnessed import open_log_checkpoint

__all__ = [
    "QuorumCheckpoint",
    "QuorumCheckpoints",
    "attach_witnessing",
    "cited_chains",
    "select_checkpoint",
]


@dataclass(frozen=True)
class QuorumCheckpoint:
    """A checkpoint with a quorum of valid cosignatures, as one signed note."""

    checkpoint: Checkpoint
    note: str
    cosigned_by: tuple[str, ...]

    @property
    def chain(self) -> str:
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        return self.checkpoint.size

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain,
            "size": self.size,
            "cosigned_by": list(self.cosigned_by),
            "note": self.note,
        }


@dataclass
class _Copies:
    checkpoint: Checkpoint
    body: str
    log_lines: tuple[str, ...]
    #: witness -> (timestamp, cosignature line): the newest valid one
    cosignatures: dict[str, tuple[int, str]] = field(default_factory=dict)


class QuorumCheckpoints:
    """Collects checkpoint notes of the ``chains`` a report cites; see the module doc."""

    def __init__(
        self, trusted: Iterable[PublicKey], policy: WitnessPolicy, chains: Iterable[str]
    ) -> None:
        self.trusted = tuple(trusted)
        self.policy = policy
        self.chains = frozenset(chains)
        self._copies: dict[tuple[str, int, bytes], _Copies] = {}
        self.taken = 0  # notes that verified under a trusted key
        self.ignored = 0  # of other chains, unsigned, malformed, legacy, forged

    def add(self, note: str) -> bool:
        """Take one note (unverified); False if it does not count."""
        if note.partition("\n")[0] not in self.chains:
            self.ignored += 1
            return False
        try:
            cp, log_lines = open_log_checkpoint(note, self.trusted)
            quorum = check_quorum(note, self.policy)
        except (CheckpointError, SignatureError):
            self.ignored += 1
            return False
        self.taken += 1
        key = (cp.origin, cp.size, cp.root_hash)
        copies = self._copies.get(key)
        if copies is None:
            copies = self._copies[key] = _Copies(cp, split_note(note)[0], log_lines)
        for name, cos in quorum.cosigned.items():
            seen = copies.cosignatures.get(name)
            if seen is None or cos.timestamp > seen[0]:
                copies.cosignatures[name] = (cos.timestamp, cos.line)
        return True

    def candidates(self, chain: str) -> list[QuorumCheckpoint]:
        """The quorum checkpoints of ``chain``, largest first."""
        out = []
        for (origin, _size, _root), copies in self._copies.items():
            if origin != chain or len(copies.cosignatures) < self.policy.quorum:
                continue
            names = tuple(w.name for w in self.policy.witnesses if w.name in copies.cosignatures)
            lines = [*copies.log_lines, *(copies.cosignatures[n][1] for n in names)]
            note = copies.body + "\n" + "".join(f"{line}\n" for line in lines)
            out.append(QuorumCheckpoint(copies.checkpoint, note, names))
        return sorted(out, key=lambda q: q.size, reverse=True)

    def largest(self, chain: str) -> int:
        """The size of the largest quorum checkpoint of ``chain`` (0 if none)."""
        found = self.candidates(chain)
        return found[0].size if found else 0


def cited_chains(doc: Mapping[str, Any]) -> dict[str, int]:
    """chain -> the number of blocks a checkpoint needs to cover every line of it."""
    needed: dict[str, int] = {}
    for line in doc["lines"]:
        proof = line["proof"]
        chain, height = str(proof["chain_id"]), int(proof["height"])
        needed[chain] = max(needed.get(chain, 0), height + 1)
    return needed


def select_checkpoint(
    chain: str, candidates: Sequence[QuorumCheckpoint], block_hashes: Sequence[bytes]
) -> tuple[QuorumCheckpoint | None, list[str]]:
    """The largest candidate whose root the stored ``block_hashes`` (heights 0.., one
    per height) reproduce, and a problem for each larger one they do not."""
    problems: list[str] = []
    tree = ChainTree()
    grown = 0
    leaves = [block_leaf_hash(h) for h in block_hashes]
    roots: dict[int, bytes] = {}
    for size in sorted({c.size for c in candidates if c.size <= len(leaves)}):
        tree = tree.extend(leaves[grown:size])
        grown = size
        roots[size] = tree.root
    for cp in candidates:
        if roots.get(cp.size) == cp.checkpoint.root_hash:
            return cp, problems
        where = (
            f"the store has {len(leaves)} block(s) of {chain}, the checkpoint cosigned by "
            f"{', '.join(cp.cosigned_by)} has {cp.size}"
            if cp.size > len(leaves)
            else f"the stored blocks of {chain} do not reproduce the root of the checkpoint "
            f"of size {cp.size} cosigned by {', '.join(cp.cosigned_by)}"
        )
        problems.append(f"{where}: the store was rewritten or truncated (see careledger verify)")
    return None, problems


def attach_witnessing(
    doc: MutableMapping[str, Any],
    chosen: Mapping[str, QuorumCheckpoint],
    block_hashes: Mapping[str, Sequence[bytes]],
    policy: Mapping[str, Any],
) -> list[str]:
    """Add the chosen checkpoints and each covered line's ``proof.block_inclusion`` to
    ``doc`` (in place); returns the problems (a line whose block is not the stored
    chain's block at its height)."""
    problems: list[str] = []
    trees: dict[str, MerkleTree] = {}
    for chain, chain_cp in chosen.items():
        leaves = [block_leaf_hash(h) for h in block_hashes[chain][: chain_cp.size]]
        trees[chain] = MerkleTree(leaves)
    for line in doc["lines"]:
        proof = line["proof"]
        chain, height = str(proof["chain_id"]), int(proof["height"])
        cp = chosen.get(chain)
        if cp is None or height >= cp.size:
            continue
        if block_hashes[chain][height].hex() != proof["block_hash"]:
            problems.append(
                f"{chain}@{height}: the line's block {str(proof['block_hash'])[:16]}… is not "
                "the chain's block at that height: no witnessed proof for it"
            )
            continue
        proof["block_inclusion"] = {
            "tree_size": cp.size,
            "audit_path": [p.hex() for p in trees[chain].inclusion_proof(height)],
        }
    doc["checkpoints"] = [chosen[c].to_json() for c in sorted(chosen)]
    doc["witness_policy"] = dict(policy)
    return problems
