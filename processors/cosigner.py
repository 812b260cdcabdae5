"""The log side of C2SP tlog-witness: ask the witnesses to cosign each chain's newest
checkpoint and publish it with their cosignatures (ADR 0018).

Phases, as in transparency-dev's tessera: the processor *sequences and integrates*
(chains, stores, signs a checkpoint per write, ADR 0012); the cosigner *publishes*:
it reads the checkpoints topic, and for each chain's newest checkpoint

1. checks the checkpoint's root against the stored blocks (``careledger.storage.trees``):
   a checkpoint the store does not match is never sent (``careledger verify`` says where);
2. asks every witness with a ``url`` (``witnesses_file``) in parallel with
   ``add-checkpoint``: the old size is the size that witness last cosigned (learned
   from its answers; a 409 tells it), the proof an RFC 9162 consistency proof from that
   size computed from the stored block hashes (``ChainLeaves``: the frontier at each
   size a witness is at and the leaves since, read incrementally);
3. attaches the cosignature lines it got (``attach_cosignatures``) and publishes the
   note again to the checkpoints topic, key = chain id, header ``careledger-cosigned``.

Witnessing is off the processor's hot path: a slow or dead witness delays only its own
cosignature, never chaining. A witness that refuses (422: the checkpoint is not
consistent with what it cosigned; 403/404) is logged as an error with the reason: for
a log whose key is stolen, that refusal is the alarm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from careledger.storage.store import ChainStore
from careledger.storage.trees import ChainTreeError, chain_block_hashes, stored_block_hashes
from careledger.witness_client import WitnessUnreachable, add_checkpoint
from careledger.witnesses import Witness, WitnessSet
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.checkpoint import Checkpoint, parse_checkpoint
from careledger_core.cosignature import attach_cosignatures, check_quorum, split_note
from careledger_core.errors import CheckpointError
from careledger_core.witness import WitnessAnswer, format_add_checkpoint

__all__ = ["COSIGNED_HEADER", "ChainLeaves", "Cosigner", "RoundResult"]

log = logging.getLogger("careledger.cosigner")

#: Kafka record header on a republished, cosigned checkpoint: the witnesses' names.
COSIGNED_HEADER: Final = "careledger-cosigned"
#: Frontiers kept per chain (sizes witnesses are at, recent checkpoints).
_MAX_FRONTIERS: Final = 64

Ask = Callable[[str, bytes, float], WitnessAnswer]


def _ask(url: str, body: bytes, timeout: float) -> WitnessAnswer:
    return add_checkpoint(url, body, timeout=timeout)


class ChainLeaves:
    """The stored tree of one chain as far as the cosigner needs it: the frontier at
    ``start`` and the leaf hashes from ``start`` on, grown from the store as the chain
    grows, trimmed to the smallest size a witness is at."""

    def __init__(self, store: ChainStore, chain: str) -> None:
        self.store, self.chain = store, chain
        self.start = 0
        self.leaves: list[bytes] = []
        self._frontiers: dict[int, ChainTree] = {0: ChainTree()}

    @property
    def size(self) -> int:
        return self.start + len(self.leaves)

    def grow(self, size: int, head_hash: bytes) -> None:
        """Hold leaves up to ``size``; the block at ``size - 1`` must be ``head_hash``.
        Raises ChainTreeError if the store has no such chain (a gap, a fork, a rewrite)."""
        if size <= self.size:
            return
        new: list[bytes] = []
        for height, value in stored_block_hashes(self.store, self.chain, from_height=self.size):
            if height >= size:
                break
            if height != self.size + len(new) or value is None:
                new = []  # a second row at a height, a gap: resolve by the links
                break
            new.append(value)
        if len(new) == size - self.size and new and new[-1] == head_hash:
            self.leaves.extend(block_leaf_hash(h) for h in new)
            return
        hashes = chain_block_hashes(self.store, self.chain, head_hash=head_hash)
        if len(hashes) != size:
            raise ChainTreeError(
                f"chain {self.chain}: the stored chain ending in the checkpoint's head has "
                f"{len(hashes)} blocks, not {size}",
                details={"chain_id": self.chain, "stored": len(hashes), "size": size},
            )
        self.start, self.leaves = 0, [block_leaf_hash(h) for h in hashes]
        self._frontiers = {0: ChainTree()}

    def tree_at(self, size: int) -> ChainTree:
        """The frontier at ``size`` (``start <= size <= self.size``)."""
        tree = self._frontiers.get(size)
        if tree is None:
            if not self.start <= size <= self.size:
                raise ChainTreeError(f"chain {self.chain}: size {size} is not held")
            below = max(s for s in self._frontiers if s <= size)
            tree = self._frontiers[below].extend(
                self.leaves[below - self.start : size - self.start]
            )
            if len(self._frontiers) >= _MAX_FRONTIERS:
                del self._frontiers[min(s for s in self._frontiers if s != self.start)]
            self._frontiers[size] = tree
        return tree

    def proof(self, old: int, new: int) -> tuple[bytes, ...]:
        """RFC 9162 consistency proof from ``old`` to ``new`` (both held)."""
        return self.tree_at(old).consistency_proof(self.leaves[old - self.start : new - self.start])

    def holds(self, size: int) -> bool:
        return self.start <= size <= self.size

    def trim(self, keep_from: int) -> None:
        """Forget leaves below ``keep_from`` (no witness needs a proof from there)."""
        if keep_from <= self.start or keep_from > self.size:
            return
        frontier = self.tree_at(keep_from)
        self.leaves = self.leaves[keep_from - self.start :]
        self.start = keep_from
        self._frontiers = {s: t for s, t in self._frontiers.items() if s >= keep_from}
        self._frontiers[keep_from] = frontier


@dataclass
class RoundResult:
    """What one cosigning round got for one checkpoint."""

    chain: str
    size: int
    note: str  # the note with every cosignature received attached
    cosigned_by: tuple[str, ...]
    refused: dict[str, str] = field(default_factory=dict)  # witness -> reason
    quorum_met: bool = False
    seconds: float = 0.0


@dataclass
class _Pending:
    checkpoint: Checkpoint
    note: str
    seen_at: float  # time.monotonic() when the note was read
    #: cosignature lines received in earlier rounds, and from whom
    lines: list[str] = field(default_factory=list)
    cosigned: set[str] = field(default_factory=set)
    retry_at: float = 0.0
    backoff_s: float = 0.0


class Cosigner:
    """Cosigning rounds over the newest checkpoint of each chain (pure of Kafka: the
    caller offers notes and publishes results)."""

    def __init__(
        self,
        witnesses: WitnessSet,
        store: ChainStore,
        *,
        timeout_s: float = 5.0,
        ask: Ask = _ask,
        chain_prefix: str = "",
        retry_after_s: float = 2.0,
        max_retry_after_s: float = 60.0,
    ) -> None:
        self.witnesses = witnesses
        self.asked: tuple[Witness, ...] = witnesses.reachable
        self.store = store
        self.timeout_s = timeout_s
        self.chain_prefix = chain_prefix
        self._ask = ask
        self._pending: dict[str, _Pending] = {}
        # checkpoints that missed the quorum, asked again (only the witnesses that did
        # not cosign) until they reach it or a newer checkpoint of the chain replaces
        # them: an idle chain must not stay unwitnessed because a witness was down once
        self._retry: dict[str, _Pending] = {}
        self.retry_after_s = retry_after_s
        self.max_retry_after_s = max_retry_after_s
        self._done: dict[str, int] = {}  # chain -> newest size a round was run for
        self._sizes: dict[tuple[str, str], int] = {}  # (witness, chain) -> cosigned size
        self._leaves: dict[str, ChainLeaves] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.asked)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def offer(self, note: str) -> bool:
        """Take a note read from the checkpoints topic; True if it is a newer checkpoint
        of a chain than any offered so far. Notes that already carry cosignatures (ours,
        republished) and malformed notes are ignored."""
        try:
            body, lines = split_note(note)
            cp = parse_checkpoint(body)
            cp.head_hash  # noqa: B018 - a tree checkpoint names its head
        except CheckpointError:
            return False
        if len(lines) != 1 or not cp.is_tree or cp.size == 0:
            return False
        if not cp.origin.startswith(self.chain_prefix):
            return False
        newest = max(self._done.get(cp.origin, 0), self._pending_size(cp.origin))
        if cp.size <= newest:
            return False
        self._pending[cp.origin] = _Pending(cp, note, time.monotonic())
        self._retry.pop(cp.origin, None)
        return True

    def _pending_size(self, chain: str) -> int:
        pending = self._pending.get(chain)
        return pending.checkpoint.size if pending else 0

    def round(self) -> list[RoundResult]:
        """Ask the witnesses about every pending checkpoint; one result per checkpoint."""
        now = time.monotonic()
        for chain, waiting in list(self._retry.items()):
            if waiting.retry_at <= now and chain not in self._pending:
                self._pending[chain] = self._retry.pop(chain)
        results = []
        for chain in sorted(self._pending):
            pending = self._pending.pop(chain)
            self._done[chain] = pending.checkpoint.size
            result = self._cosign(pending)
            if result is not None:
                results.append(result)
                if not result.quorum_met:
                    pending.backoff_s = min(
                        max(pending.backoff_s * 2, self.retry_after_s), self.max_retry_after_s
                    )
                    pending.retry_at = time.monotonic() + pending.backoff_s
                    self._retry[chain] = pending
        return results

    @property
    def waiting(self) -> int:
        """Checkpoints below the quorum, to be asked again."""
        return len(self._retry)

    # ------------------------------------------------------------------ one checkpoint
    def _cosign(self, pending: _Pending) -> RoundResult | None:
        cp = pending.checkpoint
        leaves = self._leaves.get(cp.origin)
        if leaves is None:
            leaves = self._leaves[cp.origin] = ChainLeaves(self.store, cp.origin)
        try:
            leaves.grow(cp.size, cp.head_hash)
            if leaves.tree_at(cp.size).root != cp.root_hash:
                raise ChainTreeError("the stored blocks give another root")
        except ChainTreeError as exc:
            self._leaves.pop(cp.origin, None)
            log.error(
                "not sending checkpoint %d of %s to witnesses: the store does not match it "
                "(%s); run careledger verify",
                cp.size,
                cp.origin,
                exc.message,
            )
            return None
        lines = pending.lines
        refused: dict[str, str] = {}
        todo = [w for w in self.asked if w.name not in pending.cosigned]
        for _attempt in range(2):  # a 409 names the witness's size: one more try from it
            leaves = self._leaves[cp.origin]  # a 409 may have reloaded it
            answers = self._ask_all(todo, cp, pending.note, leaves)
            todo = []
            for witness, answer in answers:
                reason = self._take(witness, cp, answer, lines)
                if reason == "retry":
                    todo.append(witness)
                elif reason:
                    refused[witness.name] = reason
            if not todo:
                break
        for witness in todo:
            refused[witness.name] = "conflicting size after retry"
        self._trim(cp.origin, self._leaves[cp.origin])
        note = attach_cosignatures(pending.note, lines) if lines else pending.note
        quorum = check_quorum(note, self.witnesses.policy)
        pending.cosigned |= set(quorum.cosigned)
        result = RoundResult(
            chain=cp.origin,
            size=cp.size,
            note=note,
            cosigned_by=tuple(sorted(quorum.cosigned)),
            refused=refused,
            quorum_met=quorum.met,
            seconds=time.monotonic() - pending.seen_at,
        )
        for name, reason in sorted(refused.items()):
            log.error(
                "witness %s refused checkpoint %d of %s: %s", name, cp.size, cp.origin, reason
            )
        return result

    def _request(self, witness: Witness, cp: Checkpoint, note: str, leaves: ChainLeaves) -> bytes:
        old = self._sizes.get((witness.name, cp.origin), 0)
        if old > cp.size or not leaves.holds(old):
            old = 0  # unknown to us: the witness's 409 will say
        return format_add_checkpoint(old, leaves.proof(old, cp.size) if old else (), note)

    def _ask_all(
        self, witnesses: list[Witness], cp: Checkpoint, note: str, leaves: ChainLeaves
    ) -> list[tuple[Witness, WitnessAnswer | str]]:
        bodies = [(w, self._request(w, cp, note, leaves)) for w in witnesses]
        futures = [(w, self._pool.submit(self._ask_one, str(w.url), body)) for w, body in bodies]
        return [(w, f.result()) for w, f in futures]

    def _ask_one(self, url: str, body: bytes) -> WitnessAnswer | str:
        try:
            return self._ask(url, body, self.timeout_s)
        except WitnessUnreachable as exc:
            return f"unreachable: {exc.message}"

    def _take(
        self, witness: Witness, cp: Checkpoint, answer: WitnessAnswer | str, lines: list[str]
    ) -> str:
        """Record a witness's answer; returns "" (cosigned), "retry" or the reason."""
        if isinstance(answer, str):
            return answer
        key = (witness.name, cp.origin)
        if answer.cosigned:
            self._sizes[key] = cp.size
            lines.extend(answer.cosignatures)
            return ""
        if answer.status == 409 and answer.latest_size is not None:
            if answer.latest_size > cp.size:
                return f"it already cosigned size {answer.latest_size} (this log is behind it)"
            known = self._sizes.get(key)
            self._sizes[key] = answer.latest_size
            leaves = self._leaves[cp.origin]
            if answer.latest_size == known or not self._hold(leaves, answer.latest_size, cp):
                return f"conflict at its size {answer.latest_size}"
            return "retry"
        return {
            400: "400: it could not read the request",
            403: "403: no valid signature by a log key it trusts for this origin",
            404: "404: it does not witness this origin",
            422: "422: not consistent with the checkpoint it cosigned (fork or rollback?)",
        }.get(answer.status, f"answered {answer.status}")

    def _hold(self, leaves: ChainLeaves, size: int, cp: Checkpoint) -> bool:
        """Make ``leaves`` hold ``size`` (reload the chain from the store if needed)."""
        if leaves.holds(size):
            return True
        try:
            fresh = ChainLeaves(self.store, cp.origin)
            fresh.grow(cp.size, cp.head_hash)
        except ChainTreeError:
            return False
        self._leaves[cp.origin] = fresh
        return fresh.holds(size)

    def _trim(self, chain: str, leaves: ChainLeaves) -> None:
        sizes = [self._sizes.get((w.name, chain)) for w in self.asked]
        known = [s for s in sizes if s is not None]
        if known and len(known) == len(sizes):
            leaves.trim(min(known))
