"""`careledger benchmark-verify`: events/s of ``careledger verify`` against ClickHouse.

Builds a realistic ledger in a database of its own (``verify_ledger``: simulated access
events in source-signed batch records of ``--batch`` events, blocks of about
``--block-events`` events, ``--chains`` partition chains, the source key registered on
the sources chain), then runs the real ``careledger verify --no-audit`` (every chain
check and every source check; no Kafka checkpoints, nothing recorded) as a child
process once per ``--processes`` count and reports, for each:

* events/s over the child's wall time (start to exit, imports included);
* events/s per core: events over the CPU time (user + system) of the verify process
  and its worker processes;
* peak RSS of the largest of those processes;
* the run's own ``elapsed_s`` (the chain checks, from its JSON) and its result.

The load average is printed at the start (the machine may be shared). The database is
dropped at the end (``--keep`` keeps it). A benchmark, not a test: it asserts nothing,
but says so when a run is not ``intact``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from careledger.config import Settings

from .child import run_measured


def configure_benchmark_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="access events in the ledger")
    parser.add_argument("--chains", type=int, default=4, help="access-event chains (partitions)")
    parser.add_argument("--batch", type=int, default=500, help="events per signed batch record")
    parser.add_argument("--block-events", type=int, default=1000, help="events per block")
    parser.add_argument(
        "--processes", default="1,2", help="verify worker process counts to measure, e.g. 1,2"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per process count (best kept)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--ledger",
        action="store_true",
        help="instead: run the whole verify (chains and the auditor's rows) once over the "
        "configured ledger as it stands, and report its time, peak RSS and RSS over time",
    )


def _verify_knows_processes() -> bool:
    from commands.verify import configure_verify

    parser = argparse.ArgumentParser()
    configure_verify(parser)
    return any("--processes" in a.option_strings for a in parser._actions)


def _run_verify(settings: Settings, processes: int | None) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "commands.cli",
        "verify",
        "--no-audit",
        "--no-checkpoints",
        "--no-record",
        "--json",
    ]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    run = run_measured(cmd, settings)
    wall, cpu, text, errors = run.wall_s, run.cpu_s, run.stdout, run.stderr
    result: dict[str, Any] = {
        "processes": processes,
        "exit": run.exit,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
    }
    try:
        doc = json.loads(text)
    except ValueError:
        result["error"] = (errors or text)[-2000:]
        return result
    events = int(doc["totals"]["events"])
    result.update(
        events=events,
        result=doc["result"],
        verify_elapsed_s=doc["elapsed_s"],
        events_per_s=round(events / wall, 1),
        events_per_s_per_core=round(events / cpu, 1) if cpu > 0 else None,
        failures=doc["totals"]["failures"],
    )
    if doc["result"] != "intact":
        result["findings_by_code"] = doc["totals"]["findings_by_code"]
    return result


def _on_ledger(args: argparse.Namespace, settings: Settings) -> int:
    from commands.benchmarks.verify_audited import run_on_ledger, shown

    load = os.getloadavg()
    figures: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load]},
        "database": settings.clickhouse_database,
        "run": run_on_ledger(settings),
    }
    run = figures["run"]
    if "error" in run:  # verify said why in one line (exit 2: it could not reach a server)
        print(
            f"careledger benchmark-verify: verify exited {run['exit']}: {run['error']}",
            file=sys.stderr,
        )
        return 2 if run["exit"] == 2 else 1
    print(json.dumps(figures, indent=2) if args.json else shown(figures))
    return 0


def command_benchmark_verify(args: argparse.Namespace, settings: Settings) -> int:
    from careledger import stack
    from careledger.storage.backend import ClickHouseBackend
    from careledger.storage.migrations import migrate
    from careledger.storage.store import ChainStore
    from commands.benchmarks.verify_ledger import build_ledger

    if args.ledger:
        return _on_ledger(args, settings)

    try:
        counts = [int(p) for p in str(args.processes).split(",") if p.strip()]
    except ValueError:
        print("careledger benchmark-verify: --processes is a list of integers", file=sys.stderr)
        return 2
    if args.events < 1 or args.chains < 1 or any(c < 1 for c in counts):
        print("careledger benchmark-verify: counts must be >= 1", file=sys.stderr)
        return 2
    stack.up(settings, quiet=True)
    load = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-verify-"))
    s = settings.replace(
        clickhouse_database=f"careledger_bv_{uuid.uuid4().hex[:8]}",
        verifier_state_dir=workdir / "verifier",
    )
    migrate(s)
    backend = ClickHouseBackend.from_settings(s)
    figures: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load]},
        "database": s.clickhouse_database,
    }
    try:
        store = ChainStore.for_settings(backend, s)
        chains = [s.chain_id(s.topic_events, p) for p in range(args.chains)]
        started = time.perf_counter()
        ledger = build_ledger(
            store,
            chains,
            s.chain_id(s.topic_sources, 0),
            events=args.events,
            batch_size=args.batch,
            block_events=args.block_events,
        )
        figures["ledger"] = {
            "events": ledger.events,
            "blocks": ledger.blocks,
            "chains": len(chains),
            "batch_events": args.batch,
            "block_events": args.block_events,
            "build_s": round(time.perf_counter() - started, 2),
        }
        vs = s.replace(
            trusted_keys=(ledger.processor_key,),
            trusted_registrar_keys=(ledger.registrar_key,),
        )
        if args.keep:  # to verify the kept database by hand
            figures["trusted_keys"] = {
                "processor": ledger.processor_key,
                "registrar": ledger.registrar_key,
            }
        knows = _verify_knows_processes()
        runs = []
        for n in counts:
            best: dict[str, Any] | None = None
            for _ in range(max(1, args.repeat)):
                r = _run_verify(vs, n if knows else None)
                if best is None or r.get("wall_s", 1e9) < best.get("wall_s", 1e9):
                    best = r
            assert best is not None
            best["processes"] = n if knows else "n/a (no --processes option)"
            runs.append(best)
        figures["runs"] = runs
    finally:
        if not args.keep:
            backend.execute(f"DROP DATABASE IF EXISTS {s.clickhouse_database}")
        backend.close()
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    led = figures["ledger"]
    print(
        f"careledger benchmark-verify on {os.cpu_count()} cores (load average at start "
        f"{' '.join(str(x) for x in figures['machine']['loadavg_at_start'])}): "
        f"{led['events']:,} events in {led['blocks']:,} blocks on {led['chains']} chains, "
        f"batch records of {led['batch_events']} events (built in {led['build_s']} s)"
    )
    for r in figures["runs"]:
        if "error" in r:
            print(f"  processes {r['processes']}: exit {r['exit']}: {r['error'].strip()[-500:]}")
            continue
        print(
            f"  processes {r['processes']}: {r['events_per_s']:,.0f} events/s, "
            f"{r['events_per_s_per_core']:,.0f} events/s per core (CPU {r['cpu_s']:.2f} s, "
            f"wall {r['wall_s']:.2f} s, chain checks {r['verify_elapsed_s']:.2f} s), "
            f"peak RSS {r['peak_rss_mb']:.0f} MB: {r['result']}"
            + (f" {r['findings_by_code']}" if "findings_by_code" in r else "")
        )
    return 0
