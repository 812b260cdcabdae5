"""Per-partition chaining: Kafka records in, sealed signed blocks out.

This module holds no connections: the faust app feeds it records and stores
what it seals. One ``PartitionChain`` per Kafka partition of the events topic
(one chain per partition, ADR 0003).

Offset accounting. A block's range ``[first_offset, last_offset]`` starts right
after the previous block's ``last_offset`` and covers every offset in it: each
one is either a chained event, a dead-lettered record, or absent from Kafka
(``event_count + dead_lettered + absent_offsets`` equals the range size). The
verifier checks that ranges of consecutive blocks touch, so an event dropped
before chaining cannot hide.

Batch records (ADR 0020). A record carrying a source-signed batch adds all its chainable
events at once, at its offset, into the open block: a record never spans two blocks, so a
block may exceed ``block_max_events`` by less than one batch. The block header then
counts records (``event_records``: offsets of the range whose record carries events),
and ``event_offsets`` lists an offset once per event. An event refused alone (malformed,
not canonical) is dead-lettered with its batch index and accounted for by its batch; a
record none of whose events can be chained counts as one dead-lettered record.

Broker time (ADR 0015). The source gate decides each signed event's key status at the
record's broker append time (Kafka LogAppendTime); a sealed block signs the earliest and
latest of those times (``first_append_time`` / ``last_append_time``), so ``verify`` can
check the same decision later.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from careledger.storage.kinds import ACCESS, SEALED_RAW, SEALED_REFERENCE, RecordKind
from careledger.storage.store import ChainedEvent, ChainHead, SealedBlock
from careledger_core.batch_record import looks_batch
from careledger_core.block import (
    GENESIS_PREV_HASH,
    BlockHeader,
    block_hash,
    header_bytes,
    offsets_digest,
)
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.errors import CareledgerError, ValidationError
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import merkle_root
from careledger_core.sealing import SealError
from careledger_core.signing import SigningKey
from careledger_core.source import SourceAuthError, timestamp_of
from processors.sources import LOG_APPEND_TIME, AdmittedBatch, RegistryStale, SourceGate


def utc_timestamp(now: float) -> str:
    """The event/header timestamp format: microseconds, UTC, 'Z'."""
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be chained: malformed ones go to the dead-letter topic,
    well-formed ones that cannot be attributed to a registered source to quarantine."""

    offset: int
    value: bytes
    key: bytes | None
    code: str
    reason: str
    field: str
    quarantine: bool = False
    #: for quarantined records: the source and batch they claim (never patient data)
    claim: tuple[tuple[str, str], ...] = ()
    #: an event dead-lettered alone out of a batch record (ADR 0020): its index in the
    #: batch (``value`` is then the event's bytes, not the record's)
    batch_index: int | None = None


class OffsetGap(Exception):
    """The consumer position is ahead of the chain head: records would be skipped."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"expected offset {expected}, got {got}")
        self.expected = expected
        self.got = got


class KafkaBehindLedger(CareledgerError):
    """Kafka's partition ends before the chain's stored head: the topic was deleted and
    recreated, or truncated (an unclean leader election). Its records would be taken for
    ones already chained and skipped, so the processor refuses the partition."""

    code = "KAFKA_BEHIND_LEDGER"


def check_partition_end(chain_id: str, part: tuple[str, int], next_offset: int, end: int) -> None:
    """Raise ``KafkaBehindLedger`` if the partition's end (its high watermark) lies before
    ``next_offset``, the offset after the chain's stored head. Never so while Kafka keeps
    what it acknowledged: a record is consumed (and chained) only below the high
    watermark, and the watermark never goes back."""
    if end >= next_offset:
        return
    topic, partition = part
    raise KafkaBehindLedger(
        f"chain {chain_id}: Kafka partition {topic}-{partition} ends at offset {end:,} but "
        f"the ledger has chained it up to offset {next_offset - 1:,}; the topic was "
        "recreated or truncated, so its records would be taken for chained ones. Not "
        "chaining it: restore the topic, or start a new ledger (README, Troubleshooting)",
        details={"chain": chain_id, "end": end, "next_offset": next_offset},
    )


@dataclass
class PartitionChain:
    """The open (not yet sealed) tail of one chain."""

    chain_id: str
    max_event_bytes: int
    height: int = 0  # height of the next block
    kind: RecordKind = ACCESS  # what the chain's records are (access events or reference data)
    prev_hash: str = GENESIS_PREV_HASH
    next_offset: int | None = None  # None only for chains built by hand in tests
    range_first: int | None = None
    pending: list[ChainedEvent] = field(default_factory=list)
    pending_timestamps: list[float] = field(default_factory=list)
    #: earliest and latest broker append time of the open block's attested events
    append_min: float | None = None
    append_max: float | None = None
    dead_lettered: int = 0
    absent: int = 0
    opened_at: float | None = None  # monotonic time the first pending record arrived
    duplicates_skipped: int = 0
    #: decides whether an access event may be chained (source signatures, ADR 0010);
    #: None: plain events only, as before source identity existed
    gate: SourceGate | None = None
    #: the RFC 6962 tree over the block hashes of blocks 0..height-1 (ADR 0012), grown
    #: by ``seal``; None when unknown (then no checkpoint is published for the chain)
    tree: ChainTree | None = field(default_factory=ChainTree)
    #: largest batch record (ADR 0020) accepted; ``max_event_bytes`` bounds each event
    max_batch_record_bytes: int = 1_048_576
    #: records of the open block that carry events, and whether one was a batch record
    #: (then the header says ``event_records``)
    event_records: int = 0
    batch_records: int = 0

    @classmethod
    def resume(
        cls,
        chain_id: str,
        head: ChainHead | None,
        max_event_bytes: int,
        earliest_offset: int = 0,
        kind: RecordKind = ACCESS,
        max_batch_record_bytes: int = 1_048_576,
    ) -> PartitionChain:
        """Continue after the stored head; a new chain starts at the partition's earliest offset.

        Never "whatever record comes first": a consumer position that ran ahead
        of the store (committed offsets of records never stored) must not become
        the start of a chain.
        """
        if head is None:
            return cls(
                chain_id,
                max_event_bytes,
                kind=kind,
                next_offset=earliest_offset,
                max_batch_record_bytes=max_batch_record_bytes,
            )
        return cls(
            chain_id,
            max_event_bytes,
            kind=kind,
            max_batch_record_bytes=max_batch_record_bytes,
            height=head.height + 1,
            prev_hash=head.block_hash,
            next_offset=head.last_offset + 1,
            tree=None,  # the caller rebuilds it from the stored block hashes
        )

    @property
    def open_records(self) -> int:
        return len(self.pending) + self.dead_lettered + self.absent

    def add(
        self,
        offset: int,
        value: bytes | None,
        key: bytes | None,
        kafka_ts: float,
        now: float,
        timestamp_type: int = LOG_APPEND_TIME,
    ) -> Rejected | None:
        """``take`` for a caller expecting at most one dead letter per record: the first
        (a batch record may refuse several of its events: use ``take``)."""
        rejected = self.take(offset, value, key, kafka_ts, now, timestamp_type)
        return rejected[0] if rejected else None

    def take(
        self,
        offset: int,
        value: bytes | None,
        key: bytes | None,
        kafka_ts: float,
        now: float,
        timestamp_type: int = LOG_APPEND_TIME,
    ) -> list[Rejected]:
        """Take one record. Returns what goes to the dead-letter (or quarantine) topic:
        the record, or events refused alone out of a batch record; empty if none.

        ``kafka_ts`` / ``timestamp_type``: the record's Kafka timestamp and whether the
        broker set it (LogAppendTime) or the producer did (CreateTime, not trusted).

        Raises ``OffsetGap`` when the record lies beyond the next expected offset,
        so the caller can seek back instead of silently skipping records.
        Records at or below the chain head were chained already and are ignored.
        """
        if self.next_offset is not None:
            if offset < self.next_offset:
                self.duplicates_skipped += 1
                return []
            if offset > self.next_offset:
                raise OffsetGap(self.next_offset, offset)
        saved = (self.range_first, self.opened_at, self.next_offset)
        if self.range_first is None:
            self.range_first = offset
        if self.opened_at is None:
            self.opened_at = now
        self.next_offset = offset + 1
        before = len(self.pending)
        try:
            rejected = self._validate(offset, value, key, kafka_ts, timestamp_type)
        except RegistryStale:
            # the gate changed nothing: the record is taken again once the registry
            # has been read past it (ADR 0027)
            self.range_first, self.opened_at, self.next_offset = saved
            raise
        if len(self.pending) > before:
            self.event_records += 1
            return rejected
        self.dead_lettered += 1  # every offset is accounted for, whatever happened
        if not rejected:  # pragma: no cover - a batch record holds at least one event
            rejected = [Rejected(offset, value or b"", key, "EVENT_EMPTY", "no event", "$")]
        return rejected

    def accept_gap(self, upto: int) -> None:
        """Offsets ``next_offset .. upto-1`` do not exist in Kafka (e.g. compaction)."""
        assert self.next_offset is not None
        if self.range_first is None:
            self.range_first = self.next_offset
        self.absent += upto - self.next_offset
        self.next_offset = upto

    def _validate(
        self,
        offset: int,
        value: bytes | None,
        key: bytes | None,
        kafka_ts: float = 0.0,
        timestamp_type: int = LOG_APPEND_TIME,
    ) -> list[Rejected]:
        raw = value if value is not None else b""
        if value is None:
            return [Rejected(offset, raw, key, "EVENT_EMPTY", "message has no value", "$")]
        gate = self.gate if self.kind.signed else None
        if gate is not None and looks_batch(value):
            return self._admit_batch(gate, offset, value, key, kafka_ts, timestamp_type)
        limit = self.kind.max_bytes or self.max_event_bytes  # raw records are larger
        if len(value) > limit:
            return [
                Rejected(
                    offset,
                    raw,
                    key,
                    "EVENT_TOO_LARGE",
                    f"message of {len(value)} bytes exceeds the limit of {limit}",
                    "$",
                )
            ]
        if gate is not None:
            return self._admit(gate, offset, value, key, kafka_ts, timestamp_type)
        if self.kind is SEALED_REFERENCE or self.kind is SEALED_RAW:
            return self._take_sealed(offset, value, key)
        try:
            record, canonical = self.kind.decode(value)
        except ValidationError as exc:
            return [Rejected(offset, raw, key, exc.code, str(exc), getattr(exc, "field", "$"))]
        self.pending.append(ChainedEvent(offset, record, canonical, leaf_hash(canonical)))
        return []

    def _take_sealed(self, offset: int, value: bytes, key: bytes | None) -> list[Rejected]:
        """A record of a sealed ledger's reference or raw chain (ADR 0037): opened and
        given its sealed document by the gate's sealer of its kind; refused with its
        reason if it does not open, or names someone in clear."""
        gate = self.gate
        raw = self.kind is SEALED_RAW
        sealer = None if gate is None else (gate.raw_sealer if raw else gate.reference_sealer)
        if sealer is None:
            code = "RAW_NOT_SEALED" if raw else "REFERENCE_NOT_SEALED"
            reason = "this processor has no sealer for it: it cannot chain a sealed ledger"
            return [Rejected(offset, value, key, code, reason, "$")]
        try:
            record, canonical = sealer.take(value)
        except (ValidationError, SealError) as exc:
            return [Rejected(offset, value, key, exc.code, str(exc), getattr(exc, "field", "$"))]
        self.pending.append(ChainedEvent(offset, record, canonical, leaf_hash(canonical)))
        return []

    def _admit(
        self,
        gate: SourceGate,
        offset: int,
        value: bytes,
        key: bytes | None,
        kafka_ts: float,
        timestamp_type: int,
    ) -> list[Rejected]:
        try:
            a = gate.admit(value, kafka_ts, (self.chain_id, offset), timestamp_type)
        except ValidationError as exc:
            return [Rejected(offset, value, key, exc.code, str(exc), getattr(exc, "field", "$"))]
        except SourceAuthError as exc:
            return [self._quarantine(gate, offset, value, key, exc)]
        self.pending.append(ChainedEvent(offset, a.event, a.canonical, a.leaf_hash, a.attestation))
        if a.appended_at is not None:
            self._appended(a.appended_at)
        return []

    def _admit_batch(
        self,
        gate: SourceGate,
        offset: int,
        value: bytes,
        key: bytes | None,
        kafka_ts: float,
        timestamp_type: int,
    ) -> list[Rejected]:
        """A batch record (ADR 0020): its events into the open block, all at once."""
        limit = self.max_batch_record_bytes
        if len(value) > limit:
            return [
                Rejected(
                    offset,
                    value,
                    key,
                    "BATCH_TOO_LARGE",
                    f"batch record of {len(value)} bytes exceeds the limit of {limit}",
                    "$",
                )
            ]
        try:
            a: AdmittedBatch = gate.admit_batch(
                value,
                kafka_ts,
                (self.chain_id, offset),
                timestamp_type,
                max_event_bytes=self.max_event_bytes,
            )
        except ValidationError as exc:
            return [Rejected(offset, value, key, exc.code, str(exc), getattr(exc, "field", "$"))]
        except SourceAuthError as exc:
            return [self._quarantine(gate, offset, value, key, exc)]
        if a.events:
            self.pending += a.events
            self.batch_records += 1
            self._appended(a.appended_at)
        st = a.statement
        return [
            Rejected(
                offset,
                r.value,
                key,
                r.code,
                r.reason,
                r.field,
                claim=(
                    ("epoch", st.epoch),
                    ("first_seq", str(st.first_seq)),
                    ("seq", str(st.first_seq + r.index)),
                    ("source_id", st.source_id),
                ),
                batch_index=r.index,
            )
            for r in a.refused
        ]

    @staticmethod
    def _quarantine(
        gate: SourceGate, offset: int, value: bytes, key: bytes | None, exc: SourceAuthError
    ) -> Rejected:
        gate.quarantined += 1
        claim = tuple(sorted((k, str(v)) for k, v in exc.details.items()))
        return Rejected(offset, value, key, exc.code, exc.message, "$", True, claim)

    def _appended(self, at: float) -> None:
        if self.append_min is None or at < self.append_min:
            self.append_min = at
        if self.append_max is None or at > self.append_max:
            self.append_max = at

    def seal(self, key: SigningKey, now: float) -> SealedBlock | None:
        """Close the open range into a signed block (None if the range is empty)."""
        if self.range_first is None or self.next_offset is None or self.open_records == 0:
            return None
        events = self.pending
        created_at = utc_timestamp(now)
        if events:
            time_of = self.kind.time_of
            times = [time_of(e.event) for e in events]
            first_time, last_time = min(times), max(times)
        else:  # a range of dead-lettered records only
            first_time = last_time = created_at
        header = BlockHeader(
            chain_id=self.chain_id,
            height=self.height,
            prev_hash=self.prev_hash,
            merkle_root=merkle_root([e.leaf_hash for e in events]).hex(),
            event_count=len(events),
            first_offset=self.range_first,
            last_offset=self.next_offset - 1,
            dead_lettered=self.dead_lettered,
            absent_offsets=self.absent,
            first_event_time=first_time,
            last_event_time=last_time,
            created_at=created_at,
            key_id=key.key_id,
            # which offsets of the range are the events (ADR 0014)
            event_offsets=offsets_digest(e.offset for e in events),
            # when the broker appended the attested events: their keys' status was
            # decided then (ADR 0015)
            first_append_time=None if self.append_min is None else timestamp_of(self.append_min),
            last_append_time=None if self.append_max is None else timestamp_of(self.append_max),
            # records, not events, when batch records share offsets (ADR 0020)
            event_records=self.event_records if self.batch_records else None,
        )
        hb = header_bytes(header)
        digest = block_hash(header)
        block = SealedBlock(header, hb, digest, key.sign_header(header), events)
        if self.tree is not None and self.tree.size == self.height:
            self.tree = self.tree.append(block_leaf_hash(digest))
        else:
            self.tree = None
        self.height += 1
        self.prev_hash = digest.hex()
        self.range_first = None
        self.pending = []
        self.dead_lettered = 0
        self.absent = 0
        self.opened_at = None
        self.append_min = self.append_max = None
        self.event_records = self.batch_records = 0
        return block

    def due(self, now: float, max_events: int, max_age_s: float) -> bool:
        if self.opened_at is None:
            return False
        return len(self.pending) >= max_events or (now - self.opened_at) >= max_age_s
