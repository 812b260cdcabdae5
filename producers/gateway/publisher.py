"""Kafka for the gateway: raw records, events and dead letters, acknowledged per record.

One thread owns the Kafka clients (the SDK producer is not thread-safe). Listeners hand
it :class:`Job` s and await them; the thread takes whatever jobs are waiting as one
group and, for the group:

1. produces the raw records (``Settings.topic_raw``) and dead letters
   (``Settings.topic_dead_letter``) and waits until Kafka acknowledged or refused each
   (``acks=all``, idempotent);
2. sends the events of every job whose raw record was acknowledged through the SDK
   (:class:`careledger.kafka.producer.AccessEventProducer`, which signs them when the gateway has a
   source key), ``on_behalf_of`` the authenticated sender, and flushes: the flush closes
   the open batches, so the group's events leave as one batch record per sender
   (``careledger.signed-batch/1``, ADR 0020; more when a batch reaches
   ``source_batch_max_events`` or ``source_batch_max_bytes``), and returns once Kafka
   acknowledged every record (a batch record's delivery report settles all its events);
3. resolves each job: acknowledged only if its raw record (or dead letter) *and* all
   its events were acknowledged.

So an event is never in Kafka before the raw record it references, and a sender is
never told "accepted" for a record Kafka does not have. Messages time out after
``Settings.gateway_ack_timeout_s`` (``message.timeout.ms``), and a flush waits a little
longer than that, so when a job fails its messages are settled (failed), not still
queued: a retry does not race an earlier copy. A failure of the event flush fails
every job of the group that had events (a batch record carries the events of several
jobs, and the SDK does not say which one lost a message);
those senders retry, and what was delivered is then delivered twice (at least once).

Grouping is what makes many concurrent senders cheap: while one group waits for
Kafka, the next one collects.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import KafkaError, Message, Producer

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer, producer_config
from careledger.raw_record import MAX_ENVELOPE_BYTES
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent

log = logging.getLogger("careledger.gateway.publisher")
_rdkafka_log = logging.getLogger("careledger.gateway.rdkafka")


class _OncePer(logging.Filter):
    """One librdkafka log line per kind every ``interval`` seconds (a broker that is
    down is retried every few hundred ms)."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        kind = str(args[:2]) if args else str(record.msg)
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < self.interval:
            return False
        self._last[kind] = now
        return True


_rdkafka_log.addFilter(_OncePer())

__all__ = ["DeadLetter", "Job", "PublishError", "Publisher"]

#: At most this many jobs in one group.
MAX_GROUP_JOBS: Final = 2000
Headers = list[tuple[str, str | bytes | None]]


class PublishError(Exception):
    """Kafka did not acknowledge every record of a job (or the gateway is stopping)."""


@dataclass(frozen=True)
class DeadLetter:
    """A dead-letter record: original bytes, key, and the processor's header names."""

    value: bytes
    key: bytes | None
    headers: Headers


@dataclass
class Job:
    """What one received record becomes: its raw envelope and events, or a dead letter."""

    raw: tuple[bytes, bytes] | None = None  # (key, canonical envelope) for topic_raw
    events: Sequence[AccessEvent] = ()
    dead_letters: Sequence[DeadLetter] = ()
    #: the authenticated sender the gateway vouches for (ADR 0010 on_behalf_of)
    on_behalf_of: str | None = None
    # set by the publisher thread
    error: str | None = None
    _future: asyncio.Future[None] | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _pending: int = 0

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason


class Publisher:
    """Owns the Kafka producers in one thread; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        ack_timeout_s: float | None = None,
        events: AccessEventProducer | None = None,
    ) -> None:
        self.settings = settings
        self.ack_timeout_s = float(
            settings.gateway_ack_timeout_s if ack_timeout_s is None else ack_timeout_s
        )
        timeout_ms = max(1000, int(self.ack_timeout_s * 1000))
        self._flush_timeout = self.ack_timeout_s + 5.0
        raw_config = producer_config(
            settings.kafka_bootstrap,
            extra_config={
                "client.id": "careledger-gateway-raw",
                "linger.ms": 2,
                "message.timeout.ms": timeout_ms,
                "message.max.bytes": MAX_ENVELOPE_BYTES + 65536,
            },
        )
        raw_config["error_cb"] = self._on_client_error
        raw_config["logger"] = _rdkafka_log
        self._raw = Producer(raw_config)
        self._events = events or AccessEventProducer(
            settings,
            extra_config={
                "client.id": "careledger-gateway-events",
                "linger.ms": 2,
                "message.timeout.ms": timeout_ms,
            },
        )
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="careledger-gateway-kafka")
        self._stopping = False
        self._client_error: str | None = None
        self.groups = 0
        self.jobs_ok = 0
        self.jobs_failed = 0
        self._thread.start()

    # ---------------------------------------------------------------- callers
    async def publish(self, job: Job) -> None:
        """Hand ``job`` to Kafka and wait for every acknowledgement; raises PublishError."""
        if self._stopping:
            raise PublishError("the gateway is shutting down")
        loop = asyncio.get_running_loop()
        job._loop = loop
        job._future = loop.create_future()
        self._queue.put(job)
        try:
            await job._future
        except asyncio.CancelledError:
            raise
        if job.error is not None:
            raise PublishError(job.error)

    def kafka_status(self, timeout: float = 3.0) -> tuple[bool, str]:
        """Whether the broker answers and the gateway's topics exist (for /health)."""
        try:
            md = self._raw.list_topics(timeout=timeout)
        except Exception as exc:  # KafkaException: broker unreachable
            return False, f"Kafka unreachable: {exc}"
        wanted = (
            self.settings.topic_raw,
            self.settings.topic_events,
            self.settings.topic_dead_letter,
        )
        missing = [t for t in wanted if t not in md.topics or md.topics[t].error is not None]
        if missing:
            return False, f"topics missing: {', '.join(missing)}"
        return True, f"Kafka reachable, {len(md.brokers)} broker(s)"

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then stop the thread and the producers."""
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout)
        try:
            self._events.close(min(timeout, 10.0))
        except CareledgerError as exc:
            log.warning("closing the event producer: %s", exc)
        self._raw.flush(min(timeout, 10.0))

    # ---------------------------------------------------------------- thread
    def _on_client_error(self, err: KafkaError) -> None:
        self._client_error = f"{err.name()}: {err.str()}"

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._raw.poll(0)
                self._events.poll(0)
                continue
            group: list[Job] = []
            if first is None:
                stop = True
            else:
                group.append(first)
            while len(group) < MAX_GROUP_JOBS:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    continue
                group.append(nxt)
            if group:
                try:
                    self._process(group)
                except Exception as exc:  # never leave a sender waiting forever
                    log.exception("publishing a group of %d records failed", len(group))
                    for job in group:
                        job.fail(f"internal error: {type(exc).__name__}")
                self._resolve(group)

    def _process(self, group: list[Job]) -> None:
        self.groups += 1
        # 1. raw records and dead letters
        produced = False
        for job in group:
            if job.raw is not None:
                key, value = job.raw
                self._produce(job, self.settings.topic_raw, value, key, None)
                produced = True
            for dl in job.dead_letters:
                self._produce(job, self.settings.topic_dead_letter, dl.value, dl.key, dl.headers)
                produced = True
        if produced:
            remaining = self._raw.flush(self._flush_timeout)
            if remaining:
                for job in group:
                    if job._pending:
                        job.fail(f"Kafka did not acknowledge within {self.ack_timeout_s:g} s")
        # 2. events of the jobs whose raw record is in Kafka
        with_events = [j for j in group if j.error is None and j.events]
        if not with_events:
            return
        signing = self._events.signing
        for job in with_events:
            for event in job.events:
                if signing and job.on_behalf_of:
                    # ADR 0010: the gateway's key signs for the authenticated sender.
                    self._events.send(event, on_behalf_of=job.on_behalf_of)
                else:
                    self._events.send(event)
        try:
            self._events.flush(self._flush_timeout)
        except CareledgerError as exc:  # DeliveryError, or a signing failure
            for job in with_events:
                job.fail(f"events not acknowledged by Kafka: {exc.code}")

    def _produce(
        self, job: Job, topic: str, value: bytes, key: bytes | None, headers: Headers | None
    ) -> None:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            job._pending -= 1
            if err is not None:
                job.fail(f"Kafka refused a record for {topic}: {err.name()}")

        job._pending += 1
        deadline = time.monotonic() + self._flush_timeout
        while True:
            try:
                if headers is None:
                    self._raw.produce(topic, value, key, on_delivery=on_delivery)
                else:
                    self._raw.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    job._pending -= 1
                    job.fail("the local Kafka queue stayed full")
                    return
                self._raw.poll(0.05)
            except Exception as exc:  # KafkaException: e.g. message too large
                job._pending -= 1
                job.fail(f"Kafka refused a record for {topic}: {exc}")
                return

    def _resolve(self, group: list[Job]) -> None:
        for job in group:
            if job.error is None:
                self.jobs_ok += 1
            else:
                self.jobs_failed += 1
            future, loop = job._future, job._loop
            if future is None or loop is None:
                continue
            loop.call_soon_threadsafe(_settle, future)


def _settle(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)
