"""The producer SDK: what a hospital integration uses to send access events to careledger.

Integrators import it from its public entry point, ``producers.sdk`` (a re-export of
this module); careledger's own components import it from here, the shared Kafka floor.

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

Signing at the source (ADR 0010): when a source key is configured (``Settings.source_key``,
``CARELEDGER_SOURCE_KEY_TEXT``, or ``source_key=`` and ``source_id=`` passed here),
``send`` buffers events and signs each *batch* once: per attributed source, sequence
numbers count from 1 within the producer's *epoch* (8 random bytes chosen at start), a
batch closes at ``source_batch_max_events`` events, ``source_batch_max_ms`` after its
first event (a background thread closes it), before an event that would take its record
over ``source_batch_max_bytes``, and on ``flush``/``close``. Each batch is ONE Kafka record
(ADR 0020, ``careledger.signed-batch/1``: statement, signature and the events' canonical
bytes once), keyed ``<source_id>/<epoch>/<first_seq>`` so that batches spread over the
partitions; its delivery report settles all its events at once (a failed batch record
fails every event in it: ``DeliveryError.failed`` counts events, and ``failures`` names
their event ids). With ``source_record_format = "event"`` each event is its own record
(``careledger.signed-event/1``, with its inclusion proof), keyed by patient id.
``send(event, on_behalf_of="pacs")`` attributes the event to another source (a gateway
relaying a source that cannot sign: ``signed_by`` names this producer; own sequence
numbers). Every ``source_heartbeat_interval_s`` and on ``close`` one signed heartbeat per
attributed source goes to ``Settings.topic_sources``, claiming only the sequence numbers
Kafka acknowledged. Without a key, events are sent plain (legacy). A patient's events
from one attributed source keep their send order (the sequence numbers say it across
batch records, which spread over partitions); across sources batches may close in
another order.

Login (issue 12): as ``principal`` (default ``PRODUCER``: the SDK, the gateway, the
simulator); careledger's other components that send through it name their own.

Sealing (ADR 0037): with ``ingest_public_key`` set, a signing producer sends each event
as its sealed document (signed) and its ingest box: Kafka holds no identifier in clear.

Privacy: keys and values carry patient identifiers (none when sealing); logs and errors
name counts, topics, partitions, error codes and event ids only.

Compression: none by default (aiokafka needs ``cramjam`` for lz4, zstd and snappy).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from careledger.config import Settings, load_settings
from careledger.kafka.batching import (
    AckTracker,
    SignedBatch,
    SourceBatcher,
    event_ids_of,
    format_utc,
    heartbeat_record,
    ingest_public_key_of,
)
from careledger.kafka.clients import RateLimit, client_config, rdkafka_logger
from careledger.kafka.delivery import (
    MAX_FAILURE_DETAILS,
    DeliveryError,
    DeliveryReport,
    FailedDelivery,
)
from careledger.kafka.security import PRODUCER, KafkaLogin, kafka_login
from careledger.keys import KeyFileError, load_source_key
from careledger_core.errors import CareledgerError, InfrastructureError, ValidationError
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.reference import canonical_reference_bytes
from careledger_core.signing import SigningKey
from careledger_core.source import new_epoch

log = logging.getLogger("careledger.producer")
#: librdkafka's log lines of the SDK's producers (rate-limited: one per kind every
#: LOG_REPEAT_INTERVAL_S seconds)
_rdkafka_log = rdkafka_logger("careledger.producer.rdkafka")
#: client-level errors (``error_cb``) are rate-limited the same way
_client_errors = RateLimit()

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
#: How often (in messages) ``send`` serves delivery callbacks.
_POLL_EVERY = 1024
CONNECT_WAIT_S = 1.0  # a new producer's wait for its first metadata (``_connect``)

Headers = list[tuple[str, bytes | str | None]] | dict[str, bytes | str | None]
DeliveryCallback = Callable[[KafkaError | None, Message], None]


def partition_key(event: AccessEvent) -> bytes:
    """The Kafka message key of ``event``: its patient id (UTF-8)."""
    return event.patient.id.encode()


def producer_config(
    bootstrap: str,
    *,
    login: KafkaLogin | None,
    compression: str = DEFAULT_COMPRESSION,
    extra_config: dict[str, Any] | None = None,
    logger: logging.Logger | None = None,
) -> dict[str, Any]:
    """The librdkafka configuration the SDK uses (without callbacks), through
    :func:`careledger.kafka.clients.client_config`, logged in as ``login``: librdkafka's
    lines go to ``logger`` (default: the SDK's rate-limited
    ``careledger.producer.rdkafka``), never to stderr."""
    config: dict[str, Any] = {
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
    return client_config(bootstrap, config, login=login, logger=logger or _rdkafka_log)


class AccessEventProducer:
    """Sends access events (and raw messages) to the careledger events topic.

    Not thread-safe: use one producer per thread (or guard it with a lock). When it
    signs, a background thread of its own closes due batches and sends heartbeats;
    ``close()`` (or the ``with`` block) stops it.

    ``sign``: None (default) signs when a source key is configured and the topic is
    the events topic (producers of reference topics stay plain); True requires a key;
    False never signs. ``principal``: who it logs in to Kafka as (``settings``' login).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        bootstrap: str | None = None,
        topic: str | None = None,
        compression: str = DEFAULT_COMPRESSION,
        extra_config: dict[str, Any] | None = None,
        source_key: SigningKey | None = None,
        source_id: str | None = None,
        sign: bool | None = None,
        principal: str = PRODUCER,
    ) -> None:
        if settings is None:
            settings = load_settings()
        self.settings = settings
        self.topic = topic or settings.topic_events
        self.bootstrap = bootstrap or settings.kafka_bootstrap
        key = self._source_key(settings, source_key, sign)
        config = producer_config(
            self.bootstrap,
            login=kafka_login(settings, principal),
            compression=compression,
            extra_config=extra_config,
        )
        config["on_delivery"] = self._on_delivery
        config["error_cb"] = self._on_error
        # queue-full waits give up after the message timeout plus a margin: by then every
        # queued message has either been delivered or failed, so the queue cannot be full
        # for any reason but a dead producer
        self._queue_full_timeout = int(config["message.timeout.ms"]) / 1000.0 + 10.0
        self._reached = False  # a broker answered a metadata request
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise InfrastructureError(
                f"cannot create Kafka producer: {exc}", code="KAFKA_CONFIG"
            ) from exc
        self._connect()
        self._started = time.monotonic()
        self._sent = 0
        self._acked = 0
        self._failed = 0
        self._failed_reported = 0
        # batch records handed to Kafka and not settled yet, and the events they carry:
        # the client counts messages, reports count events
        self._batch_records_out = 0
        self._batch_events_out = 0
        self._failures: list[FailedDelivery] = []
        self._closed = False
        # delivery callbacks may run in the caller's thread and in the signing thread
        self._ack_lock = threading.Lock()
        # signing: batches are closed, signed and produced under this lock, in order
        self._lock = threading.RLock()
        self._batcher: SourceBatcher | None = None
        self._acks = AckTracker()
        self._beats: dict[str, int] = {}
        self.heartbeats_sent = 0
        self.heartbeats_acked = 0
        self.heartbeats_failed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if key is not None:
            self._batcher = SourceBatcher(
                key,
                source_id or settings.source_id,
                new_epoch(os.urandom(8)),
                max_events=settings.source_batch_max_events,
                max_age_s=settings.source_batch_max_ms / 1000.0,
                max_bytes=settings.source_batch_max_bytes,
                record_format=settings.source_record_format,
                seal_to=ingest_public_key_of(settings),
            )
            self._heartbeat_interval = settings.source_heartbeat_interval_s
            self._thread = threading.Thread(
                target=self._background, name="careledger-sdk-signer", daemon=True
            )
            self._thread.start()
            log.info(
                "producer for topic %s signs as source %s (key %s, epoch %s, %s records)",
                self.topic,
                self._batcher.source_id,
                key.key_id,
                self._batcher.epoch,
                self._batcher.record_format,
            )
        log.debug("producer for topic %s at %s ready", self.topic, self.bootstrap)

    def _connect(self, wait: float = CONNECT_WAIT_S) -> None:
        """Metadata first: a one-record ``close()`` took 0.51 s without (librdkafka asks
        for the producer id on a timer until a broker is connected), 0.06 s with it. No
        answer in ``CONNECT_WAIT_S``: sends queue and ``flush`` reports, as before."""
        try:
            self._producer.list_topics(self.topic, timeout=wait)
            self._reached = True
        except KafkaException as exc:
            log.debug("producer for topic %s: no metadata yet (%s)", self.topic, exc.args[0])

    def require_reachable(self, timeout: float = 10.0) -> None:
        """Raise ``InfrastructureError`` (code ``KAFKA_UNREACHABLE``) unless a broker
        answers a metadata request within ``timeout`` seconds: for a command that must
        say "cannot reach Kafka" at once rather than report every send failed later."""
        deadline = time.monotonic() + timeout
        while not self._reached:
            left = deadline - time.monotonic()
            if left <= 0:
                raise InfrastructureError(
                    f"cannot reach Kafka at {self.bootstrap} (no answer in {timeout:g} s)",
                    code="KAFKA_UNREACHABLE",
                )
            self._connect(min(left, 2.0))

    def _source_key(
        self, settings: Settings, explicit: SigningKey | None, sign: bool | None
    ) -> SigningKey | None:
        if sign is False:
            return None
        if explicit is not None:
            return explicit
        if sign is None and self.topic != settings.topic_events:
            return None
        key = load_source_key(settings)
        if key is None and sign:
            raise KeyFileError(
                "no source key configured: set CARELEDGER_SOURCE_KEY (create one with "
                "`careledger source keygen`) or CARELEDGER_SOURCE_KEY_TEXT"
            )
        return key

    # -- signing state -------------------------------------------------------------
    @property
    def signing(self) -> bool:
        """True when events are signed at the source (a source key is configured)."""
        return self._batcher is not None

    @property
    def source_id(self) -> str | None:
        """The source this producer signs as (None: it does not sign)."""
        return None if self._batcher is None else self._batcher.source_id

    @property
    def epoch(self) -> str | None:
        """This producer's epoch (16 hex digits; None: it does not sign)."""
        return None if self._batcher is None else self._batcher.epoch

    def last_seq(self, source_id: str | None = None) -> int:
        """Last sequence number signed and handed to Kafka for ``source_id`` (default:
        this producer's own source); 0 when none."""
        if self._batcher is None:
            return 0
        with self._lock:
            return self._batcher.last_seq(source_id)

    def last_seqs(self) -> dict[str, int]:
        """Last sequence number sent, per attributed source."""
        if self._batcher is None:
            return {}
        with self._lock:
            return self._batcher.last_seqs()

    def acked_seq(self, source_id: str | None = None) -> int:
        """Last sequence number up to which Kafka acknowledged every event (what the
        next heartbeat of ``source_id`` claims)."""
        if self._batcher is None:
            return 0
        with self._ack_lock:
            return self._acks.acked_through(source_id or self._batcher.source_id)

    # -- callbacks (run inside poll/flush) -----------------------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._ack_lock:
            if err is None:
                self._acked += 1
                return
            self._fail(msg.value(), 1, err.name(), err.str(), err.retriable(), msg)

    def _fail(
        self,
        value: bytes | None,
        events: int,
        code: str,
        reason: str,
        retriable: bool,
        msg: Message | None = None,
    ) -> None:
        """Count a record's ``events`` as failed, with details (their event ids) up to
        MAX_FAILURE_DETAILS. Called with ``_ack_lock`` held."""
        self._failed += events
        room = MAX_FAILURE_DETAILS - len(self._failures)
        partition = None if msg is None else msg.partition()
        topic = (None if msg is None else msg.topic()) or self.topic
        for event_id in event_ids_of(value, min(events, room)):
            self._failures.append(
                FailedDelivery(
                    topic=topic,
                    partition=partition if partition is not None and partition >= 0 else None,
                    error_code=code,
                    reason=reason,
                    retriable=retriable,
                    event_id=event_id,
                )
            )

    def _on_batch_delivery(
        self, source_id: str, first_seq: int, events: int, err: KafkaError | None, msg: Message
    ) -> None:
        """A record of a signed batch carrying ``events`` events was settled."""
        with self._ack_lock:
            self._acks.delivered(source_id, first_seq, err is None)
            if events > 1:
                self._batch_records_out -= 1
                self._batch_events_out -= events
            if err is None:
                self._acked += events
                return
            self._fail(msg.value(), events, err.name(), err.str(), err.retriable(), msg)

    def _on_heartbeat_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._ack_lock:
            if err is None:
                self.heartbeats_acked += 1
                return
            self.heartbeats_failed += 1
        log.warning("heartbeat to %s not delivered: %s", msg.topic(), err.name())

    def _on_error(self, err: KafkaError) -> None:
        # client-level errors; librdkafka keeps retrying on its own, delivery reports say
        # what finally happened. A transient one (a broker down or unreachable) is
        # librdkafka's own news: its logger (rate-limited, quiet in one-shot commands,
        # which say in one line what failed). A fatal one (idempotence) is ours.
        if err.fatal():
            record = log.makeRecord(
                log.name,
                logging.ERROR,
                __file__,
                0,
                "kafka producer error %s: %s",
                (err.name(), err.str()),
                None,
            )
            if log.isEnabledFor(logging.ERROR) and _client_errors.filter(record):
                log.handle(record)
        else:
            _rdkafka_log.warning("kafka producer error %s: %s", err.name(), err.str())

    # -- sending -------------------------------------------------------------------
    def send(self, event: AccessEvent, *, on_behalf_of: str | None = None) -> None:
        """Queue ``event`` (canonical bytes, keyed by patient id). Returns at once.

        When signing, the event waits in its batch (at most ``source_batch_max_ms``);
        ``on_behalf_of`` attributes it to another source this producer's key
        ``signs_for``. Without a source key ``on_behalf_of`` is an error.
        """
        batcher = self._batcher
        if batcher is None:
            if on_behalf_of is not None or self.settings.ingest_public_key is not None:
                raise ValidationError(
                    "on_behalf_of and sealing need a source key: this producer sends "
                    "unsigned events"
                )
            value = canonical_event_bytes(event)
            self._produce(self.topic, value, event.patient.id.encode())
            self._sent += 1
            if not self._sent % _POLL_EVERY:
                self._producer.poll(0)
            return
        with self._lock:
            if self._closed:
                raise InfrastructureError("producer is closed", code="PRODUCER_CLOSED")
            # a batch record has a key of its own; per-event records are keyed by patient
            key = event.patient.id.encode() if batcher.per_event else b""
            source = batcher.attribute(on_behalf_of)
            value, box = batcher.encode(event)
            if batcher.overflows(source, len(value) + (0 if box is None else len(box) * 2)):
                # the event would take the open batch record over its byte budget
                self._send_batch(batcher.take(source, format_utc(time.time())))
            source, opened, full = batcher.add(value, key, time.monotonic(), source, box)
            self._sent += 1
            if full:
                self._send_batch(batcher.take(source, format_utc(time.time())))
        if opened:
            self._wake.set()
        if not self._sent % _POLL_EVERY:
            self._producer.poll(0)

    def send_raw(
        self, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> None:
        """Queue arbitrary bytes (adapters, replays, tests that inject malformed input).

        Never signed or batched: the bytes go out as they are."""
        self._produce(self.topic, value, key, headers)
        self._sent += 1
        if not self._sent % _POLL_EVERY:
            self._producer.poll(0)

    def _send_batch(self, batch: SignedBatch | None) -> None:
        """Produce a signed batch (called with ``_lock`` held, so batches stay in order)."""
        if batch is None:
            return
        records = len(batch.records)
        with self._ack_lock:
            self._acks.sent(batch.source_id, batch.first_seq, batch.last_seq, records)
        events = batch.size // records  # a batch record carries them all; else one each
        callback = functools.partial(
            self._on_batch_delivery, batch.source_id, batch.first_seq, events
        )
        done = 0
        try:
            for key, value in batch.records:
                if events > 1:
                    with self._ack_lock:  # before produce: its callback may come at once
                        self._batch_records_out += 1
                        self._batch_events_out += events
                self._produce(self.topic, value, key, None, callback)
                done += 1
        finally:
            if done < records:
                # the local queue stayed full: the rest of the batch is lost (its sequence
                # numbers are spent); count it as failed so that flush raises
                self._lost(batch, done, events)

    def _lost(self, batch: SignedBatch, produced: int, events_per_record: int) -> None:
        with self._ack_lock:
            self._acks.delivered(batch.source_id, batch.first_seq, False)
            if events_per_record > 1:  # counted as out before the produce that failed
                self._batch_records_out -= 1
                self._batch_events_out -= events_per_record
            for _key, value in batch.records[produced:]:
                reason = "local producer queue stayed full"
                self._fail(value, events_per_record, "_QUEUE_FULL", reason, False)

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers | None = None,
        callback: DeliveryCallback | None = None,
    ) -> None:
        try:
            self._produce_once(topic, value, key, headers, callback)
        except BufferError:
            self._produce_when_room(topic, value, key, headers, callback)
        except KafkaException as exc:  # refused at once: not authorized, unknown topic
            err = exc.args[0]
            raise InfrastructureError(
                f"Kafka refused a record for {topic}: {err.str()}", code=err.name()
            ) from None

    def _produce_once(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers | None,
        callback: DeliveryCallback | None,
    ) -> None:
        if headers is None and callback is None:
            self._producer.produce(topic, value, key)
        elif callback is None:
            self._producer.produce(topic, value, key, headers=headers)
        elif headers is None:
            self._producer.produce(topic, value, key, on_delivery=callback)
        else:
            self._producer.produce(topic, value, key, on_delivery=callback, headers=headers)

    def _produce_when_room(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers | None,
        callback: DeliveryCallback | None,
    ) -> None:
        """The local queue is full: serve delivery reports until there is room."""
        deadline = time.monotonic() + self._queue_full_timeout
        while True:
            self._producer.poll(0.05)
            try:
                self._produce_once(topic, value, key, headers, callback)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    report = self.report()
                    raise DeliveryError(
                        f"local producer queue for {topic} stayed full for "
                        f"{self._queue_full_timeout:.0f} s ({report.pending} messages queued)",
                        report=report,
                        failed=self._failed - self._failed_reported,
                        failures=self._failures,
                    ) from None

    # -- the signing thread: due batches, delivery reports, heartbeats -------------
    def _background(self) -> None:
        batcher = self._batcher
        assert batcher is not None
        next_beat = time.monotonic() + self._heartbeat_interval
        while not self._stop.is_set():
            try:
                self._close_due_batches(batcher)
                self._producer.poll(0)
                now = time.monotonic()
                if now >= next_beat:
                    self._send_heartbeats(closing=False)
                    next_beat = max(next_beat + self._heartbeat_interval, now)
                with self._lock:
                    deadline = batcher.next_deadline()
                wait = min(next_beat, deadline if deadline is not None else next_beat)
                self._wake.wait(min(max(wait - time.monotonic(), 0.001), 0.1))
                self._wake.clear()
            except (CareledgerError, KafkaException, BufferError) as exc:
                # DeliveryError (queue stuck), a batch that cannot be signed, the broker;
                # never log the exception text: it could quote a value; lost events are
                # counted as failed, so the next flush raises
                log.error("signing thread: %s (%s)", type(exc).__name__, getattr(exc, "code", ""))
                self._stop.wait(1.0)

    def _close_due_batches(self, batcher: SourceBatcher) -> None:
        with self._lock:
            due = batcher.due(time.monotonic())
            if due:
                signed_at = format_utc(time.time())
                for source in due:
                    self._send_batch(batcher.take(source, signed_at))

    def _send_heartbeats(self, *, closing: bool) -> int:
        """One signed heartbeat per attributed source, claiming the acknowledged prefix.

        Returns how many were queued. A full local queue skips a periodic heartbeat
        (the next one says the same, later); the closing one waits for room.
        """
        batcher = self._batcher
        if batcher is None:
            return 0
        sent = 0
        with self._lock:
            sent_at = format_utc(time.time())
            for source in batcher.sources:
                with self._ack_lock:
                    last_seq = self._acks.acked_through(source)
                beat = self._beats.get(source, 0) + 1
                record = heartbeat_record(
                    batcher.key,
                    source_id=source,
                    epoch=batcher.epoch,
                    beat=beat,
                    last_seq=last_seq,
                    sent_at=sent_at,
                    closing=closing,
                )
                value = canonical_reference_bytes(record)
                topic = self.settings.topic_sources
                try:
                    callback = self._on_heartbeat_delivery
                    if closing:
                        self._produce(topic, value, source.encode(), None, callback)
                    else:
                        self._produce_once(topic, value, source.encode(), None, callback)
                except BufferError:
                    log.warning("local queue full: heartbeat of a source skipped")
                    continue
                self._beats[source] = beat
                self.heartbeats_sent += 1
                sent += 1
        return sent

    def send_heartbeats(self) -> int:
        """Send a heartbeat per attributed source now (also done every
        ``source_heartbeat_interval_s``). Returns how many were queued."""
        return self._send_heartbeats(closing=False)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""
        return int(self._producer.poll(timeout))

    # -- completion ----------------------------------------------------------------
    def _events_of(self, queued: int) -> int:
        """Events in ``queued`` messages of the client (a batch record counts its events)."""
        with self._ack_lock:
            return max(queued - self._batch_records_out, 0) + self._batch_events_out

    def report(self) -> DeliveryReport:
        buffered = 0
        if self._batcher is not None:
            with self._lock:
                buffered = self._batcher.buffered
        return DeliveryReport(
            sent=self._sent,
            acked=self._acked,
            failed=self._failed,
            pending=self._events_of(len(self._producer)) + buffered,
            seconds=time.monotonic() - self._started,
        )

    def _send_open_batches(self) -> None:
        if self._batcher is None:
            return
        with self._lock:
            for batch in self._batcher.take_all(format_utc(time.time())):
                self._send_batch(batch)

    def flush(self, timeout: float = 30.0) -> DeliveryReport:
        """Sign and send the open batches, then wait until every queued message is
        acknowledged or has failed.

        Raises :class:`DeliveryError` if any message failed since the previous flush, or
        if messages are still pending after ``timeout`` seconds (they stay queued: a
        later flush may still deliver them).
        """
        self._send_open_batches()
        pending = self._events_of(int(self._producer.flush(timeout)))
        report = self.report()
        report = dataclasses.replace(report, pending=pending)
        with self._ack_lock:
            new_failed = self._failed - self._failed_reported
            failures = self._failures
            if new_failed or pending:
                self._failures = []
                self._failed_reported = self._failed
        if new_failed or pending:
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
        """Flush (raising :class:`DeliveryError` as ``flush`` does) and release the client.

        A signing producer then sends its closing heartbeats (only after a clean flush:
        they claim every event acknowledged) and stops its signing thread.
        """
        if self._closed:
            return self.report()
        started = time.monotonic()
        try:
            self._stop_background()
            report = self.flush(timeout)
            # a producer that never reached Kafka and got nothing acknowledged has
            # nothing to claim: no closing heartbeat to wait for
            reached = self._reached or report.acked > 0
            if self._batcher is not None and reached and self._send_heartbeats(closing=True):
                left = max(timeout - (time.monotonic() - started), 1.0)
                if self._producer.flush(left):
                    log.warning("closing heartbeats still pending after %.0f s", left)
            return report
        finally:
            with self._lock:
                self._closed = True
            if len(self._producer):
                # undeliverable leftovers (already reported by flush): drop them
                self._producer.purge()
                self._producer.poll(0)
            close = getattr(self._producer, "close", None)
            if close is not None:
                close()

    def _stop_background(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join()
        self._thread = None

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
        except (CareledgerError, KafkaException) as flush_exc:
            log.warning("flush after error also failed: %s", type(flush_exc).__name__)

    def __len__(self) -> int:
        """Messages queued or in flight (with events waiting in open batches)."""
        buffered = 0
        if self._batcher is not None:
            with self._lock:
                buffered = self._batcher.buffered
        return self._events_of(len(self._producer)) + buffered
