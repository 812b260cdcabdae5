"""What `careledger benchmark` reads back from Kafka: end offsets, append times, checkpoints.

Every read tolerates a topic that is still electing its partition leaders (retried until
a deadline, ``pipeline_load.retry_with_deadline``), never a missing one for long.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.offsets import watermark_offsets
from careledger.kafka.security import ADMIN
from commands.benchmarks.alert_latency import parse_checkpoint_note
from commands.benchmarks.pipeline_load import leader_not_ready, retry_with_deadline

__all__ = ["end_offsets", "partition_ends", "read_append_times", "read_checkpoints"]

#: how long a read may wait for a topic's leaders, and for its records
READ_TIMEOUT_S = 90.0


@contextmanager
def _consumer(s: Settings) -> Iterator[Any]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        kafka_config(
            s,
            ADMIN,
            {
                # required by the client; never joined (assign) nor committed
                "group.id": f"careledger-bench-read-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "log_level": 3,  # no librdkafka notices on the user's terminal
            },
        )
    )
    try:
        yield consumer
    finally:
        consumer.close()


def _partition_ends(consumer: Any, topic: str) -> dict[int, int]:
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    def partitions() -> list[int]:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        if md.error is not None:
            raise KafkaException(md.error)
        if not md.partitions:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        return sorted(md.partitions)

    deadline = time.monotonic() + READ_TIMEOUT_S
    ends: dict[int, int] = {}
    for p in retry_with_deadline(
        partitions,
        retry_on=(KafkaException,),
        transient=leader_not_ready,
        timeout_s=READ_TIMEOUT_S,
    ):
        _low, high = watermark_offsets(consumer, TopicPartition(topic, p), deadline)
        ends[p] = high
    return ends


def partition_ends(s: Settings, topic: str) -> dict[int, int]:
    """Each partition's end offset (the offset the next record will get)."""
    with _consumer(s) as consumer:
        return _partition_ends(consumer, topic)


def end_offsets(s: Settings, topics: list[str]) -> int:
    """Records in ``topics`` (the sum of their partitions' end offsets)."""
    with _consumer(s) as consumer:
        return sum(sum(_partition_ends(consumer, t).values()) for t in topics)


def _read(
    s: Settings, topic: str, ranges: Mapping[int, tuple[int, int]]
) -> Iterator[tuple[int, int, int, int, bytes]]:
    """(partition, offset, timestamp type, timestamp ms, value) of the records of
    ``topic`` in ``ranges`` (partition -> [start, end)). Raises TimeoutError when they
    cannot all be read within ``READ_TIMEOUT_S`` of the last record read."""
    from confluent_kafka import TopicPartition

    todo = {p: (a, b) for p, (a, b) in ranges.items() if b > a}
    if not todo:
        return
    with _consumer(s) as consumer:
        consumer.assign([TopicPartition(topic, p, a) for p, (a, _b) in sorted(todo.items())])
        deadline = time.monotonic() + READ_TIMEOUT_S
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out reading {topic}: partitions {sorted(todo)} short")
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is not None:
                    continue  # e.g. a partition EOF: the loop's deadline bounds the wait
                p, off = msg.partition(), msg.offset()
                if p is None or off is None or p not in todo:
                    continue
                _start, end = todo[p]
                if off >= end:
                    continue
                ts_type, ts_ms = msg.timestamp()
                yield p, off, ts_type, ts_ms, msg.value() or b""
                deadline = time.monotonic() + READ_TIMEOUT_S
                if off + 1 >= end:
                    del todo[p]


def read_append_times(
    s: Settings, topic: str, ranges: Mapping[int, tuple[int, int]]
) -> tuple[dict[tuple[int, int], float], int]:
    """The timestamp (seconds) of each record of ``topic`` in ``ranges`` by (partition,
    offset), and how many of them were stamped by the producer (CreateTime), not by
    the broker (LogAppendTime)."""
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

    times: dict[tuple[int, int], float] = {}
    producer_stamped = 0
    for p, off, ts_type, ts_ms, _value in _read(s, topic, ranges):
        times[(p, off)] = ts_ms / 1000.0
        if ts_type != TIMESTAMP_LOG_APPEND_TIME:
            producer_stamped += 1
    return times, producer_stamped


def read_checkpoints(s: Settings) -> list[tuple[float, str, int]]:
    """(record time in seconds, chain id, tree size) of every checkpoint on the
    checkpoints topic. The processor publishes a chain's checkpoint right after the
    write that stored its newest block: its record time is when that block (and every
    block below it) was stored."""
    topic = s.topic_checkpoints
    ends = partition_ends(s, topic)
    out: list[tuple[float, str, int]] = []
    for _p, _off, _type, ts_ms, value in _read(s, topic, {p: (0, e) for p, e in ends.items()}):
        parsed = parse_checkpoint_note(value)
        if parsed is not None:
            out.append((ts_ms / 1000.0, *parsed))
    return out
