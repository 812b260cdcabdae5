"""``careledger replica``: the blocks topic into the replica's own database, verified.

One ``Replicator`` reads every partition of ``Settings.topic_blocks`` (assigned, not
subscribed: every replica reads everything; its consumer group
``careledger-replica-<database>`` only holds its committed offsets), and for each record:

1. decodes it as a block part (``careledger.storage.block_records``) and assembles the
   parts of a block (they arrive one after another in one partition; a block whose parts
   are interrupted by another block's is refused as ``BLOCK_INCOMPLETE``: the processor
   publishes it whole again after a crash);
2. verifies the block's bytes (``replica.verify.verify_material``);
3. places it: the next height of its chain and linked to the replica's head -> stored;
   a height the replica holds with the same block hash -> a duplicate (publication is
   at least once), skipped; with another hash -> ``HEIGHT_FORK``; a height above the
   next one -> held in memory until the blocks below arrive (at most ``MAX_HELD``,
   beyond that ``HEIGHT_GAP``).

Anything refused is recorded in ``replica_refused`` with its bytes, its topic position,
the code and the reason; never dropped silently.

Exactly once across restarts, with the replica's store as the only state: after each
batch the accepted blocks are written (all event rows, then all headers, like the
processor, ADR 0003), the refusals recorded, and only then the offsets committed, below
any part still held. A crash anywhere re-reads records the store already holds (skipped
as duplicates), and event rows a crash left without a header are deleted when the
replicator starts (``ChainStore.discard_uncommitted``).

``catch_up`` (``careledger replica catch-up``) stops once it has read every partition up
to the end it saw when it started; ``follow`` runs until stopped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.kafka.clients import kafka_config
from careledger.kafka.offsets import watermark_offsets
from careledger.kafka.security import REPLICA
from careledger.storage.block_records import (
    BlockMaterial,
    BlockPart,
    BlockRecordError,
    WireRecord,
    decode_part,
)
from careledger.storage.store import ChainHead, ChainStore, SealedBlock
from careledger_core.errors import InfrastructureError
from careledger_core.signing import TrustedKeys
from replica.verify import Refused, check_link, verify_material

__all__ = [
    "MAX_HELD",
    "RefusedRecord",
    "ReplicaSourceError",
    "Replicator",
    "RunStats",
    "refused_records",
]

log = logging.getLogger("careledger.replica")

#: verified blocks held above a gap, over all chains, before more are refused
MAX_HELD: Final = 1000
#: catch-up: how long to wait for the rest of a block begun before the end
_IDLE_END_S: Final = 5.0
#: event rows written per insert
_WRITE_EVENTS: Final = 20_000


class ReplicaSourceError(InfrastructureError):
    """The blocks topic cannot be read (missing, Kafka unreachable)."""

    code = "BLOCKS_TOPIC_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Position:
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class RefusedRecord:
    """One blocks-topic record the replica did not take."""

    position: Position
    chain_id: str
    height: int  # -1 when unknown
    block_hash: str
    code: str
    reason: str
    value: bytes


@dataclass
class _Assembly:
    """The parts of one block read so far (one partition)."""

    first: BlockPart
    parts: dict[int, tuple[BlockPart, bytes, Position]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, str, int]:
        p = self.first
        return (p.chain_id, p.height, p.block_hash, p.parts)

    @property
    def positions(self) -> list[Position]:
        return [where for _, _, where in self.parts.values()]

    @property
    def lowest(self) -> int:
        return min(where.offset for where in self.positions)


@dataclass
class _Held:
    block: SealedBlock
    assembly: _Assembly


@dataclass
class RunStats:
    """What a run did (cumulative)."""

    records: int = 0
    stored: int = 0
    stored_events: int = 0
    duplicates: int = 0
    refused: int = 0
    #: partition -> log-start offset of the blocks topic, where above 0 (records deleted
    #: or expired: the topic must keep everything)
    log_start: dict[int, int] = field(default_factory=dict)
    #: seconds from each stored block's signed ``created_at`` to its replica write
    lags: list[float] = field(default_factory=list)

    def lag(self, q: float) -> float | None:
        if not self.lags:
            return None
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "blocks_stored": self.stored,
            "events_stored": self.stored_events,
            "duplicates": self.duplicates,
            "refused": self.refused,
            "blocks_topic_log_start": {str(p): o for p, o in sorted(self.log_start.items())},
            "lag_p50_s": _round(self.lag(0.5)),
            "lag_p99_s": _round(self.lag(0.99)),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _created(block: SealedBlock) -> float:
    text = block.header.created_at
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


class Replicator:
    """Blocks topic -> replica store; see the module doc."""

    def __init__(
        self,
        settings: Any,
        store: ChainStore,
        keys: TrustedKeys,
        consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.topic: str = settings.topic_blocks
        self.group = f"careledger-replica-{store.db}"
        self._consumer_factory = consumer_factory
        self.last_loop_at = time.monotonic()  # the follow loop last turned
        self.stats = RunStats()
        self._heads: dict[str, ChainHead | None] = {}
        self._assembling: dict[int, _Assembly] = {}
        self._held: dict[str, dict[int, _Held]] = {}
        self._next: dict[int, int] = {}  # partition -> next offset to read
        self._committed: dict[int, int] = {}  # partition -> offset committed last
        self._accepted: list[SealedBlock] = []
        self._refused: list[RefusedRecord] = []

    # ------------------------------------------------------------------ setup
    def _consumer(self) -> Any:
        config = kafka_config(
            self.settings,
            REPLICA,
            {
                "group.id": self.group,
                "client.id": "careledger-replica",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "allow.auto.create.topics": False,
                "enable.partition.eof": False,
            },
        )
        if self._consumer_factory is not None:
            return self._consumer_factory(config)
        from confluent_kafka import Consumer

        return Consumer(config)

    def _start(self, consumer: Any) -> dict[int, int]:
        """Repair the store after a crash, then assign every partition from the group's
        committed offset (the beginning, the first time). Returns each partition's end
        (high watermark) now."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        for chain in self.store.chain_ids():
            head = self.store.head(chain)
            removed = self.store.discard_uncommitted(chain, None if head is None else head.height)
            if removed:
                log.warning(
                    "chain %s: deleted %d uncommitted rows of an interrupted write", chain, removed
                )
        metadata = consumer.list_topics(self.topic, timeout=10)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise ReplicaSourceError(
                f"the blocks topic {self.topic} cannot be read: "
                f"{getattr(topic, 'error', 'missing')}"
            )
        partitions = sorted(topic.partitions)
        deadline = time.monotonic() + 30
        ends: dict[int, int] = {}
        for p in partitions:
            low, ends[p] = watermark_offsets(consumer, TopicPartition(self.topic, p), deadline)
            if low > 0:
                self.stats.log_start[p] = low
                log.error(
                    "the blocks topic %s lost records: partition %d starts at offset %d",
                    self.topic,
                    p,
                    low,
                )
        committed = consumer.committed(
            [TopicPartition(self.topic, p) for p in partitions], timeout=10
        )
        assign = []
        for tp in committed:
            start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            assign.append(TopicPartition(self.topic, tp.partition, start))
            self._next[tp.partition] = max(tp.offset, self.stats.log_start.get(tp.partition, 0))
        consumer.assign(assign)
        self._committed = {}
        self._heads.clear()
        self._assembling.clear()
        self._held.clear()
        return ends

    # ------------------------------------------------------------------ loop
    def run(self, *, once: bool, should_stop: Callable[[], bool] = lambda: False) -> RunStats:
        """Replicate until stopped (``once``: until the ends seen at the start are read).
        Raises ``StorageError`` or ``ReplicaSourceError`` on infrastructure trouble."""
        from confluent_kafka import KafkaException

        consumer = self._consumer()
        try:
            return self._loop(consumer, once, should_stop)
        except KafkaException as exc:
            raise ReplicaSourceError(f"cannot read the blocks topic {self.topic}: {exc}") from exc
        finally:
            consumer.close()

    def _loop(self, consumer: Any, once: bool, should_stop: Callable[[], bool]) -> RunStats:
        ends = self._start(consumer)
        log.info(
            "replica %s following %s from offsets %s",
            self.store.db,
            self.topic,
            dict(sorted(self._next.items())),
        )
        last_report = last_message = time.monotonic()
        while not should_stop():
            self.last_loop_at = time.monotonic()
            if once and self._caught_up(ends, time.monotonic() - last_message):
                break
            # returns as soon as 500 records are there, else after the timeout: short,
            # as it is the replica's lag when blocks come one by one
            messages = consumer.consume(num_messages=500, timeout=0.1)
            if messages:
                last_message = time.monotonic()
            for msg in messages:
                if msg.error() is not None:
                    log.warning("blocks topic: %s", msg.error())
                    continue
                self._take(Position(msg.partition(), msg.offset()), msg.value())
            self._flush(consumer)
            if not once and time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                log.info("replica %s: %s", self.store.db, self.stats.to_json())
        return self.stats

    def _caught_up(self, ends: dict[int, int], idle_s: float) -> bool:
        """Every partition read up to its end at the start, and no block begun before
        that end still waiting for parts (unless nothing came for ``_IDLE_END_S``: such
        a block is then left unread, for the next run)."""
        if not all(self._next.get(p, 0) >= end for p, end in ends.items()):
            return False
        started_before_end = any(a.lowest < ends.get(p, 0) for p, a in self._assembling.items())
        return not started_before_end or idle_s >= _IDLE_END_S

    @property
    def held(self) -> int:
        return sum(len(h) for h in self._held.values())

    # ------------------------------------------------------------------ records
    def _take(self, where: Position, value: bytes | None) -> None:
        self.stats.records += 1
        self._next[where.partition] = where.offset + 1
        try:
            part = decode_part(value)
        except BlockRecordError as exc:
            self._refuse_record(where, value or b"", "BLOCK_RECORD_MALFORMED", str(exc))
            return
        current = self._assembling.get(where.partition)
        key = (part.chain_id, part.height, part.block_hash, part.parts)
        if current is not None and current.key != key:
            del self._assembling[where.partition]
            self._refuse_assembly(
                current, "BLOCK_INCOMPLETE", "parts missing: another block followed"
            )
            current = None
        if current is None:
            current = self._assembling[where.partition] = _Assembly(part)
        held = current.parts.get(part.part)
        if held is not None:
            if held[1] != value:
                self._refuse_record(
                    where,
                    value or b"",
                    "BLOCK_PART_CONFLICT",
                    f"part {part.part} of {part.chain_id} height {part.height} "
                    "differs from the one read before",
                )
            return  # the same part again
        current.parts[part.part] = (part, value or b"", where)
        if len(current.parts) < part.parts:
            return
        del self._assembling[where.partition]
        self._complete(current)

    def _complete(self, a: _Assembly) -> None:
        ordered = [a.parts[i][0] for i in range(a.first.parts)]
        records: list[WireRecord] = []
        for p in ordered:
            if (p.header, p.signature, p.first_index) != (
                ordered[0].header,
                ordered[0].signature,
                len(records),
            ):
                self._refuse_assembly(a, "BLOCK_PART_CONFLICT", "the parts do not belong together")
                return
            records.extend(p.records)
        first = ordered[0]
        material = BlockMaterial(
            first.chain_id,
            first.height,
            first.block_hash,
            bytes(first.header),
            first.signature,
            tuple(records),
        )
        try:
            block = verify_material(material, self.store.kind_of(first.chain_id), self.keys)
        except Refused as exc:
            self._refuse_assembly(a, exc.code, exc.reason)
            return
        self._place(block, a)

    def _head(self, chain: str) -> ChainHead | None:
        if chain not in self._heads:
            self._heads[chain] = self.store.head(chain)
        return self._heads[chain]

    def _stored_hashes(self, chain: str, height: int) -> set[str]:
        for block in self._accepted:
            if block.header.chain_id == chain and block.header.height == height:
                return {block.block_hash.hex()}
        rows = self.store.backend.execute(
            f"SELECT block_hash FROM {self.store.db}.blocks "
            "WHERE chain_id = %(c)s AND height = %(h)s",
            {"c": chain, "h": height},
        )
        return {
            r[0].decode("utf-8", "replace") if isinstance(r[0], bytes) else str(r[0]) for r in rows
        }

    def _place(self, block: SealedBlock, a: _Assembly) -> None:
        h = block.header
        chain = h.chain_id
        head = self._head(chain)
        top = -1 if head is None else head.height
        if h.height <= top:
            if block.block_hash.hex() in self._stored_hashes(chain, h.height):
                self.stats.duplicates += 1
                return
            self._refuse_assembly(
                a, "HEIGHT_FORK", f"{chain} height {h.height}: not the block the replica holds"
            )
            return
        if h.height > top + 1:
            held = self._held.setdefault(chain, {})
            if h.height in held or self.held >= MAX_HELD:
                self._refuse_assembly(
                    a,
                    "HEIGHT_GAP",
                    f"{chain} height {h.height} arrived while the replica's head is {top}",
                )
                return
            held[h.height] = _Held(block, a)
            return
        try:
            check_link(block, head)
        except Refused as exc:
            self._refuse_assembly(a, exc.code, exc.reason)
            return
        self._accepted.append(block)
        self._heads[chain] = ChainHead(chain, h.height, block.block_hash.hex(), h.last_offset)
        # the blocks held above it, as far as they now follow one another
        waiting = self._held.get(chain, {})
        while True:
            current = self._heads[chain]
            following = None if current is None else waiting.pop(current.height + 1, None)
            if following is None:
                break
            try:
                check_link(following.block, current)
            except Refused as exc:
                self._refuse_assembly(following.assembly, exc.code, exc.reason)
                break
            f = following.block.header
            self._accepted.append(following.block)
            self._heads[chain] = ChainHead(
                chain, f.height, following.block.block_hash.hex(), f.last_offset
            )
        if not waiting:
            self._held.pop(chain, None)

    # ------------------------------------------------------------------ refusals
    def _refuse_record(
        self,
        where: Position,
        value: bytes,
        code: str,
        reason: str,
        chain: str = "",
        height: int = -1,
        block_hash: str = "",
    ) -> None:
        self.stats.refused += 1
        log.error(
            "refused blocks-topic record %s/%d@%d: %s %s",
            self.topic,
            where.partition,
            where.offset,
            code,
            reason,
        )
        self._refused.append(RefusedRecord(where, chain, height, block_hash, code, reason, value))

    def _refuse_assembly(self, a: _Assembly, code: str, reason: str) -> None:
        p = a.first
        for _part, value, where in a.parts.values():
            self._refuse_record(where, value, code, reason, p.chain_id, p.height, p.block_hash)

    # ------------------------------------------------------------------ writes
    def _flush(self, consumer: Any) -> None:
        """Store the accepted blocks, record the refusals, then commit the offsets."""
        from confluent_kafka import TopicPartition

        if self._accepted:
            batch: list[SealedBlock] = []
            size = 0
            for block in self._accepted:
                batch.append(block)
                size += len(block.events)
                if size >= _WRITE_EVENTS:
                    self._write(batch)
                    batch, size = [], 0
            if batch:
                self._write(batch)
            self._accepted = []
        if self._refused:
            self._record_refused(self._refused)
            self._refused = []
        held_low: dict[int, int] = {}
        for a in self._assembling.values():
            p = a.positions[0].partition
            held_low[p] = min(held_low.get(p, a.lowest), a.lowest)
        for chain_held in self._held.values():
            for item in chain_held.values():
                for where in item.assembly.positions:
                    held_low[where.partition] = min(
                        held_low.get(where.partition, where.offset), where.offset
                    )
        commit = {p: min(nxt, held_low.get(p, nxt)) for p, nxt in sorted(self._next.items())}
        if commit and commit != self._committed:
            consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in commit.items()],
                asynchronous=False,
            )
            self._committed = commit

    def _write(self, blocks: list[SealedBlock]) -> None:
        self.store.write_blocks(blocks)
        now = time.time()
        for block in blocks:
            self.stats.stored += 1
            self.stats.stored_events += len(block.events)
            self.stats.lags.append(max(0.0, now - _created(block)))
        if len(self.stats.lags) > 200_000:
            del self.stats.lags[:100_000]

    def _record_refused(self, refused: list[RefusedRecord]) -> None:
        rows = []
        for r in refused:
            exists = self.store.backend.execute(
                f"SELECT count() FROM {self.store.db}.replica_refused "
                "WHERE topic = %(t)s AND kafka_partition = %(p)s AND kafka_offset = %(o)s",
                {"t": self.topic, "p": r.position.partition, "o": r.position.offset},
            )
            if exists and int(exists[0][0]) > 0:
                continue  # read again after a restart: recorded already
            rows.append(
                (
                    self.topic,
                    r.position.partition,
                    r.position.offset,
                    r.chain_id,
                    r.height,
                    r.block_hash,
                    r.code,
                    r.reason,
                    hashlib.sha256(r.value).hexdigest(),
                    r.value,
                )
            )
        self.store.backend.insert(
            f"{self.store.db}.replica_refused",
            (
                "topic",
                "kafka_partition",
                "kafka_offset",
                "chain_id",
                "height",
                "block_hash",
                "code",
                "reason",
                "record_sha256",
                "record",
            ),
            rows,
        )


def refused_records(store: ChainStore) -> list[dict[str, Any]]:
    """What the replica refused, in topic order: where, chain, height, block hash, code,
    reason and the SHA-256 of the record (never its bytes: they may hold patient data)."""
    rows = store.backend.execute(
        "SELECT toString(refused_at), topic, kafka_partition, kafka_offset, chain_id, "
        f"height, block_hash, code, reason, record_sha256 FROM {store.db}.replica_refused "
        "ORDER BY topic, kafka_partition, kafka_offset"
    )
    keys = ("refused_at", "topic", "partition", "offset", "chain_id", "height", "block_hash")
    keys_all = (*keys, "code", "reason", "record_sha256")
    return [
        {
            k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for k, v in zip(keys_all, r, strict=True)
        }
        for r in rows
    ]
