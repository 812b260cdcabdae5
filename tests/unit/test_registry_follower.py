"""The source registry read incrementally, off the event loop (issue 12, ADR 0027).

The attack: records naming unknown key ids, on a sources topic full of heartbeats. Each
used to make the processor re-read the whole topic on its event loop (every heartbeat
ever sent), so the cost of one lookup grew with the topic and stalled every partition.
Here the sources topic is an in-memory log that counts the records handed out.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.kafka.batching import heartbeat_record
from careledger.kafka.security import PROCESSOR
from careledger.storage.store import ChainStore
from careledger_core.errors import InfrastructureError
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes
from careledger_core.signing import SigningKey
from careledger_core.source import KeyEventStatement, sign_key_event
from processors.chainer import PartitionChain, Rejected
from processors.processor import Processor
from processors.records import Record
from processors.registry_follower import Keep, RegistryFollower
from processors.sources import CREATE_TIME, RegistryStale, SourceGate
from tests.unit.test_source_gate import (
    CHAIN,
    EHR,
    EPOCH,
    NOW,
    ROGUE,
    SIGNED_AT,
    payloads,  # noqa: F401  (fixture)
    registration,
    signed,
)

REGISTRAR = SigningKey.from_seed(b"\x07" * 32)


class Topic:
    """The sources topic: two partitions, counting every record handed to a reader."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[bytes | None]] = {0: [], 1: []}
        self.handed_out = 0
        self.held = 0  # the most records one read returned (held in memory)
        self.reads = 0
        self.down = False

    def append(self, value: bytes, partition: int = 0) -> None:
        self.partitions[partition].append(value)

    def read_from(
        self, start: Mapping[int, int], keep: Keep
    ) -> tuple[list[tuple[int, int, bytes | None]], dict[int, int]]:
        """``careledger.sources.reading.read_topic_from`` over this log."""
        if self.down:
            raise InfrastructureError("broker unreachable", code="KAFKA_UNAVAILABLE")
        self.reads += 1
        out = [
            (p, off, log[off])
            for p, log in self.partitions.items()
            for off in range(start.get(p, 0), len(log))
        ]
        self.handed_out += len(out)
        kept = [r for r in out if keep(*r)]
        self.held = max(self.held, len(kept))
        return kept, {p: len(log) for p, log in self.partitions.items()}


def key_record(statement: KeyEventStatement) -> bytes:
    from careledger.sources.publishing import _key_record

    statement = KeyEventStatement(
        source_id=statement.source_id,
        key_id=statement.key_id,
        public_key=statement.public_key,
        status=statement.status,
        valid_from=statement.valid_from,
        registrar_key_id=REGISTRAR.key_id,
    )
    record: ReferenceRecord = _key_record(statement, sign_key_event(REGISTRAR, statement), 1)
    return canonical_reference_bytes(record)


def heartbeats(n: int) -> list[bytes]:
    return [
        canonical_reference_bytes(
            heartbeat_record(
                EHR, source_id="ehr", epoch=EPOCH, beat=i + 1, last_seq=i, sent_at=SIGNED_AT
            )
        )
        for i in range(n)
    ]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def setup(
    topic: Topic, clock: Clock, wait_s: float = 5.0
) -> tuple[RegistryFollower, SourceGate, PartitionChain]:
    follower = RegistryFollower(
        topic.read_from,
        {REGISTRAR.key_id: REGISTRAR.public_key},
        min_interval_s=0.0,
        margin_s=0.0,
        clock=clock,
    )
    gate = SourceGate(
        require_signatures=True, load_registry=None, follower=follower, registry_wait_s=wait_s
    )
    assert gate.refresh(force=True)  # the processor's first read, before any record
    return follower, gate, PartitionChain(CHAIN, max_event_bytes=65536, next_offset=0, gate=gate)


def take(chain: PartitionChain, gate: SourceGate, offset: int, value: bytes, ts: float) -> str:
    """What ``Processor._take`` does, on this thread: the result code ("" = chained)."""
    try:
        bad: list[Rejected] = chain.take(offset, value, None, ts, 0.0)
    except RegistryStale as stale:
        gate.wait_for_registry(stale.appended_at)
        bad = chain.take(offset, value, None, ts, 0.0)
    return bad[0].code if bad else ""


def test_unknown_key_lookups_do_not_re_read_the_topic(payloads: list[bytes]) -> None:  # noqa: F811
    topic = Topic()
    topic.append(key_record(registration(EHR, "ehr")))
    for i, hb in enumerate(heartbeats(1000)):
        topic.append(hb, partition=i % 2)
    clock = Clock()
    follower, gate, chain = setup(topic, clock)
    assert topic.handed_out == 1001
    # bounded by the keys: no heartbeat is kept, none is even held during the read
    assert follower.heartbeats_skipped == 1000 and follower.key_events == 1
    assert topic.held == 0
    assert follower.offsets == {0: 501, 1: 500}

    rogue = signed(payloads[:1], key=ROGUE)[0]
    # appended before the registry was read: decided at once, nothing read at all
    for offset in range(50):
        assert take(chain, gate, offset, rogue, NOW - 1) == "UNKNOWN_KEY"
    assert topic.reads == 1 and topic.handed_out == 1001
    # appended after the last read: one incremental read each, of the new records only
    for offset in range(50, 100):
        clock.now += 1.0
        topic.append(heartbeats(1)[0])
        assert take(chain, gate, offset, rogue, clock.now - 0.5) == "UNKNOWN_KEY"
    assert topic.handed_out == 1001 + 50, "only the 50 new heartbeats were read"
    assert follower.key_events == 1


def test_a_stale_registry_never_reads_on_the_callers_thread(payloads: list[bytes]) -> None:  # noqa: F811
    topic = Topic()
    clock = Clock()
    _follower, _gate, chain = setup(topic, clock)
    reads = topic.reads
    with pytest.raises(RegistryStale):
        chain.take(0, signed(payloads[:1], key=ROGUE)[0], None, NOW + 1, 0.0)
    assert topic.reads == reads, "admit asked for a read, it did not do one"
    # the chain is untouched: the same offset is taken again
    assert chain.next_offset == 0 and chain.range_first is None and not chain.pending


def test_a_key_registered_later_is_found_after_a_refresh(payloads: list[bytes]) -> None:  # noqa: F811
    topic = Topic()
    topic.append(heartbeats(1)[0])
    clock = Clock()
    _follower, gate, chain = setup(topic, clock)
    records = signed(payloads[:3])
    assert take(chain, gate, 0, records[0], NOW - 5) == "UNKNOWN_KEY"  # before registering
    clock.now += 10
    topic.append(key_record(registration(EHR, "ehr")), partition=1)
    # appended after the registration, before the registry was read again
    assert take(chain, gate, 1, records[1], clock.now - 1) == ""
    assert take(chain, gate, 2, records[2], clock.now - 1) == ""
    assert topic.handed_out == 2 and len(chain.pending) == 2


def test_the_background_thread_reads_what_is_registered_meanwhile(
    payloads: list[bytes],  # noqa: F811
) -> None:
    topic = Topic()
    follower = RegistryFollower(
        topic.read_from,
        {REGISTRAR.key_id: REGISTRAR.public_key},
        poll_interval_s=60.0,  # only on request
        min_interval_s=0.05,
    )
    follower.poll()
    follower.start()
    try:
        topic.append(key_record(registration(EHR, "ehr")))
        appended = time.time()
        done: list[bool] = []
        waiter = threading.Thread(target=lambda: done.append(follower.wait_fresh(appended, 10)))
        waiter.start()
        waiter.join(15)
        assert done == [True]
        assert follower.registry.keys_of("ehr") == [EHR.key_id]
    finally:
        follower.stop()
    assert follower._thread is not None and not follower._thread.is_alive()


def test_an_unreadable_topic_keeps_the_registry_and_bounds_the_wait(
    payloads: list[bytes],  # noqa: F811
) -> None:
    topic = Topic()
    topic.append(key_record(registration(EHR, "ehr")))
    clock = Clock()
    follower, gate, chain = setup(topic, clock, wait_s=0.2)
    topic.down = True
    records = signed(payloads[:2])
    rogue = signed(payloads[2:3], key=ROGUE)[0]
    assert take(chain, gate, 0, records[0], NOW + 5) == ""  # known key: no read needed
    assert take(chain, gate, 1, rogue, NOW + 5) == "UNKNOWN_KEY"  # waited 0.2 s, decided
    assert follower.failed_reads >= 1 and follower.registry.keys_of("ehr") == [EHR.key_id]


def test_the_processor_gate_follows_the_topic_incrementally(
    payloads: list[bytes],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``source_gate`` (what ``careledger process`` runs) reads through the follower:
    repeated unknown key ids never read the sources topic from the beginning again."""
    import base64

    import processors.app as app

    topic = Topic()
    topic.append(key_record(registration(EHR, "ehr")))
    for hb in heartbeats(200):
        topic.append(hb)
    starts: list[dict[int, int]] = []

    def read_topic_from(
        settings: Settings,
        name: str,
        start: Mapping[int, int],
        timeout: float,
        keep: Keep,
        *,
        principal: str,
    ) -> tuple[list[tuple[int, int, bytes | None]], dict[int, int]]:
        assert name == settings.topic_sources
        assert principal == PROCESSOR  # the processor reads the registry as itself
        starts.append(dict(start))
        return topic.read_from(start, keep)

    monkeypatch.setattr(app, "read_topic_from", read_topic_from)
    settings = Settings(
        run_dir=tmp_path,
        require_source_signatures=True,
        trusted_registrar_keys=("ed25519:" + base64.b64encode(REGISTRAR.public_key.raw).decode(),),
    )
    gate = app.source_gate(settings)
    assert gate.follower is not None
    try:
        chain = PartitionChain(CHAIN, max_event_bytes=65536, next_offset=0, gate=gate)
        assert gate.registry.keys_of("ehr") == [EHR.key_id]
        rogue = signed(payloads[:1], key=ROGUE)[0]
        for offset in range(5):
            topic.append(heartbeats(1)[0])
            assert take(chain, gate, offset, rogue, time.time()) == "UNKNOWN_KEY"
        assert starts[0] == {}
        assert all(s for s in starts[1:]), "no read after the first starts from the beginning"
        assert topic.handed_out == 201 + 5
    finally:
        gate.follower.stop()


class _EmptyBackend:
    """A store with nothing in it (the processor reads heads and sequence numbers)."""

    def execute(self, *_args: object, **_kw: object) -> list[tuple[object, ...]]:
        return []


class _EmptyStore(ChainStore):
    def __init__(self) -> None:
        super().__init__(_EmptyBackend(), "careledger_unit")  # type: ignore[arg-type]

    def head(self, chain_id: str) -> None:
        return None

    def claim(self, chain_id: str, owner: str) -> int:
        return 1

    def discard_uncommitted(
        self,
        chain_id: str,
        head_height: int | None,
        timeout_s: float = 0.0,
        *,
        in_flight: bool = False,
    ) -> int:
        return 0


def test_the_processor_waits_for_the_registry_off_its_event_loop(
    payloads: list[bytes],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A record of a key registered after the last read waits for one read in a worker
    thread: the event loop keeps running meanwhile, and the record is then chained."""
    topic = Topic()
    started = time.monotonic()

    def clock() -> float:  # the broker's time scale of the records below
        return NOW + 2.0 + (time.monotonic() - started)

    slow = topic.read_from

    def read_from(
        start: Mapping[int, int], keep: Keep
    ) -> tuple[list[tuple[int, int, bytes | None]], dict[int, int]]:
        time.sleep(0.3)  # a Kafka round trip
        return slow(start, keep)

    follower = RegistryFollower(
        read_from, {REGISTRAR.key_id: REGISTRAR.public_key}, min_interval_s=0.05, clock=clock
    )
    follower.poll()
    follower.start()
    gate = SourceGate(require_signatures=True, load_registry=None, follower=follower)
    settings = Settings(run_dir=tmp_path, block_max_events=100_000, block_max_ms=600_000)

    async def no_seek(*_: object) -> None:
        raise AssertionError("no seek expected")

    async def earliest(_part: object) -> int:
        return 0

    processor = Processor(
        settings,
        SigningKey.from_seed(b"\x05" * 32),
        _EmptyStore(),
        no_seek,
        earliest,
        outputs=None,
        gate=gate,
    )
    topic.append(key_record(registration(EHR, "ehr")))  # after the last read
    records = [
        Record(0, offset, None, value, clock() - 0.5)
        for offset, value in enumerate(signed(payloads[:3]))
    ]

    async def run() -> int:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await processor.handle(records)
        done.set()
        await task
        return ticks

    try:
        ticks = asyncio.run(run())
    finally:
        follower.stop()
    chain = processor.chains[(settings.topic_events, 0)]
    assert len(chain.pending) == 3, "the records of the key registered meanwhile are chained"
    assert processor.metrics.registry_waits == 1
    assert ticks > 1, "the event loop ran while the processor waited for the registry"


def test_a_producer_chosen_timestamp_never_makes_the_processor_wait(
    payloads: list[bytes],  # noqa: F811
) -> None:
    """CreateTime is the sender's choice: a far-future one must not buy a wait."""
    topic = Topic()
    clock = Clock()
    _follower, _gate, chain = setup(topic, clock)
    rogue = signed(payloads[:1], key=ROGUE)[0]
    reads = topic.reads
    bad = chain.take(0, rogue, None, NOW + 10**6, 0.0, CREATE_TIME)  # no RegistryStale
    assert [r.code for r in bad] == ["UNKNOWN_KEY"] and topic.reads == reads
