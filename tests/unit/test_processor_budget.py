"""The processor's consumer budget (issue 10): records held ahead of chaining are
bounded in bytes, whatever the backlog."""

from __future__ import annotations

import pytest

from careledger.config import ConfigError, load_settings
from processors.app import FETCH_RECORDS, consumer_budget


def test_default_budget_holds_a_few_batch_records_not_hundreds() -> None:
    s = load_settings(env={})
    b = consumer_budget(s)
    assert b.record_bytes == s.max_batch_record_bytes
    assert b.take_records >= 1
    # take + stream buffer + one poll, each at the largest batch record, within the budget
    assert b.held_bytes <= s.processor_buffer_bytes
    assert b.buffer_records == b.take_records == b.poll_records
    assert b.partition_fetch_bytes == FETCH_RECORDS * s.max_batch_record_bytes


def test_budget_scales_with_the_byte_setting_and_the_record_size() -> None:
    small = consumer_budget(load_settings(env={}, processor_buffer_bytes=6 * 2**20))
    large = consumer_budget(load_settings(env={}, processor_buffer_bytes=60 * 2**20))
    assert (small.take_records, large.take_records) == (2, 20)
    half = consumer_budget(
        load_settings(env={}, processor_buffer_bytes=6 * 2**20, max_batch_record_bytes=2**19)
    )
    assert half.take_records == 4 and half.partition_fetch_bytes == FETCH_RECORDS * 2**19
    assert half.held_bytes <= 6 * 2**20


def test_a_budget_below_one_record_still_takes_one_record() -> None:
    b = consumer_budget(load_settings(env={}, processor_buffer_bytes=1000))
    assert (b.take_records, b.buffer_records, b.poll_records) == (1, 1, 1)


def test_one_event_records_are_counted_at_the_largest_record_a_topic_takes() -> None:
    # per-event records (max_event_bytes) larger than the batch limit set the unit
    b = consumer_budget(
        load_settings(env={}, max_event_bytes=4 * 2**20, max_batch_record_bytes=2**20)
    )
    assert b.record_bytes == 4 * 2**20
    assert b.partition_fetch_bytes == FETCH_RECORDS * 4 * 2**20


def test_an_explicit_take_overrides_the_byte_budget() -> None:
    b = consumer_budget(load_settings(env={}, processor_take_records=50))
    assert (b.take_records, b.buffer_records, b.poll_records) == (50, 50, 50)


@pytest.mark.parametrize("bad", [{"processor_buffer_bytes": 0}, {"processor_take_records": -1}])
def test_nonsense_budgets_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="processor_"):
        load_settings(None, {}, **bad)


def test_the_consumer_faust_creates_holds_fetches_for_the_configured_wait(tmp_path) -> None:
    """ADR 0043: an empty long poll held the events topic's next fetch for faust's
    1,500 ms; the processor's consumer waits ``processor_fetch_wait_ms`` instead."""
    import asyncio
    import inspect

    import faust
    from aiokafka import AIOKafkaConsumer

    from processors.fetching import use_fetch_wait

    assert load_settings(env={}).processor_fetch_wait_ms == 100

    async def created_wait() -> int:
        app = faust.App(
            "careledger-fetch-wait-test",
            broker="kafka://127.0.0.1:1",  # never connected: the consumer is only built
            web_enabled=False,
            datadir=str(tmp_path),
        )
        use_fetch_wait(app, 37)
        consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        try:
            assert isinstance(consumer, AIOKafkaConsumer)
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(created_wait()) == 37
    # and aiokafka hands that attribute to the fetcher it starts (pinned: an aiokafka
    # that reads it elsewhere needs use_fetch_wait changed, see ADR 0043)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)


@pytest.mark.parametrize("wait", [0, 30_001])
def test_a_fetch_wait_out_of_range_is_refused(wait: int) -> None:
    with pytest.raises(ConfigError, match="processor_fetch_wait_ms"):
        load_settings(env={}, processor_fetch_wait_ms=wait)
