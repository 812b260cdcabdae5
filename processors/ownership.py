"""This processor's claims on its chains (ADR 0031): the processor side of the fence in
``careledger.storage.fencing``.

A chain is claimed when it is loaded, before its head is read; the first write after a
claim waits until the claim is ``CLAIM_SETTLE_S`` old; a write the store refused for a
chain (another processor claimed it since) drops that chain, and the partition's records
are ignored until the consumer group assigns it again: this processor is a zombie for
it, and re-claiming it from records still buffered would take it back from its owner.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence

from careledger.storage.fencing import CLAIM_SETTLE_S
from careledger.storage.store import ChainHead, ChainStore

log = logging.getLogger(__name__)

Part = tuple[str, int]


class ChainOwnership:
    def __init__(self, app_id: str) -> None:
        #: who this processor is in ``chain_owners``: one per process run
        self.owner = f"{app_id}/{uuid.uuid4().hex}"
        self._claimed_at: dict[str, float] = {}
        #: partitions this processor was fenced from, until assigned again
        self.fenced: set[Part] = set()
        self.fenced_writes = 0
        #: what the consumer group assigned to this processor; None: not told yet
        self._assignment: set[Part] | None = None

    def claim(self, store: ChainStore, chain_id: str) -> int:
        epoch = store.claim(chain_id, self.owner)
        self._claimed_at[chain_id] = time.monotonic()
        return epoch

    def claim_then_head(self, store: ChainStore, chain_id: str) -> ChainHead | None:
        """Claim the chain, then read its head: a head read after the claim is one no
        earlier owner can write above any more (``CLAIM_SETTLE_S`` aside)."""
        self.claim(store, chain_id)
        return store.head(chain_id)

    def settle(self, chain_ids: set[str]) -> None:
        """Block until every one of ``chain_ids`` was claimed ``CLAIM_SETTLE_S`` ago
        (only the first write after a claim ever waits)."""
        now = time.monotonic()
        wait = (
            max(
                (CLAIM_SETTLE_S - (now - self._claimed_at.get(c, now - CLAIM_SETTLE_S)))
                for c in chain_ids
            )
            if chain_ids
            else 0.0
        )
        if wait > 0:
            time.sleep(wait)

    def lost(
        self,
        parts: Iterable[Part],
        chain_ids: Iterable[str],
        written: Sequence[tuple[str, str]] = (),
    ) -> None:
        """The store refused this processor's headers for these chains; ``written``:
        the (chain, block hash) of the write, whose rows the store deleted again."""
        for chain_id in chain_ids:
            self._claimed_at.pop(chain_id, None)
            self.fenced_writes += 1
            log.error(
                "chain %s: another processor claimed it; this one is fenced off it until "
                "the group assigns it again (no header written; rows deleted of blocks %s)",
                chain_id,
                " ".join(h[:12] for c, h in written if c == chain_id) or "none",
            )
        self.fenced.update(parts)

    def assigned(self, parts: Iterable[Part]) -> None:
        parts = set(parts)
        self.fenced.difference_update(parts)
        self._assignment = (self._assignment or set()) | parts

    def revoked(self, parts: Iterable[Part]) -> None:
        if self._assignment is not None:
            self._assignment.difference_update(parts)

    def may_load(self, part: Part) -> bool:
        """Whether this processor may load (and so claim) ``part``: not fenced off it,
        and assigned to it by the group. A record of a partition revoked meanwhile
        (still in a batch being handled) must not claim the chain from its new owner.
        Before any assignment is known (no consumer group: tests feeding records)
        every partition may be loaded."""
        if part in self.fenced:
            return False
        return self._assignment is None or part in self._assignment
