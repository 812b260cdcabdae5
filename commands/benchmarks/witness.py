"""`careledger benchmark-witness`: what witnessing costs and how fast it is (ADR 0018).

On the local stack, with three local ``careledger witness`` processes (quorum 2 of 3):

* **checkpoint -> quorum**: the processor chains ``--rate`` events/s for ``--seconds``
  while ``careledger cosign`` runs; for every checkpoint the processor published, the
  time until a quorum-cosigned checkpoint of at least its size was published (both
  Kafka record timestamps, one clock). The cosigner takes each chain's newest
  checkpoint per round, so a checkpoint is usually covered by a later one.
* **cosignatures/s**: ``add-checkpoint`` requests answered by one witness, each growing
  a log by one leaf with its consistency proof, from one client and from four clients
  (four logs) at once; with request latency.
* **verify events/s**: ``careledger verify`` over the ledger just built, without and
  with the witness policy (which adds reading the cosignatures and asking every
  witness for its checkpoints).

Prints figures (``--json`` for all of them). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.processes import run_cli, start_cli, start_processor, stop
from careledger_core.chain_tree import ChainTree
from careledger_core.checkpoint import Checkpoint, format_checkpoint, sign_note
from careledger_core.cosignature import check_quorum, split_note
from careledger_core.errors import CheckpointError
from careledger_core.signing import SigningKey
from careledger_core.witness import format_add_checkpoint
from commands.benchmarks.pipeline import _produce
from commands.local_witnesses import local_witnesses


def configure_benchmark_witness(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=2_000.0, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to offer them")
    parser.add_argument(
        "--requests", type=int, default=2_000, help="add-checkpoint requests per client"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _checkpoint_records(settings: Settings) -> list[tuple[str, int, bool, float]]:
    """(chain, size, quorum-cosigned, Kafka timestamp s) of every checkpoint record."""
    from confluent_kafka import Consumer, TopicPartition

    from careledger.witnesses import load_witnesses

    witnesses = load_witnesses(settings)
    assert witnesses is not None
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"bench-witness-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            },
        )
    )
    topic = settings.topic_checkpoints
    out = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p] > 0])
        pending = {p for p in partitions if ends[p] > 0}
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error() is not None:
                    continue
                partition, offset = msg.partition(), msg.offset()
                if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                    pending.discard(partition)
                try:
                    note = (msg.value() or b"").decode("utf-8")
                    body, lines = split_note(note)
                    origin, size_text = body.split("\n", 2)[:2]
                    met = len(lines) > 1 and check_quorum(note, witnesses.policy).met
                except (UnicodeDecodeError, CheckpointError, ValueError):
                    continue
                out.append((origin, int(size_text), met, msg.timestamp()[1] / 1000.0))
    finally:
        consumer.close()
    return out


def _quorum_latencies(records: list[tuple[str, int, bool, float]]) -> list[float]:
    """Per log checkpoint, seconds until a quorum checkpoint covering it was published."""
    by_chain: dict[str, list[tuple[int, bool, float]]] = {}
    for chain, size, met, ts in records:
        by_chain.setdefault(chain, []).append((size, met, ts))
    latencies = []
    for items in by_chain.values():
        quorum = sorted((ts, size) for size, met, ts in items if met)
        for size, met, ts in items:
            if met:
                continue
            covering = [t for t, s in quorum if s >= size and t >= ts]
            if covering:
                latencies.append(min(covering) - ts)
    return latencies


def _pipeline(settings: Settings, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from careledger import stack
    from careledger.sources import ensure_local_source
    from careledger.storage.backend import ClickHouseBackend
    from careledger.storage.store import ChainStore
    from producers.simulator import HospitalModel, simulate

    n_events = int(args.rate * args.seconds)
    events = list(simulate(HospitalModel(seed=3), count=n_events, seed=3))
    s = settings.with_topic_suffix(
        f"-bench-witness-{uuid.uuid4().hex[:6]}",
        processor_app_id=f"careledger-bench-witness-{uuid.uuid4().hex[:6]}",
        processor_web_port=0,
    )
    topics = stack.default_topics(s)
    stack.ensure_topics(s, topics)
    s = ensure_local_source(s, say=lambda *_: None, principal=ADMIN)
    store = ChainStore.for_settings(ClickHouseBackend.from_settings(s), s)
    result: dict[str, Any] = {"events": n_events, "rate": args.rate}
    with local_witnesses(
        s, Path(f"{s.signing_key}.pub"), directory=workdir / "witnesses"
    ) as witnesses:
        s = s.replace(witnesses_file=witnesses.file)
        proc = start_processor(s, workdir / "processor.log")
        cosigner = start_cli(s, workdir / "cosign.log", "cosign")
        try:
            time.sleep(8.0)  # the consumer joins its group before the clock starts
            _produce(s, events, rate=args.rate)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                rows = store.backend.execute(f"SELECT sum(event_count) FROM {store.db}.blocks")
                if int(rows[0][0] or 0) >= n_events:
                    break
                time.sleep(0.2)
            time.sleep(3.0)  # the last checkpoints get their cosignatures
        finally:
            stop(proc)
            stop(cosigner)
        latencies = _quorum_latencies(_checkpoint_records(s))
        result["checkpoints"] = len(latencies)
        result["checkpoint_to_quorum_p50_s"] = _percentile(latencies, 0.50)
        result["checkpoint_to_quorum_p99_s"] = _percentile(latencies, 0.99)
        for label, extra in (("without_witnesses", None), ("with_witnesses", witnesses.file)):
            vs = s.replace(witnesses_file=extra)
            out = run_cli(vs, "verify", "--json", "--no-record", timeout=1800)
            try:
                doc = json.loads(out.stdout)
            except json.JSONDecodeError:
                result[f"verify_{label}"] = {"error": (out.stderr or out.stdout)[-300:]}
                continue
            result[f"verify_{label}"] = {
                "exit": out.returncode,
                "events": doc["totals"]["events"],
                "events_per_s": doc["totals"]["events_per_s"],
                "elapsed_s": doc["elapsed_s"],
                "witnessing": doc.get("witnessing", {}).get("status"),
            }
        result["_urls"] = dict(witnesses.urls)
    stack.delete_topics(s, list(topics))
    store.backend.execute(f"DROP DATABASE IF EXISTS {store.db}")
    return result


def _cosign_rate(key: SigningKey, origin: str, port: int, n: int) -> list[float]:
    """``n`` add-checkpoint requests growing a log at ``origin`` by one leaf each; the
    latency of each (s). The witness must trust ``key`` for ``origin``."""
    tree = ChainTree()
    latencies = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for i in range(n):
            leaf = i.to_bytes(32, "big")
            proof = tree.consistency_proof([leaf])
            old = tree.size
            tree = tree.append(leaf)
            note = sign_note(
                format_checkpoint(Checkpoint(origin, tree.size, tree.root)), origin, key
            )
            body = format_add_checkpoint(old, proof, note)
            started = time.perf_counter()
            conn.request("POST", "/add-checkpoint", body=body)
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"witness answered {response.status} at size {tree.size}")
    finally:
        conn.close()
    return latencies


def _client(
    key: SigningKey, port: int, n: int, latencies: list[float], lock: threading.Lock
) -> Any:
    def client(origin: str) -> None:
        mine = _cosign_rate(key, origin, port, n)
        with lock:
            latencies.extend(mine)

    return client


def _cosignatures(settings: Settings, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from careledger.keys import load_signing_key

    key = load_signing_key(settings.signing_key, env={})
    result: dict[str, Any] = {}
    # logs nobody else uses: the raw-record chains of a deployment under another origin
    s = settings.replace(origin=f"bench-{uuid.uuid4().hex[:6]}.example")
    with local_witnesses(
        s, Path(f"{settings.signing_key}.pub"), directory=workdir / "cosign-witnesses"
    ) as witnesses:
        port = int(next(iter(witnesses.urls.values())).rsplit(":", 1)[1])
        # fresh logs for each run, all known to the witness (chains of this origin)
        fresh = {
            1: [s.chain_id(s.topic_raw, 0)],
            4: [*(s.chain_id(s.topic_raw, p) for p in (1, 2, 3)), s.chain_id(s.topic_events, 0)],
        }
        for clients, origins in fresh.items():
            latencies: list[float] = []
            lock = threading.Lock()
            client = _client(key, port, args.requests, latencies, lock)
            threads = [threading.Thread(target=client, args=(o,)) for o in origins]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            result[f"clients_{clients}"] = {
                "cosignatures_per_s": len(latencies) / elapsed,
                "p50_ms": statistics.median(latencies) * 1000,
                "p99_ms": (_percentile(latencies, 0.99) or 0) * 1000,
            }
    return result


def command_benchmark_witness(args: argparse.Namespace, settings: Settings) -> int:
    from careledger import stack
    from careledger.keys import write_keypair
    from careledger.storage.migrations import migrate

    stack.up(settings)
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-witness-"))
    key_path = workdir / "signing.key"
    write_keypair(key_path)
    s = settings.replace(
        clickhouse_database=f"careledger_bench_{uuid.uuid4().hex[:8]}",
        signing_key=key_path,
        trusted_keys=(str(key_path) + ".pub",),
    )
    migrate(s)
    figures: dict[str, Any] = {"machine": {"cores": os.cpu_count()}, "witnesses": 3, "quorum": 2}
    figures["pipeline"] = _pipeline(s, args, workdir)
    figures["pipeline"].pop("_urls", None)
    figures["cosignatures"] = _cosignatures(s, args, workdir)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    p = figures["pipeline"]
    print(
        f"careledger benchmark-witness on {os.cpu_count()} cores: 3 local witnesses, quorum 2, "
        f"{p['events']:,} events at {p['rate']:,.0f}/s"
    )
    print(
        f"  checkpoint -> quorum: p50 {_ms(p['checkpoint_to_quorum_p50_s'])}  "
        f"p99 {_ms(p['checkpoint_to_quorum_p99_s'])}  ({p['checkpoints']} checkpoints)"
    )
    for clients, r in figures["cosignatures"].items():
        print(
            f"  one witness, {clients.replace('_', ' ')}: {r['cosignatures_per_s']:,.0f} "
            f"cosignatures/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
        )
    for label in ("without_witnesses", "with_witnesses"):
        v = p.get(f"verify_{label}", {})
        if "events_per_s" in v:
            print(
                f"  verify {label.replace('_', ' ')}: {v['events_per_s']:,.0f} events/s "
                f"({v['events']:,} events in {v['elapsed_s']:.2f} s, exit {v['exit']}"
                + (f", {v['witnessing']}" if label == "with_witnesses" else "")
                + ")"
            )
        else:
            print(f"  verify {label.replace('_', ' ')}: {v.get('error', 'n/a')}")
    return 0


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"
