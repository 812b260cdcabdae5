"""How long the processor's Kafka consumer lets the broker hold a fetch (ADR 0043).

aiokafka keeps at most one fetch in flight per broker, and a partition whose fetched
records the application has not taken yet is left out of the next fetch. The processor
reads the events topic and, on the same broker, topics that are mostly empty (reference
data, the gateway's raw records). So while a take's records were being chained, the
consumer sent a fetch for the empty partitions alone, the broker held it for the long
poll's whole wait (faust fixes aiokafka's ``fetch_max_wait_ms`` at 1,500 ms), and the
events partitions, drained meanwhile, could not be fetched again until it returned: the
processor waited for records for 0.5-1.5 s every few takes (measured: 43 % of a chained
drain's time outside the handler).

:func:`use_fetch_wait` gives the app's consumer a wait of ``processor_fetch_wait_ms``
instead (default 100 ms): an empty long poll then holds up the events partitions for at
most that long, well within what the stream buffer holds. An idle processor sends about
ten empty fetches a second.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["use_fetch_wait"]

log = logging.getLogger("careledger.processor")


def use_fetch_wait(app: Any, wait_ms: int) -> None:
    """Make ``app`` (a faust App on the aiokafka driver) create its consumer with
    ``fetch_max_wait_ms = wait_ms``. Call before the app starts."""
    from faust.transport.drivers import aiokafka as driver

    class _ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            if hasattr(consumer, "_fetch_max_wait_ms"):  # read by its fetcher at start
                consumer._fetch_max_wait_ms = wait_ms
            else:  # pragma: no cover - an aiokafka that renamed it (a test pins it)
                log.warning("cannot set the Kafka consumer's fetch wait; faust's is used")
            return consumer

    class _Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = _Consumer
