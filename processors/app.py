"""The faust-streaming processor app and the ``careledger process`` command.

``create_app`` wires a faust app around a ``Processor`` (processors.processor,
which holds the commit order, ADR 0003): one agent consumes the access-events,
reference and raw topics in batches, timers close aged blocks and report
metrics, and rebalance signals hand partitions over. ``--baseline`` consumes
and inserts the same records without chaining (the benchmark baseline).

faust and confluent_kafka are imported inside functions: they are slow to import.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from careledger.config import Settings
from careledger.ingest_keys import load_ingest_key
from careledger.kafka.clients import client_config
from careledger.kafka.security import PROCESSOR, kafka_login
from careledger.keys import default_key_path, load_public_keys, load_signing_key
from careledger.keystore import open_keystore
from careledger.memory import PROCESSOR_ARENAS, limit_malloc_arenas
from careledger.service_health import ServiceHealth
from careledger.sources.reading import READ_TIMEOUT_S, read_topic_from
from careledger.stack.topics import events_topic_time_problem
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.kinds import raw_topics, reference_topics
from careledger.storage.store import ChainStore
from careledger_core.errors import CareledgerError
from careledger_core.signing import SigningKey
from careledger_core.source import timestamp_of
from processors.fetching import use_fetch_wait
from processors.metrics import write_metrics
from processors.opening_ahead import OpenAhead
from processors.outputs import KafkaOutputs, quarantine_alerts
from processors.processor import Processor
from processors.records import Part, Record
from processors.registry_follower import RegistryFollower
from processors.sealing import EventOpener, RawSealer, ReferenceSealer
from processors.sources import SourceGate, processor_key_problem

#: the processor's cumulative numbers: Prometheus counters (``<name>_total``)
_COUNTERS = frozenset(
    {
        "events_chained",
        "blocks_written",
        "dead_lettered",
        "quarantined",
        "duplicates_skipped",
        "seeks",
        "store_failures",
        "seq_rows_refreshed",
        "registry_waits",
        "fenced_writes",
        "events_opened_ahead",
        "events_checked_ahead",
        "opening_disagreements",
        "opening_worker_restarts",
    }
)

__all__ = [
    "ConsumerBudget",
    "KafkaOutputs",
    "Processor",
    "Record",
    "command_process",
    "configure_process",
    "consumer_budget",
    "create_app",
    "quarantine_alerts",
    "source_gate",
]

log = logging.getLogger("careledger.processor")


def _quiet_monitor() -> Any:
    """faust's Monitor without its per-event bookkeeping.

    The default Monitor updates several counters and timestamps for every
    message and every stream event; at tens of thousands of events per second
    that is a measurable share of a core. Our own metrics are per block.
    """
    from faust.sensors.monitor import Monitor

    class QuietMonitor(Monitor):
        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            pass

        def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
            return None

        def on_stream_event_out(
            self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
        ) -> None:
            pass

        def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
            pass

    return QuietMonitor


@dataclass(frozen=True, slots=True)
class ConsumerBudget:
    """How many Kafka records the processor holds ahead of chaining (issue 10).

    Counted in records (faust and aiokafka count records), sized in bytes: a record is
    taken at ``record_bytes``, the largest batch record a source sends (ADR 0020;
    one-event records are far smaller). The records held are one take, the stream
    buffer behind it and one poll, each at most ``take_records`` records: together
    ``processor_buffer_bytes``, whatever the backlog. The fetcher holds at most one
    response per partition of ``partition_fetch_bytes``: ``FETCH_RECORDS`` records, so
    that one round trip per partition feeds most of a take (one record per response
    made the consumer, not the CPU, the limit: 12.6k against 19.7k events/s measured
    with the same take; Kafka returns a larger first record whole, so it never stalls).
    """

    record_bytes: int
    take_records: int
    buffer_records: int
    poll_records: int
    partition_fetch_bytes: int

    @property
    def held_bytes(self) -> int:
        """The records a full take, buffer and poll hold, at ``record_bytes`` each."""
        return (self.take_records + self.buffer_records + self.poll_records) * self.record_bytes


#: records of the largest size one fetch response per partition may carry
FETCH_RECORDS = 4


def consumer_budget(settings: Settings) -> ConsumerBudget:
    """The take, buffer, poll and fetch sizes for ``processor_buffer_bytes``."""
    record = max(settings.max_batch_record_bytes, settings.max_event_bytes, 1)
    take = settings.processor_take_records or max(
        1, settings.processor_buffer_bytes // (3 * record)
    )
    return ConsumerBudget(
        record_bytes=record,
        take_records=take,
        buffer_records=take,
        poll_records=take,
        partition_fetch_bytes=record * FETCH_RECORDS,
    )


def source_gate(settings: Settings) -> SourceGate:
    """The processor's source checks: the registry is read from the sources topic
    (registrar-signed key events, checked against ``trusted_registrar_keys``),
    incrementally, on a thread of its own (``RegistryFollower``, ADR 0027)."""
    registrars = {k.key_id: k for k in load_public_keys(settings.trusted_registrar_keys)}
    follower = (
        RegistryFollower(
            lambda start, keep: read_topic_from(
                settings, settings.topic_sources, start, READ_TIMEOUT_S, keep, principal=PROCESSOR
            ),
            registrars,
        )
        if registrars
        else None
    )
    gate = SourceGate(
        require_signatures=settings.require_source_signatures,
        load_registry=None,
        max_skew_s=settings.source_max_skew_s,
        follower=follower,
    )
    if settings.seal_events:
        gate.opener = event_opener(settings)
        gate.reference_sealer = ReferenceSealer(
            gate.opener.ingest, gate.opener.keys, settings.reference_patient_system
        )
        gate.raw_sealer = RawSealer(gate.opener.ingest, gate.opener.keys)
    elif settings.opening_workers > 0:  # ADR 0042: batch records in clear checked ahead
        gate.ahead = OpenAhead(None, settings.max_event_bytes, workers=settings.opening_workers)
        gate.ahead.start()
    if follower is not None:
        follower.poll()  # at start, before any record: the whole topic once
        follower.start()
    elif settings.require_source_signatures:
        log.warning("no trusted registrar key: every access event will be quarantined")
    return gate


def event_opener(settings: Settings) -> EventOpener:
    """A sealed ledger's opener (ADR 0037): the ingest key and the key store (its keys
    made on first use). Raises ``KeyFileError`` or ``KeyStoreError`` (one line)."""
    ingest = load_ingest_key(settings.ingest_key)
    keystore = open_keystore(settings, create=True)
    ahead = None
    if settings.opening_workers > 0:  # ADR 0039
        ahead = OpenAhead(
            ingest.private, settings.max_event_bytes, workers=settings.opening_workers
        )
        ahead.start()
    return EventOpener(ingest, keystore, ttl_s=settings.sealing_key_cache_s, ahead=ahead)


#: how long a seek may wait for the consumer thread (it runs between two fetches)
SEEK_TIMEOUT_S = 30.0


async def seek_on_consumer_thread(app: Any, tp: Any, offset: int) -> bool:
    """Seek ``tp`` on the thread that runs the aiokafka consumer (ADR 0027).

    faust's ``Consumer.seek`` calls aiokafka's ``seek`` from the caller's thread while
    the consumer thread drains fetched records: the seek deletes the partition's
    fetched records under the drain's feet (``KeyError(TopicPartition(...))``, "Drain
    messages raised", a dead worker; seen 5 s after ClickHouse came back). Queued on the
    consumer thread, the seek runs between two drains; a partition no longer assigned
    is left alone (whoever has it resumes from the store). Returns whether it sought.
    """
    consumer = app.consumer
    thread = consumer._thread

    async def on_consumer_thread() -> bool:
        aio = thread._ensure_consumer()
        if tp not in aio.assignment():
            return False
        aio.seek(tp, offset)
        return True

    try:
        sought = await asyncio.wait_for(thread.call_thread(on_consumer_thread), SEEK_TIMEOUT_S)
    except TimeoutError:  # the consumer thread is stopping or stuck: asked again later
        log.warning("seeking %s to %d timed out", tp, offset)
        return False
    if not sought:
        log.info("not seeking %s to %d: no longer assigned", tp, offset)
        return False
    # as faust's own seek does: records from ``offset`` on are delivered again
    consumer._read_offset[tp] = offset if offset else None
    return True


def _faust_credentials(settings: Settings) -> Any:
    """The processor's SCRAM login over TLS for faust's aiokafka clients (issue 12),
    or None on a plaintext broker."""
    login = kafka_login(settings, PROCESSOR)
    if login.protocol != "SASL_SSL":
        return None
    from faust.auth import SASLCredentials

    return SASLCredentials(
        username=login.username,
        password=login.password,
        ssl_context=login.aiokafka()["ssl_context"],
        mechanism=login.mechanism,
    )


def create_app(
    settings: Settings,
    key: SigningKey,
    store: ChainStore,
    *,
    baseline: bool = False,
    gate: SourceGate | None = None,
) -> Any:
    import faust
    from faust.types import TP

    web_enabled = settings.processor_web_port > 0
    budget = consumer_budget(settings)
    take_max = budget.take_records
    datadir = settings.run_dir / "faust" / settings.processor_app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.processor_app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=_faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=web_enabled,
        web_port=settings.processor_web_port if web_enabled else 6066,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.processor_session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        # records, not events: a batch record (ADR 0020) holds hundreds of events; the
        # budget counts them in bytes (``consumer_budget``)
        stream_buffer_maxsize=budget.buffer_records,
        broker_max_poll_records=budget.poll_records,
        consumer_max_fetch_size=budget.partition_fetch_bytes,
        producer_acks=-1,
        Monitor=_quiet_monitor(),
        # faust's default is "<app id>-data" in the working directory.
        datadir=str(datadir),
    )
    use_fetch_wait(app, settings.processor_fetch_wait_ms)  # ADR 0043
    chained = (
        settings.topic_events,
        *sorted(reference_topics(settings)),
        *sorted(raw_topics(settings)),  # the gateway's raw records (issue 4)
    )
    topic = app.topic(
        *chained,
        value_type=bytes,
        key_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
    )

    async def seek(part: Part, offset: int) -> None:
        await seek_on_consumer_thread(app, TP(*part), offset)

    async def earliest(part: Part) -> int:
        tp = TP(*part)
        offsets = await app.consumer.earliest_offsets(tp)
        return int(offsets.get(tp) or 0)

    committed_reader: list[Any] = []
    position_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="careledger-position")

    def reader() -> Any:
        # A consumer of our own that never joins the group: asking aiokafka for its
        # position from here raced its fetcher (KeyError in the record drain, a
        # crashed worker).
        from confluent_kafka import Consumer

        if not committed_reader:
            committed_reader.append(
                Consumer(
                    client_config(
                        settings.kafka_bootstrap,
                        {
                            "group.id": settings.processor_app_id,
                            "enable.auto.commit": False,
                        },
                        login=kafka_login(settings, PROCESSOR),
                    )
                )
            )
        return committed_reader[0]

    def committed_offset(part: Part) -> int | None:
        from confluent_kafka import TopicPartition

        [tp] = reader().committed([TopicPartition(*part)], timeout=10)
        return max(int(tp.offset), 0)  # no commit yet (negative): nothing to compare

    def high_watermark(part: Part) -> int:
        from confluent_kafka import TopicPartition

        _low, high = reader().get_watermark_offsets(TopicPartition(*part), 10, False)
        return int(high)

    async def end_offset(part: Part) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(position_executor, high_watermark, part)

    async def position(part: Part) -> int | None:
        tp = TP(*part)
        if app.rebalancing or tp not in app.consumer.assignment():
            return None
        # not on the store's thread: the timer holds the processor's lock meanwhile, and
        # must not wait behind a write in flight for a round trip to the coordinator
        return await asyncio.get_running_loop().run_in_executor(
            position_executor, committed_offset, part
        )

    processor = Processor(
        settings,
        key,
        store,
        seek,
        earliest,
        KafkaOutputs(settings),
        position=None if baseline else position,  # the baseline keeps no chains
        gate=None if baseline else (gate or source_gate(settings)),
        # the gate's replay state reads the store on a connection of its own (ADR 0015)
        seq_store=None
        if baseline
        else ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings),
        end_offset=None if baseline else end_offset,
    )
    app.careledger_processor = processor  # type: ignore[attr-defined]  # for tests
    if not baseline:  # the blocks topic's producer connected before the first write (ADR 0017)
        processor.outputs.prepare_blocks()
    within = max(settings.block_max_ms / 2000.0, 0.01)

    @app.agent(topic, name="chain-events")
    async def chain_events(stream: Any) -> None:
        async for events in stream.take_events(take_max, within=within):
            records = [
                Record(
                    e.message.partition,
                    e.message.offset,
                    e.message.key,
                    e.message.value,
                    e.message.timestamp,
                    e.message.topic,
                    # who set the timestamp: the broker (1, trusted) or the producer
                    e.message.timestamp_type,
                )
                for e in events
            ]
            if baseline:
                await processor.handle_baseline(records)
            else:
                await processor.handle(records)

    @app.timer(interval=block_timer_interval_s(settings))  # type: ignore[untyped-decorator]
    async def close_aged_blocks() -> None:
        await processor.flush_aged()

    metrics_path = settings.run_dir / "metrics" / f"processor-{settings.processor_app_id}.json"
    # /health and /metrics (careledger.service_health): a snapshot the loop refreshes
    # every report, read by the server's thread
    served: dict[str, Any] = {"snapshot": {}, "at": time.monotonic()}

    def partition_lag() -> dict[str, int]:
        """Records in Kafka past what was taken, per partition whose chain is loaded
        (it carried records since the start; the others are at their stored head)."""
        lag = {}
        for part, chain in list(processor.chains.items()):
            try:
                high = app.consumer.highwater(TP(*part))
            except (KeyError, AttributeError):  # not assigned (any more)
                continue
            if high is not None and chain.next_offset is not None:
                lag[f"{part[0]}/{part[1]}"] = max(0, int(high) - chain.next_offset)
        return lag

    def healthy() -> tuple[bool, str]:
        if processor.refused:
            return False, f"refused partitions: {', '.join(sorted(map(str, processor.refused)))}"
        if processor.recovering:
            return False, "the store is unavailable: partitions wait to be re-read"
        if time.monotonic() - served["at"] > 30.0:
            return False, "no report for 30 s: the event loop is stuck"
        return True, f"{len(processor.chains)} chains"

    health = ServiceHealth.for_settings(settings, "processor", lambda: served["snapshot"], healthy)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def report_metrics() -> None:
        gate = processor.gate
        ahead = gate.reading_ahead if gate is not None else None
        if gate is not None and ahead is not None:  # ADR 0039, ADR 0042
            if isinstance(gate.opener, EventOpener):
                processor.metrics.events_opened_ahead = gate.opener.opened_ahead
            processor.metrics.events_checked_ahead = gate.checked_ahead
            processor.metrics.opening_disagreements = ahead.disagreements
            processor.metrics.opening_worker_restarts = ahead.restarts
        snap = processor.metrics.snapshot()
        processor.metrics.roll_window()
        if health is not None:
            served["snapshot"] = {
                **{
                    f"{k}_total" if k in _COUNTERS else k: v
                    for k, v in snap.items()
                    if not k.startswith("latency_bucket")
                },
                "partition_lag": partition_lag(),
                "assigned_chains": len(processor.chains),
            }
            served["at"] = time.monotonic()
        log.info(
            "chained=%d blocks=%d dead_lettered=%d rate=%.0f/s p50=%s p99=%s",
            snap["events_chained"],
            snap["blocks_written"],
            snap["dead_lettered"],
            snap["events_per_s_recent"],
            snap["latency_p50_s"],
            snap["latency_p99_s"],
        )
        write_metrics(metrics_path, snap)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        # Finish our write before anyone else may resume these chains from the store,
        # and hand the checkpoints of what we wrote to Kafka (also on shutdown).
        await processor.drain()
        await asyncio.get_running_loop().run_in_executor(None, processor.outputs.flush, 5.0)
        processor.revoked({(tp.topic, tp.partition) for tp in revoked if tp.topic in chained})

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        await processor.drain()
        processor.assigned({(tp.topic, tp.partition) for tp in assigned if tp.topic in chained})

    if web_enabled:

        @app.page("/careledger/metrics/")
        async def metrics_page(self: Any, request: Any) -> Any:
            return self.json(processor.metrics.snapshot())

    return app


def configure_process(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loglevel", default="info", help="faust worker log level")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="benchmark baseline: consume and insert into baseline_events without chaining",
    )


#: the processor's garbage-collector thresholds (ADR 0038): a generation-0 collection
#: after 50,000 net allocations instead of 700. The processor allocates a few objects per
#: event and keeps hundreds of thousands in flight, so at the default the collector
#: ran thousands of times per million events and its full collections rescanned the
#: heap: 13-21 % of the processor's CPU; now under 2 %.
GC_THRESHOLDS: Final = (50_000, 20, 20)


#: the interpreter's thread switch interval in the processor, seconds (ADR 0039)
SWITCH_INTERVAL_S: Final = 0.0001


def block_timer_interval_s(settings: Settings) -> float:
    """How often the processor closes the blocks that reached ``block_max_ms``: a quarter
    of it, so a block closes at most a quarter late (at half, 2026-12-07, p99 produce ->
    signed block was 70-100 ms longer at 5,000-10,000 events/s offered)."""
    return max(settings.block_max_ms / 4000.0, 0.01)


def tune_interpreter() -> None:
    """The processor's collector thresholds (ADR 0038) and switch interval (ADR 0039):
    a C call that releases the GIL (libsodium, hashlib, TLS, PKCS#11) lets another of
    the processor's threads run, and with CPython's default 5 ms the event loop waited
    that long to run again. And its malloc arenas (ADR 0044), before any thread starts."""
    limit_malloc_arenas(PROCESSOR_ARENAS)
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def command_process(args: argparse.Namespace, settings: Settings) -> int:
    tune_interpreter()  # first: the arena limit must be set before threads make arenas

    import faust

    try:  # a faster event loop when available (Linux wheels on PyPI)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    try:
        key = load_signing_key(default_key_path(settings))
    except CareledgerError as exc:
        print(f"careledger process: {exc}")
        return 2
    gate = None
    if not args.baseline:
        # Key status is decided at the broker's time (ADR 0015): a topic stamped with
        # the producers' clocks would let a signer choose it.
        problem = events_topic_time_problem(settings)
        if problem:
            print(f"careledger process: {problem}", file=sys.stderr)
            return 2
        try:
            gate = source_gate(settings)
        except CareledgerError as exc:  # a sealed ledger's ingest key or key store
            print(f"careledger process: {exc}", file=sys.stderr)
            return 2
        problem = processor_key_problem(
            gate.registry, settings.origin, key.key_id, timestamp_of(time.time())
        )
        if problem:
            print(f"careledger process: {problem}", file=sys.stderr)
            return 2
    store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
    app = create_app(settings, key, store, baseline=args.baseline, gate=gate)
    log.info(
        "processor %s: topic %s, blocks of <= %d events or %d ms, signing key %s",
        settings.processor_app_id,
        settings.topic_events,
        settings.block_max_events,
        settings.block_max_ms,
        key.key_id,
    )
    refused: list[str] = []

    def on_refused(reason: str) -> None:
        # Kafka lost history the ledger holds (a recreated or truncated topic): stop the
        # way a signal does (partitions handed over, outputs flushed), then say why.
        if not refused:
            refused.append(reason)
            os.kill(os.getpid(), signal.SIGTERM)

    app.careledger_processor.on_refused = on_refused
    # careledger's logging (commands.cli: text or JSON, control characters escaped), not
    # mode's colour formatter, whose escape sequences ended up in the processor's log
    logging.getLogger().setLevel(str(args.loglevel).upper())
    worker = faust.Worker(
        app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False, override_logging=False
    )
    worker.spinner = None  # it writes cursor escapes even to a file
    try:
        # Runs the worker until it stops, then exits the process itself (typed NoReturn).
        worker.execute_from_commandline()
    except SystemExit:
        if not refused:
            raise
    print(f"careledger process: {refused[0]}", file=sys.stderr)
    return 2
