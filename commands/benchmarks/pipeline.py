"""`careledger benchmark`: end-to-end figures on the local stack, chained against a baseline.

Measured in one run, on the same events (``pipeline_load.EventPool``: event ``i`` is the
same in every phase), produced with the real SDK and signed at the source as in
production, against the same broker and ClickHouse server on this machine:

* **chained**: the real processor (source checks, validate, canonicalise, hash, Merkle
  root, sign, write events then header);
* **baseline**: the same faust consumer (``careledger process --baseline``) inserting the
  same Kafka records' bytes into ClickHouse without validating, chaining or signing.

Phases:

1. **backlog**: ``--events`` events produced once (one SDK thread, flat out) to a topic;
   every drain below reads that same topic.
2. **drain**: the chained processor (fresh database) drains the backlog; the window runs
   from the moment its consumer group is stable (it holds the partitions and may start
   consuming) to the last event stored (and the wall time from the processes' start). Figures:
   events/s, CPU µs per event of the processor (``/proc/<pid>/stat`` utime+stime) and of
   Kafka and ClickHouse, the processor's peak RSS (``VmHWM``), the load average at the
   start. Afterwards the store is checked: events in blocks, event rows, distinct event
   ids, all equal to what was produced (nothing lost, nothing duplicated).
   ``--scale-out``: then two chained processes (same app id: one consumer group sharing
   the partitions) drain it again into another database (and output topics of its
   own), measured from the moment the group is stable with both (with ``--sealed``, the
   sealed backlog too: the opening shared by two processes). Then the baseline drains
   it.
3. **latency**: for each offered rate (``--rates``; default 25/50/75 % of the chained
   drain rate), events are offered for ``--latency-seconds`` by token-bucket-paced SDK
   producers; the achieved offered rate is reported next to the target. Latency runs
   from the events topic's LogAppendTime (the broker's append of the record; a batch
   record's time applies to each of its events) to the block holding the event stored:
   for the chained mode exactly, per event, read back after the phases (append times
   from the events topic, each block's store time from the processor's checkpoint
   published right after it, events' blocks from the store), and also from each event's
   ``send()`` (``latency_from_send``); for the baseline from the processor's latency
   histogram (``processors.metrics``, per record) differenced around the phase. The
   chained processor's own histogram is kept next to the exact figures.

Every figure goes to a JSON file (``--out``, default ``<run_dir>/benchmarks``) and a
latency-vs-throughput plot (PNG, with matplotlib: ``pip install 'careledger[benchmark]'``).
A benchmark, not a test: it asserts nothing about speed. It never prints a traceback: a
failure is one line on stderr and exit status 2 (the stack cannot be reached) or 1
(anything else, including a chained drain that lost or duplicated events).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from careledger.config import Settings
from careledger_core.errors import CareledgerError, InfrastructureError
from commands.benchmarks import pipeline_host as host
from commands.benchmarks.pipeline_load import EventPool, produce_backlog
from commands.benchmarks.pipeline_report import (
    SCHEMA,
    default_rates,
    median_ratios,
    parse_rates,
    plot,
    rates_by_mode,
    ratios_of,
    render_table,
    to_json,
    write_json,
)
from commands.benchmarks.pipeline_run import BenchmarkError, Run, line_of

__all__ = ["BenchmarkError", "command_benchmark", "configure_benchmark"]

#: simulated events in the pool the run's events are copied from
POOL_SIZE = 20_000
#: what the latency figures are (printed under the table, kept in the JSON)
LATENCY_NOTES = (
    "chained latency: each event's broker append time (the LogAppendTime of its "
    "record; a batch record's time applies to each of its events) to the time of "
    "the processor's checkpoint covering its block (published right after the block "
    "is stored), exact, per event; the processor's own histogram is kept as "
    "processor_histogram in the JSON",
    "baseline latency: the processor's histogram (one observation per Kafka record "
    "at the end of its insert), interpolated in 25 %-wide buckets",
    "the SDK's batching wait before the append (<= source_batch_max_ms) is not in p50/p95/"
    "p99; 'p99 send' (chained) counts from the producer's send(), batching and signing "
    "included (latency_from_send in the JSON)",
)


def _produce(settings: Settings, events: list[Any], rate: float = 0.0) -> float:
    """Send ``events`` with one SDK producer (at ``rate`` events/s if positive, paced by
    ``pipeline_load.TokenBucket``), flush; the seconds it took. The replica and witness
    benchmarks feed their pipelines with it."""
    import time

    from careledger.kafka.producer import AccessEventProducer
    from careledger.kafka.security import ADMIN
    from commands.benchmarks.pipeline_load import BUCKET_SECONDS, TokenBucket

    started = time.monotonic()
    bucket = TokenBucket(rate, max(1.0, rate * BUCKET_SECONDS), started) if rate > 0 else None
    with AccessEventProducer(settings, principal=ADMIN) as producer:
        i = 0
        while i < len(events):
            n = len(events) - i
            if bucket is not None:
                now = time.monotonic()
                n = bucket.take(now, n)
                if n == 0:
                    time.sleep(max(bucket.wait(now), 0.0005))
                    continue
            for event in events[i : i + n]:
                producer.send(event)
            i += n
        producer.flush()
    return time.monotonic() - started


def _rates(text: str) -> list[float]:
    try:
        return parse_rates(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def configure_benchmark(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events", type=_positive_int, default=100_000, help="backlog to drain (100000)"
    )
    parser.add_argument(
        "--rates",
        type=_rates,
        help="offered rates of the latency phases, events/s, e.g. 5000,15000 "
        "(default: 25,50,75 %% of the measured chained drain rate)",
    )
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)  # the former option
    parser.add_argument(
        "--latency-seconds", type=float, default=20.0, help="length of each latency phase (20)"
    )
    parser.add_argument(
        "--warmup-events",
        type=_positive_int,
        default=2_000,
        help="events stored before the latency phases start (2000)",
    )
    parser.add_argument(
        "--producer-threads",
        type=int,
        default=0,
        help="SDK producer threads offering each rate (0: as many as the backlog's "
        "producer rate suggests, at most 4)",
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="also drain the backlog with 2 chained processor processes sharing the partitions "
        "(with --sealed, the sealed backlog too)",
    )
    parser.add_argument(
        "--sealed",
        action="store_true",
        help="also drain the same events sealed (ADR 0037: sealed by the SDK, opened and "
        "re-sealed under per-patient keys from a SoftHSM2 token by the processor), to "
        "measure what encryption at rest costs",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also run `careledger verify --no-audit` on each chained drain's ledger",
    )
    parser.add_argument("--no-latency", action="store_true", help="drains only, no latency phases")
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        help="drain each backlog this many times, in rounds of every mode (each round's "
        "ratios from its own drains; the table adds the medians): runs on a busy 2-core "
        "machine vary by up to a third (1)",
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=120.0,
        help="give up when a processor stores nothing new for this long (120)",
    )
    parser.add_argument(
        "--out", type=Path, help="directory of the JSON and PNG (default <run_dir>/benchmarks)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases, topics and processor logs"
    )
    parser.add_argument(
        "--core", action="store_true", help="also run the in-process core benchmark"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the figures as JSON instead of the table"
    )


def command_benchmark(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import KafkaException

    from careledger.stack import StackError

    try:
        return _benchmark(args, settings)
    except BenchmarkError as exc:
        print(f"careledger benchmark: {exc}", file=sys.stderr)
        return exc.exit_code
    except (StackError, InfrastructureError, KafkaException) as exc:
        print(f"careledger benchmark: the stack cannot be reached: {line_of(exc)}", file=sys.stderr)
        return 2
    except (CareledgerError, OSError, RuntimeError, subprocess.SubprocessError, ValueError) as exc:
        print(f"careledger benchmark: {type(exc).__name__}: {line_of(exc)}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------- the command


def _benchmark(args: argparse.Namespace, settings: Settings) -> int:
    from careledger import stack
    from careledger.keys import write_keypair
    from careledger.storage.backend import ClickHouseBackend

    if args.rate and not args.rates:
        args.rates = [args.rate]
    if args.latency_seconds <= 0:
        raise BenchmarkError("--latency-seconds must be positive")
    if not getattr(args, "verbose", False):  # the figures, not every step's log line
        logging.getLogger("careledger").setLevel(logging.WARNING)
    started = datetime.now(UTC)
    status = stack.up(settings, quiet=True)
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-"))
    key_path = workdir / "signing.key"
    write_keypair(key_path)
    base = settings.replace(
        signing_key=key_path,
        trusted_keys=(str(key_path) + ".pub",),
        processor_web_port=0,
    )
    ch_detail = status.clickhouse.detail
    figures: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": host.machine(
            kafka_version=settings.kafka_version,
            clickhouse_version=ch_detail.removeprefix("ClickHouse ") if ch_detail else None,
        ),
        "settings": {
            name: getattr(settings, name, None)
            for name in (
                "partitions",
                "block_max_events",
                "block_max_ms",
                "require_source_signatures",
                "source_batch_max_events",
                "source_batch_max_ms",
                "source_record_format",
            )
        },
        "events": args.events,
        "notes": [],
    }
    out_dir = args.out or (settings.run_dir / "benchmarks")
    json_path = out_dir / f"pipeline-{started.strftime('%Y%m%d-%H%M%S')}.json"
    backend = ClickHouseBackend.from_settings(base)
    run = Run(
        args=args,
        base=base,
        workdir=workdir,
        run_id=uuid.uuid4().hex[:6],
        pool=EventPool(min(args.events + args.warmup_events, POOL_SIZE)),
        stack_pids={
            "kafka": status.kafka.pid or host.find_pid(host.is_kafka),
            "clickhouse": status.clickhouse.pid or host.find_pid(host.is_clickhouse_server),
        },
        backend=backend,
    )
    failed = True
    try:
        _phases(run, figures)
        failed = False
    except BenchmarkError as exc:
        figures["error"] = str(exc)
        raise
    finally:
        figures["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if args.keep:
            figures["kept"] = {
                "databases": list(run.dbs),
                "topics_named": f"*-bench-{run.run_id}-*",
                "processor_logs": str(workdir),
            }
        try:
            run.cleanup(keep_logs=failed)
        finally:
            backend.close()
        if figures.get("drain"):
            figures["json_path"] = str(json_path)
            png = json_path.with_suffix(".png")
            skipped = plot(figures, png)
            if skipped is None:
                figures["plot_path"] = str(png)
            else:
                figures["plot_skipped"] = skipped
            write_json(figures, json_path)
    if args.core:
        import commands.benchmarks.core as benchmark_core

        figures["core"] = benchmark_core.run()
        write_json(figures, json_path)
    print(to_json(figures) if args.json else render_table(figures), end="" if args.json else "\n")
    bad = [d for d in figures.get("drain", []) if d.get("check") and not d["check"]["ok"]]
    bad_verify = [
        d for d in figures.get("drain", []) if d.get("verify", {}).get("exit_status", 0) != 0
    ]
    if bad:
        print(
            "careledger benchmark: a chained drain lost or duplicated events: "
            + "; ".join(
                f"{d['processes']} process(es): lost {d['check']['lost']}, "
                f"duplicated {d['check']['duplicated']}"
                for d in bad
            ),
            file=sys.stderr,
        )
        return 1
    if bad_verify:
        print(
            f"careledger benchmark: verify failed: {bad_verify[0]['verify']['last_line']}",
            file=sys.stderr,
        )
        return 1
    return 0


def _phases(run: Run, figures: dict[str, Any]) -> None:
    args = run.args

    def say(message: str) -> None:
        if not args.json:
            print(f"== {message}", file=sys.stderr)

    backlog = run.pipeline("backlog")
    load = host.load_average()
    say(f"producing a backlog of {args.events:,} signed events")
    produced = produce_backlog(backlog, run.pool, 0, args.events)
    run.per_thread_rate = produced.rate
    figures["backlog"] = {
        **produced.as_dict(),
        "records": run.end_offsets(backlog, [backlog.topic_events]),
        "load_average_at_start": load,
    }
    sealed = None
    if args.sealed:
        sealed = run.sealed_pipeline("sealed")
        load = host.load_average()
        say(f"producing the same {args.events:,} events sealed (ADR 0037)")
        produced = produce_backlog(sealed, run.pool, 0, args.events)
        figures["backlog_sealed"] = {
            **produced.as_dict(),
            "records": run.end_offsets(sealed, [sealed.topic_events]),
            "load_average_at_start": load,
        }
    plan = [("chained", 1, backlog, "c1", "chained drain, 1 process")]
    if args.scale_out:
        plan.append(("chained", 2, backlog, "c2", "chained drain, 2 processes"))
    if sealed is not None:
        plan.append(("chained-sealed", 1, sealed, "s1", "chained drain of the sealed events"))
        if args.scale_out:  # the opening shared by two processes (the cores allowing)
            plan.append(("chained-sealed", 2, sealed, "s2", "sealed events, 2 processes"))
    plan.append(("baseline", 1, backlog, "b", "baseline drain"))
    drains: list[dict[str, Any]] = []
    figures["drain"] = drains
    rounds = args.repeat
    per_round = []
    for r in range(1, rounds + 1):
        mine = []
        for mode, processes, source, label, what in plan:
            say(what if rounds == 1 else f"{what} (round {r} of {rounds})")
            drain = run.drain(source, mode, processes, label if rounds == 1 else f"{label}r{r}")
            if rounds > 1:
                drain["round"] = r
            mine.append(drain)
        drains += mine
        per_round.append(ratios_of(mine))
    ratios = per_round[0] if rounds == 1 else median_ratios(per_round)
    if rounds > 1:
        figures["ratios_by_round"] = per_round
        figures["rates_by_mode"] = rates_by_mode(drains)
    one = next(
        (
            m["median_events_per_s"]
            for m in rates_by_mode(drains)
            if (m["mode"], m["processes"]) == ("chained", 1)
        ),
        None,
    )
    figures["ratios"] = ratios
    if args.no_latency:
        return
    rates = args.rates or default_rates(one)
    if not rates:
        figures["notes"].append("no latency phases: the chained drain gave no rate")
        return
    figures["rates"] = rates
    figures["notes"].extend(LATENCY_NOTES)
    phases: list[dict[str, Any]] = []
    figures["latency"] = phases
    peaks: dict[str, int | None] = {}
    figures["latency_peak_rss_bytes"] = peaks
    for mode in ("chained", "baseline"):
        say(f"{mode} latency at {', '.join(f'{r:,.0f}' for r in rates)} events/s")
        got, peaks[mode] = run.latency(mode, rates)
        phases.extend(got)
