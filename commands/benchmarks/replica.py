"""`careledger benchmark-replica`: how far behind the primary a replica runs (ADR 0017).

On the real local stack, with topics and databases of its own: starts the processor
and ``careledger replica follow`` as child processes, produces ``--events`` signed
simulated events at ``--rate``, waits until the replica holds them all, then stops the
follower and prints its **lag**: per block, from the block's signed ``created_at`` (the
processor seals it) to the replica's write of it (the processor's store write, the
publication to the blocks topic, the replica's read, verification and write).

Then a second, empty replica database catches up from the blocks topic with
``careledger replica catch-up`` (process start included): the **catch-up rate** of a
new replica. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from careledger.config import Settings


def configure_benchmark_replica(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=20_000, help="events to produce")
    parser.add_argument("--rate", type=float, default=2_000.0, help="events/s")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _replica_events(s: Settings, database: str) -> int:
    from careledger.storage.backend import ClickHouseBackend, StorageError

    backend = ClickHouseBackend.from_settings(s, "replica")
    try:
        rows = backend.execute(f"SELECT sum(event_count) FROM {database}.blocks")
        return int(rows[0][0] or 0)
    except StorageError:  # not created yet
        return 0
    finally:
        backend.close()


def _summary(log_text: str) -> dict[str, Any]:
    """The follower's JSON summary, the last JSON document in its log."""
    start = log_text.rfind('{\n  "replica"')
    if start < 0:
        return {}
    doc, _ = json.JSONDecoder().raw_decode(log_text[start:])
    return dict(doc)


def command_benchmark_replica(args: argparse.Namespace, settings: Settings) -> int:
    from careledger import stack
    from careledger.kafka.security import ADMIN
    from careledger.keys import write_keypair
    from careledger.processes import run_cli, start_cli, start_processor, stop
    from careledger.sources import ensure_local_source
    from careledger.storage.backend import ClickHouseBackend
    from careledger.storage.migrations import migrate
    from commands.benchmarks.pipeline import _produce
    from producers.simulator import HospitalModel, simulate

    stack.up(settings)
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-replica-"))
    key = workdir / "signing.key"
    write_keypair(key)
    s = settings.with_topic_suffix(
        f"-bench-replica-{tag}",
        clickhouse_database=f"careledger_bench_{tag}",
        replica_clickhouse_database=f"careledger_bench_{tag}_replica",
        processor_app_id=f"careledger-bench-replica-{tag}",
        processor_web_port=0,
        signing_key=key,
        trusted_keys=(f"{key}.pub",),
    )
    topics = stack.default_topics(s)
    stack.ensure_topics(s, topics)
    migrate(s)
    s = ensure_local_source(s, say=lambda *_: None, principal=ADMIN)
    events = list(simulate(HospitalModel(seed=5), count=args.events, seed=5))
    second = f"{s.replica_clickhouse_database}2"
    figures: dict[str, Any] = {"events": args.events, "rate": args.rate}
    processor = start_processor(s, workdir / "processor.log")
    follower = start_cli(s, workdir / "replica.log", "replica", "follow", "--json")
    try:
        time.sleep(8.0)  # let the consumers join before the clock starts
        _produce(s, events, rate=args.rate)
        deadline = time.monotonic() + 300
        while _replica_events(s, s.replica_clickhouse_database) < args.events:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        stop(follower, signal.SIGTERM)
        summary = _summary((workdir / "replica.log").read_text(errors="replace"))
        figures["follow"] = {
            k: summary.get(k) for k in ("blocks_stored", "events_stored", "lag_p50_s", "lag_p99_s")
        }
        started = time.monotonic()
        done = run_cli(
            s.replace(replica_clickhouse_database=second), "replica", "catch-up", "--json"
        )
        elapsed = time.monotonic() - started
        caught = json.loads(done.stdout) if done.returncode == 0 else {}
        stored = int(caught.get("events_stored") or 0)
        figures["catch_up"] = {
            "events": stored,
            "seconds": round(elapsed, 2),
            "events_per_s": round(stored / elapsed) if elapsed else None,
        }
    finally:
        stop(follower)
        stop(processor)
        backend = ClickHouseBackend.from_settings(s)
        for db in (s.clickhouse_database, s.replica_clickhouse_database, second):
            backend.execute(f"DROP DATABASE IF EXISTS {db}")
        backend.close()
        stack.delete_topics(s, list(topics))
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    f, c = figures["follow"], figures["catch_up"]
    print(
        f"careledger benchmark-replica: {args.events:,} events at {args.rate:,.0f}/s\n"
        f"  replica lag (block sealed -> stored in the replica): "
        f"p50 {f['lag_p50_s']} s, p99 {f['lag_p99_s']} s over {f['blocks_stored']} blocks\n"
        f"  a new replica catching up: {c['events']:,} events in {c['seconds']} s "
        f"({c['events_per_s']} events/s, process start included)"
    )
    return 0
