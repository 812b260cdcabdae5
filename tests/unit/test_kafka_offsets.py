"""Reading offsets through a leadership change: transient errors are retried, others not."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from careledger.kafka.offsets import watermark_offsets

TP = TopicPartition("careledger.sources", 0)


class _Consumer:
    def __init__(self, failures: list[int]) -> None:
        self.failures = list(failures)
        self.calls = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.failures:
            raise KafkaException(KafkaError(self.failures.pop(0)))
        return (3, 17)


def test_a_partition_whose_leader_is_not_ready_yet_is_read_once_it_is() -> None:
    consumer = _Consumer([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE])
    assert watermark_offsets(consumer, TP, time.monotonic() + 5) == (3, 17)
    assert consumer.calls == 3


def test_a_permanent_error_is_raised_at_once() -> None:
    consumer = _Consumer([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException) as info:
        watermark_offsets(consumer, TP, time.monotonic() + 5)
    assert info.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert consumer.calls == 1


def test_a_leader_that_never_comes_fails_at_the_deadline() -> None:
    consumer = _Consumer([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    started = time.monotonic()
    with pytest.raises(KafkaException) as info:
        watermark_offsets(consumer, TP, started + 0.5)
    assert info.value.args[0].code() == KafkaError.NOT_LEADER_FOR_PARTITION
    assert 1 < consumer.calls < 1000
    assert time.monotonic() - started < 2
