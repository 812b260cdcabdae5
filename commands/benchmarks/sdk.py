"""`careledger benchmark-sdk`: signed events/s of the producer SDK, per thread (ADR 0020).

Two figures per record format (``batch``: one Kafka record per signed batch, the
default; ``event``: one record per event, the old shape):

* **signing**: the SDK's pure part only (``SourceBatcher``: canonical bytes in, signed
  records out), one thread, no Kafka;
* **to the broker**: ``AccessEventProducer.send`` for ``--events`` simulated events on each
  of ``--threads`` threads (one producer each) into a topic of its own on the local
  broker, until every record is acknowledged (``flush``); events/s per thread and in
  total.

The events are simulated once, before any clock starts. A benchmark, not a test: it
asserts nothing. Exit 2 with one line when Kafka cannot be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
import uuid
from typing import Any

from careledger.config import Settings


def configure_benchmark_sdk(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="events per thread")
    parser.add_argument("--threads", default="1,2", help="thread counts to measure, e.g. 1,2")
    parser.add_argument("--formats", default="batch,event", help="record formats: batch,event")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _signing_rate(canonical: list[bytes], fmt: str, settings: Settings) -> float:
    from careledger.kafka.batching import SourceBatcher, format_utc
    from careledger_core.signing import SigningKey

    batcher = SourceBatcher(
        SigningKey.from_seed(os.urandom(32)),
        "bench",
        os.urandom(8).hex(),
        max_events=settings.source_batch_max_events,
        max_age_s=3600.0,
        max_bytes=settings.source_batch_max_bytes,
        record_format=fmt,
    )
    started = time.perf_counter()
    now = time.monotonic()
    for value in canonical:
        source, _opened, full = batcher.add(value, b"k", now)
        if full:
            batcher.take(source, format_utc(time.time()))
    list(batcher.take_all(format_utc(time.time())))
    return len(canonical) / (time.perf_counter() - started)


def _broker_rate(
    settings: Settings, events: list[Any], fmt: str, threads: int, topic: str
) -> dict[str, Any]:
    from careledger.kafka.producer import AccessEventProducer
    from careledger.kafka.security import ADMIN
    from careledger_core.signing import SigningKey

    s = settings.replace(source_record_format=fmt, source_heartbeat_interval_s=3600.0)
    producers = [
        AccessEventProducer(
            s,
            topic=topic,
            source_key=SigningKey.from_seed(os.urandom(32)),
            source_id="bench",
            principal=ADMIN,
        )
        for _ in range(threads)
    ]
    elapsed: list[float] = [0.0] * threads
    failed: list[int] = [0] * threads

    def run(i: int) -> None:
        p = producers[i]
        started = time.perf_counter()
        for e in events:
            p.send(e)
        report = p.flush(120.0)
        elapsed[i] = time.perf_counter() - started
        failed[i] = report.failed

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    wall = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - wall
    for p in producers:
        p.close(10.0)
    per_thread = [len(events) / t for t in elapsed if t > 0]
    return {
        "threads": threads,
        "events_per_s_per_thread": min(per_thread) if per_thread else 0.0,
        "events_per_s_total": threads * len(events) / wall,
        "failed": sum(failed),
    }


def bench_settings(settings: Settings) -> Settings:
    """Every topic of its own: the producers' heartbeats (to the sources topic) must never
    reach a real ledger, where a key nobody registered is a finding."""
    return settings.with_topic_suffix(f"-bench-sdk-{uuid.uuid4().hex[:8]}")


def command_benchmark_sdk(args: argparse.Namespace, settings: Settings) -> int:
    from careledger import stack
    from careledger_core.errors import CareledgerError
    from careledger_core.event import canonical_event_bytes
    from producers.simulator import HospitalModel, simulate

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    counts = [int(t) for t in args.threads.split(",") if t.strip()]
    events = list(simulate(HospitalModel(seed=7), count=args.events, seed=7))
    canonical = [canonical_event_bytes(e) for e in events]
    settings = bench_settings(settings)
    topic = settings.topic_events
    own = {topic: settings.partitions, settings.topic_sources: 1}
    try:
        stack.ensure_topics(settings, own)
    except CareledgerError as exc:
        print(f"careledger benchmark-sdk: cannot reach Kafka: {exc}")
        return 2
    result: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "load_at_start": os.getloadavg()},
        "events_per_thread": args.events,
        "avg_event_bytes": round(sum(map(len, canonical)) / max(1, len(canonical))),
        "formats": {},
    }
    try:
        for fmt in formats:
            entry: dict[str, Any] = {
                "signing_events_per_s": _signing_rate(canonical, fmt, settings)
            }
            entry["broker"] = [_broker_rate(settings, events, fmt, n, topic) for n in counts]
            result["formats"][fmt] = entry
    finally:
        with contextlib.suppress(CareledgerError):  # a leftover topic is not a result
            stack.delete_topics(settings, list(own))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"producer SDK, {args.events:,} simulated events per thread "
        f"(~{result['avg_event_bytes']} bytes each), {os.cpu_count()} cores, "
        f"load {result['machine']['load_at_start'][0]:.2f}"
    )
    for fmt, entry in result["formats"].items():
        print(f"  {fmt} records: signing only {entry['signing_events_per_s']:,.0f} events/s")
        for b in entry["broker"]:
            print(
                f"    to the broker, {b['threads']} thread(s): "
                f"{b['events_per_s_per_thread']:,.0f} events/s per thread, "
                f"{b['events_per_s_total']:,.0f} in total, {b['failed']} failed"
            )
    return 0
