"""Reading a partition's offsets through a leadership change.

Right after a topic is created, or while a partition's leader moves (a broker restart
in a cluster), the cluster metadata can already name a leader that does not serve the
partition yet, and ``ListOffsets`` answers NOT_LEADER_FOR_PARTITION or
LEADER_NOT_AVAILABLE. Those errors are transient by definition: the reader retries
them until its own deadline instead of failing (or, worse, reporting an empty topic).
Any other error is raised at once.
"""

from __future__ import annotations

import time
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, TopicPartition

__all__ = ["watermark_offsets"]

_TRANSIENT: Final = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TRANSPORT,
        KafkaError.REQUEST_TIMED_OUT,
    }
)
_RETRY_PAUSE_S: Final = 0.1


def _transient(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    if not isinstance(err, KafkaError):
        return False
    return err.code() in _TRANSIENT or bool(err.retriable())


def watermark_offsets(consumer: Any, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """``(low, high)`` of ``partition``, retrying transient leadership errors until
    ``deadline`` (a ``time.monotonic()`` value); the last error is raised after it."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                partition, timeout=max(deadline - time.monotonic(), 1.0)
            )
            return int(low), int(high)
        except KafkaException as exc:
            if not _transient(exc) or time.monotonic() + _RETRY_PAUSE_S > deadline:
                raise
        time.sleep(_RETRY_PAUSE_S)
