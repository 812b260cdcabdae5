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

A batch record (ADR 0020) carries a whole range ``first_seq .. last_seq``: it is checked
and held pending as one range (``check_range`` / ``admit_range``: a bisection, never a
step per number), and committed as the runs of its chained entries (an entry
dead-lettered alone is not chained: ``skipped``). A signed record of its own is the
range of one number.

It is rebuilt from the store (ADR 0015), never per event:

* ``load_snapshot`` (once, when the processor first loads an access-event chain): one
  aggregate over the committed attestation rows, by (source, epoch, bucket of
  ``BUCKET`` numbers); full buckets become runs without reading their rows, the few
  partial ones (the tails being chained, gaps, duplicates) are read number by number.
  Likewise over the committed batch rows (``source_batches``, one per batch record):
  a bucket (by ``first_seq``) whose ranges tile one run with nothing skipped becomes
  that run; the rows of the others are read range by range.
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

import bisect
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


class _Pending:
    """The pending ranges of one (source, epoch): sorted by first number, disjoint (an
    admission overlapping another position's range is refused first)."""

    __slots__ = ("firsts", "lasts", "wheres")

    def __init__(self) -> None:
        self.firsts: list[int] = []
        self.lasts: list[int] = []
        self.wheres: list[Where] = []

    def overlapping(self, first: int, last: int) -> list[int]:
        """Indices of the ranges that share a number with ``first..last``."""
        out = []
        i = bisect.bisect_right(self.firsts, last) - 1
        while i >= 0 and self.lasts[i] >= first:
            out.append(i)
            i -= 1
        return out

    def remove(self, i: int) -> None:
        del self.firsts[i], self.lasts[i], self.wheres[i]

    def find(self, first: int, where: Where) -> int | None:
        """The index of the range starting at ``first`` read from ``where``, if any."""
        i = bisect.bisect_left(self.firsts, first)
        if i < len(self.firsts) and self.firsts[i] == first and self.wheres[i] == where:
            return i
        return None

    def insert(self, first: int, last: int, where: Where) -> None:
        i = bisect.bisect_left(self.firsts, first)
        self.firsts.insert(i, first)
        self.lasts.insert(i, last)
        self.wheres.insert(i, where)


def _runs_overlap(runs: SeqRuns, first: int, last: int) -> bool:
    """Whether ``runs`` holds a number of ``first..last`` (one bisection)."""
    i = bisect.bisect_right(runs.starts, last) - 1
    return i >= 0 and runs.ends[i] >= first


def chained_ranges(first_seq: int, size: int, skipped: Iterable[int]) -> list[tuple[int, int]]:
    """The ranges of a batch's chained numbers: ``first_seq .. first_seq + size - 1``
    without the entries at the ``skipped`` indices (dead-lettered alone)."""
    out: list[tuple[int, int]] = []
    start = first_seq
    for index in sorted(set(skipped)):
        seq = first_seq + index
        if seq > start:
            out.append((start, seq - 1))
        start = max(start, seq + 1)
    last = first_seq + size - 1
    if start <= last:
        out.append((start, last))
    return out


def skipped_indices(text: str) -> list[int]:
    """The batch indices of a ``source_batches.skipped`` value (``index:leafhex,...``).
    Raises ``ValueError`` if it is not in that form."""
    if not text:
        return []
    return [int(item.split(":", 1)[0]) for item in text.split(",")]


class SeqState:
    """Committed and pending sequence numbers per (source, epoch); see the module."""

    def __init__(self) -> None:
        self.committed: dict[SeqKey, SeqRuns] = {}
        self._pending: dict[SeqKey, _Pending] = {}
        #: chain id -> (source, epoch, first number) of its pending ranges
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
        self.check_range(source_id, epoch, seq, seq, where)

    def check_range(self, source_id: str, epoch: str, first: int, last: int, where: Where) -> None:
        """Raise ``SourceAuthError`` (``REPLAYED``) if a number of ``first..last`` was
        chained, or is pending from another position."""
        key = (source_id, epoch)
        runs = self.committed.get(key)
        replayed = runs is not None and _runs_overlap(runs, first, last)
        pending = self._pending.get(key)
        if not replayed and pending is not None:
            replayed = any(pending.wheres[i] != where for i in pending.overlapping(first, last))
        if replayed:
            self.replays += 1
            raise SourceAuthError(
                "sequence number already chained from another record",
                code="REPLAYED",
                details={"source_id": source_id, "epoch": epoch, "seq": first},
            )

    def admit(self, source_id: str, epoch: str, seq: int, where: Where) -> None:
        self.admit_range(source_id, epoch, seq, seq, where)

    def admit_range(self, source_id: str, epoch: str, first: int, last: int, where: Where) -> None:
        """Hold ``first..last`` pending from ``where`` (checked by ``check_range``)."""
        key = (source_id, epoch)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        for i in pending.overlapping(first, last):  # the same record, read again
            old = pending.wheres[i]
            mine = self._pending_by_chain.get(old[0])
            if mine is not None:
                mine.discard((source_id, epoch, pending.firsts[i]))
            pending.remove(i)
        pending.insert(first, last, where)
        self._pending_by_chain.setdefault(where[0], set()).add((source_id, epoch, first))

    def _release(self, source_id: str, epoch: str, first: int, where: Where) -> None:
        """The range read from ``where`` starting at ``first`` is no longer pending."""
        pending = self._pending.get((source_id, epoch))
        if pending is None:
            return
        i = pending.find(first, where)
        if i is None:
            return
        pending.remove(i)
        if not pending.firsts:
            del self._pending[(source_id, epoch)]
        mine = self._pending_by_chain.get(where[0])
        if mine is not None:
            mine.discard((source_id, epoch, first))

    @property
    def pending(self) -> int:
        """Sequence numbers pending (admitted, not yet known to be written)."""
        return sum(
            last - first + 1
            for p in self._pending.values()
            for first, last in zip(p.firsts, p.lasts, strict=True)
        )

    # ------------------------------------------------------------- the processor
    def commit(self, blocks: Iterable[SealedBlock]) -> None:
        """Blocks this process has just stored: their numbers are committed."""
        committed = self.committed
        for block in blocks:
            chain = block.header.chain_id
            attested = False
            last_offset = -1
            for ev in block.events:
                att = ev.attestation
                if att is not None:
                    attested = True
                    st = att.statement
                    committed.setdefault((st.source_id, st.epoch), SeqRuns()).add(att.seq)
                    self._release(st.source_id, st.epoch, att.seq, (chain, ev.offset))
                    continue
                info = ev.batch
                if info is None or ev.offset == last_offset:
                    continue  # a plain event, or a batch record already counted
                last_offset = ev.offset
                attested = True
                st = info.statement
                runs = committed.setdefault((st.source_id, st.epoch), SeqRuns())
                for first, last in chained_ranges(
                    st.first_seq, st.size, (i for i, _ in info.skipped)
                ):
                    runs.add_range(first, last)
                self._release(st.source_id, st.epoch, st.first_seq, (chain, ev.offset))
            if attested or chain in self.heights:
                self.heights[chain] = max(self.heights.get(chain, -1), block.header.height)

    def forget(self, chains: Iterable[str]) -> None:
        """The processor dropped these chains' unwritten records: they will be read again."""
        for chain in chains:
            for source_id, epoch, first in self._pending_by_chain.pop(chain, ()):
                pending = self._pending.get((source_id, epoch))
                if pending is None:
                    continue
                i = bisect.bisect_left(pending.firsts, first)
                if (
                    i < len(pending.firsts)
                    and pending.firsts[i] == first
                    and pending.wheres[i][0] == chain
                ):
                    pending.remove(i)
                    if not pending.firsts:
                        del self._pending[(source_id, epoch)]

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

    def apply(self, rows: Iterable[tuple[str, str, int, int]], heights: Mapping[str, int]) -> None:
        """Ranges ``(source, epoch, first, last)`` read by ``read_increment``."""
        for source_id, epoch, first, last in rows:
            self.committed.setdefault((source_id, epoch), SeqRuns()).add_range(first, last)
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
    one aggregate by bucket, then the rows of the partial buckets only; the same over
    the batch rows (ADR 0020)."""
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
    for source_id, epoch, seq in _bucket_rows(store, "source_attestations", "seq", "seq", partial):
        snap.runs[(_text(source_id), _text(epoch))].add(int(seq))
        snap.rows_read += 1
    _load_batches(store, snap)
    return snap


def _bucket_rows(
    store: ChainStore,
    table: str,
    columns: str,
    seq_column: str,
    buckets: list[tuple[str, str, int]],
) -> list[tuple[Any, ...]]:
    """The committed rows ``source_id, epoch, <columns>`` of these (source, epoch,
    bucket) of ``table``, 500 buckets per query."""
    db = store.db
    out: list[tuple[Any, ...]] = []
    for i in range(0, len(buckets), 500):
        chunk = buckets[i : i + 500]
        params: dict[str, Any] = {}
        terms = []
        for j, (source_id, epoch, bucket) in enumerate(chunk):
            params[f"s{j}"], params[f"e{j}"] = source_id, epoch
            terms.append(
                f"(source_id = %(s{j})s AND epoch = %(e{j})s "
                f"AND intDiv({seq_column}, {BUCKET}) = {int(bucket)})"
            )
        out += store.backend.execute(
            f"SELECT source_id, epoch, {columns} FROM {db}.{table} "
            f"WHERE ({' OR '.join(terms)}) AND {_committed(db)}",
            params,
        )
    return out


def _load_batches(store: ChainStore, snap: Snapshot) -> None:
    """The committed batch rows (ADR 0020) into ``snap``: a bucket (by ``first_seq``)
    whose ranges tile one run (sorted, each starting right after the previous one
    ends: no gap, no overlap) with no entry skipped is that run; the rows of the
    other buckets are read and added range by range."""
    db = store.db
    partial: list[tuple[str, str, int]] = []
    for source_id, epoch, bucket, lo, hi, tiles, skipping in store.backend.execute(
        f"SELECT source_id, epoch, intDiv(first_seq, {BUCKET}) AS b, "
        "min(first_seq), max(first_seq + size) - 1, "
        # sorted starts after the first = sorted (exclusive) ends before the last
        "arrayPopFront(arraySort(groupArray(first_seq))) = "
        "arrayPopBack(arraySort(groupArray(first_seq + size))), "
        f"countIf(skipped != '') FROM {db}.source_batches WHERE {_committed(db)} "
        "GROUP BY source_id, epoch, b"
    ):
        key = (_text(source_id), _text(epoch))
        runs = snap.runs.setdefault(key, SeqRuns())
        snap.buckets += 1
        if int(tiles) == 1 and int(skipping) == 0:
            runs.add_range(int(lo), int(hi))
        else:
            partial.append((key[0], key[1], int(bucket)))
    rows = _bucket_rows(store, "source_batches", "first_seq, size, skipped", "first_seq", partial)
    for source_id, epoch, first_seq, size, skipped in rows:
        runs = snap.runs[(_text(source_id), _text(epoch))]
        for first, last in _batch_ranges(int(first_seq), int(size), _text(skipped)):
            runs.add_range(first, last)
    snap.rows_read += len(rows)


def _batch_ranges(first_seq: int, size: int, skipped: str) -> list[tuple[int, int]]:
    """The chained ranges of a stored batch row; a ``skipped`` value not in its form
    (the store was tampered with) counts every number of the batch as chained: a replay
    of it is refused, ``verify`` reports the row."""
    try:
        indices = skipped_indices(skipped)
    except ValueError:
        log.warning("a source_batches row has a malformed skipped column")
        indices = []
    return chained_ranges(first_seq, size, indices)


def read_increment(
    store: ChainStore, since: Mapping[str, int]
) -> tuple[list[tuple[str, str, int, int]], dict[str, int]]:
    """Committed ranges ``(source, epoch, first, last)`` of the chains in ``since``
    above the height given for each (attestation rows: one number each; batch rows:
    their chained ranges), and the chains' newest committed heights (read first: no
    committed row is missed)."""
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
    committed = _committed(db, f" WHERE {ranges}")
    out: list[tuple[str, str, int, int]] = []
    for s, e, q in backend.execute(
        f"SELECT source_id, epoch, seq FROM {db}.source_attestations "
        f"WHERE ({ranges}) AND {committed}",
        params,
    ):
        out.append((_text(s), _text(e), int(q), int(q)))
    for s, e, first_seq, size, skipped in backend.execute(
        f"SELECT source_id, epoch, first_seq, size, skipped FROM {db}.source_batches "
        f"WHERE ({ranges}) AND {committed}",
        params,
    ):
        key = (_text(s), _text(e))
        for first, last in _batch_ranges(int(first_seq), int(size), _text(skipped)):
            out.append((*key, first, last))
    return out, heights
