"""Chain storage in ClickHouse: the processor's writer and the verifier's reader.

Write protocol for one block (see docs/adr/0003): insert all of the block's
event rows in **one** batched insert, then the single header row. A block
exists only once its header row exists, so a crash between the two leaves
event rows without a header; those are *uncommitted* and are deleted by
``discard_uncommitted`` when the processor resumes the chain, before anything
new is written at that height.

The reader is the verifier's minimal, read-only view (``ChainReader``). It
streams headers and events in height order, page by page, so memory stays
flat however long a chain is. Everything it returns comes straight from the
store and is untrusted: strings arrive as ``bytes``.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from careledger.storage import fencing
from careledger.storage.backend import ClickHouseBackend, SqlBackend, StorageError
from careledger.storage.kinds import (
    ACCESS,
    RAW,
    REFERENCE,
    SEALED,
    SEALED_RAW,
    SEALED_REFERENCE,
    RecordKind,
    SealedRaw,
    SealedRecord,
    SealedReference,
    raw_topics,
    reference_topics,
    sealed_kind,
    sealed_topics,
    topic_of,
)
from careledger.storage.migrations import check_identifier
from careledger_core.block import BlockHeader
from careledger_core.event import AccessEvent
from careledger_core.event_batch import AccessColumns
from careledger_core.reference import ReferenceRecord
from careledger_core.source import Attestation, BatchStatement, statement_bytes

HEADER_COLUMNS = (
    "chain_id",
    "height",
    "block_hash",
    "prev_hash",
    "merkle_root",
    "event_count",
    "first_offset",
    "last_offset",
    "dead_lettered",
    "absent_offsets",
    "first_event_time",
    "last_event_time",
    "created_at",
    "key_id",
    "header",
    "signature",
)


@dataclass(frozen=True, slots=True)
class ChainedEvent:
    """One record (an access event or a reference record) as it goes into a block."""

    offset: int
    #: an access event in clear is decoded in full, or only its stored columns when the
    #: processor's worker validated it (ADR 0042)
    event: (
        AccessEvent | AccessColumns | ReferenceRecord | SealedRecord | SealedReference | SealedRaw
    )
    canonical: bytes
    leaf_hash: bytes
    #: the source's signed-batch attestation of an access event (ADR 0010), if signed
    #: in a record of its own
    attestation: Attestation | None = None
    #: the batch record the event came in (ADR 0020), shared by its events, and the
    #: event's index in that batch
    batch: BatchInfo | None = None
    batch_index: int = 0


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A batch record's signed statement, as chained (ADR 0020): one per record.

    ``skipped`` are the entries of the batch that were not chained (dead-lettered
    alone): (batch index, the leaf hash the entry binds), so that ``verify`` can
    recompute the signed root from the chained events and these."""

    statement: BatchStatement
    signature: str
    skipped: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class SealedBlock:
    """A signed block ready to store."""

    header: BlockHeader
    header_bytes: bytes
    block_hash: bytes
    signature: bytes
    events: Sequence[ChainedEvent]


@dataclass(frozen=True)
class ChainHead:
    chain_id: str
    height: int
    block_hash: str
    last_offset: int


@dataclass(frozen=True, slots=True)
class StoredHeader:
    """A header row exactly as stored (untrusted)."""

    chain_id: str
    height: int
    block_hash: bytes
    prev_hash: bytes
    merkle_root: bytes
    event_count: int
    first_offset: int
    last_offset: int
    dead_lettered: int
    absent_offsets: int
    first_event_time: bytes
    last_event_time: bytes
    created_at: bytes
    key_id: bytes
    header: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event row exactly as stored (untrusted)."""

    chain_id: str
    height: int
    idx: int
    block_hash: bytes
    kafka_offset: int
    event_id: bytes
    occurred_at: bytes
    actor_id: bytes
    patient_id: bytes
    action: bytes
    outcome: int
    source_system: bytes
    occurred_date: dt.date
    canonical: bytes
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class StoredReference:
    """A reference-data row exactly as stored (untrusted)."""

    chain_id: str
    height: int
    idx: int
    block_hash: bytes
    kafka_offset: int
    record_id: bytes
    kind: bytes
    version: int
    subject_id: bytes
    recorded_at: bytes
    effective_at: bytes
    retracted: int
    effective_date: dt.date
    canonical: bytes
    leaf_hash: bytes

    @property
    def event_id(self) -> bytes:
        """The record id, under the name findings use for the chained item."""
        return self.record_id


@dataclass(frozen=True, slots=True)
class StoredSealed:
    """A sealed ledger's event row as stored (untrusted): the columns its signed document
    gives (``SEALED.read_columns``); the pseudonyms and sealed part are checked where the
    key store opens them (ADR 0037)."""

    chain_id: str
    height: int
    idx: int
    block_hash: bytes
    kafka_offset: int
    event_id: bytes
    occurred_at: bytes
    action: bytes
    outcome: int
    source_system: bytes
    occurred_date: dt.date
    canonical: bytes
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class StoredSealedReference:
    """A sealed ledger's reference row as stored (untrusted): the columns its document
    gives (``SEALED_REFERENCE.read_columns``; the record id is a pseudonym, ADR 0037)."""

    chain_id: str
    height: int
    idx: int
    block_hash: bytes
    kafka_offset: int
    kind: bytes
    version: int
    recorded_at: bytes
    effective_at: bytes
    retracted: int
    effective_date: dt.date
    canonical: bytes
    leaf_hash: bytes

    @property
    def event_id(self) -> bytes:
        """Findings name the row by its place: its id is a pseudonym only verify's key
        store can check."""
        return b""


@dataclass(frozen=True, slots=True)
class StoredRaw:
    """A raw-record row exactly as stored (untrusted)."""

    chain_id: str
    height: int
    idx: int
    block_hash: bytes
    kafka_offset: int
    record_id: bytes
    sha256: bytes
    format: bytes
    received_at: bytes
    source_id: bytes
    protocol: bytes
    issue_count: int
    received_date: dt.date
    canonical: bytes
    leaf_hash: bytes

    @property
    def event_id(self) -> bytes:
        """The record id, under the name findings use for the chained item."""
        return self.record_id


def event_rows(blocks: Sequence[SealedBlock], kind: RecordKind = ACCESS) -> list[tuple[Any, ...]]:
    """The rows of ``blocks`` for ``kind.table``: common columns around ``kind.columns``."""
    values = kind.values
    rows: list[tuple[Any, ...]] = []
    for block in blocks:
        h = block.header
        digest = block.block_hash.hex()
        chain, height = h.chain_id, h.height
        rows.extend(
            (
                chain,
                height,
                idx,
                digest,
                ev.offset,
                *values(ev.event),
                ev.canonical,
                ev.leaf_hash.hex(),
            )
            for idx, ev in enumerate(block.events)
        )
    return rows


ATTESTATION_COLUMNS: Final = (
    "chain_id",
    "height",
    "idx",
    "block_hash",
    "event_id",
    "source_id",
    "key_id",
    "epoch",
    "seq",
    "signed_by",
    "statement",
    "signature",
    "batch_index",
    "proof",
)


def attestation_rows(blocks: Sequence[SealedBlock]) -> list[tuple[Any, ...]]:
    """Rows of ``source_attestations`` for the signed events of ``blocks``."""
    rows: list[tuple[Any, ...]] = []
    for block in blocks:
        h = block.header
        digest = block.block_hash.hex()
        for idx, ev in enumerate(block.events):
            att = ev.attestation
            if att is None:
                continue
            st = att.statement
            rows.append(
                (
                    h.chain_id,
                    h.height,
                    idx,
                    digest,
                    ev.event.event_id if isinstance(ev.event, (AccessEvent, AccessColumns)) else "",
                    st.source_id,
                    st.key_id,
                    st.epoch,
                    att.seq,
                    st.signed_by or "",
                    statement_bytes(st),
                    att.signature,
                    att.index,
                    ",".join(att.proof),
                )
            )
    return rows


BATCH_COLUMNS: Final = (
    "chain_id",
    "height",
    "block_hash",
    "kafka_offset",
    "source_id",
    "key_id",
    "epoch",
    "first_seq",
    "size",
    "signed_by",
    "statement",
    "signature",
    "skipped",
)


def skipped_text(skipped: Sequence[tuple[int, bytes]]) -> str:
    """The ``skipped`` column: ``index:leafhex`` per entry not chained, comma-separated."""
    return ",".join(f"{i}:{h.hex()}" for i, h in skipped)


def batch_rows(blocks: Sequence[SealedBlock]) -> list[tuple[Any, ...]]:
    """Rows of ``source_batches``: one per batch record of ``blocks`` (ADR 0020), in
    BATCH_COLUMNS order. A record's events are never split across blocks."""
    rows: list[tuple[Any, ...]] = []
    for block in blocks:
        h = block.header
        digest = block.block_hash.hex()
        last_offset = -1
        for ev in block.events:
            info = ev.batch
            if info is None or ev.offset == last_offset:
                continue
            last_offset = ev.offset
            st = info.statement
            rows.append(
                (
                    h.chain_id,
                    h.height,
                    digest,
                    ev.offset,
                    st.source_id,
                    st.key_id,
                    st.epoch,
                    st.first_seq,
                    st.size,
                    st.signed_by or "",
                    statement_bytes(st),
                    info.signature,
                    skipped_text(info.skipped),
                )
            )
    return rows


def row_columns(kind: RecordKind) -> tuple[str, ...]:
    """The columns of ``kind.table``, in the order ``event_rows`` produces them."""
    return (
        "chain_id",
        "height",
        "idx",
        "block_hash",
        "kafka_offset",
        *kind.columns,
        "canonical",
        "leaf_hash",
    )


EVENT_COLUMNS = row_columns(ACCESS)
REFERENCE_COLUMNS = row_columns(REFERENCE)
RAW_COLUMNS = row_columns(RAW)
_KINDS = (ACCESS, SEALED, REFERENCE, SEALED_REFERENCE, RAW, SEALED_RAW)


def header_rows(blocks: Sequence[SealedBlock]) -> list[tuple[Any, ...]]:
    """The ``blocks`` rows of ``blocks``, in HEADER_COLUMNS order."""
    return [
        (
            b.header.chain_id,
            b.header.height,
            b.block_hash.hex(),
            b.header.prev_hash,
            b.header.merkle_root,
            b.header.event_count,
            b.header.first_offset,
            b.header.last_offset,
            b.header.dead_lettered,
            b.header.absent_offsets,
            b.header.first_event_time,
            b.header.last_event_time,
            b.header.created_at,
            b.header.key_id,
            b.header_bytes,
            b.signature.hex(),
        )
        for b in blocks
    ]


class ChainStore:
    """Read and write chains in one ClickHouse database."""

    def __init__(
        self,
        backend: SqlBackend,
        database: str,
        reference_topics: frozenset[str] = frozenset(),
        raw_topics: frozenset[str] = frozenset(),
        sealed_topics: frozenset[str] = frozenset(),
    ) -> None:
        self.backend = backend
        self.db = check_identifier(database)
        self.reference_topics = reference_topics
        self.raw_topics = raw_topics
        self.sealed_topics = sealed_topics
        self._header_types: dict[str, str] | None = None

    @classmethod
    def for_settings(cls, backend: SqlBackend, settings: Any) -> ChainStore:
        return cls(
            backend,
            settings.clickhouse_database,
            reference_topics(settings),
            raw_topics(settings),
            sealed_topics(settings),
        )

    @classmethod
    def replica_for_settings(cls, settings: Any) -> ChainStore:
        """The replica's database (``replica_clickhouse_*``, ADR 0017), read and written
        like the primary."""
        backend = ClickHouseBackend.from_settings(settings, "replica")
        return cls(
            backend,
            settings.replica_clickhouse_database,
            reference_topics(settings),
            raw_topics(settings),
            sealed_topics(settings),
        )

    def kind_of(self, chain_id: str) -> RecordKind:
        topic = topic_of(chain_id)
        if topic in self.raw_topics:
            return SEALED_RAW if topic in self.sealed_topics else RAW
        if topic in self.sealed_topics:
            return sealed_kind(topic, self.reference_topics)
        return REFERENCE if topic in self.reference_topics else ACCESS

    # ------------------------------------------------------------------ writes
    def write_blocks(self, blocks: Sequence[SealedBlock], *, owner: str | None = None) -> set[str]:
        """Store blocks: all their event rows in one insert, then all headers in one.

        A crash between the two inserts leaves event rows without headers, which
        count as uncommitted (see ``discard_uncommitted``). With ``owner`` (a processor;
        ADR 0031) a chain's headers are stored only if ``owner`` still owns the chain
        and nothing is stored at its heights: returns the chains that were fenced (their
        rows of this write are deleted again); without, every header is inserted.
        """
        self._write_rows(blocks)
        if owner is None:
            self.backend.insert(f"{self.db}.blocks", HEADER_COLUMNS, header_rows(blocks))
            return set()
        return self._write_headers_fenced(blocks, owner)

    def claim(self, chain_id: str, owner: str) -> int:
        """``owner`` claims ``chain_id`` (the next epoch, ADR 0031); returns the epoch."""
        return fencing.claim(self.backend, self.db, chain_id, owner)

    def _write_headers_fenced(self, blocks: Sequence[SealedBlock], owner: str) -> set[str]:
        if self._header_types is None:
            self._header_types = fencing.column_types(self.backend, self.db, "blocks")
        by_chain: dict[str, list[tuple[Any, ...]]] = {}
        for b, row in zip(blocks, header_rows(blocks), strict=True):
            by_chain.setdefault(b.header.chain_id, []).append(row)
        fencing.insert_headers_fenced(
            self.backend, self.db, HEADER_COLUMNS, self._header_types, by_chain, owner
        )
        wanted = {(b.header.chain_id, b.header.height): b.block_hash.hex() for b in blocks}
        ok = fencing.placed(self.backend, self.db, wanted)
        fenced = set(by_chain) - ok
        for chain_id in sorted(fenced):
            mine = [b for b in blocks if b.header.chain_id == chain_id]
            tables = (self.kind_of(chain_id).table, "source_attestations", "source_batches")
            fencing.discard_fenced(
                self.backend, self.db, tables, chain_id, [b.block_hash.hex() for b in mine]
            )
        return fenced

    def _write_rows(self, blocks: Sequence[SealedBlock]) -> None:
        for kind in _KINDS:
            mine = [b for b in blocks if b.events and self.kind_of(b.header.chain_id) is kind]
            if mine:
                self.backend.insert(
                    f"{self.db}.{kind.table}", row_columns(kind), event_rows(mine, kind)
                )
        attestations = attestation_rows(blocks)
        if attestations:
            self.backend.insert(f"{self.db}.source_attestations", ATTESTATION_COLUMNS, attestations)
        batches = batch_rows(blocks)
        if batches:
            self.backend.insert(f"{self.db}.source_batches", BATCH_COLUMNS, batches)

    def head(self, chain_id: str) -> ChainHead | None:
        rows = self.backend.execute(
            f"SELECT height, block_hash, last_offset FROM {self.db}.blocks "
            "WHERE chain_id = %(chain)s ORDER BY height DESC LIMIT 1",
            {"chain": chain_id},
        )
        if not rows:
            return None
        height, block_hash, last_offset = rows[0]
        return ChainHead(chain_id, int(height), _text(block_hash), int(last_offset))

    def heads(self) -> dict[str, ChainHead]:
        rows = self.backend.execute(
            f"SELECT chain_id, max(height) FROM {self.db}.blocks GROUP BY chain_id"
        )
        heads: dict[str, ChainHead] = {}
        for chain, _height in rows:
            head = self.head(_text(chain))
            if head is not None:
                heads[head.chain_id] = head
        return heads

    def uncommitted_count(self, chain_id: str, head_height: int | None) -> int:
        rows = self.backend.execute(
            f"SELECT count() FROM {self.db}.{self.kind_of(chain_id).table} "
            "WHERE chain_id = %(chain)s AND height >= %(h)s",
            {"chain": chain_id, "h": 0 if head_height is None else head_height + 1},
        )
        return int(rows[0][0]) if rows else 0

    def discard_uncommitted(
        self,
        chain_id: str,
        head_height: int | None,
        timeout_s: float = 60.0,
        *,
        in_flight: bool = False,
    ) -> int:
        """Delete event rows above the chain head (a crash left them without a header).

        Returns how many rows were deleted. Waits until the deletion has really
        happened: ClickHouse mutations are asynchronous and ``mutations_sync``
        does not exist on 18.16, so we poll ``system.mutations``.

        ``in_flight`` (a write to this chain failed, ADR 0030 addendum): delete above the
        head even when the server read shows no such rows, header rows included. On
        a replicated layout the failed write may have been committed on a replica that
        died before the one read here fetched it; a mutation covers every part with a
        lower block number, so the part is deleted wherever it arrives later instead of
        landing beside the rewrite. The caller must know that nothing acknowledged lies
        above ``head_height`` (``ChainOwnership.check_head``).
        """
        first_uncommitted = 0 if head_height is None else head_height + 1
        count = self.uncommitted_count(chain_id, head_height)
        if count == 0 and not in_flight:
            return 0
        params = {"chain": chain_id, "h": first_uncommitted}
        where = "WHERE chain_id = %(chain)s AND height >= %(h)s"
        tables = [self.kind_of(chain_id).table]
        if self.kind_of(chain_id).signed:
            # their attestations, if the crash came after those were written too
            # (the verifier ignores rows whose block hash is not a committed one)
            tables += ["source_attestations", "source_batches"]
        if in_flight:
            tables.append("blocks")
        for table in tables:
            self.backend.execute(f"ALTER TABLE {self.db}.{table} DELETE {where}", params)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.uncommitted_count(chain_id, head_height) == 0:
                return count
            time.sleep(0.05)
        raise StorageError(
            f"deleting uncommitted rows of {chain_id} did not finish in {timeout_s}s"
        )

    def record_verification_run(self, row: dict[str, Any]) -> None:
        columns = (
            "run_id",
            "mode",
            "scope",
            "started_at",
            "finished_at",
            "chains",
            "blocks",
            "events",
            "findings",
            "result",
            "summary",
        )
        self.backend.insert(
            f"{self.db}.verification_runs", columns, [tuple(row[c] for c in columns)]
        )

    # ------------------------------------------------------------------ reads
    def chain_ids(self) -> list[str]:
        """Every chain id the blocks or record tables hold rows under (the valid ones:
        ``chain_id_census`` names the others)."""
        return self.chain_id_census()[0]

    def chain_id_census(self) -> tuple[list[str], list[tuple[str, bytes, int]]]:
        """The chain ids of every table a chain has rows in: the valid ones (sorted), and
        the rows under ids no block header can carry (not UTF-8, not printable ASCII of
        1..256 characters) as ``(table, raw id, rows)``: those rows belong to no chain."""
        valid: set[str] = set()
        invalid: list[tuple[str, bytes, int]] = []
        for table in ("blocks", *dict.fromkeys(kind.table for kind in _KINDS)):
            for raw, rows in self.backend.execute(
                f"SELECT chain_id, count() FROM {self.db}.{table} GROUP BY chain_id "
                "ORDER BY chain_id"
            ):
                if type(raw) is bytes and _CHAIN_ID.match(raw):
                    valid.add(raw.decode("ascii"))
                else:
                    invalid.append((table, _raw(raw), int(rows)))
        return sorted(valid), invalid

    def headers(
        self, chain_id: str, from_height: int = 0, page_size: int = 500
    ) -> Iterator[StoredHeader]:
        """Header rows of one chain in height order, streamed page by page."""
        next_height = from_height
        while True:
            rows = self.backend.execute(
                f"SELECT {', '.join(HEADER_COLUMNS)} FROM {self.db}.blocks "
                "WHERE chain_id = %(chain)s AND height >= %(from)s AND height < %(to)s "
                "ORDER BY height, block_hash",
                {"chain": chain_id, "from": next_height, "to": next_height + page_size},
            )
            for r in rows:
                yield StoredHeader(_text(r[0]), *r[1:])
            more = self.backend.execute(
                f"SELECT count() FROM {self.db}.blocks "
                "WHERE chain_id = %(chain)s AND height >= %(to)s",
                {"chain": chain_id, "to": next_height + page_size},
            )
            if not more or int(more[0][0]) == 0:
                return
            next_height += page_size

    def events(self, chain_id: str, from_height: int, to_height: int) -> list[StoredRow]:
        """Record rows with ``from_height <= height <= to_height``, in (height, idx) order.

        Access-event chains give ``StoredEvent`` rows, reference chains
        ``StoredReference`` rows and raw-record chains ``StoredRaw`` rows (each from
        their own table).
        """
        kind = self.kind_of(chain_id)
        rows = self.backend.execute(
            "SELECT chain_id, height, idx, block_hash, kafka_offset, "
            f"{', '.join(kind.read_columns)}, canonical, leaf_hash "
            f"FROM {self.db}.{kind.table} "
            "WHERE chain_id = %(chain)s AND height >= %(from)s AND height <= %(to)s "
            "ORDER BY height, idx, kafka_offset",
            {"chain": chain_id, "from": from_height, "to": to_height},
        )
        cls = _ROW_CLASS.get(kind.name, StoredEvent)
        return [cls(_text(r[0]), *r[1:]) for r in rows]

    def event_columns(self, chain_id: str, from_height: int, to_height: int) -> EventColumns:
        """The rows of ``events`` as columns (one list per column, in the order of
        ``EventColumns.names``), without an object per row: the verifier's bulk read.
        ``EventColumns.row(i)`` gives row ``i`` as ``events`` would."""
        kind = self.kind_of(chain_id)
        names: tuple[str, ...] = ("chain_id", "height", "idx", "block_hash", "kafka_offset")
        names += (*kind.read_columns, "canonical", "leaf_hash")
        # chain_id is not read: the WHERE makes it the chain's, byte for byte
        sql = (
            f"SELECT {', '.join(names[1:])} FROM {self.db}.{kind.table} "
            "WHERE chain_id = %(chain)s AND height >= %(from)s AND height <= %(to)s "
            "ORDER BY height, idx, kafka_offset"
        )
        params = {"chain": chain_id, "from": from_height, "to": to_height}
        by_column = getattr(self.backend, "execute_columns", None)
        if by_column is not None:  # no tuple per row
            read: list[list[Any]] = by_column(sql, params)
        else:
            rows = self.backend.execute(sql, params)
            read = [list(c) for c in zip(*rows, strict=True)] if rows else []
        if not read:
            return EventColumns(kind, names, [[] for _ in names])
        return EventColumns(kind, names, [[chain_id.encode()] * len(read[0]), *read])

    def event_counts(self) -> tuple[int, int]:
        """(stored event rows, header rows) over the whole database."""
        ev = self.backend.execute(f"SELECT count() FROM {self.db}.access_events")
        bl = self.backend.execute(f"SELECT count() FROM {self.db}.blocks")
        return int(ev[0][0]), int(bl[0][0])


@dataclass(frozen=True, slots=True)
class EventColumns:
    """Record rows of one kind read column by column (``ChainStore.event_columns``):
    ``columns[k]`` holds the values of ``names[k]``, one per row, untrusted as stored."""

    kind: RecordKind
    names: tuple[str, ...]
    columns: list[list[Any]]

    def __len__(self) -> int:
        return len(self.columns[0])

    def column(self, name: str) -> list[Any]:
        return self.columns[self.names.index(name)]

    def row(self, i: int) -> StoredRow:
        """Row ``i`` as ``ChainStore.events`` returns it."""
        values = [c[i] for c in self.columns]
        cls = _ROW_CLASS.get(self.kind.name, StoredEvent)
        return cls(_text(values[0]), *values[1:])  # type: ignore[no-any-return]


#: a record row of any kind, as stored
StoredRow = StoredEvent | StoredReference | StoredRaw | StoredSealed | StoredSealedReference
#: the row class of each kind (its fields: the common columns, ``read_columns``, then
#: ``canonical`` and ``leaf_hash``, as ``events`` reads them)
_ROW_CLASS: Final[dict[str, Any]] = {
    REFERENCE.name: StoredReference,
    RAW.name: StoredRaw,
    SEALED_RAW.name: StoredRaw,
    SEALED.name: StoredSealed,
    SEALED_REFERENCE.name: StoredSealedReference,
}


class ChainReader(Protocol):
    """The minimal read interface the verifier needs."""

    def chain_ids(self) -> list[str]: ...

    def headers(
        self, chain_id: str, from_height: int = 0, page_size: int = 500
    ) -> Iterator[StoredHeader]: ...

    def events(self, chain_id: str, from_height: int, to_height: int) -> list[StoredRow]: ...


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _raw(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", errors="surrogateescape")


#: what a block header's chain id may be (``careledger_core.block``): printable ASCII
#: without spaces, 1..256 characters
_CHAIN_ID: Final = re.compile(rb"\A[\x21-\x7e]{1,256}\Z")
