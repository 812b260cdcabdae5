"""``careledger simulate``: send the simulated traffic to Kafka or write it to a file.

``configure_simulate`` / ``command_simulate`` are the command (routed from
``commands.cli`` through ``producers.simulator``). ``run_simulation`` produces events
to Kafka and waits for every acknowledgement, ``produce_reference`` does the same for
reference records (to their topics), ``write_events`` writes canonical JSON lines.
With ``--with-reference``, ``--ground-truth`` or ``--inappropriate-rate`` the command
runs an audit scenario (:mod:`producers.simulator.scenarios`) instead of plain traffic.

The Kafka SDK (``careledger.kafka.producer``, hence confluent_kafka) is imported inside
the functions that send, for start-up cost: ``import producers.simulator`` and
``--output`` runs do not load the Kafka client.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes

from .events import simulate
from .model import HospitalModel
from .reference import reference_topic_setting
from .scenarios import simulate_audit_scenario
from .vocabulary import DEFAULT_START, ROLES, parse_start

if TYPE_CHECKING:
    from careledger.config import Settings

# the logger keeps the name it had before the module became a package (log lines show it)
log = logging.getLogger("producers.simulator")


# --------------------------------------------------------------------------- CLI
@dataclasses.dataclass(frozen=True)
class SimulationSummary:
    sent: int  # handed to the producer
    acked: int  # acknowledged by Kafka (acks=all)
    failed: int  # not acknowledged: failed, or still pending when the flush gave up
    seconds: float  # from the first event to the end of the final flush

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0


class _Progress:
    """A rate-limited progress line on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.every = 0.5 if self.tty else 2.0
        self.started = time.monotonic()
        self.last = self.started

    def maybe(self, now: float, sent: int, acked: int, failed: int) -> None:
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self._print(now, sent, acked, failed, end="\r" if self.tty else "\n")

    def done(self, sent: int, acked: int, failed: int) -> None:
        if self.enabled and self.tty:
            print(" " * 100, end="\r", file=sys.stderr)

    def _print(self, now: float, sent: int, acked: int, failed: int, end: str) -> None:
        elapsed = max(now - self.started, 1e-9)
        print(
            f"simulate: sent {sent:,}/{self.total:,}  {sent / elapsed:,.0f} ev/s  "
            f"acked {acked:,}  failed {failed:,}",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def run_simulation(
    settings: Settings,
    count: int,
    seed: int,
    rate: float = 0.0,
    progress: bool = True,
    *,
    topic: str | None = None,
    patients: int = 3000,
    staff: int = 400,
    start: dt.datetime = DEFAULT_START,
    message_timeout_s: float = 30.0,
    events: Iterable[AccessEvent] | None = None,
) -> SimulationSummary:
    """Produce ``count`` simulated events to Kafka and wait for every acknowledgement.

    ``rate`` is events per second (0 = as fast as possible). Never raises for delivery
    problems: the summary's ``failed`` counts every event Kafka did not acknowledge.
    Raises ``InfrastructureError`` when no broker answers at the start
    (``KAFKA_UNREACHABLE``) or Kafka refuses a record outright (e.g.
    ``TOPIC_AUTHORIZATION_FAILED``).
    ``events``: send these (e.g. an audit scenario's) instead of ``simulate``'s.
    """
    from careledger.kafka.producer import AccessEventProducer, DeliveryError
    from careledger.kafka.security import PRODUCER

    if events is None:
        model = HospitalModel(staff=staff, patients=patients, seed=seed)
        log.info("simulating %s", model.describe())
        events = simulate(model, count, seed, start)
    meter = _Progress(count, progress)
    sent = 0
    report = None
    producer = AccessEventProducer(
        settings,
        topic=topic,
        principal=PRODUCER,
        extra_config={"message.timeout.ms": int(message_timeout_s * 1000)},
    )
    started = time.monotonic()
    interval = 1.0 / rate if rate > 0 else 0.0
    send = producer.send
    try:
        producer.require_reachable()
        for event in events:
            send(event)
            sent += 1
            if interval or not sent & 0xFF:
                now = time.monotonic()
                if interval:
                    ahead = started + sent * interval - now
                    if ahead > 0.002:
                        time.sleep(ahead)
                    producer.poll(0)  # at low rates send() serves reports too rarely
                r = producer.report()
                meter.maybe(now, sent, r.acked, r.failed)
        try:
            report = producer.close(timeout=message_timeout_s + 15.0)
        except DeliveryError as exc:  # already logged by the SDK; counted below
            report = exc.report
    finally:
        if report is None:  # interrupted: report what got through
            try:
                report = producer.close(timeout=5.0)
            except DeliveryError as exc:
                report = exc.report
    seconds = time.monotonic() - started
    meter.done(sent, report.acked, report.failed)
    return SimulationSummary(
        sent=sent, acked=report.acked, failed=sent - report.acked, seconds=seconds
    )


def write_events(
    out: BinaryIO,
    count: int,
    seed: int,
    *,
    patients: int = 3000,
    staff: int = 400,
    start: dt.datetime = DEFAULT_START,
) -> int:
    """Write ``count`` events as canonical JSON lines (no Kafka); returns the count."""

    model = HospitalModel(staff=staff, patients=patients, seed=seed)
    n = 0
    for event in simulate(model, count, seed, start):
        out.write(canonical_event_bytes(event) + b"\n")
        n += 1
    return n


def configure_simulate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=10_000, help="events to send (10000)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (42)")
    parser.add_argument(
        "--start",
        type=parse_start,
        default=DEFAULT_START,
        help="simulated start time, ISO date or date-time, UTC (2026-11-02T00:00:00Z)",
    )
    parser.add_argument("--topic", help="Kafka topic (default: settings.topic_events)")
    parser.add_argument("--patients", type=int, default=3000, help="patients in the model (3000)")
    parser.add_argument("--staff", type=int, default=400, help="workforce size (400)")
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write canonical JSON lines to FILE ('-' = stdout) instead of sending to Kafka",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument(
        "--with-reference",
        action="store_true",
        help="also produce the reference data (workforce, patients, care relationships, "
        "consents) consistent with the traffic to its topics first, each acknowledged "
        "(with --output: as the first lines of FILE)",
    )
    parser.add_argument(
        "--ground-truth",
        metavar="FILE",
        help="inject labelled inappropriate accesses and write their ground truth to FILE "
        "as JSON lines {event_id, rules, actor_id, patient_id} (never to Kafka); the "
        'traffic\'s own curious accesses are included with "injected": false',
    )
    parser.add_argument(
        "--inappropriate-rate",
        type=float,
        default=None,
        help="share of injected inappropriate accesses (0.01 with --ground-truth, else 0)",
    )


def command_simulate(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0: every event acknowledged; 1: some were not; 2: Kafka cannot be reached or
    refuses the records outright (said in one line)."""
    try:
        return _simulate(args, settings)
    except CareledgerError as exc:  # Kafka unreachable, or a record refused outright
        print(f"simulate: {exc.code}: {exc.message}", file=sys.stderr)
        return 2


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    if args.count < 0 or args.rate < 0 or args.patients < 1 or args.staff < len(ROLES):
        print(
            f"simulate: --count/--rate must be >= 0, --patients >= 1, --staff >= {len(ROLES)}",
            file=sys.stderr,
        )
        return 2
    with_reference = getattr(args, "with_reference", False)
    ground_truth = getattr(args, "ground_truth", None)
    inappropriate = getattr(args, "inappropriate_rate", None)
    if with_reference or ground_truth or inappropriate is not None:
        return _command_scenario(args, settings, with_reference, ground_truth, inappropriate)
    if args.output:
        started = time.monotonic()
        kwargs = {"patients": args.patients, "staff": args.staff, "start": args.start}
        if args.output == "-":
            try:
                n = write_events(sys.stdout.buffer, args.count, args.seed, **kwargs)
                sys.stdout.flush()
            except BrokenPipeError:  # e.g. piped into head: not an error
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
        else:
            with open(args.output, "wb") as f:
                n = write_events(f, args.count, args.seed, **kwargs)
        print(
            f"simulate: wrote {n:,} events in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
        return 0
    topic = args.topic or settings.topic_events
    summary = run_simulation(
        settings,
        args.count,
        args.seed,
        rate=args.rate,
        progress=not args.quiet,
        topic=topic,
        patients=args.patients,
        staff=args.staff,
        start=args.start,
    )
    print(
        f"simulate: {summary.sent:,} events to {topic} (seed {args.seed}): "
        f"acked {summary.acked:,}, not acknowledged {summary.failed:,}, "
        f"{summary.seconds:.1f} s ({summary.rate:,.0f} ev/s)",
        file=sys.stderr,
    )
    return 0 if summary.failed == 0 and summary.acked == summary.sent else 1


def produce_reference(
    settings: Settings, records: Iterable[ReferenceRecord], timeout_s: float = 45.0
) -> tuple[int, int]:
    """Produce reference records to their topics (keyed by subject id: patient or user
    id; on a sealed ledger sealed to the ingest key and unkeyed, ADR 0037) and wait for
    every acknowledgement. Returns (sent, acknowledged). Raises ``ConfigError`` for a
    sealed ledger without ``ingest_public_key``, ``InfrastructureError`` as
    ``run_simulation`` does."""
    from careledger.config import ConfigError
    from careledger.ingest_keys import reference_message
    from careledger.kafka.batching import ingest_public_key_of
    from careledger.kafka.producer import AccessEventProducer, DeliveryError
    from careledger.kafka.security import PRODUCER

    seal_to = ingest_public_key_of(settings)
    if settings.seal_events and seal_to is None:
        raise ConfigError(
            "this ledger is sealed (seal_events): set ingest_public_key, so reference "
            "records are sealed to the processor's ingest key"
        )
    producers: dict[str, AccessEventProducer] = {}
    sent = acked = 0
    try:
        for rec in records:
            topic = getattr(settings, reference_topic_setting(rec.kind))
            producer = producers.get(topic)
            if producer is None:
                producer = producers[topic] = AccessEventProducer(
                    settings, topic=topic, principal=PRODUCER
                )
                producer.require_reachable()
            key, value = reference_message(rec, seal_to)
            producer.send_raw(value, key)
            sent += 1
    finally:
        for producer in producers.values():
            try:
                acked += producer.close(timeout=timeout_s).acked
            except DeliveryError as exc:  # logged by the SDK (counts and topics only)
                acked += exc.report.acked
    return sent, acked


def _command_scenario(
    args: argparse.Namespace,
    settings: Settings,
    with_reference: bool,
    ground_truth: str | None,
    inappropriate: float | None,
) -> int:

    rate = inappropriate if inappropriate is not None else (0.01 if ground_truth else 0.0)
    if not 0.0 <= rate < 0.5:
        print("simulate: --inappropriate-rate must be in [0, 0.5)", file=sys.stderr)
        return 2
    started = time.monotonic()
    model = HospitalModel(staff=args.staff, patients=args.patients, seed=args.seed)
    scenario = simulate_audit_scenario(model, args.count, args.seed, args.start, rate)
    # identifiers stay out of logs: counts only
    print(
        f"simulate: scenario of {len(scenario.events):,} events ({scenario.injected:,} "
        f"inappropriate), {len(scenario.reference_records):,} reference records "
        f"in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    if ground_truth:
        with open(ground_truth, "w", encoding="utf-8") as f:
            for g in scenario.all_truth():
                f.write(g.to_json() + "\n")
    if args.output:
        out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
        try:
            if with_reference:
                for rec in scenario.reference_records:
                    out.write(canonical_reference_bytes(rec) + b"\n")
            for event in scenario.events:
                out.write(canonical_event_bytes(event) + b"\n")
            out.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        finally:
            if out is not sys.stdout.buffer:
                out.close()
        return 0
    if with_reference:
        sent, acked = produce_reference(settings, scenario.reference_records)
        print(f"simulate: {sent:,} reference records, acked {acked:,}", file=sys.stderr)
        if acked != sent:
            return 1
    topic = args.topic or settings.topic_events
    summary = run_simulation(
        settings,
        len(scenario.events),
        args.seed,
        rate=args.rate,
        progress=not args.quiet,
        topic=topic,
        events=scenario.events,
    )
    print(
        f"simulate: {summary.sent:,} events to {topic} (seed {args.seed}): "
        f"acked {summary.acked:,}, not acknowledged {summary.failed:,}, "
        f"{summary.seconds:.1f} s ({summary.rate:,.0f} ev/s)",
        file=sys.stderr,
    )
    return 0 if summary.failed == 0 and summary.acked == summary.sent else 1
