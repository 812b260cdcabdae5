"""fsck's vocabulary: the reader it reads through, the values it reports, severities.

``Reader`` is the minimal read-only interface the verifier needs from
``careledger.storage.store.ChainReader``; ``HeaderVerifier`` what it needs from
the trusted keys. ``VerifiedHead`` is a verified block to continue from or
compare with; ``ChainReport`` is the outcome of one chain. Also the limits and
the severity rule (what makes a chain "tampered").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from careledger.storage.store import (
    EventColumns,
    StoredEvent,
    StoredHeader,
    StoredRaw,
    StoredReference,
    StoredSealed,
    StoredSealedReference,
)
from careledger_core.block import BlockHeader
from careledger_core.findings import Finding, FindingCode, Severity

#: A chained record's row: an access event or a reference record.
StoredRow = StoredEvent | StoredReference | StoredRaw | StoredSealed | StoredSealedReference

#: Upper bound used for "every height above the head" (the largest UInt64).
MAX_HEIGHT = 2**64 - 1
#: Findings kept in a report per chain; all are still counted (``ChainReport.counts``).
DEFAULT_MAX_FINDINGS = 10_000
#: Event rows fetched per query (whole blocks; a block larger than this is fetched alone).
DEFAULT_BATCH_EVENTS = 20_000

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


class BulkReader(Reader, Protocol):
    """A reader that also reads record rows column by column (``ChainStore``)."""

    def event_columns(self, chain_id: str, from_height: int, to_height: int) -> EventColumns: ...


class BlockRows:
    """The rows ``lo .. hi - 1`` of a bulk read (``EventColumns``): one block's rows,
    column by column for the whole-block checks, as row objects (made once, on demand)
    for the row-by-row ones."""

    __slots__ = ("_rows", "cols", "hi", "lo")

    def __init__(self, cols: EventColumns, lo: int, hi: int) -> None:
        self.cols = cols
        self.lo = lo
        self.hi = hi
        self._rows: list[StoredRow] | None = None

    def __len__(self) -> int:
        return self.hi - self.lo

    def column(self, name: str) -> list[Any]:
        return self.cols.column(name)[self.lo : self.hi]

    def rows(self) -> list[StoredRow]:
        if self._rows is None:
            row = self.cols.row
            self._rows = [row(i) for i in range(self.lo, self.hi)]
        return self._rows


def as_rows(rows: Sequence[StoredRow] | BlockRows) -> Sequence[StoredRow]:
    return rows.rows() if isinstance(rows, BlockRows) else rows


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


class Emit(Protocol):
    """How the checks report a finding (``_ChainVerifier.emit``)."""

    def __call__(
        self,
        code: FindingCode,
        height: int | None,
        message: str,
        *,
        index: int | None = None,
        event_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None: ...


def _text(value: object, limit: int = 200) -> str | None:
    """An untrusted column value as printable text for messages (never raises)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value[: limit * 4]).decode("utf-8", errors="replace")
    elif isinstance(value, str):
        text = value
    elif type(value) is int and value.bit_length() > 256:
        text = f"<{value.bit_length()}-bit integer>"
    else:
        try:
            text = repr(value)
        except ValueError:  # e.g. a container of integers too long to print
            text = f"<{type(value).__name__}>"
    text = text if len(text) <= limit else text[:limit] + "…"
    # control characters (terminal escapes, newlines) from the store never reach a
    # terminal or a log line as such
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _show(value: object) -> object:
    """An untrusted column value for a finding's details: JSON-safe and bounded."""
    if value is None or type(value) is bool:
        return value
    if type(value) is int:
        return value if -(2**64) < value < 2**64 else _text(value)
    if type(value) is float:
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dt.date):  # datetime too
        return value.isoformat()
    return _text(value)


def _type_name(value: object) -> str:
    return "NULL" if value is None else type(value).__name__


def _int(value: object) -> int | None:
    """A column that must hold a non-negative integer (UInt*): the value, or None."""
    return value if type(value) is int and value >= 0 else None
