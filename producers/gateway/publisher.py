"""Kafka for the gateway: raw records, events and dead letters, acknowledged per record.

One thread owns the Kafka clients (the SDK producer is not thread-safe). Listeners hand
it :class:`Job` s (``publish``, or ``publish_many`` for several records at once, which
then share one wait) and await them; the thread takes whatever jobs are waiting as one
group and works in rounds. In each round it:

1. produces the raw records (``Settings.topic_raw``) and dead letters
   (``Settings.topic_dead_letter``) of the new group (``acks=all``, idempotent);
2. sends the events (and reference records: consents, ``Job.references``, to their
   topics) of every job of the *previous* group whose raw record Kafka
   acknowledged, the events through the SDK (:class:`careledger.kafka.producer.AccessEventProducer`,
   which signs them when the gateway has a source key), ``on_behalf_of`` the
   authenticated sender;
3. waits until Kafka acknowledged or refused each raw record and dead letter of the new
   group, then flushes the events: the flush closes the open batches, so the events
   leave as one batch record per sender (``careledger.signed-batch/1``, ADR 0020; more
   when a batch reaches ``source_batch_max_events`` or ``source_batch_max_bytes``), and
   returns once Kafka acknowledged every record (a batch record's delivery report
   settles all its events);
4. resolves each job of the previous group, and each job of the new group that has no
   events or has failed: acknowledged only if its raw record (or dead letter) *and* all
   its events were acknowledged. The other jobs of the new group have their events
   sent in the next round (at once: the thread does not wait for new jobs then).

So the raw records of one group and the events of the one before are in flight
together, one wait per round.

So an event is never in Kafka before the raw record it references, and a sender is
never told "accepted" for a record Kafka does not have. Messages time out after
``Settings.gateway_ack_timeout_s`` (``message.timeout.ms``), and a flush waits a little
longer than that, so when a job fails its messages are settled (failed), not still
queued: a retry does not race an earlier copy. A failure of the event flush fails
every job of the group that had events (a batch record carries the events of several
jobs, and the SDK does not say which one lost a message);
those senders retry, and what was delivered is then delivered twice (at least once).

On a sealed ledger (``ingest_public_key`` set, ADR 0037) nothing leaves in clear: the
raw record is sealed to the processor's ingest key with the patients its events and
consents name (``careledger.sealed_raw``), the consents are sealed and sent without a
key (``careledger.ingest_keys.reference_message``), the events are sealed by the SDK,
and a dead letter's bytes and transport details are sealed too
(``careledger.sealed-dead-letter/1``).

Grouping is what makes many concurrent senders cheap: while one group waits for
Kafka, the next one collects; and the futures of a round are settled with one
wake-up of the event loop, not one per job.
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

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from careledger.config import ConfigError, Settings
from careledger.ingest_keys import (
    reference_message,
    seal_dead_letter_for_ingest,
    seal_raw_for_ingest,
)
from careledger.kafka.batching import ingest_public_key_of
from careledger.kafka.clients import rdkafka_logger
from careledger.kafka.producer import AccessEventProducer, producer_config
from careledger.kafka.security import PRODUCER, kafka_login
from careledger.raw_record import MAX_ENVELOPE_BYTES
from careledger.sealed_raw import MAX_RAW_TRANSIT_BYTES
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent
from careledger_core.reference import decode_and_canonicalize_reference
from careledger_core.sealed_reference import SEALED_REFERENCE_KINDS, STAFF_KEY_SYSTEM

log = logging.getLogger("careledger.gateway.publisher")
#: librdkafka's lines of the raw producer, one per kind every 10 s (careledger.kafka.clients)
_rdkafka_log = rdkafka_logger("careledger.gateway.rdkafka")

__all__ = ["DeadLetter", "Job", "PublishError", "Publisher", "raw_subjects_of"]

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


class _Waiter:
    """The future of one publish_many call: settled when its last job is resolved
    (only the publisher thread counts)."""

    __slots__ = ("future", "loop", "remaining")

    def __init__(
        self, future: asyncio.Future[None], loop: asyncio.AbstractEventLoop, jobs: int
    ) -> None:
        self.future = future
        self.loop = loop
        self.remaining = jobs


@dataclass
class Job:
    """What one received record becomes: its raw envelope and events, or a dead letter."""

    raw: tuple[bytes, bytes] | None = None  # (key, canonical envelope) for topic_raw
    events: Sequence[AccessEvent] = ()
    dead_letters: Sequence[DeadLetter] = ()
    #: reference records made from the raw record (consents): (topic, key, canonical
    #: bytes), produced like events: only once Kafka acknowledged the raw record
    references: Sequence[tuple[str, bytes, bytes]] = ()
    #: the authenticated sender the gateway vouches for (ADR 0010 on_behalf_of)
    on_behalf_of: str | None = None
    # set by the publisher thread
    error: str | None = None
    _waiter: _Waiter | None = field(default=None, repr=False)
    _pending: int = 0

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason


#: the patient id of an event about no patient (a login, a query with no result)
NO_PATIENT: Final = "-"


def raw_subjects_of(job: Job, patient_system: str) -> set[tuple[str, str]]:
    """Whom a job's raw record names, ``(system, id)``: the patients of its events (not
    ``-``, an event about no patient: such a record is its sender's day's), and the
    subjects of its reference records (a consent's patient under ``patient_system``, a
    staff record's staff member)."""
    named = {(e.patient.system or "", e.patient.id) for e in job.events}
    named = {n for n in named if n[1] != NO_PATIENT}
    for _topic, _key, value in job.references:
        record, _ = decode_and_canonicalize_reference(value)
        if record.kind == "staff":
            named.add((STAFF_KEY_SYSTEM, record.subject_id))
        elif record.kind in SEALED_REFERENCE_KINDS:
            named.add((patient_system, record.subject_id))
    return named


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
        #: a sealed ledger's ingest key (ADR 0037): raw records and consents are sealed
        #: to it (the events by the SDK)
        self._seal_to = ingest_public_key_of(settings)
        if settings.seal_events and self._seal_to is None:
            raise ConfigError(
                "this ledger is sealed (seal_events): set ingest_public_key, so raw records "
                "and consents are sealed to the processor's ingest key"
            )
        self.ack_timeout_s = float(
            settings.gateway_ack_timeout_s if ack_timeout_s is None else ack_timeout_s
        )
        timeout_ms = max(1000, int(self.ack_timeout_s * 1000))
        self._flush_timeout = self.ack_timeout_s + 5.0
        raw_config = producer_config(
            settings.kafka_bootstrap,
            login=kafka_login(settings, PRODUCER),
            extra_config={
                "client.id": "careledger-gateway-raw",
                "linger.ms": 2,
                "message.timeout.ms": timeout_ms,
                "message.max.bytes": MAX_ENVELOPE_BYTES + 65536,
            },
            logger=_rdkafka_log,
        )
        raw_config["error_cb"] = self._on_client_error
        self._raw = Producer(raw_config)
        self._events = events or AccessEventProducer(
            settings,
            principal=PRODUCER,
            extra_config={
                "client.id": "careledger-gateway-events",
                "linger.ms": 2,
                "message.timeout.ms": timeout_ms,
            },
        )
        self._queue: queue.Queue[list[Job] | None] = queue.Queue()
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
        await self.publish_many([job])
        if job.error is not None:
            raise PublishError(job.error)

    async def publish_many(self, jobs: Sequence[Job]) -> None:
        """Hand ``jobs`` to Kafka together (they go in the same group) and wait until
        every one is settled; each job's ``error`` says whether it was acknowledged
        (None) or why not. Raises PublishError only when the gateway is stopping."""
        if self._stopping:
            raise PublishError("the gateway is shutting down")
        if not jobs:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = _Waiter(future, loop, len(jobs))
        for job in jobs:
            job._waiter = waiter
        self._queue.put(list(jobs))
        await future

    def kafka_status(self, timeout: float = 3.0) -> tuple[bool, str]:
        """Whether the broker answers and the gateway's topics exist (for /health)."""
        try:
            md = self._raw.list_topics(timeout=timeout)
        except KafkaException as exc:  # broker unreachable
            return False, f"Kafka unreachable: {exc}"
        wanted = (
            self.settings.topic_raw,
            self.settings.topic_events,
            self.settings.topic_dead_letter,
            self.settings.topic_consents,
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

    def _take(self, block: bool) -> tuple[list[Job], bool]:
        """The jobs waiting now (waiting up to 0.5 s for one when ``block``), and
        whether the gateway is stopping. The jobs of one publish_many call stay in one
        group (they share a waiter)."""
        group: list[Job] = []
        stop = False
        try:
            first = self._queue.get(timeout=0.5) if block else self._queue.get_nowait()
        except queue.Empty:
            return group, stop
        if first is None:
            stop = True
        else:
            group.extend(first)
        while len(group) < MAX_GROUP_JOBS:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                continue
            group.extend(nxt)
        return group, stop

    def _run(self) -> None:
        """Pipelined: while the events of one group (whose raw records Kafka has
        acknowledged) are in flight, the raw records of the next group are too; each
        round waits once for both."""
        stop = False
        ready: list[Job] = []  # raw records acknowledged, events still to send
        while True:
            group: list[Job] = []
            if not stop:
                group, stop = self._take(block=not ready)
            if not group and not ready:
                if stop:
                    break
                self._raw.poll(0)
                self._events.poll(0)
                continue
            try:
                self._round(group, ready)
            except (KafkaException, CareledgerError, BufferError, OSError) as exc:
                # never leave a sender waiting forever
                log.error(
                    "publishing a group of %d records failed: %s",
                    len(group) + len(ready),
                    type(exc).__name__,
                )
                for job in (*group, *ready):
                    job.fail(f"internal error: {type(exc).__name__}")
            except BaseException:  # a bug: release every sender, then fail loudly
                for job in (*group, *ready):
                    job.fail("internal error")
                self._resolve(group + ready)
                raise
            done = [j for j in group if j.error is not None or not (j.events or j.references)]
            self._resolve(ready + done)
            ready = [j for j in group if j.error is None and (j.events or j.references)]

    def _round(self, group: list[Job], ready: list[Job]) -> None:
        """Produce ``group``'s raw records and dead letters and ``ready``'s events, then
        wait for both: a job of ``group`` has failed if Kafka did not acknowledge its
        raw record (or dead letters), a job of ``ready`` if its events were not."""
        if group:
            self.groups += 1
        # 1. raw records and dead letters of the new group
        produced = False
        for job in group:
            if job.raw is not None:
                key, value = job.raw
                if self._seal_to is not None:
                    value = self._sealed_raw(job, value)
                    if len(value) > MAX_RAW_TRANSIT_BYTES:
                        job.fail("the record is too large to seal for this ledger")
                        continue
                self._produce(job, self.settings.topic_raw, value, key, None)
                produced = True
            for dl in job.dead_letters:
                if self._seal_to is not None:  # key dropped: it may name the sender
                    sealed, headers = self._sealed_dead_letter(dl)
                    self._produce(job, self.settings.topic_dead_letter, sealed, None, headers)
                else:
                    self._produce(
                        job, self.settings.topic_dead_letter, dl.value, dl.key, dl.headers
                    )
                produced = True
        # 2. events and reference records of the jobs whose raw record is in Kafka (the
        # previous round's)
        references = False
        for job in ready:
            for topic, key, value in job.references:
                sent_key: bytes | None = key
                if self._seal_to is not None:  # ADR 0037: sealed, and sent without a key
                    record, _ = decode_and_canonicalize_reference(value)
                    sent_key, value = reference_message(record, self._seal_to)
                self._produce(job, topic, value, sent_key, None)
                references = True
        signing = self._events.signing
        try:
            for job in ready:
                for event in job.events:
                    if signing and job.on_behalf_of:
                        # ADR 0010: the gateway's key signs for the authenticated sender.
                        self._events.send(event, on_behalf_of=job.on_behalf_of)
                    else:
                        self._events.send(event)
        except CareledgerError as exc:  # a signing failure
            for job in ready:
                job.fail(f"events not acknowledged by Kafka: {exc.code}")
        # 3. wait for both
        if produced or references:
            remaining = self._raw.flush(self._flush_timeout)
            if remaining:
                for job in (*group, *ready):
                    if job._pending:
                        job.fail(f"Kafka did not acknowledge within {self.ack_timeout_s:g} s")
        if any(job.events for job in ready):
            try:
                self._events.flush(self._flush_timeout)
            except CareledgerError as exc:  # DeliveryError, or a signing failure
                for job in ready:
                    if job.events:
                        job.fail(f"events not acknowledged by Kafka: {exc.code}")

    def _sealed_raw(self, job: Job, envelope: bytes) -> bytes:
        """The transit record of a job's raw envelope, naming the patients of its events
        and of its reference records (``careledger.sealed_raw``)."""
        assert self._seal_to is not None
        named = raw_subjects_of(job, self.settings.reference_patient_system)
        return seal_raw_for_ingest(self._seal_to, envelope, named)

    def _sealed_dead_letter(self, dl: DeadLetter) -> tuple[bytes, Headers]:
        """A dead letter on a sealed ledger: its bytes and transport details (peer,
        sender) sealed to the ingest key (``careledger.ingest_keys``), its key dropped."""
        assert self._seal_to is not None
        transport = b"{}"
        headers: Headers = []
        for name, text in dl.headers:
            if name == "careledger-transport":
                transport = text.encode() if isinstance(text, str) else text or b"{}"
            else:
                headers.append((name, text))
        headers.append(("careledger-sealed", b"ingest"))
        return seal_dead_letter_for_ingest(self._seal_to, transport, dl.value), headers

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
            except KafkaException as exc:  # e.g. message too large
                job._pending -= 1
                job.fail(f"Kafka refused a record for {topic}: {exc}")
                return

    def _resolve(self, jobs: list[Job]) -> None:
        """Settle the futures whose jobs are all resolved: one wake-up of each event
        loop for all of them (a cross-thread call per job costs more than the job)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for job in jobs:
            if job.error is None:
                self.jobs_ok += 1
            else:
                self.jobs_failed += 1
            waiter, job._waiter = job._waiter, None
            if waiter is None:
                continue
            waiter.remaining -= 1
            if waiter.remaining == 0:
                by_loop.setdefault(waiter.loop, []).append(waiter.future)
        for loop, futures in by_loop.items():
            loop.call_soon_threadsafe(_settle, futures)


def _settle(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
