"""`careledger benchmark`: end-to-end figures on the local stack, with a baseline.

Measured in one run, on the same events, the same broker and the same server:

* **chained**: the real processor (validate, canonicalise, hash, Merkle root,
  sign, write events then header);
* **baseline**: the same faust consumer inserting the same records into
  ClickHouse without validating, chaining or signing.

For each: throughput draining a backlog of ``--events`` pre-produced events
(first stored row to last), then latency from produce to stored (the Kafka
record timestamp to the end of the insert: for the chained run, stored *in a
signed block*) at a steady ``--rate``. Prints figures and chained/baseline
ratios. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from careledger.config import Settings
from careledger.processes import start_processor, stop


def configure_benchmark(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=100_000, help="backlog size per mode")
    parser.add_argument(
        "--rate", type=float, default=2_000.0, help="events/s for the latency phase"
    )
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument(
        "--core", action="store_true", help="also run the in-process core benchmark"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _count(store: Any, baseline: bool) -> int:
    if baseline:
        rows = store.backend.execute(f"SELECT count() FROM {store.db}.baseline_events")
    else:
        rows = store.backend.execute(f"SELECT sum(event_count) FROM {store.db}.blocks")
    return int(rows[0][0] or 0)


def _metrics(settings: Settings) -> dict[str, Any]:
    path = settings.run_dir / "metrics" / f"processor-{settings.processor_app_id}.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _produce(settings: Settings, events: list[Any], rate: float = 0.0) -> float:
    from careledger.kafka.producer import AccessEventProducer

    started = time.monotonic()
    with AccessEventProducer(settings) as producer:
        for i, event in enumerate(events):
            producer.send(event)
            if rate > 0 and i % 50 == 49:
                ahead = (i + 1) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
    return time.monotonic() - started


def _run_mode(
    base: Settings, events: list[Any], baseline: bool, rate: float, latency_s: float, workdir: Path
) -> dict[str, Any]:
    from careledger import stack
    from careledger.sources import ensure_local_source
    from careledger.storage.backend import ClickHouseBackend
    from careledger.storage.store import ChainStore

    name = "baseline" if baseline else "chained"
    suffix = uuid.uuid4().hex[:6]
    results: dict[str, Any] = {"mode": name}
    for phase in ("throughput", "latency"):
        # Topics of its own (reference streams stay empty: this measures access events).
        s = base.with_topic_suffix(
            f"-bench-{name}-{phase}-{suffix}",
            processor_app_id=f"careledger-bench-{name}-{phase}-{suffix}",
            processor_web_port=0,
        )
        topics = stack.default_topics(s)
        stack.ensure_topics(s, topics)
        # Events are signed at the source, as in production: the chained pipeline
        # pays for the source checks (the baseline never checks them).
        s = ensure_local_source(s, say=lambda *_: None)
        store = ChainStore.for_settings(ClickHouseBackend.from_settings(s), s)
        if phase == "throughput":
            _produce(s, events)
            proc = start_processor(s, workdir / f"{name}-{phase}.log", baseline=baseline)
            first = last = None
            deadline = time.monotonic() + 900
            try:
                while time.monotonic() < deadline:
                    n = _count(store, baseline) - results.get("_before", 0)
                    now = time.monotonic()
                    if n > 0 and first is None:
                        first = (now, n)
                    if n >= len(events):
                        last = now
                        break
                    time.sleep(0.05)
            finally:
                stop(proc)
            if first is None or last is None:
                results["throughput_events_per_s"] = None
            else:
                drained = len(events) - first[1]
                results["throughput_events_per_s"] = drained / max(last - first[0], 1e-6)
            results["_before"] = _count(store, baseline)
        else:
            proc = start_processor(s, workdir / f"{name}-{phase}.log", baseline=baseline)
            try:
                time.sleep(8.0)  # let the consumer join its group before we start the clock
                n_events = min(len(events), int(rate * latency_s))
                _produce(s, events[:n_events], rate=rate)
                target = results["_before"] + n_events
                deadline = time.monotonic() + 120
                while _count(store, baseline) < target and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(6.0)  # the processor writes its metrics file every 5 s
                m = _metrics(s)
            finally:
                stop(proc)
            results["latency_p50_s"] = m.get("latency_p50_s")
            results["latency_p99_s"] = m.get("latency_p99_s")
            results["latency_rate_events_per_s"] = rate
        stack.delete_topics(s, list(topics))
    results.pop("_before", None)
    return results


def command_benchmark(args: argparse.Namespace, settings: Settings) -> int:
    from careledger import stack
    from careledger.keys import write_keypair
    from careledger.storage.backend import ClickHouseBackend
    from careledger.storage.migrations import migrate
    from producers.simulator import HospitalModel, simulate

    stack.up(settings)
    db = f"careledger_bench_{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-"))
    key_path = workdir / "signing.key"
    write_keypair(key_path)
    s = settings.replace(
        clickhouse_database=db, signing_key=key_path, trusted_keys=(str(key_path) + ".pub",)
    )
    migrate(s)
    backend = ClickHouseBackend.from_settings(s)
    backend.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.baseline_events "
        "(partition UInt32, kafka_offset UInt64, value String) ENGINE = MergeTree() "
        "ORDER BY (partition, kafka_offset)"
    )
    events = list(simulate(HospitalModel(seed=1), count=args.events, seed=1))
    figures: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "partitions": s.partitions,
            "block_max_events": s.block_max_events,
            "block_max_ms": s.block_max_ms,
        },
        "events": args.events,
    }
    try:
        figures["baseline"] = _run_mode(s, events, True, args.rate, args.latency_seconds, workdir)
        figures["chained"] = _run_mode(s, events, False, args.rate, args.latency_seconds, workdir)
    finally:
        backend.execute(f"DROP DATABASE IF EXISTS {db}")
        backend.close()
    b, c = figures["baseline"], figures["chained"]
    if b.get("throughput_events_per_s") and c.get("throughput_events_per_s"):
        figures["throughput_ratio_chained_over_baseline"] = (
            c["throughput_events_per_s"] / b["throughput_events_per_s"]
        )
    if args.core:
        import commands.benchmarks.core as benchmark_core

        figures["core"] = benchmark_core.run()
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"careledger benchmark on {figures['machine']['cores']} cores, "
        f"{s.partitions} partitions, {args.events:,} events per mode"
    )
    for mode in ("baseline", "chained"):
        r = figures[mode]
        tput = r.get("throughput_events_per_s")
        p50, p99 = r.get("latency_p50_s"), r.get("latency_p99_s")
        print(
            f"  {mode:<9} throughput {tput:>10,.0f} events/s   latency at {args.rate:,.0f}/s: "
            f"p50 {_ms(p50)}  p99 {_ms(p99)}"
            if tput
            else f"  {mode:<9} no result"
        )
    ratio = figures.get("throughput_ratio_chained_over_baseline")
    if ratio:
        print(f"  chained / baseline throughput: {ratio:.2f}")
    if "core" in figures:
        print(f"  core (one process): {json.dumps(figures['core'])}")
    return 0


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"
