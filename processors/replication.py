"""The processor's side of replicas (ADR 0017): every stored block reaches the blocks topic.

Order of one write (``processors.processor``): dead letters (flushed) -> event rows ->
header rows -> **the blocks, published to ``Settings.topic_blocks`` and flushed
(acks=all, idempotent producer)** -> a ``block_publications`` row per chain (the newest
height published; at most every ``MARK_INTERVAL_S``) -> the checkpoints. So:

* a block is in the blocks topic before any checkpoint covering it is published, and
  before the processor's next write starts;
* a delivery failure fails the write like a store failure (the processor drops its
  state and resumes from the store), and a crash between the store write and the
  publication loses nothing: when a chain is loaded (start, rebalance, recovery) the
  stored blocks above its last recorded publication are published again
  (``republish_unpublished``). A replica takes a block it already holds as a duplicate.
  The marks are written at most every ``MARK_INTERVAL_S`` (one small insert, not one
  per write): a resumed chain publishes at most that much again.

Delivery to the topic is therefore at least once, in height order per chain; replicas
make it exactly once by storing only the block that extends their head.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.storage.block_records import (
    material_of,
    newest_per_chain,
    published_height,
    record_published,
    stored_block_records,
)
from careledger.storage.store import ChainHead, ChainStore, SealedBlock

__all__ = ["publish_stored", "republish_unpublished"]

log = logging.getLogger("careledger.processor")

#: blocks read from the store per republished batch
REPUBLISH_PAGE: Final = 200


#: how often the publication marks are written (at most): a mark only bounds what a
#: resumed chain publishes again, so an older mark costs duplicates, never blocks
MARK_INTERVAL_S: Final = 2.0


@dataclass
class _Marks:
    """Per store: the newest block published per chain since the last mark written."""

    pending: dict[str, tuple[int, str]] = field(default_factory=dict)
    written_at: float = float("-inf")


_MARKS: weakref.WeakKeyDictionary[ChainStore, _Marks] = weakref.WeakKeyDictionary()


def publish_stored(store: ChainStore, outputs: Any, sealed: Sequence[SealedBlock]) -> None:
    """Publish the blocks just stored (flushed; raises ``BlockPublishError``), then
    record per chain the newest one as published (at most every ``MARK_INTERVAL_S``)."""
    outputs.publish_blocks([material_of(b) for b in sealed])
    marks = _MARKS.setdefault(store, _Marks())
    for chain, height, digest in newest_per_chain(sealed):
        marks.pending[chain] = (height, digest)
    now = time.monotonic()
    if now - marks.written_at >= MARK_INTERVAL_S:
        record_published(store, [(c, h, d) for c, (h, d) in sorted(marks.pending.items())])
        marks.pending.clear()
        marks.written_at = now


def republish_unpublished(
    store: ChainStore, outputs: Any, chain_id: str, head: ChainHead | None
) -> int:
    """Publish again the stored blocks of ``chain_id`` above its last recorded
    publication, up to ``head``; returns how many. A chain with no recorded publication
    (stored before the blocks topic existed, or a crash before its first one) is
    published from height 0."""
    if head is None:
        return 0
    published = published_height(store, chain_id)
    start = 0 if published is None else published + 1
    if start > head.height:
        return 0
    for first in range(start, head.height + 1, REPUBLISH_PAGE):
        last = min(first + REPUBLISH_PAGE - 1, head.height)
        outputs.publish_blocks(stored_block_records(store, chain_id, first, last))
    record_published(store, [(chain_id, head.height, head.block_hash)])
    count = head.height - start + 1
    log.warning(
        "chain %s: published %d stored blocks (heights %d..%d) again to the blocks topic",
        chain_id,
        count,
        start,
        head.height,
    )
    return count
