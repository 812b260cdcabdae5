"""The chain walk: stream one chain's headers and event rows and check how they link.

``verify_chain`` reads headers page by page and the event rows of a few
thousand blocks at a time (fetched in a helper thread while the previous batch
is checked), checks each header (``headers``) and each block's events
(``events``), and links consecutive blocks: contiguous heights, one header per
height, ``prev_hash`` and touching Kafka offset ranges. At the end it reports
uncommitted rows above the head and compares the head with ``known_head``
(truncation, rewrite). See the package docstring for the full list of checks.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from careledger.storage.kinds import ACCESS, RecordKind
from careledger.storage.store import EventColumns, StoredHeader
from careledger_core.findings import Finding, FindingCode
from verifiers.integrity.fsck.events import check_events
from verifiers.integrity.fsck.headers import _HeaderCheck, check_header
from verifiers.integrity.fsck.model import (
    DEFAULT_BATCH_EVENTS,
    DEFAULT_MAX_FINDINGS,
    MAX_HEIGHT,
    BlockRows,
    ChainReport,
    HeaderVerifier,
    Reader,
    StoredRow,
    VerifiedHead,
    VerifyCancelled,
    _int,
    _show,
    _text,
    _type_name,
    as_rows,
    is_failure,
    severity_of,
)

C = FindingCode
#: what one fetch of event rows gives: rows, or columns from a bulk reader
Fetched = Sequence[StoredRow] | EventColumns


class _ChainVerifier:
    def __init__(
        self,
        reader: Reader,
        chain_id: str,
        keys: HeaderVerifier,
        *,
        from_height: int,
        known_head: VerifiedHead | None,
        page_size: int,
        batch_events: int,
        max_findings: int,
        on_finding: Callable[[Finding], None] | None,
        cancel: Callable[[], bool] | None = None,
        kind: RecordKind = ACCESS,
    ) -> None:
        if from_height < 0:
            raise ValueError("from_height must be >= 0")
        self.reader = reader
        self.chain_id = chain_id
        self.kind = kind
        self.keys = keys
        self.from_height = from_height
        self.known = known_head
        self.page_size = page_size
        self.batch_events = max(1, batch_events)
        self.max_findings = max_findings
        self.on_finding = on_finding
        self.cancel = cancel
        self.report = ChainReport(chain_id, from_height=from_height, known=known_head)
        # Chain walking state
        self.prev: VerifiedHead | None = None  # the block the next one must link to
        self.expected_height: int = max(0, from_height - 1) if from_height else 0
        self.next_event_height = from_height  # event rows below this were handled
        self.scan_from = 0

    # ------------------------------------------------------------------ findings
    def emit(
        self,
        code: FindingCode,
        height: int | None,
        message: str,
        *,
        index: int | None = None,
        event_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        finding = Finding(
            code=code,
            severity=severity_of(code),
            chain_id=self.chain_id,
            height=height,
            event_index=index,
            event_id=event_id,
            message=message,
            details=dict(details or {}),
        )
        rep = self.report
        rep.counts[str(code)] += 1
        if is_failure(finding):
            rep.failures += 1
        if len(rep.findings) < self.max_findings:
            rep.findings.append(finding)
        else:
            rep.findings_dropped += 1
        if self.on_finding is not None:
            self.on_finding(finding)

    # ------------------------------------------------------------------ driver
    def run(self) -> ChainReport:
        started = time.perf_counter()
        # Start one block early when resuming, to link to it (and re-check it).
        scan_from = self.from_height - 1 if self.from_height > 0 else 0
        self.scan_from = scan_from
        self.expected_height = scan_from
        # The event rows of the next batch are fetched in a helper thread while this
        # batch is checked (the database read and the hashing overlap); at most two
        # batches are held in memory.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsck-fetch")
        pending_batch: list[tuple[int, list[StoredHeader]]] | None = None
        pending_rows: Future[Fetched] | None = None
        # a store that reads columns in bulk does (no object per row)
        fetch: Callable[[str, int, int], Fetched] = getattr(
            self.reader, "event_columns", self.reader.events
        )
        try:
            for batch in self._batches(scan_from):
                if self.cancel is not None and self.cancel():
                    raise VerifyCancelled()
                top = batch[-1][0]
                rows: Future[Fetched] | None = None
                if top >= self.next_event_height:
                    rows = pool.submit(fetch, self.chain_id, self.next_event_height, top)
                    self.next_event_height = top + 1
                if pending_batch is not None:
                    self._process_batch(pending_batch, pending_rows)
                pending_batch, pending_rows = batch, rows
            if pending_batch is not None:
                self._process_batch(pending_batch, pending_rows)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self._check_uncommitted()
        self._check_known_head_end()
        self.report.elapsed_s = time.perf_counter() - started
        return self.report

    def _batches(self, scan_from: int) -> Iterator[list[tuple[int, list[StoredHeader]]]]:
        """Headers grouped by height, in batches of about ``batch_events`` events."""
        batch: list[tuple[int, list[StoredHeader]]] = []
        budget = 0
        for height, rows in _group_by_height(
            self._placeable(self.reader.headers(self.chain_id, scan_from, self.page_size))
        ):
            batch.append((height, rows))
            budget += max(min(_int(r.event_count) or 0, self.batch_events) for r in rows)
            if budget >= self.batch_events or len(batch) >= self.page_size:
                yield batch
                batch, budget = [], 0
        if batch:
            yield batch

    def _placeable(self, headers: Iterable[StoredHeader]) -> Iterator[StoredHeader]:
        """Header rows whose height column is a height; the others are reported (the
        block they stood for is then missing, and reported as such too)."""
        for h in headers:
            if _int(h.height) is not None:
                yield h
                continue
            self.emit(
                C.BLOCK_HEADER_MISMATCH,
                None,
                f"a header row whose height column holds {_type_name(h.height)} "
                f"{_text(h.height)}: it cannot be placed in the chain",
                details={"height": _show(h.height), "block_hash": _show(h.block_hash)},
            )

    def _placed_rows(self, rows: Iterable[StoredRow]) -> Iterator[StoredRow]:
        """Event rows whose height column is a height; the others are reported."""
        for ev in rows:
            if _int(ev.height) is not None:
                yield ev
                continue
            self.emit(
                C.EVENT_UNEXPECTED,
                None,
                f"an event row whose height column holds {_type_name(ev.height)} "
                f"{_text(ev.height)}: it belongs to no block",
                index=ev.idx if type(ev.idx) is int else None,
                event_id=_text(ev.event_id),
                details={"height": _show(ev.height), "block_hash": _show(ev.block_hash)},
            )

    def _process_batch(
        self,
        batch: list[tuple[int, list[StoredHeader]]],
        fetched: Future[Fetched] | None,
    ) -> None:
        rows_by_height: dict[int, list[StoredRow] | BlockRows] = {}
        if fetched is not None:
            result = fetched.result()
            if isinstance(result, EventColumns):
                grouped = _group_columns(result)
                if grouped is not None:
                    rows_by_height.update(grouped)
                    result = []
                else:  # an odd height column: row by row, as read
                    result = [result.row(i) for i in range(len(result))]
            for ev in self._placed_rows(result):
                listed = rows_by_height.setdefault(ev.height, [])
                assert isinstance(listed, list)
                listed.append(ev)
        for height, header_rows in batch:
            self._block(height, header_rows, rows_by_height.pop(height, None))
        # Rows at heights that have no header at all, below a header: orphans.
        for height in sorted(rows_by_height):
            rows = as_rows(rows_by_height[height])
            self.emit(
                C.EVENT_UNEXPECTED,
                height,
                f"{len(rows)} event rows at height {height}, where the chain has no block",
                details={
                    "rows": len(rows),
                    "indexes": _span(r.idx for r in rows if type(r.idx) is int),
                    "block_hashes": sorted({_text(r.block_hash) or "" for r in rows})[:5],
                },
            )

    # ------------------------------------------------------------------ one height
    def _block(
        self,
        height: int,
        header_rows: list[StoredHeader],
        event_rows: Sequence[StoredRow] | BlockRows | None,
    ) -> None:
        link = True
        if height > self.expected_height:
            missing_to = height - 1
            self.emit(
                C.HEIGHT_GAP,
                self.expected_height,
                f"no block at height {self.expected_height}"
                + (f" .. {missing_to}" if missing_to > self.expected_height else "")
                + f"; the next block is at height {height}",
                details={"missing_from": self.expected_height, "missing_to": missing_to},
            )
            link = False  # prev-hash and offsets cannot link across a gap
        checks = [check_header(r, self.keys) for r in header_rows]
        known_hash = (
            self.known.block_hash
            if self.known is not None and self.known.height == height
            else None
        )
        chosen = (
            checks[0]
            if len(checks) == 1
            else self._choose(checks, known_hash, as_rows(event_rows or ()))
        )
        if len(checks) > 1:
            self.emit(
                C.HEIGHT_FORK,
                height,
                f"{len(checks)} block headers at height {height}; "
                f"following {chosen.hash_hex[:16]}…",
                details={
                    "chosen": chosen.hash_hex,
                    "blocks": [
                        {
                            "block_hash": c.hash_hex,
                            "key_id": None if c.header is None else c.header.key_id,
                            "header_valid": c.header is not None,
                            "signature_valid": c.signature_ok,
                            "links_to_previous": self.prev is not None
                            and c.prev_hash == self.prev.block_hash,
                            "problems": [str(p[0]) for p in c.problems],
                        }
                        for c in checks
                    ],
                },
            )
        for code, message, details in chosen.problems:
            self.emit(code, height, message, details=details)

        prev = self.prev
        if link and prev is not None:
            if chosen.prev_hash != prev.block_hash:
                self.emit(
                    C.PREV_HASH_MISMATCH,
                    height,
                    f"prev_hash does not match the hash of block {prev.height}",
                    details={"prev_hash": chosen.prev_hash, "expected": prev.block_hash},
                )
            expected_first = None if prev.last_offset is None else prev.last_offset + 1
            if expected_first is None:
                pass  # linked to a checkpoint's block whose offsets we do not know
            elif chosen.first_offset > expected_first:
                self.emit(
                    C.OFFSET_GAP,
                    height,
                    f"Kafka offsets {expected_first}..{chosen.first_offset - 1} are in no block",
                    details={"first_offset": chosen.first_offset, "expected": expected_first},
                )
            elif chosen.first_offset < expected_first:
                self.emit(
                    C.OFFSET_OVERLAP,
                    height,
                    f"offset range starts at {chosen.first_offset}, inside block {prev.height} "
                    f"(which ends at {prev.last_offset})",
                    details={"first_offset": chosen.first_offset, "expected": expected_first},
                )

        this = VerifiedHead(height, chosen.hash_hex, chosen.last_offset)
        if known_hash is not None and self.known is not None and chosen.hash_hex != known_hash:
            self.emit(
                C.CHAIN_REWRITTEN,
                height,
                f"block {height} differs from {_known_what(self.known)}",
                details={
                    "known_hash": known_hash,
                    "stored_hash": chosen.hash_hex,
                    "known_source": self.known.source,
                },
            )
            # Continue from the known block: that is the trusted history.
            this = self.known
        if height >= self.from_height:
            self.report.blocks += 1
            self.report.events += check_events(
                height, chosen, event_rows or [], self.kind, self.emit
            )
        self.prev = this
        self.report.head = VerifiedHead(height, chosen.hash_hex, chosen.last_offset, "store")
        self.expected_height = height + 1

    def _choose(
        self, checks: list[_HeaderCheck], known_hash: str | None, rows: Sequence[StoredRow]
    ) -> _HeaderCheck:
        if len(checks) == 1:
            return checks[0]
        prev_hash = None if self.prev is None else self.prev.block_hash
        named = [r.block_hash for r in rows]

        def score(c: _HeaderCheck) -> tuple[bool, bool, bool, bool, int]:
            return (
                c.hash_hex == known_hash,
                c.header is not None and c.signature_ok,
                c.prev_hash == prev_hash,
                not c.problems,
                named.count(c.hash_hex.encode()),  # the block the stored rows belong to
            )

        return max(checks, key=score)

    # ------------------------------------------------------------------ the end of the chain
    def _check_uncommitted(self) -> None:
        start = self.next_event_height
        if self.report.head is not None:
            start = max(start, self.report.head.height + 1)
        rows = list(self._placed_rows(self.reader.events(self.chain_id, start, MAX_HEIGHT)))
        if not rows:
            return
        heights = sorted({r.height for r in rows})
        self.report.uncommitted_events = len(rows)
        head = self.report.head
        self.emit(
            C.UNCOMMITTED_EVENTS,
            heights[0],
            f"{len(rows)} event rows above the head "
            f"({'no block yet' if head is None else f'height {head.height}'}) without a block "
            "header: an interrupted write; the processor discards them when it resumes",
            details={"rows": len(rows), "heights": _span(heights)},
        )

    def _check_known_head_end(self) -> None:
        known = self.known
        if known is None:
            return
        head = self.report.head
        if head is None or head.height < known.height:
            # With nothing at or above where the scan started, all we know is that
            # the blocks from there on are gone.
            first_missing = self.scan_from if head is None else head.height + 1
            self.emit(
                C.CHAIN_TRUNCATED,
                first_missing,
                (
                    f"no block at or above height {first_missing}"
                    if head is None
                    else f"the chain ends at height {head.height}"
                )
                + f", but {_known_what(known)} is at height {known.height}: blocks "
                f"{first_missing}..{known.height} are gone",
                details={
                    "known_height": known.height,
                    "known_hash": known.block_hash,
                    "known_source": known.source,
                    "stored_head_height": None if head is None else head.height,
                },
            )


def _known_what(known: VerifiedHead) -> str:
    if known.source == "checkpoint":
        return "the block named by a signed checkpoint"
    return "the block verified before"


def _group_by_height(headers: Iterable[StoredHeader]) -> Iterator[tuple[int, list[StoredHeader]]]:
    current: list[StoredHeader] = []
    height = -1
    for h in headers:
        if current and h.height != height:
            yield height, current
            current = []
        height = h.height
        current.append(h)
    if current:
        yield height, current


def _group_columns(cols: EventColumns) -> dict[int, BlockRows] | None:
    """The rows of a bulk read by height (they come in height order), or None when a
    height is not a height (then they are placed row by row and the odd ones reported)."""
    heights = cols.column("height")
    if not heights:
        return {}
    if set(map(type, heights)) != {int} or heights[0] < 0 or heights != sorted(heights):
        return None
    out: dict[int, BlockRows] = {}
    lo, n = 0, len(heights)
    while lo < n:
        height = heights[lo]
        hi = bisect.bisect_right(heights, height, lo)
        out[height] = BlockRows(cols, lo, hi)
        lo = hi
    return out


def _span(values: Iterable[int]) -> list[int]:
    vals = list(values)
    return [min(vals), max(vals)] if vals else []


def verify_chain(
    reader: Reader,
    chain_id: str,
    trusted_keys: HeaderVerifier,
    *,
    from_height: int = 0,
    known_head: VerifiedHead | None = None,
    page_size: int = 500,
    batch_events: int = DEFAULT_BATCH_EVENTS,
    max_findings: int = DEFAULT_MAX_FINDINGS,
    on_finding: Callable[[Finding], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    kind: RecordKind = ACCESS,
) -> ChainReport:
    """Verify ``chain_id`` from ``from_height`` to its head; see the module docstring.

    With ``from_height > 0`` the block at ``from_height - 1`` is read too (its header
    checks are reported) so the first block can be linked to it; its events are not
    rechecked. ``known_head`` is the last head this verifier verified (or one named by
    a signed checkpoint): a lower head is ``CHAIN_TRUNCATED``, another block at that
    height ``CHAIN_REWRITTEN``, and the chain is linked onwards from the known block
    (so a follow-mode verifier passes ``from_height=known.height + 1`` and checks only
    the new blocks). A checkpoint names no Kafka offsets: after a block that differs
    from a checkpoint's, the next block's offset link is not checked.

    ``on_finding`` sees every finding as it is made (the report keeps at most
    ``max_findings`` of them, but counts all). ``cancel`` is polled between batches;
    when it returns true, ``VerifyCancelled`` is raised.
    """
    return _ChainVerifier(
        reader,
        chain_id,
        trusted_keys,
        from_height=from_height,
        known_head=known_head,
        page_size=page_size,
        batch_events=batch_events,
        max_findings=max_findings,
        on_finding=on_finding,
        cancel=cancel,
        kind=kind,
    ).run()
