"""The producer SDK: what a hospital integration uses to send access events to careledger.

    from producers.sdk import AccessEventProducer

    with AccessEventProducer(settings) as producer:
        for event in events:
            producer.send(event)          # canonical JSON, key = patient id
        report = producer.flush()         # raises DeliveryError unless all were acknowledged

Delivery guarantees: the producer is idempotent (``enable.idempotence``) with
``acks=all``, so a retried send never duplicates or reorders a message within a
partition, and every event of one patient goes to the same partition (the key is the
patient id), in the order ``send`` was called. An event counts as delivered only when
its delivery report says so; ``flush`` raises :class:`DeliveryError` if any message
failed since the previous flush or if the flush timed out with messages still queued.

Privacy: the key and the value carry patient identifiers, so nothing here logs them;
logs and errors name counts, topics, partitions, error codes and event ids only.

Compression: the careledger processor consumes with aiokafka, which can decode lz4,
zstd and snappy batches only when the optional ``cramjam`` package is installed. The
project does not depend on it, so the default is no compression (cheapest on the
producer's CPU on a LAN anyway); pass ``compression="lz4"`` (or ``"zstd"``) when every
consumer can decode it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from careledger.config import Settings, load_settings
from careledger_core.errors import InfrastructureError
from careledger_core.event import AccessEvent, canonical_event_bytes

log = logging.getLogger("careledger.producer")
_rdkafka_log = logging.getLogger("careledger.producer.rdkafka")

#: Repeated client errors (a broker that is down is retried every few hundred ms) are
#: logged once per this many seconds per kind.
LOG_REPEAT_INTERVAL_S = 10.0


class _RateLimit(logging.Filter):
    """Lets one record per kind through every LOG_REPEAT_INTERVAL_S seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        kind = (record.levelno, str(args[0]) if args else str(record.msg))
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < LOG_REPEAT_INTERVAL_S:
            return False
        self._last[kind] = now
        return True


_rdkafka_log.addFilter(_RateLimit())
_client_errors = _RateLimit()

__all__ = [
    "DEFAULT_COMPRESSION",
    "AccessEventProducer",
    "DeliveryError",
    "DeliveryReport",
    "FailedDelivery",
    "partition_key",
    "producer_config",
]

DEFAULT_COMPRESSION = "none"
#: How many failed deliveries are kept with their details (all are counted).
MAX_FAILURE_DETAILS = 1000
#: How often (in messages) ``send`` serves delivery callbacks.
_POLL_EVERY = 1024

Headers = list[tuple[str, bytes | str | None]] | dict[str, bytes | str | None]


def partition_key(event: AccessEvent) -> bytes:
    """The Kafka message key of ``event``: its patient id (UTF-8)."""
    return event.patient.id.encode()


@dataclasses.dataclass(frozen=True)
class FailedDelivery:
    """One message Kafka did not acknowledge (no key, no value: they may identify a patient)."""

    topic: str
    partition: int | None
    error_code: str  # librdkafka error name, e.g. "_MSG_TIMED_OUT"
    reason: str
    retriable: bool
    event_id: str | None  # when the value was an access event


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """Counts since the producer was created."""

    sent: int  # accepted by send()/send_raw()
    acked: int  # acknowledged by the broker (acks=all)
    failed: int  # definitively failed
    pending: int  # still queued or in flight when the report was made
    seconds: float  # since the producer was created

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.pending == 0


class DeliveryError(InfrastructureError):
    """Some messages were not acknowledged by Kafka (failed or still pending at a timeout)."""

    code = "KAFKA_DELIVERY_FAILED"

    def __init__(
        self,
        message: str,
        *,
        report: DeliveryReport,
        failures: Sequence[FailedDelivery] = (),
        failed: int = 0,
    ) -> None:
        errors: dict[str, int] = {}
        for f in failures:
            errors[f.error_code] = errors.get(f.error_code, 0) + 1
        super().__init__(
            message,
            details={
                "failed": failed,
                "pending": report.pending,
                "sent": report.sent,
                "acked": report.acked,
                "errors": errors,
            },
        )
        self.report = report
        #: the failed deliveries since the previous flush (details of at most
        #: MAX_FAILURE_DETAILS; ``failed`` counts them all)
        self.failures = list(failures)
        self.failed = failed


class _EventIdOnly(msgspec.Struct):
    event_id: str


_event_id_decoder = msgspec.json.Decoder(_EventIdOnly)


def _event_id_of(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        return _event_id_decoder.decode(value).event_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def producer_config(
    bootstrap: str,
    *,
    compression: str = DEFAULT_COMPRESSION,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The librdkafka configuration the SDK uses (without callbacks)."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": "careledger-producer",
        # exactly-once per partition and in order, even across retries
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,
        # batching: a short linger keeps latency low and batches full at high rates
        "linger.ms": 10,
        "batch.num.messages": 10_000,
        "batch.size": 1_048_576,
        "compression.type": compression,
        "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 524_288,
        # give up on a message after 2 minutes (flush() then reports it as failed)
        "message.timeout.ms": 120_000,
        "socket.keepalive.enable": True,
    }
    if extra_config:
        config.update(extra_config)
    return config


class AccessEventProducer:
    """Sends access events (and raw messages) to the careledger events topic.

    Not thread-safe: use one producer per thread (or guard it with a lock).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        bootstrap: str | None = None,
        topic: str | None = None,
        compression: str = DEFAULT_COMPRESSION,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        if settings is None:
            settings = load_settings()
        self.topic = topic or settings.topic_events
        self.bootstrap = bootstrap or settings.kafka_bootstrap
        config = producer_config(self.bootstrap, compression=compression, extra_config=extra_config)
        config["on_delivery"] = self._on_delivery
        config["error_cb"] = self._on_error
        config["logger"] = _rdkafka_log
        # queue-full waits give up after the message timeout plus a margin: by then every
        # queued message has either been delivered or failed, so the queue cannot be full
        # for any reason but a dead producer
        self._queue_full_timeout = int(config["message.timeout.ms"]) / 1000.0 + 10.0
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise InfrastructureError(
                f"cannot create Kafka producer: {exc}", code="KAFKA_CONFIG"
            ) from exc
        self._started = time.monotonic()
        self._sent = 0
        self._acked = 0
        self._failed = 0
        self._failed_reported = 0
        self._failures: list[FailedDelivery] = []
        self._closed = False
        log.debug("producer for topic %s at %s ready", self.topic, self.bootstrap)

    # -- callbacks (run inside poll/flush) -----------------------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._acked += 1
            return
        self._failed += 1
        if len(self._failures) < MAX_FAILURE_DETAILS:
            partition = msg.partition()
            self._failures.append(
                FailedDelivery(
                    topic=msg.topic() or self.topic,
                    partition=partition if partition is not None and partition >= 0 else None,
                    error_code=err.name(),
                    reason=err.str(),
                    retriable=err.retriable(),
                    event_id=_event_id_of(msg.value()),
                )
            )

    def _on_error(self, err: KafkaError) -> None:
        # client-level errors (all brokers down, fatal idempotence errors); librdkafka
        # keeps retrying on its own, delivery reports say what finally happened
        level = logging.ERROR if err.fatal() else logging.WARNING
        record = log.makeRecord(
            log.name,
            level,
            __file__,
            0,
            "kafka producer error %s: %s",
            (err.name(), err.str()),
            None,
        )
        if log.isEnabledFor(level) and _client_errors.filter(record):
            log.handle(record)

    # -- sending -------------------------------------------------------------------
    def send(self, event: AccessEvent) -> None:
        """Queue ``event`` (canonical bytes, keyed by patient id). Returns at once."""
        value = canonical_event_bytes(event)
        key = event.patient.id.encode()
        try:
            self._producer.produce(self.topic, value, key)
        except BufferError:
            self._produce_when_room(value, key, None)
        self._sent += 1
        if not self._sent % _POLL_EVERY:
            self._producer.poll(0)

    def send_raw(
        self, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> None:
        """Queue arbitrary bytes (adapters, replays, tests that inject malformed input)."""
        try:
            if headers is None:
                self._producer.produce(self.topic, value, key)
            else:
                self._producer.produce(self.topic, value, key, headers=headers)
        except BufferError:
            self._produce_when_room(value, key, headers)
        self._sent += 1
        if not self._sent % _POLL_EVERY:
            self._producer.poll(0)

    def _produce_when_room(self, value: bytes, key: bytes | None, headers: Headers | None) -> None:
        """The local queue is full: serve delivery reports until there is room."""
        deadline = time.monotonic() + self._queue_full_timeout
        while True:
            self._producer.poll(0.05)
            try:
                if headers is None:
                    self._producer.produce(self.topic, value, key)
                else:
                    self._producer.produce(self.topic, value, key, headers=headers)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    report = self.report()
                    raise DeliveryError(
                        f"local producer queue for {self.topic} stayed full for "
                        f"{self._queue_full_timeout:.0f} s ({report.pending} messages queued)",
                        report=report,
                        failed=self._failed - self._failed_reported,
                        failures=self._failures,
                    ) from None

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""
        return int(self._producer.poll(timeout))

    # -- completion ----------------------------------------------------------------
    def report(self) -> DeliveryReport:
        return DeliveryReport(
            sent=self._sent,
            acked=self._acked,
            failed=self._failed,
            pending=len(self._producer),
            seconds=time.monotonic() - self._started,
        )

    def flush(self, timeout: float = 30.0) -> DeliveryReport:
        """Wait until every queued message is acknowledged or has failed.

        Raises :class:`DeliveryError` if any message failed since the previous flush, or
        if messages are still pending after ``timeout`` seconds (they stay queued: a
        later flush may still deliver them).
        """
        pending = int(self._producer.flush(timeout))
        report = self.report()
        report = dataclasses.replace(report, pending=pending)
        new_failed = self._failed - self._failed_reported
        if new_failed or pending:
            failures = self._failures
            self._failures = []
            self._failed_reported = self._failed
            parts = []
            if new_failed:
                codes: dict[str, int] = {}
                for f in failures:
                    codes[f.error_code] = codes.get(f.error_code, 0) + 1
                listed = ", ".join(f"{c} x{n}" for c, n in sorted(codes.items()))
                parts.append(f"{new_failed} message(s) failed ({listed})")
            if pending:
                parts.append(f"{pending} message(s) still pending after {timeout:g} s")
            message = f"delivery to {self.topic} incomplete: " + "; ".join(parts)
            log.error("%s (sent %d, acked %d)", message, report.sent, report.acked)
            raise DeliveryError(message, report=report, failures=failures, failed=new_failed)
        log.debug(
            "flushed %s: sent %d, acked %d, failed %d",
            self.topic,
            report.sent,
            report.acked,
            report.failed,
        )
        return report

    def close(self, timeout: float = 30.0) -> DeliveryReport:
        """Flush (raising :class:`DeliveryError` as ``flush`` does) and release the client."""
        if self._closed:
            return self.report()
        try:
            return self.flush(timeout)
        finally:
            self._closed = True
            if len(self._producer):
                # undeliverable leftovers (already reported by flush): drop them
                self._producer.purge()
                self._producer.poll(0)
            close = getattr(self._producer, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> AccessEventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # already failing: deliver what we can, but never mask the original error
        try:
            self.close()
        except Exception as flush_exc:
            log.warning("flush after error also failed: %s", flush_exc)

    def __len__(self) -> int:
        """Messages queued or in flight."""
        return len(self._producer)
