"""This processor's claims on its chains (ADR 0031): the processor side of the fence in
``careledger.storage.fencing``.

A chain is claimed when it is loaded, before its head is read; the first write after a
claim waits until the claim is ``CLAIM_SETTLE_S`` old; a write the store refused for a
chain (another processor claimed it since) drops that chain, and the partition's records
are ignored until the consumer group assigns it again: this processor is a zombie for
it, and re-claiming it from records still buffered would take it back from its owner.

It also remembers, per chain it keeps, the highest height it stored and whether its
last write failed (ADR 0030 addendum). After a failure the chain is read again, maybe
from another replica: a head below a height this processor stored means that replica
has not fetched the write yet, and writing there would fork the chain, so the load
waits (``check_head`` raises); a failed write's rows may still arrive from a replica
that died holding them, so they are deleted above the head even when none show.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence

from careledger.storage.backend import StorageError
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
        #: per chain kept since its claim: the highest height this processor stored
        self._stored: dict[str, int] = {}
        #: chains whose last write failed: its rows may be in flight on a replica
        self._failed: set[str] = set()

    def claim(self, store: ChainStore, chain_id: str) -> int:
        epoch = store.claim(chain_id, self.owner)
        self._claimed_at[chain_id] = time.monotonic()
        return epoch

    def claim_then_head(self, store: ChainStore, chain_id: str) -> ChainHead | None:
        """Claim the chain, then read its head: a head read after the claim is one no
        earlier owner can write above any more (``CLAIM_SETTLE_S`` aside)."""
        self.claim(store, chain_id)
        return store.head(chain_id)

    def stored(self, heights: Iterable[tuple[str, int]]) -> None:
        """Headers this processor stored (the store confirmed them) at these heights."""
        for chain_id, height in heights:
            self._stored[chain_id] = max(height, self._stored.get(chain_id, -1))

    def failed(self, chain_ids: Iterable[str]) -> None:
        """A write to these chains failed: some of its rows may have been stored."""
        self._failed.update(chain_ids)

    def check_head(self, chain_id: str, head: ChainHead | None) -> bool:
        """Before resuming ``chain_id`` at ``head``: raises ``StorageError`` when the
        head is below a height this processor stored (the server read has not caught up
        yet: retry later); returns whether a failed write's rows must be deleted above
        ``head`` whether or not they show (``ChainStore.discard_uncommitted``)."""
        mine = self._stored.get(chain_id)
        if mine is not None and (head is None or head.height < mine):
            why = (
                f"chain {chain_id}: the server read holds the chain up to height "
                f"{-1 if head is None else head.height}, below this processor's own "
                f"stored block at height {mine} (a replica not caught up); resuming later"
            )
            log.warning("%s", why)
            raise StorageError(why)
        return chain_id in self._failed

    def discarded(self, chain_id: str) -> None:
        """The failed write's rows of ``chain_id`` were deleted."""
        self._failed.discard(chain_id)

    def forget_chains(self, chain_ids: Iterable[str]) -> None:
        """No longer this processor's: what it stored there says nothing of the future."""
        for chain_id in chain_ids:
            self._stored.pop(chain_id, None)
            self._failed.discard(chain_id)

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
        chain_ids = list(chain_ids)
        self.forget_chains(chain_ids)
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

    def revoked(self, parts: Iterable[Part], chain_ids: Iterable[str] = ()) -> None:
        self.forget_chains(chain_ids)
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
