"""The processor seeks on the consumer's own thread (issue 12, ADR 0027).

faust runs the aiokafka consumer on a thread of its own; ``Consumer.seek`` called
aiokafka's ``seek`` from the event loop's thread, racing the record drain
(``KeyError(TopicPartition(...))``, a dead worker) and notifying the fetcher's future
from the wrong thread (a fetcher that slept until new traffic woke it).
``processors.app.seek_on_consumer_thread`` queues the seek on the consumer thread and
leaves partitions no longer assigned alone. The integration test is
``tests/integration/test_processor_resilience.py``; these pin the faust internals it
relies on, so that an upgrade that moves them fails here rather than in production.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from pathlib import Path
from typing import Any

from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from careledger.config import Settings
from careledger_core.signing import SigningKey
from processors.app import seek_on_consumer_thread


def test_the_faust_internals_the_seek_uses_are_there() -> None:
    assert inspect.iscoroutinefunction(AIOKafkaConsumerThread.call_thread)
    assert callable(AIOKafkaConsumerThread._ensure_consumer)
    assert "_read_offset" in inspect.getsource(Consumer.__init__)
    assert "self._thread" in inspect.getsource(ThreadDelegateConsumer._seek)


class _Aio:
    def __init__(self, assigned: set[tuple[str, int]]) -> None:
        self.assigned = assigned
        self.seeks: list[tuple[Any, int, str]] = []

    def assignment(self) -> set[tuple[str, int]]:
        return set(self.assigned)

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset, threading.current_thread().name))


class _Thread:
    """Runs queued calls on a loop of its own thread, as mode's ServiceThread does."""

    def __init__(self, aio: _Aio) -> None:
        self.aio = aio

    def _ensure_consumer(self) -> _Aio:
        return self.aio

    async def call_thread(self, fun: Any) -> Any:
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(asyncio.run(fun())), name="consumer")
        t.start()
        t.join()
        return result[0]


class _App:
    def __init__(self, aio: _Aio) -> None:
        self.consumer = type("C", (), {})()
        self.consumer._thread = _Thread(aio)
        self.consumer._read_offset = {}


def test_the_seek_runs_on_the_consumer_thread_and_skips_revoked_partitions() -> None:
    aio = _Aio({("events", 0)})
    app = _App(aio)
    assert asyncio.run(seek_on_consumer_thread(app, ("events", 0), 42))
    assert aio.seeks == [(("events", 0), 42, "consumer")]
    assert app.consumer._read_offset == {("events", 0): 42}
    assert not asyncio.run(seek_on_consumer_thread(app, ("events", 1), 7))  # not ours now
    assert len(aio.seeks) == 1 and ("events", 1) not in app.consumer._read_offset


def test_a_seek_no_record_answered_is_asked_again_by_the_timer(tmp_path: Path) -> None:
    """A lost seek on a silent partition: the timer seeks again, with growing patience,
    instead of waiting for new traffic to reveal it (issue 12)."""
    from processors.processor import SEEK_PATIENCE_S, SEEK_RETRY_MAX_S, Processor
    from tests.unit.test_registry_follower import _EmptyStore

    sought: list[tuple[tuple[str, int], int]] = []

    async def seek(part: tuple[str, int], offset: int) -> None:
        sought.append((part, offset))

    async def earliest(_part: object) -> int:
        return 0

    settings = Settings(run_dir=tmp_path, block_max_ms=600_000)
    processor = Processor(
        settings, SigningKey.from_seed(b"\x06" * 32), _EmptyStore(), seek, earliest, None
    )
    part = (settings.topic_events, 1)
    now = time.monotonic()
    processor.seek_targets[part] = (17, now)
    asyncio.run(processor.flush_aged())
    assert sought == [], "patience first: the records may still be on their way"
    processor.seek_targets[part] = (17, now - SEEK_PATIENCE_S - 1)
    asyncio.run(processor.flush_aged())
    assert sought == [(part, 17)]
    asyncio.run(processor.flush_aged())
    assert sought == [(part, 17)], "not again at once"
    waits = []
    for _ in range(8):
        expected, _since = processor.seek_targets[part]
        waits.append(processor._seek_waits[part])
        processor.seek_targets[part] = (expected, time.monotonic() - SEEK_RETRY_MAX_S - 1)
        asyncio.run(processor.flush_aged())
    assert len(sought) == 9 and waits[-1] == SEEK_RETRY_MAX_S  # bounded, never gives up
    # a record from the target offset answers it: no more seeks
    processor.seek_targets.pop(part)
    processor._seek_waits.pop(part)
    asyncio.run(processor.flush_aged())
    assert len(sought) == 9
