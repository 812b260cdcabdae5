"""Which source sequence numbers are chained: replays are REPLAYED whenever they arrive.

A signed record names its source, the producer's epoch and its sequence number. The same
``(source, epoch, seq)`` chained twice is a replay (``verify`` reports it as
``SOURCE_SEQ_DUPLICATE``, and the ledger stays "tampered" for good), so the processor
must refuse the second copy whenever it comes: after a restart, after a rebalance, on
another partition, or months later. Memory alone forgets; the store does not.

:class:`SeqState` holds, per (source, epoch):

* the sequence numbers **committed** in the store (event rows whose block header is
  stored), as sorted runs (``SeqRuns``: one run for a source sending without loss);
* the ones **pending**: admitted into an open or sealed block not yet written, with
  where they were read (chain, offset). Reading the same offset again (after a failed
  write, or a seek back) is not a replay; the same number from another offset is.

It is rebuilt from the store (ADR 0015), never per event:

* ``load_snapshot`` (once, when the processor first loads an access-event chain): one
  aggregate over the committed attestation rows, by (source, epoch, bucket of
  ``BUCKET`` numbers); full buckets become runs without reading their rows, the few
  partial ones (the tails being chained, gaps, duplicates) are read number by number.
  Before it, the newest committed height of every chain is read: where the increments
  start.
* ``read_increment`` (when a chain is loaded, and every ``seq_refresh_ms`` for chains
  another processor instance writes): the committed rows above the height already
  known, per chain, a primary-key range read. A source writes to every partition, and
  a replay may be produced to any of them, so every instance follows every chain.
* after each successful write of its own, the processor adds the written numbers
  (``commit``); a failed write forgets the pending ones of the chains it drops
  (``forget``), as it forgets the records themselves.

Residual: two instances chaining the same number in the same few hundred milliseconds
(a replay produced to a partition of another instance while the original is being
written) both see it uncommitted; ``verify`` still reports that as
``SOURCE_SEQ_DUPLICATE``. A replay produced while the original waits unchained on a
lagging partition is chained first and the original is then REPLAYED: one copy either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.source import SeqRuns, SourceAuthError

log = logging.getLogger("careledger.processor.seqs")

#: sequence numbers per bucket of the snapshot aggregate
BUCKET = 4096

SeqKey = tuple[str, str]  # (source_id, epoch)
Where = tuple[str, int]  # (chain id, Kafka offset)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


@dataclass
class Snapshot:
    """Committed sequence numbers read from the store, and the chain heights they cover."""

    runs: dict[SeqKey, SeqRuns] = field(default_factory=dict)
    #: chain id -> highest committed height read (every committed row at or below it)
    heights: dict[str, int] = field(default_factory=dict)
    #: aggregate rows (one per bucket) and attestation rows read one by one
    buckets: int = 0
    rows_read: int = 0


class SeqState:
    """Committed and pending sequence numbers per (source, epoch); see the module."""

    def __init__(self) -> None:
        self.committed: dict[SeqKey, SeqRuns] = {}
        self._pending: dict[tuple[str, str, int], Where] = {}
        self._pending_by_chain: dict[str, set[tuple[str, str, int]]] = {}
        #: chain id -> committed height up to which this state knows every row
        self.heights: dict[str, int] = {}
        #: whether the snapshot was read (False: only what this process wrote is known)
        self.loaded = False
        self.replays = 0

    # ------------------------------------------------------------- the gate
    def check(self, source_id: str, epoch: str, seq: int, where: Where) -> None:
        """Raise ``SourceAuthError`` (``REPLAYED``) if this number was chained, or is
        pending from another position."""
        key = (source_id, epoch, seq)
        runs = self.committed.get((source_id, epoch))
        before = self._pending.get(key)
        if (runs is not None and runs.has(seq)) or (before is not None and before != where):
            self.replays += 1
            raise SourceAuthError(
                "sequence number already chained from another record",
                code="REPLAYED",
                details={"source_id": source_id, "epoch": epoch, "seq": seq},
            )

    def admit(self, source_id: str, epoch: str, seq: int, where: Where) -> None:
        key = (source_id, epoch, seq)
        self._pending[key] = where
        self._pending_by_chain.setdefault(where[0], set()).add(key)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------- the processor
    def commit(self, blocks: Iterable[SealedBlock]) -> None:
        """Blocks this process has just stored: their numbers are committed."""
        for block in blocks:
            chain = block.header.chain_id
            mine = self._pending_by_chain.get(chain)
            attested = False
            for ev in block.events:
                att = ev.attestation
                if att is None:
                    continue
                attested = True
                st = att.statement
                self.committed.setdefault((st.source_id, st.epoch), SeqRuns()).add(att.seq)
                key = (st.source_id, st.epoch, att.seq)
                if self._pending.get(key) == (chain, ev.offset):
                    del self._pending[key]
                    if mine is not None:
                        mine.discard(key)
            if attested or chain in self.heights:
                self.heights[chain] = max(self.heights.get(chain, -1), block.header.height)

    def forget(self, chains: Iterable[str]) -> None:
        """The processor dropped these chains' unwritten records: they will be read again."""
        for chain in chains:
            for key in self._pending_by_chain.pop(chain, ()):
                if self._pending.get(key, ("", -1))[0] == chain:
                    del self._pending[key]

    def install(self, snapshot: Snapshot) -> None:
        """Merge a snapshot read from the store (what this process wrote meanwhile stays)."""
        for key, runs in snapshot.runs.items():
            mine = self.committed.get(key)
            if mine is None:
                self.committed[key] = runs
                continue
            for start, end in zip(runs.starts, runs.ends, strict=True):
                mine.add_range(start, end)
        self._merge_heights(snapshot.heights)
        self.loaded = True

    def apply(self, rows: Iterable[tuple[str, str, int]], heights: Mapping[str, int]) -> None:
        """Rows read by ``read_increment``."""
        for source_id, epoch, seq in rows:
            self.committed.setdefault((source_id, epoch), SeqRuns()).add(seq)
        self._merge_heights(heights)

    def _merge_heights(self, heights: Mapping[str, int]) -> None:
        for chain, h in heights.items():
            self.heights[chain] = max(self.heights.get(chain, -1), h)

    def runs(self) -> int:
        """Runs held in memory (what the state costs)."""
        return sum(len(r) for r in self.committed.values())


# --------------------------------------------------------------------------- store reads


def _committed(db: str, where: str = "") -> str:
    return (
        "(chain_id, height, block_hash) IN "
        f"(SELECT chain_id, height, block_hash FROM {db}.blocks{where})"
    )


def _chain_heights(store: ChainStore, chain_prefix: str) -> dict[str, int]:
    rows = store.backend.execute(
        f"SELECT chain_id, max(height) FROM {store.db}.blocks "
        "WHERE startsWith(chain_id, %(p)s) GROUP BY chain_id",
        {"p": chain_prefix},
    )
    return {_text(c): int(h) for c, h in rows}


def load_snapshot(store: ChainStore, chain_prefix: str) -> Snapshot:
    """Every committed sequence number of the access-event chains (``chain_prefix``):
    one aggregate by bucket, then the rows of the partial buckets only."""
    db, backend = store.db, store.backend
    snap = Snapshot(heights=_chain_heights(store, chain_prefix))
    partial: list[tuple[str, str, int]] = []
    for source_id, epoch, bucket, count, uniq, lo, hi in backend.execute(
        f"SELECT source_id, epoch, intDiv(seq, {BUCKET}) AS b, count(), uniqExact(seq), "
        f"min(seq), max(seq) FROM {db}.source_attestations WHERE {_committed(db)} "
        "GROUP BY source_id, epoch, b"
    ):
        key = (_text(source_id), _text(epoch))
        runs = snap.runs.setdefault(key, SeqRuns())
        snap.buckets += 1
        if int(count) == int(uniq) == int(hi) - int(lo) + 1:
            runs.add_range(int(lo), int(hi))
        else:
            partial.append((key[0], key[1], int(bucket)))
    for i in range(0, len(partial), 500):
        chunk = partial[i : i + 500]
        params: dict[str, Any] = {}
        terms = []
        for j, (source_id, epoch, bucket) in enumerate(chunk):
            params[f"s{j}"], params[f"e{j}"] = source_id, epoch
            terms.append(
                f"(source_id = %(s{j})s AND epoch = %(e{j})s "
                f"AND intDiv(seq, {BUCKET}) = {int(bucket)})"
            )
        rows = backend.execute(
            f"SELECT source_id, epoch, seq FROM {db}.source_attestations "
            f"WHERE ({' OR '.join(terms)}) AND {_committed(db)}",
            params,
        )
        for source_id, epoch, seq in rows:
            snap.runs[(_text(source_id), _text(epoch))].add(int(seq))
        snap.rows_read += len(rows)
    return snap


def read_increment(
    store: ChainStore, since: Mapping[str, int]
) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
    """Committed rows of the chains in ``since`` above the height given for each, and
    the chains' newest committed heights (read first: no committed row is missed)."""
    if not since:
        return [], {}
    db, backend = store.db, store.backend
    params: dict[str, Any] = {}
    terms = []
    for j, (chain, height) in enumerate(sorted(since.items())):
        params[f"c{j}"], params[f"h{j}"] = chain, height
        terms.append(f"(chain_id = %(c{j})s AND height > %(h{j})s)")
    ranges = " OR ".join(terms)
    heights = {
        _text(c): int(h)
        for c, h in backend.execute(
            f"SELECT chain_id, max(height) FROM {db}.blocks WHERE {ranges} GROUP BY chain_id",
            params,
        )
    }
    if not heights:
        return [], {}
    rows = backend.execute(
        f"SELECT source_id, epoch, seq FROM {db}.source_attestations "
        f"WHERE ({ranges}) AND {_committed(db, f' WHERE {ranges}')}",
        params,
    )
    return [(_text(s), _text(e), int(q)) for s, e, q in rows], heights
