"""A Kafka partition that ends before the chain's stored head is refused, not skipped.

The attack (or the careless upgrade): the events topic is deleted and recreated, or a
partition truncated by an unclean leader election. Its new records reuse offsets the
ledger already chained; the processor took them for chained ones, skipped them, and a
demo waited silently at "chained 0 / 1,000,000" while acknowledged events went nowhere.
Now loading such a chain raises ``KafkaBehindLedger``: the partition is refused with one
line saying where, counted, and the worker is told (``careledger process`` then stops
and exits 2; tests/integration/test_recreated_topic.py runs that on real services).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from careledger.config import Settings
from careledger.storage.store import ChainHead
from careledger_core.signing import SigningKey
from processors.chainer import KafkaBehindLedger, check_partition_end
from processors.processor import Processor
from processors.records import Record
from tests.unit.test_registry_follower import _EmptyStore

HEAD_OFFSET = 999


class _StoreWithHead(_EmptyStore):
    """A chain stored up to offset HEAD_OFFSET; nothing may be written."""

    def head(self, chain_id: str) -> ChainHead:  # type: ignore[override]
        return ChainHead(chain_id, 3, "ab" * 32, HEAD_OFFSET)

    def write_blocks(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be written for a refused partition")


def _processor(tmp_path: Path, end: object) -> tuple[Processor, list[str], Settings]:
    settings = Settings(run_dir=tmp_path, block_max_events=2)

    async def seek(_part: object, _offset: int) -> None:
        raise AssertionError("a refused partition is not sought")

    async def earliest(_part: object) -> int:
        return 0

    async def end_offset(_part: object) -> int:
        if isinstance(end, BaseException):
            raise end
        assert isinstance(end, int)
        return end

    processor = Processor(
        settings,
        SigningKey.from_seed(b"\x07" * 32),
        _StoreWithHead(),
        seek,
        earliest,
        None,
        end_offset=end_offset,
    )
    told: list[str] = []
    processor.on_refused = told.append
    return processor, told, settings


def _records(settings: Settings, offsets: range) -> list[Record]:
    return [Record(0, o, b"k", b"{}", 0.0, settings.topic_events) for o in offsets]


def test_a_recreated_topic_is_refused_with_one_line_not_skipped_as_chained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    processor, told, settings = _processor(tmp_path, end=5)
    part = (settings.topic_events, 0)
    asyncio.run(processor.handle(_records(settings, range(5))))
    assert part not in processor.chains, "the chain was loaded: its records would be skipped"
    assert list(processor.refused) == [part]
    assert len(told) == 1
    reason = told[0]
    chain_id = settings.chain_id(*part)
    assert chain_id in reason
    assert "ends at offset 5 " in reason and f"up to offset {HEAD_OFFSET}" in reason
    assert "\n" not in reason
    assert processor.metrics.snapshot()["refused_partitions"] == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [reason]
    # more records of it: still refused, said once
    asyncio.run(processor.handle(_records(settings, range(5, 9))))
    assert len(told) == 1 and part not in processor.chains
    # assigned again (the topic may have been restored): checked again when loaded
    processor.assigned({part})
    assert processor.refused == {}


def test_the_timer_refuses_a_silent_partition_too(tmp_path: Path) -> None:
    """No record arrives (the recreated topic is empty): the assignment check, which
    loads the chain once the consumer position is known, refuses it as well."""
    processor, told, settings = _processor(tmp_path, end=0)
    part = (settings.topic_events, 2)

    async def position(_part: object) -> int:
        return 7  # the group's committed offset from before

    processor._position = position
    processor.assigned({part})
    processor._unchecked[part] = 0.0  # settled long ago
    asyncio.run(processor.flush_aged())
    assert list(processor.refused) == [part] and len(told) == 1
    assert part not in processor._unchecked


def test_kafka_not_answering_is_retried_never_a_refusal(tmp_path: Path) -> None:
    down = KafkaException(KafkaError(KafkaError._TRANSPORT))
    processor, told, settings = _processor(tmp_path, end=down)
    asyncio.run(processor.handle(_records(settings, range(3))))
    assert processor.refused == {} and told == []
    assert processor.metrics.store_failures == 1  # backs off and resumes from the store
    assert (settings.topic_events, 0) in processor._recover


@pytest.mark.parametrize(
    ("end", "refused"),
    [(1000, False), (1001, False), (10**9, False), (999, True), (0, True)],
)
def test_the_boundary_is_the_offset_after_the_head(end: int, refused: bool) -> None:
    """A head at offset 999 needs the partition to end at 1000 or later (the high
    watermark is the next offset to be written)."""
    if refused:
        with pytest.raises(KafkaBehindLedger) as info:
            check_partition_end("o/events/0", ("events", 0), 1000, end)
        assert info.value.code == "KAFKA_BEHIND_LEDGER"
        assert info.value.details == {"chain": "o/events/0", "end": end, "next_offset": 1000}
    else:
        check_partition_end("o/events/0", ("events", 0), 1000, end)
