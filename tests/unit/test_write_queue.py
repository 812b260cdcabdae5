"""Blocks the timer closes while a write is in flight go out with the next write
(processors.processor: ``_queue``, ``_submit``, ``drain``).

Each write to the store has fixed statements (event rows, batch rows, the guarded
headers and their read-back, the blocks topic; ~50 ms on ClickHouse 18.16). In a drain
the timer closed each chain's half-full block while the previous take's write was in
flight, and waited to write it alone: a third of the writes carried a few hundred
events. Now they wait in a queue and ride with the next take's blocks, in height
order; ``drain`` writes what is queued, and blocks sealed before a failed write are
dropped, queued or not, as before (their records are read again from Kafka)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from careledger.config import Settings
from careledger.storage.backend import StorageError
from careledger.storage.store import SealedBlock
from careledger_core.event import canonical_event_bytes
from careledger_core.signing import SigningKey
from processors.chainer import PartitionChain
from processors.processor import Processor
from producers.simulator import HospitalModel, simulate
from tests.unit.test_registry_follower import _EmptyStore

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger write queue test").digest())
EVENTS = [canonical_event_bytes(e) for e in simulate(HospitalModel(seed=3), count=40, seed=3)]


class _Backend:
    def execute(self, *_args: object, **_kw: object) -> list[tuple[object, ...]]:
        return []

    def insert(self, *_args: object, **_kw: object) -> None:
        pass


class _HeldStore(_EmptyStore):
    """Records each write's blocks; a write waits while ``hold`` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.backend = _Backend()  # type: ignore[assignment]
        self.writes: list[list[tuple[str, int]]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.writing = threading.Event()
        self.fail_next = False

    def write_blocks(self, blocks: Sequence[SealedBlock], *, owner: str | None = None) -> set[str]:
        self.writing.set()
        self.hold.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise StorageError("ClickHouse statement failed: the test's fault")
        self.writes.append([(b.header.chain_id, b.header.height) for b in blocks])
        return set()


class _Outputs:
    def __init__(self) -> None:
        self.checkpoints = 0

    def publish_blocks(self, _blocks: Any) -> None:
        pass

    def publish_checkpoints(self, updates: Any, _key: Any) -> None:
        self.checkpoints += len(updates)

    def send_dead_letters(self, _rejected: Any) -> None:
        pass


async def _nothing(*_args: object) -> int:
    return 0


def _processor(tmp_path: Path) -> tuple[Processor, _HeldStore]:
    store = _HeldStore()
    settings = Settings(run_dir=tmp_path, block_max_ms=50)
    processor = Processor(settings, KEY, store, _nothing, _nothing, _Outputs())
    for p in range(2):
        part = (settings.topic_events, p)
        processor.chains[part] = PartitionChain.resume(
            settings.chain_id(*part), None, 65536, earliest_offset=0
        )
    return processor, store


def _fill(processor: Processor, count: int, *, aged: bool = True) -> None:
    """``count`` events in each chain's open block, opened long enough ago to be due."""
    opened = time.monotonic() - (1.0 if aged else 0.0)
    for chain in processor.chains.values():
        start = 0 if chain.next_offset is None else chain.next_offset
        for i in range(count):
            chain.add(start + i, EVENTS[(start + i) % len(EVENTS)], None, 0.0, opened)


def _seal_all(processor: Processor) -> list[SealedBlock]:
    return [
        b for c in processor.chains.values() if (b := processor._seal(c, time.time())) is not None
    ]


async def _timer_during_a_write(processor: Processor, store: _HeldStore) -> float:
    """Write 1 (three events per chain) held in flight, then a timer tick with two aged
    events per chain; returns how long the tick took."""
    _fill(processor, 3)
    store.hold.clear()
    await processor._submit(processor._epoch, _seal_all(processor), [])  # write 1
    await asyncio.to_thread(store.writing.wait, 5)
    _fill(processor, 2)
    started = time.monotonic()
    await processor.flush_aged()  # the timer: write 1 is in flight
    return time.monotonic() - started


def test_blocks_the_timer_closes_during_a_write_ride_with_the_next_one(tmp_path: Path) -> None:
    processor, store = _processor(tmp_path)

    async def scenario() -> None:
        took = await _timer_during_a_write(processor, store)
        assert took < 1.0, "the timer must not wait for the write"
        assert store.writes == [] and len(processor._queued) == 2
        _fill(processor, 4, aged=False)
        take = _seal_all(processor)  # the next take's blocks
        store.hold.set()
        await processor._submit(processor._epoch, take, [])
        await processor.drain()

    asyncio.run(scenario())
    chains = sorted(c.chain_id for c in processor.chains.values())
    first = [(c, 0) for c in chains]
    # write 2 holds the queued blocks (height 1) before the take's (height 2), one write
    second = [(c, 1) for c in chains] + [(c, 2) for c in chains]
    assert [sorted(w) for w in store.writes] == [sorted(first), sorted(second)]
    assert store.writes[1].index((chains[0], 1)) < store.writes[1].index((chains[0], 2))
    assert processor.metrics.writes == 2 and processor._queued == []


def test_drain_writes_what_the_timer_queued(tmp_path: Path) -> None:
    """Giving partitions away or loading a chain waits for every sealed block, queued
    ones included: a chain reloaded from the store must find them there."""
    processor, store = _processor(tmp_path)

    async def scenario() -> None:
        await _timer_during_a_write(processor, store)
        store.hold.set()
        await processor.drain()

    asyncio.run(scenario())
    assert len(store.writes) == 2 and {h for _, h in store.writes[1]} == {1}
    assert processor._queued == []


def test_the_next_tick_writes_the_queue_when_no_take_comes(tmp_path: Path) -> None:
    processor, store = _processor(tmp_path)

    async def scenario() -> None:
        await _timer_during_a_write(processor, store)
        store.hold.set()
        await processor._settle()
        await processor.flush_aged()  # nothing new is due: the queue alone
        await processor._settle()

    asyncio.run(scenario())
    assert [len(w) for w in store.writes] == [2, 2] and processor._queued == []


def test_blocks_queued_on_a_write_that_fails_are_dropped_not_written(tmp_path: Path) -> None:
    """The queued blocks were sealed on top of the failed write: never written (their
    records are read again from Kafka once the chains are reloaded)."""
    processor, store = _processor(tmp_path)

    async def scenario() -> None:
        store.fail_next = True
        epoch = processor._epoch
        await _timer_during_a_write(processor, store)
        assert len(processor._queued) == 2
        store.hold.set()
        await processor.drain()
        assert processor._epoch == epoch + 1

    asyncio.run(scenario())
    assert store.writes == [] and processor._queued == []
    assert processor._trees == {} and processor._block_times == {}
