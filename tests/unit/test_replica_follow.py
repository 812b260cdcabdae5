"""The replicator over a real store (current ClickHouse through chDB) and an in-memory
blocks topic that behaves like Kafka's (offsets per partition, committed offsets per
group). ClickHouse 18.16 and the real broker: tests/integration/test_replica.py.

What the topic carries is attacked first: forged, malformed, forked, incomplete,
out-of-order and repeated records, and crashes at every step of a write (event rows
written and no header; rows written and no commit). The replica must end up holding
exactly the primary's rows, everything refused recorded with its bytes.
"""

from __future__ import annotations

import hashlib
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from careledger.config import Settings
from careledger.storage.backend import ChdbBackend, StorageError
from careledger.storage.block_records import encode_block, encode_material, published_height
from careledger.storage.compare import compare
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.block import block_hash, header_bytes
from careledger_core.signing import SigningKey
from processors.replication import publish_stored, republish_unpublished
from replica.follow import Replicator, refused_records
from tests.ledger_builder import (
    ACCESS_CHAIN,
    PROCESSOR,
    REFERENCE_CHAIN,
    TRUSTED,
    StoreLedger,
    mixed_ledger,
)

TOPIC = Settings().topic_blocks
ATTACKER = SigningKey.from_seed(hashlib.sha256(b"replica follow attacker").digest())


@dataclass
class _Msg:
    _partition: int
    _offset: int
    _value: bytes

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


@dataclass
class Topic:
    """An in-memory topic of ``partitions`` partitions and one group's commits."""

    partitions: int = 2
    logs: dict[int, list[bytes]] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)
    fail_commits: int = 0  # the next n commits fail (a crash before the commit)

    def __post_init__(self) -> None:
        self.logs = {p: [] for p in range(self.partitions)}

    def produce(self, key: str, value: bytes) -> tuple[int, int]:
        p = zlib.crc32(key.encode()) % self.partitions
        self.logs[p].append(value)
        return p, len(self.logs[p]) - 1

    def publish(self, blocks: list[SealedBlock], max_part_bytes: int = 1 << 20) -> None:
        for block in blocks:
            for value in encode_block(block, max_part_bytes):
                self.produce(block.header.chain_id, value)

    def consumer(self, _config: dict[str, Any]) -> Consumer:
        return Consumer(self)


class Consumer:
    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.positions: dict[int, int] = {}

    def list_topics(self, name: str, timeout: float) -> Any:
        meta = type("T", (), {"partitions": dict.fromkeys(self.topic.logs), "error": None})
        return type("M", (), {"topics": {TOPIC: meta}})

    def get_watermark_offsets(self, tp: TopicPartition, **_: Any) -> tuple[int, int]:
        return 0, len(self.topic.logs[tp.partition])

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [
            TopicPartition(TOPIC, tp.partition, self.topic.committed.get(tp.partition, -1001))
            for tp in tps
        ]

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = {
            tp.partition: 0 if tp.offset == OFFSET_BEGINNING else tp.offset for tp in tps
        }

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        out: list[_Msg] = []
        for p, log in sorted(self.topic.logs.items()):
            while self.positions[p] < len(log) and len(out) < num_messages:
                out.append(_Msg(p, self.positions[p], log[self.positions[p]]))
                self.positions[p] += 1
        return out

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        if self.topic.fail_commits:
            self.topic.fail_commits -= 1
            raise StorageError("injected: the replicator died before committing")
        for tp in offsets:
            self.topic.committed[tp.partition] = tp.offset

    def close(self) -> None:
        pass


class Stores:
    def __init__(self) -> None:
        self.backend = ChdbBackend()
        tag = uuid.uuid4().hex[:8]
        self.primary = self._store(f"careledger_rp_{tag}")
        self.replica = self._store(f"careledger_rr_{tag}")

    def _store(self, db: str) -> ChainStore:
        migrate_backend(self.backend, db)
        return ChainStore.for_settings(self.backend, Settings(clickhouse_database=db))

    def close(self) -> None:
        for store in (self.primary, self.replica):
            self.backend.execute(f"DROP DATABASE IF EXISTS {store.db}")
        self.backend.close()

    def replicate(self, topic: Topic, store: ChainStore | None = None) -> Replicator:
        r = Replicator(Settings(), store or self.replica, TRUSTED, consumer_factory=topic.consumer)
        r.run(once=True)
        return r

    def refused(self) -> list[tuple[str, int, int]]:
        rows = self.backend.execute(
            f"SELECT code, kafka_partition, kafka_offset FROM {self.replica.db}.replica_refused "
            "ORDER BY kafka_partition, kafka_offset"
        )
        return [(r[0].decode(), int(r[1]), int(r[2])) for r in rows]

    def block_rows(self) -> int:
        rows = self.backend.execute(f"SELECT count() FROM {self.replica.db}.blocks")
        return int(rows[0][0])


@pytest.fixture(scope="module")
def ledger() -> dict[str, list[SealedBlock]]:
    return mixed_ledger()


@pytest.fixture
def stores(ledger: dict[str, list[SealedBlock]]) -> Iterator[Stores]:
    s = Stores()
    for blocks in ledger.values():
        s.primary.write_blocks(blocks)
    try:
        yield s
    finally:
        s.close()


def all_blocks(ledger: dict[str, list[SealedBlock]]) -> list[SealedBlock]:
    return [b for blocks in ledger.values() for b in blocks]


def forged(block: SealedBlock, key: SigningKey) -> SealedBlock:
    header = msgspec.structs.replace(block.header, key_id=key.key_id)
    return SealedBlock(
        header, header_bytes(header), block_hash(header), key.sign_header(header), block.events
    )


def test_the_replica_holds_exactly_the_primarys_rows(
    stores: Stores, ledger: dict[str, list[SealedBlock]]
) -> None:
    topic = Topic()
    topic.publish(all_blocks(ledger), max_part_bytes=600)  # blocks split in parts
    r = stores.replicate(topic)
    assert r.stats.stored == len(all_blocks(ledger)) and r.stats.refused == 0
    assert compare(stores.primary, stores.replica).total == 0
    # offsets committed to the end: a second run reads nothing new
    assert topic.committed == {p: len(log) for p, log in topic.logs.items()}


def test_a_forged_block_in_the_topic_is_refused_recorded_and_the_genuine_one_kept(
    stores: Stores, ledger: dict[str, list[SealedBlock]]
) -> None:
    topic = Topic(partitions=1)
    genuine = ledger[ACCESS_CHAIN]
    topic.publish(genuine[:1])
    topic.publish([forged(genuine[1], ATTACKER)])  # the attacker's block 1 comes first
    topic.produce(ACCESS_CHAIN, b"garbage")
    topic.publish(genuine[1:])
    r = stores.replicate(topic)
    assert stores.refused() == [("KEY_UNKNOWN", 0, 1), ("BLOCK_RECORD_MALFORMED", 0, 2)]
    assert r.stats.refused == 2 and r.stats.stored == len(genuine)
    assert compare(stores.primary, stores.replica, [ACCESS_CHAIN]).total == 0
    # the refused records are kept with their bytes
    [[record]] = stores.backend.execute(
        f"SELECT record FROM {stores.replica.db}.replica_refused WHERE kafka_offset = 2"
    )
    assert record == b"garbage"


def test_a_second_block_at_a_stored_height_is_a_fork_and_a_repeat_is_a_duplicate(
    stores: Stores, ledger: dict[str, list[SealedBlock]]
) -> None:
    topic = Topic(partitions=1)
    genuine = ledger[ACCESS_CHAIN]
    topic.publish(genuine)
    topic.publish(genuine[1:2])  # published again (a crash before the publication mark)
    # the processor key holder's other block at height 1 (another created_at)
    header = msgspec.structs.replace(genuine[1].header, created_at="2030-01-01T00:00:00.000000Z")
    other = SealedBlock(
        header,
        header_bytes(header),
        block_hash(header),
        PROCESSOR.sign_header(header),
        genuine[1].events,
    )
    topic.publish([other])
    r = stores.replicate(topic)
    assert r.stats.duplicates == 1
    assert [c for c, _, _ in stores.refused()] == ["HEIGHT_FORK"]
    assert compare(stores.primary, stores.replica, [ACCESS_CHAIN]).total == 0


def test_blocks_out_of_order_wait_for_the_gap_and_are_stored_in_order(
    stores: Stores, ledger: dict[str, list[SealedBlock]]
) -> None:
    topic = Topic(partitions=1)
    b0, b1, b2 = ledger[ACCESS_CHAIN]
    topic.publish([b0, b2])
    r = stores.replicate(topic)
    assert r.held == 1 and r.stats.stored == 1
    assert topic.committed == {0: 1}, "never commit past a held block"
    topic.publish([b1])
    r = stores.replicate(topic)  # re-reads b2 (not committed), then b1 fills the gap
    assert r.held == 0 and r.stats.refused == 0
    assert compare(stores.primary, stores.replica, [ACCESS_CHAIN]).total == 0


def test_a_block_whose_parts_are_interrupted_is_refused_and_comes_whole_later(
    stores: Stores, ledger: dict[str, list[SealedBlock]]
) -> None:
    topic = Topic(partitions=1)
    b0, b1, b2 = ledger[ACCESS_CHAIN]
    other = ledger[REFERENCE_CHAIN][0]
    parts = encode_block(b1, max_part_bytes=1)
    topic.publish([b0])
    topic.produce(ACCESS_CHAIN, parts[0])  # a crash after the first part ...
    topic.publish([other])  # ... another chain's block in the same partition
    topic.produce(ACCESS_CHAIN, parts[0])  # the processor publishes it again, whole
    topic.produce(ACCESS_CHAIN, parts[0])  # (a part read twice is the same part)
    for value in parts[1:]:
        topic.produce(ACCESS_CHAIN, value)
    topic.publish([b2], max_part_bytes=1)
    r = stores.replicate(topic)
    assert stores.refused() == [("BLOCK_INCOMPLETE", 0, 1)]
    assert r.stats.stored == 4
    assert compare(stores.primary, stores.replica, [ACCESS_CHAIN]).total == 0


class CrashingStore(ChainStore):
    """Writes the event rows of a batch, then dies before the headers (once)."""

    crashes = 1

    def write_blocks(self, blocks: Any, *, owner: str | None = None) -> set[str]:
        if self.crashes:
            self.crashes -= 1
            kind = self.kind_of(blocks[0].header.chain_id)
            from careledger.storage.store import event_rows, row_columns

            self.backend.insert(
                f"{self.db}.{kind.table}", row_columns(kind), event_rows(blocks[:1], kind)
            )
            raise StorageError("injected: the replica died between event rows and header")
        return super().write_blocks(blocks, owner=owner)


def test_a_crash_at_any_step_loses_nothing_and_duplicates_nothing(
    stores: Stores, ledger: dict[str, list[SealedBlock]]
) -> None:
    topic = Topic()
    topic.publish(all_blocks(ledger))
    crashing = CrashingStore.for_settings(
        stores.backend, Settings(clickhouse_database=stores.replica.db)
    )
    assert isinstance(crashing, CrashingStore)
    with pytest.raises(StorageError):
        stores.replicate(topic, crashing)  # event rows written, no header
    assert stores.block_rows() == 0 and topic.committed == {}
    topic.fail_commits = 1
    with pytest.raises(StorageError):
        stores.replicate(topic)  # everything written, offsets not committed
    assert stores.block_rows() == len(all_blocks(ledger)) and topic.committed == {}
    r = stores.replicate(topic)  # everything read again
    assert r.stats.stored == 0 and r.stats.duplicates == len(all_blocks(ledger))
    assert compare(stores.primary, stores.replica).total == 0
    assert stores.refused() == []


class TopicOutputs:
    """The processor's ``publish_blocks`` onto the in-memory topic."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.published = 0

    def publish_blocks(self, blocks: list[Any]) -> None:
        for m in blocks:
            self.published += 1
            for value in encode_material(m):
                self.topic.produce(m.chain_id, value)


def test_what_was_stored_but_never_marked_published_is_published_when_a_chain_resumes(
    stores: Stores, ledger: dict[str, list[SealedBlock]]
) -> None:
    """``processors.replication`` on the current engine: blocks 0-1 published and marked,
    block 2 stored but the processor died before publishing it; resuming publishes
    block 2 only; with every mark lost it publishes the whole chain (duplicates)."""
    topic = Topic(partitions=1)
    outputs = TopicOutputs(topic)
    blocks = ledger[ACCESS_CHAIN]
    publish_stored(stores.primary, outputs, blocks[:2])
    assert published_height(stores.primary, ACCESS_CHAIN) == 1
    head = stores.primary.head(ACCESS_CHAIN)
    assert republish_unpublished(stores.primary, outputs, ACCESS_CHAIN, head) == 1
    assert published_height(stores.primary, ACCESS_CHAIN) == 2
    assert republish_unpublished(stores.primary, outputs, ACCESS_CHAIN, head) == 0
    r = stores.replicate(topic)
    assert r.stats.stored == 3 and r.stats.refused == 0
    assert compare(stores.primary, stores.replica, [ACCESS_CHAIN]).total == 0

    StoreLedger(stores.primary, sync_mutations=True).mutate(
        "ALTER TABLE {db}.block_publications DELETE WHERE chain_id = %(c)s", {"c": ACCESS_CHAIN}
    )
    assert published_height(stores.primary, ACCESS_CHAIN) is None
    assert republish_unpublished(stores.primary, outputs, ACCESS_CHAIN, head) == 3
    r = stores.replicate(topic)
    assert (r.stats.stored, r.stats.duplicates) == (0, 3)
    assert outputs.published == 2 + 1 + 3


def test_refused_records_are_listed_without_their_bytes(
    stores: Stores, ledger: dict[str, list[SealedBlock]]
) -> None:
    topic = Topic(partitions=1)
    topic.produce(ACCESS_CHAIN, b"secret patient bytes")
    stores.replicate(topic)
    [listed] = refused_records(stores.replica)
    assert listed["code"] == "BLOCK_RECORD_MALFORMED" and (
        listed["partition"],
        listed["offset"],
    ) == (0, 0)
    assert listed["record_sha256"] == hashlib.sha256(b"secret patient bytes").hexdigest()
    assert "secret" not in repr(listed)
