"""fsck for careledger chains: recheck everything the store claims, say exactly where.

``verify_chain(reader, chain_id, trusted_keys)`` streams one chain from a
``ChainReader`` (headers page by page, the event rows of a few thousand blocks at
a time, so memory stays flat on chains of millions of events) and checks:

Headers (one per height)
    * the stored header bytes decode strictly as a canonical ``careledger.block/1``
      header (``BLOCK_HEADER_INVALID``);
    * every header column equals the decoded header (``BLOCK_HEADER_MISMATCH``) and
      the ``block_hash`` column is SHA-256 of the header bytes (``BLOCK_HASH_MISMATCH``);
    * the Ed25519 signature verifies under a key the *verifier* trusts (its own
      configuration, never the store): ``KEY_UNKNOWN`` / ``SIGNATURE_INVALID``;
    * heights run contiguously from the start (``HEIGHT_GAP``), one header per
      height (``HEIGHT_FORK``), each ``prev_hash`` is the recomputed hash of the
      previous header (``PREV_HASH_MISMATCH``), and the Kafka offset ranges of
      consecutive blocks touch (``OFFSET_GAP`` / ``OFFSET_OVERLAP``).

Events of each block (rows with its chain and height)
    * rows of another block hash, or with an index beyond ``event_count``, or a
      second row at one index (``EVENT_UNEXPECTED``), rows without any header below
      the head (``EVENT_UNEXPECTED``), indexes with no row (``EVENT_MISSING``), and
      the number of rows of the block against ``event_count`` (``EVENT_COUNT_MISMATCH``);
    * per row: SHA-256(0x00 ‖ stored canonical bytes) against the stored leaf hash
      (``EVENT_HASH_MISMATCH``), the bytes decode as a valid event and re-encode to
      exactly themselves (``EVENT_NOT_CANONICAL``), the denormalised columns equal the
      decoded event (``EVENT_FIELD_MISMATCH``), offsets strictly increase
      (``EVENT_OUT_OF_ORDER``) inside the block's range (``EVENT_OFFSET_OUT_OF_RANGE``),
      one event id per block (``EVENT_DUPLICATE_ID``);
    * the RFC 6962 Merkle root of the *recomputed* leaf hashes in index order equals
      the header's (``MERKLE_ROOT_MISMATCH``).

Rows above the head are a crash's uncommitted leftovers (``UNCOMMITTED_EVENTS``,
info only). Against ``known_head`` (the last head this verifier verified, kept in
its own state outside the store, or the head named by the newest signed checkpoint
the processor published to Kafka; see ``verifiers.integrity.checkpoints``): a lower head is
``CHAIN_TRUNCATED``, a different block at the known height is ``CHAIN_REWRITTEN``.

Cost per event: one msgspec decode + re-encode, one SHA-256, a tuple comparison;
per block one Ed25519 verification and one Merkle root.

Follow-on noise is suppressed where the cause is already named: no link or offset
checks across a height gap, no Merkle check for a block with missing events, and
when several rows claim one index the one that reproduces the signed Merkle root
is taken as the block's and the others are reported as unexpected.
"""

from __future__ import annotations

import hashlib
import operator
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from careledger.storage.kinds import ACCESS, RecordKind
from careledger.storage.store import StoredEvent, StoredHeader, StoredRaw, StoredReference
from careledger_core.block import BlockHeader, decode_header
from careledger_core.errors import (
    HeaderValidationError,
    SignatureError,
    UnknownKeyError,
    ValidationError,
)
from careledger_core.findings import Finding, FindingCode, Severity
from careledger_core.merkle import merkle_root

#: A chained record's row: an access event or a reference record.
StoredRow = StoredEvent | StoredReference | StoredRaw

__all__ = [
    "ChainReport",
    "HeaderVerifier",
    "VerifiedHead",
    "VerifyCancelled",
    "is_failure",
    "severity_of",
    "verify_chain",
]

#: Upper bound used for "every height above the head".
MAX_HEIGHT = 2**63 - 1
#: Findings kept in a report per chain; all are still counted (``ChainReport.counts``).
DEFAULT_MAX_FINDINGS = 10_000
#: Event rows fetched per query (whole blocks; a block larger than this is fetched alone).
DEFAULT_BATCH_EVENTS = 20_000
#: Most rows claiming the same indexes in one block we try to disambiguate by the root.
_MAX_DUPLICATE_SEARCH = 8

_SIG_HEX = re.compile(rb"\A[0-9a-f]{128}\Z")
_sha256 = hashlib.sha256

C = FindingCode

#: Codes reported as info whatever the core's default: event rows above the head are
#: what a crash between the events insert and the header insert leaves behind (the
#: processor deletes them when it resumes), not a sign of tampering.
_INFO_CODES = frozenset({C.UNCOMMITTED_EVENTS})


def severity_of(code: FindingCode) -> Severity:
    """The core's default severity, except the crash leftovers above (info).
    Everything that is not info makes a chain "tampered"."""
    return Severity.INFO if code in _INFO_CODES else code.default_severity


def is_failure(finding: Finding) -> bool:
    """True for findings that mean the chain is not intact (anything but info)."""
    return finding.severity != Severity.INFO


class VerifyCancelled(Exception):
    """Verification stopped because ``cancel()`` said so (e.g. SIGTERM in follow mode)."""


class HeaderVerifier(Protocol):
    """What the verifier needs from ``careledger_core.signing.TrustedKeys``."""

    def verify_header(self, h: BlockHeader, signature: bytes) -> None: ...


class Reader(Protocol):
    """The subset of ``careledger.storage.store.ChainReader`` used here."""

    def headers(
        self, chain_id: str, from_height: int = 0, page_size: int = 500
    ) -> Iterator[StoredHeader]: ...

    def events(self, chain_id: str, from_height: int, to_height: int) -> Sequence[StoredRow]: ...


@dataclass(frozen=True, slots=True)
class VerifiedHead:
    """A block the verifier has checked: where to continue and what to compare with.

    As a ``known_head`` it comes from the verifier state (``source="state"``) or
    from a signed checkpoint (``source="checkpoint"``), which names the block hash
    but not its Kafka offsets (``last_offset`` is None: the offset link of the next
    block is then taken from the stored block when its hash matches, else skipped).
    ``source`` is informational and not compared.
    """

    height: int
    block_hash: str  # hex SHA-256 of the canonical header bytes (recomputed, not the column)
    last_offset: int | None
    source: str = field(default="state", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "block_hash": self.block_hash,
            "last_offset": self.last_offset,
            "source": self.source,
        }


@dataclass
class ChainReport:
    """Outcome of verifying one chain (or a height range of it)."""

    chain_id: str
    from_height: int = 0
    blocks: int = 0  # heights verified (>= from_height)
    events: int = 0  # event rows checked
    head: VerifiedHead | None = None  # the highest block seen (None: no header at all)
    known: VerifiedHead | None = None  # the head compared against (state or checkpoint)
    uncommitted_events: int = 0
    findings: list[Finding] = field(default_factory=list)
    findings_dropped: int = 0  # beyond max_findings: counted, not kept
    counts: Counter[str] = field(default_factory=Counter)  # findings per code, all of them
    failures: int = 0  # findings that are not info
    elapsed_s: float = 0.0

    @property
    def tampered(self) -> bool:
        return self.failures > 0

    @property
    def result(self) -> str:
        return "tampered" if self.failures else "intact"

    @property
    def findings_total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "result": self.result,
            "from_height": self.from_height,
            "blocks": self.blocks,
            "events": self.events,
            "head_height": None if self.head is None else self.head.height,
            "head_hash": None if self.head is None else self.head.block_hash,
            "head_last_offset": None if self.head is None else self.head.last_offset,
            "known_height": None if self.known is None else self.known.height,
            "known_source": None if self.known is None else self.known.source,
            "uncommitted_events": self.uncommitted_events,
            "findings": self.findings_total,
            "failures": self.failures,
            "findings_by_code": dict(sorted(self.counts.items())),
            "findings_dropped": self.findings_dropped,
            "elapsed_s": round(self.elapsed_s, 3),
        }


# ----------------------------------------------------------------------------- helpers


def _text(value: bytes | str | None, limit: int = 200) -> str | None:
    """Untrusted bytes as printable text for messages (never raises)."""
    if value is None:
        return None
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _show(value: Any) -> Any:
    return _text(value) if isinstance(value, bytes | str) else value


@dataclass(slots=True)
class _HeaderCheck:
    """One stored header with what its own checks found, and the values to go on with."""

    row: StoredHeader
    header: BlockHeader | None
    hash_hex: str  # SHA-256 of the stored header bytes
    signature_ok: bool
    problems: list[tuple[FindingCode, str, dict[str, Any]]]
    # What the block claims: from the decoded header, or (header invalid) from the columns.
    prev_hash: str
    merkle_root: str
    event_count: int
    first_offset: int
    last_offset: int

    @property
    def sound(self) -> bool:
        return self.header is not None and self.signature_ok and not self.problems


_HEADER_FIELD_COLUMNS = (
    "prev_hash",
    "merkle_root",
    "first_event_time",
    "last_event_time",
    "created_at",
    "key_id",
)
_HEADER_INT_COLUMNS = (
    "event_count",
    "first_offset",
    "last_offset",
    "dead_lettered",
    "absent_offsets",
)


def check_header(row: StoredHeader, keys: HeaderVerifier) -> _HeaderCheck:
    """Checks of one header row on its own (no chain context)."""
    problems: list[tuple[FindingCode, str, dict[str, Any]]] = []
    raw = row.header if isinstance(row.header, bytes) else bytes(row.header)
    hash_hex = _sha256(raw).hexdigest()
    header: BlockHeader | None = None
    try:
        header = decode_header(raw)
    except HeaderValidationError as exc:
        problems.append(
            (
                C.BLOCK_HEADER_INVALID,
                f"stored header bytes are not a valid canonical block header: {exc.message}",
                {"field": exc.field, "reason": exc.reason},
            )
        )
    except Exception as exc:  # stored bytes are hostile: never let them stop us
        problems.append(
            (
                C.BLOCK_HEADER_INVALID,
                f"stored header bytes cannot be decoded: {type(exc).__name__}",
                {"reason": _text(str(exc))},
            )
        )
    if row.block_hash != hash_hex.encode():
        problems.append(
            (
                C.BLOCK_HASH_MISMATCH,
                "block_hash column is not SHA-256 of the stored header bytes",
                {"stored": _text(row.block_hash), "computed": hash_hex},
            )
        )
    signature_ok = False
    if header is not None:
        mismatched: dict[str, Any] = {}
        if row.chain_id != header.chain_id:
            mismatched["chain_id"] = {"column": _text(row.chain_id), "header": header.chain_id}
        if row.height != header.height:
            mismatched["height"] = {"column": row.height, "header": header.height}
        for name in _HEADER_INT_COLUMNS:
            if getattr(row, name) != getattr(header, name):
                mismatched[name] = {"column": getattr(row, name), "header": getattr(header, name)}
        for name in _HEADER_FIELD_COLUMNS:
            if getattr(row, name) != getattr(header, name).encode():
                mismatched[name] = {
                    "column": _text(getattr(row, name)),
                    "header": getattr(header, name),
                }
        if mismatched:
            problems.append(
                (
                    C.BLOCK_HEADER_MISMATCH,
                    "header columns differ from the signed header: " + ", ".join(mismatched),
                    {"columns": mismatched},
                )
            )
        if not _SIG_HEX.match(row.signature):
            problems.append(
                (
                    C.SIGNATURE_INVALID,
                    "signature column is not 128 lowercase hex digits",
                    {"key_id": header.key_id, "stored": _text(row.signature, 140)},
                )
            )
        else:
            try:
                keys.verify_header(header, bytes.fromhex(row.signature.decode("ascii")))
                signature_ok = True
            except UnknownKeyError:
                problems.append(
                    (
                        C.KEY_UNKNOWN,
                        f"block is signed by key {header.key_id}, "
                        "which this verifier does not trust",
                        {"key_id": header.key_id},
                    )
                )
            except SignatureError as exc:
                problems.append(
                    (
                        C.SIGNATURE_INVALID,
                        f"block signature does not verify under trusted key {header.key_id}",
                        {"key_id": header.key_id, "reason": exc.message},
                    )
                )
        return _HeaderCheck(
            row,
            header,
            hash_hex,
            signature_ok,
            problems,
            header.prev_hash,
            header.merkle_root,
            header.event_count,
            header.first_offset,
            header.last_offset,
        )
    return _HeaderCheck(
        row,
        None,
        hash_hex,
        False,
        problems,
        _text(row.prev_hash) or "",
        _text(row.merkle_root) or "",
        int(row.event_count),
        int(row.first_offset),
        int(row.last_offset),
    )


# ----------------------------------------------------------------------------- verifier


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
        pending_rows: Future[Sequence[StoredRow]] | None = None
        try:
            for batch in self._batches(scan_from):
                if self.cancel is not None and self.cancel():
                    raise VerifyCancelled()
                top = batch[-1][0]
                rows: Future[Sequence[StoredRow]] | None = None
                if top >= self.next_event_height:
                    rows = pool.submit(
                        self.reader.events, self.chain_id, self.next_event_height, top
                    )
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
            self.reader.headers(self.chain_id, scan_from, self.page_size)
        ):
            batch.append((height, rows))
            budget += max(min(int(r.event_count), self.batch_events) for r in rows)
            if budget >= self.batch_events or len(batch) >= self.page_size:
                yield batch
                batch, budget = [], 0
        if batch:
            yield batch

    def _process_batch(
        self,
        batch: list[tuple[int, list[StoredHeader]]],
        fetched: Future[Sequence[StoredRow]] | None,
    ) -> None:
        rows_by_height: dict[int, list[StoredRow]] = {}
        if fetched is not None:
            for ev in fetched.result():
                rows_by_height.setdefault(ev.height, []).append(ev)
        for height, header_rows in batch:
            self._block(height, header_rows, rows_by_height.pop(height, None))
        # Rows at heights that have no header at all, below a header: orphans.
        for height in sorted(rows_by_height):
            rows = rows_by_height[height]
            self.emit(
                C.EVENT_UNEXPECTED,
                height,
                f"{len(rows)} event rows at height {height}, where the chain has no block",
                details={
                    "rows": len(rows),
                    "indexes": _span(r.idx for r in rows),
                    "block_hashes": sorted({_text(r.block_hash) or "" for r in rows})[:5],
                },
            )

    # ------------------------------------------------------------------ one height
    def _block(
        self, height: int, header_rows: list[StoredHeader], event_rows: Sequence[StoredRow] | None
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
        chosen = self._choose(checks, known_hash)
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
            self._events(height, chosen, event_rows or [])
        self.prev = this
        self.report.head = VerifiedHead(height, chosen.hash_hex, chosen.last_offset, "store")
        self.expected_height = height + 1

    def _choose(self, checks: list[_HeaderCheck], known_hash: str | None) -> _HeaderCheck:
        if len(checks) == 1:
            return checks[0]
        prev_hash = None if self.prev is None else self.prev.block_hash

        def score(c: _HeaderCheck) -> tuple[bool, bool, bool, bool]:
            return (
                c.hash_hex == known_hash,
                c.header is not None and c.signature_ok,
                c.prev_hash == prev_hash,
                not c.problems,
            )

        return max(checks, key=score)

    # ------------------------------------------------------------------ events of a block
    def _events(self, height: int, chk: _HeaderCheck, rows: Sequence[StoredRow]) -> None:
        emit = self.emit
        count = chk.event_count
        ours = {chk.hash_hex.encode(), chk.row.block_hash}
        by_idx: dict[int, StoredRow] = {}
        dups: dict[int, list[StoredRow]] = {}
        stored = 0
        for r in rows:
            if r.block_hash not in ours:
                emit(
                    C.EVENT_UNEXPECTED,
                    height,
                    "event row names another block hash than the block at this height",
                    index=r.idx,
                    event_id=_text(r.event_id),
                    details={"row_block_hash": _text(r.block_hash), "kafka_offset": r.kafka_offset},
                )
                continue
            stored += 1
            if r.idx >= count:
                emit(
                    C.EVENT_UNEXPECTED,
                    height,
                    f"event index {r.idx} is beyond the block's event_count {count}",
                    index=r.idx,
                    event_id=_text(r.event_id),
                    details={"event_count": count, "kafka_offset": r.kafka_offset},
                )
                continue
            first = by_idx.setdefault(r.idx, r)
            if first is not r:
                dups.setdefault(r.idx, [first]).append(r)
        if stored != count:
            emit(
                C.EVENT_COUNT_MISMATCH,
                height,
                f"{stored} event rows stored for a block of {count} events",
                details={"stored_rows": stored, "event_count": count},
            )
        complete = len(by_idx) == count
        if dups:
            self._resolve_duplicates(height, chk, by_idx, dups, complete)
        if not complete:
            for i in range(count):
                if i not in by_idx:
                    emit(C.EVENT_MISSING, height, f"event {i} of the block is missing", index=i)

        # Per event: the hot loop.
        sha = _sha256
        kind = self.kind
        decode = kind.decode
        record_id = kind.record_id
        expected_of = kind.read_values
        stored_of = operator.attrgetter(*kind.read_columns)
        unique_key = kind.unique_key
        first_off, last_off = chk.first_offset, chk.last_offset
        leaves: list[bytes] = []
        append_leaf = leaves.append
        prev_off = -1
        out_of_order = False
        seen_ids: set[Any] = set()
        checked = 0
        for idx in range(count) if complete else sorted(by_idx):
            r = by_idx[idx]
            checked += 1
            data = r.canonical
            leaf = sha(b"\x00" + data).digest()
            append_leaf(leaf)
            if r.leaf_hash != leaf.hex().encode():
                emit(
                    C.EVENT_HASH_MISMATCH,
                    height,
                    "stored leaf hash is not the hash of the stored event bytes",
                    index=idx,
                    event_id=_text(r.event_id),
                    details={"stored": _text(r.leaf_hash), "computed": leaf.hex()},
                )
            try:
                event, canonical = decode(data)
            except ValidationError as exc:
                emit(
                    C.EVENT_NOT_CANONICAL,
                    height,
                    f"stored bytes are not a valid {kind.name}: {exc.message}",
                    index=idx,
                    event_id=_text(r.event_id),
                    details={
                        "field": getattr(exc, "field", "$"),
                        "reason": getattr(exc, "reason", exc.message),
                    },
                )
            except Exception as exc:  # stored bytes are hostile: never let them stop us
                emit(
                    C.EVENT_NOT_CANONICAL,
                    height,
                    f"stored event bytes cannot be decoded: {type(exc).__name__}",
                    index=idx,
                    event_id=_text(r.event_id),
                    details={"reason": _text(str(exc))},
                )
            else:
                rid = record_id(event)
                if canonical != data:
                    emit(
                        C.EVENT_NOT_CANONICAL,
                        height,
                        "stored event bytes are not in canonical form (RFC 8785)",
                        index=idx,
                        event_id=rid,
                    )
                expected = expected_of(event)
                columns = stored_of(r)
                if columns != expected:
                    diff = {
                        name: {"column": _show(col), "event": _show(exp)}
                        for name, col, exp in zip(kind.read_columns, columns, expected, strict=True)
                        if col != exp
                    }
                    emit(
                        C.EVENT_FIELD_MISMATCH,
                        height,
                        "columns differ from the stored event: " + ", ".join(diff),
                        index=idx,
                        event_id=rid,
                        details={"columns": diff},
                    )
                eid = unique_key(event)
                if eid in seen_ids:
                    emit(
                        C.EVENT_DUPLICATE_ID,
                        height,
                        f"{kind.name} {rid} occurs twice in the block",
                        index=idx,
                        event_id=rid,
                    )
                seen_ids.add(eid)
            off = r.kafka_offset
            if off < first_off or off > last_off:
                emit(
                    C.EVENT_OFFSET_OUT_OF_RANGE,
                    height,
                    f"Kafka offset {off} is outside the block's range {first_off}..{last_off}",
                    index=idx,
                    event_id=_text(r.event_id),
                    details={
                        "kafka_offset": off,
                        "first_offset": first_off,
                        "last_offset": last_off,
                    },
                )
            if off <= prev_off:
                out_of_order = True
            prev_off = off
        self.report.events += checked

        if out_of_order:
            self._report_order(height, chk, by_idx, leaves if complete else None)
        if complete and merkle_root(leaves).hex() != chk.merkle_root:
            emit(
                C.MERKLE_ROOT_MISMATCH,
                height,
                "Merkle root of the stored events differs from the signed header",
                details={"header": chk.merkle_root, "computed": merkle_root(leaves).hex()},
            )

    def _report_order(
        self,
        height: int,
        chk: _HeaderCheck,
        by_idx: dict[int, StoredRow],
        leaves: list[bytes] | None,
    ) -> None:
        """Name the rows that are out of place: those whose offset is not where a
        sorted order would have it (for a swap: exactly the two swapped rows)."""
        idxs = sorted(by_idx)
        offsets = [by_idx[i].kafka_offset for i in idxs]
        in_order = sorted(offsets)
        reordered_root_matches = False
        if leaves is not None:
            order = sorted(range(len(idxs)), key=lambda k: offsets[k])
            reordered_root_matches = (
                merkle_root([leaves[k] for k in order]).hex() == chk.merkle_root
            )
        prev = None
        for pos, idx in enumerate(idxs):
            off = offsets[pos]
            if off != in_order[pos] or off == prev:
                r = by_idx[idx]
                self.emit(
                    C.EVENT_OUT_OF_ORDER,
                    height,
                    f"event {idx} has Kafka offset {off}, out of order in the block"
                    + (
                        "; in offset order the events reproduce the signed root"
                        if reordered_root_matches
                        else ""
                    ),
                    index=idx,
                    event_id=_text(r.event_id),
                    details={
                        "kafka_offset": off,
                        "expected_offset": in_order[pos],
                        "reordered_root_matches": reordered_root_matches,
                    },
                )
            prev = off

    def _resolve_duplicates(
        self,
        height: int,
        chk: _HeaderCheck,
        by_idx: dict[int, StoredRow],
        dups: dict[int, list[StoredRow]],
        complete: bool,
    ) -> None:
        """Several rows claim one index: keep the one that reproduces the signed root."""
        if complete and len(dups) <= _MAX_DUPLICATE_SEARCH:
            leaves = [
                _sha256(b"\x00" + by_idx[i].canonical).digest() for i in range(chk.event_count)
            ]
            for idx, candidates in dups.items():
                for cand in candidates:
                    leaves[idx] = _sha256(b"\x00" + cand.canonical).digest()
                    if merkle_root(leaves).hex() == chk.merkle_root:
                        by_idx[idx] = cand
                        break
                else:
                    leaves[idx] = _sha256(b"\x00" + by_idx[idx].canonical).digest()
        for idx, candidates in dups.items():
            keep = by_idx[idx]
            for cand in candidates:
                if cand is not keep:
                    self.emit(
                        C.EVENT_UNEXPECTED,
                        height,
                        f"a second event row claims index {idx} of the block",
                        index=idx,
                        event_id=_text(cand.event_id),
                        details={
                            "kafka_offset": cand.kafka_offset,
                            "kept_event_id": _text(keep.event_id),
                        },
                    )

    # ------------------------------------------------------------------ the end of the chain
    def _check_uncommitted(self) -> None:
        start = self.next_event_height
        if self.report.head is not None:
            start = max(start, self.report.head.height + 1)
        rows = self.reader.events(self.chain_id, start, MAX_HEIGHT)
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
