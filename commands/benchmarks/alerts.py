"""`careledger benchmark-alerts`: latency from produce to alert at a sustained ingest rate.

On the real local stack, with a database and topics of its own: loads the reference
data of a labelled audit scenario (``producers.simulator.scenarios``), starts the processor and
``careledger audit --follow`` as child processes, produces the scenario's accesses at
a steady ``--rate`` (recording each one's produce time), then reads the alerts topic
and, for each labelled inappropriate access, takes the time the first alert listing it
was appended to the topic. A benchmark, not a test: it asserts nothing.

What is measured, per labelled access (the first ``--warmup`` events are produced
before the clock starts, so the consumer group join and the auditor's first load of
the reference data are not counted):

* **produce -> alert**: from the produce of the access whose decision raised the alert
  listing it, to the broker's append of that alert. For almost every access that is the
  access itself. An access that is only *evidence* of a later flag (the first records
  of a volume spike or of a burst of denied accesses, listed as related events) cannot
  be alerted before that later access exists: it counts from the produce of the
  earliest access that was newly flagged in the alert that first listed it and was
  produced no earlier than it (an upper bound of the real delay).
* **from its own produce**: the same, always from the labelled access's own produce
  (burst members include the time until the burst crosses its threshold; the
  scenario compresses about a day of hospital traffic into a minute, so this says
  more about the simulator than about the pipeline).
* the breakdown of the first figure: **produce -> in Kafka** (the SDK's batching and
  signing at the source, the broker's append), **in Kafka -> chained** (the processor's
  checkpoint of the block holding that access appended to the checkpoints topic, just
  after the signed block is stored) and **chained -> alert** (the follower's poll
  interval, reading, deciding, storing and publishing).

The events, alerts and checkpoints topics are created with ``message.timestamp.type =
LogAppendTime``, so their record timestamps are the broker's append times; produce
times are taken just before each ``send()``. Everything runs on one machine, one
clock. Events are signed at the source (a source key registered for the run), as in
production.

This module runs the benchmark (topics, child processes, producing at the rate,
reading the topics back); commands.benchmarks.alert_latency holds the pure
measurement: matching alerts to labelled accesses, the statistics and the text.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from careledger import stack
from careledger.config import Settings
from careledger.credentials import pin_login
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.keys import write_keypair
from careledger.processes import start_cli, start_processor, stop
from careledger.sources import ensure_local_source
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.migrations import migrate
from commands.benchmarks.alert_latency import (
    AlertRecord,
    CommitTimes,
    first_listings,
    latency_figures,
    match_latencies,
    parse_alert,
    parse_checkpoint_note,
    percentile,
    render,
    summarize,
)
from producers.simulator import DEFAULT_START, HospitalModel, produce_reference
from producers.simulator.scenarios import simulate_audit_scenario

__all__ = [
    "NOT_FOLLOWABLE",
    "REFERENCE_TOPICS",
    "AlertRecord",
    "CommitTimes",
    "command_benchmark_alerts",
    "configure_benchmark_alerts",
    "first_listings",
    "latency_figures",
    "match_latencies",
    "parse_alert",
    "parse_checkpoint_note",
    "percentile",
    "render",
    "run",
    "summarize",
]

#: rules the simulated traffic cannot raise through ``audit --follow``: REPEAT_OFFENDER
#: needs violations confirmed before the period (the alert workflow), which the
#: scenario only hands to the in-process benchmark (``benchmark-audit``)
NOT_FOLLOWABLE = frozenset({"REPEAT_OFFENDER"})
#: an access event's id in a record of the events topic (plain or signed: the event's
#: canonical JSON is inside as is)
_EVENT_ID = re.compile(rb'"event_id":"([0-9a-f-]{36})"')
#: the Settings attributes of the reference data topics the scenario loads first
REFERENCE_TOPICS = (
    "topic_consents",
    "topic_care_relationships",
    "topic_workforce",
    "topic_patients",
)

# --------------------------------------------------------------------------- the run


def configure_benchmark_alerts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=100_000, help="accesses to produce (100000)")
    parser.add_argument(
        "--rate", type=float, default=2_500.0, help="sustained ingest rate, events/s (2500)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2_000,
        help="events produced (at --rate) and audited before the clock starts (2000)",
    )
    parser.add_argument("--seed", type=int, default=7, help="scenario seed (7)")
    parser.add_argument(
        "--inappropriate-rate",
        type=float,
        default=0.01,
        help="share of injected inappropriate accesses (0.01)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the database, topics and logs afterwards"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _admin(settings: Settings) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(kafka_config(settings, ADMIN))


def _create_topics(settings: Settings) -> list[str]:
    """The pipeline's topics; alerts and checkpoints stamped with the broker's append time."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    topics = stack.default_topics(settings)
    topics[settings.topic_alert_status] = 1
    appended = [settings.topic_events, settings.topic_alerts, settings.topic_checkpoints]
    admin = _admin(settings)  # must outlive its futures
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=topics[name],
                replication_factor=1,
                config={
                    **stack.topic_config(settings, name),
                    "message.timestamp.type": "LogAppendTime",
                },
            )
            for name in appended
        ]
    )
    for fut in futures.values():
        fut.result()
    stack.ensure_topics(settings, topics)
    return list(topics)


def _read_topic(settings: Settings, topic: str) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every record of ``topic`` (all partitions): (timestamp type, ms, key, value)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from careledger.kafka.offsets import watermark_offsets

    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"careledger-bench-read-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            },
        )
    )
    out: list[tuple[int, int, bytes | None, bytes]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends: dict[int, int] = {}
        for p in partitions:
            _low, high = watermark_offsets(
                consumer, TopicPartition(topic, p), time.monotonic() + 10
            )
            if high > 0:
                ends[p] = high
        if not ends:
            return out
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + 120
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            ts_type, ts_ms = msg.timestamp()
            out.append((ts_type, ts_ms, msg.key(), msg.value() or b""))
            partition, offset = msg.partition(), msg.offset()
            if (
                partition is not None
                and offset is not None
                and offset + 1 >= ends.get(partition, 0)
            ):
                ends.pop(partition, None)
    finally:
        consumer.close()
    return out


def _count(backend: Any, sql: str, params: Mapping[str, Any] | None = None) -> int:
    rows = backend.execute(sql, params)
    return int(rows[0][0] or 0)


def _wait(
    condition: Callable[[], bool],
    timeout: float,
    interval: float = 0.2,
    children: Mapping[str, Any] | None = None,
) -> bool:
    """Poll ``condition`` until it holds or ``timeout``; raise if a child process
    (name -> Popen) exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        for name, proc in (children or {}).items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} (see its log)")
        time.sleep(interval)
    return condition()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _stack_pids(settings: Settings) -> dict[str, int]:
    """The local Kafka broker's and ClickHouse server's pids (when careledger runs them)."""
    st = stack.status(settings)
    return {
        name: svc.pid
        for name, svc in (("kafka", st.kafka), ("clickhouse", st.clickhouse))
        if svc.pid is not None
    }


def _machine_busy() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    try:
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in cpu]
    except (OSError, IndexError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _produce(
    producer: Any, events: Sequence[Any], rate: float, stamps: dict[str, float]
) -> tuple[float, float]:
    """Send ``events`` at ``rate`` per second, recording each produce time in
    ``stamps``; returns (first, last) produce times."""
    interval = 1.0 / rate if rate > 0 else 0.0
    started = time.monotonic()
    first = last = time.time()
    for i, event in enumerate(events):
        last = time.time()
        if i == 0:
            first = last
        stamps[event.event_id] = last
        producer.send(event)
        if interval:
            ahead = started + (i + 1) * interval - time.monotonic()
            if ahead > 0.002:
                time.sleep(ahead)
                producer.poll(0)
    return first, last


def _positions(backend: Any, db: str, event_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """Event id -> (chain id, height) of the block holding it."""
    out: dict[str, tuple[str, int]] = {}
    for i in range(0, len(event_ids), 5_000):
        for eid, chain_id, height in backend.execute(
            f"SELECT event_id, chain_id, height FROM {db}.access_events WHERE event_id IN %(ids)s",
            {"ids": tuple(event_ids[i : i + 5_000])},
        ):
            out[_text(eid)] = (_text(chain_id), int(height))
    return out


def _measure(
    s: Settings,
    backend: Any,
    reference_records: Sequence[Any],
    warm: Sequence[Any],
    timed: Sequence[Any],
    rate: float,
    workdir: Path,
    stack_pids: Mapping[str, int],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Reference data, processor, follower, warm-up, then the timed traffic; returns
    the produce times and the run's own figures (the children are stopped on return)."""
    from careledger.kafka.producer import AccessEventProducer

    db = s.clickhouse_database
    processor = follower = None
    stamps: dict[str, float] = {}
    try:
        sent, acked = produce_reference(s, reference_records)
        if acked != sent:
            raise RuntimeError(f"only {acked} of {sent} reference records acknowledged")
        processor = start_processor(s, workdir / "processor.log")
        children = {"the processor": processor}
        chains = {
            "c": tuple(
                s.chain_id(getattr(s, name), p)
                for name in REFERENCE_TOPICS
                for p in range(s.reference_partitions)
            )
        }
        accounted = (
            "SELECT sum(event_count) + sum(dead_lettered) + sum(absent_offsets) "
            f"FROM {db}.blocks WHERE chain_id IN %(c)s"
        )
        if not _wait(lambda: _count(backend, accounted, chains) >= sent, 300, children=children):
            raise RuntimeError("the reference data was not chained in 300 s")
        say(f"reference data chained; starting audit --follow (logs in {workdir})")
        follower = start_cli(s, workdir / "audit.log", "audit", "--follow", "--json")
        children["audit --follow"] = follower
        decided = f"SELECT count() FROM {db}.access_decisions WHERE amends = 0"
        with AccessEventProducer(s, principal=ADMIN) as producer:
            _produce(producer, warm, rate, {})
            producer.flush()
            if not _wait(lambda: _count(backend, decided) >= len(warm), 300, children=children):
                raise RuntimeError(
                    "the warm-up events were not audited in 300 s (quarantined? see the logs)"
                )
            say(f"warm-up of {len(warm):,} events audited; {len(timed):,} more at {rate:,.0f}/s")
            pids = {"processor": processor.pid, "auditor": follower.pid, **stack_pids}
            cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            cpu0["producer"] = time.process_time()
            busy0 = _machine_busy()
            first, last = _produce(producer, timed, rate, stamps)
            producer.flush()
        total = len(warm) + len(timed)
        all_decided = _wait(lambda: _count(backend, decided) >= total, 600, 0.05, children)
        drained = time.time()
        cpu1 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        cpu1["producer"] = time.process_time()
        busy1 = _machine_busy()
        time.sleep(2.0 + 2 * s.audit_poll_interval_s)  # the last cycle's alerts
    finally:
        if follower is not None:
            stop(follower)
        if processor is not None:
            stop(processor)
    # cores used from the first timed produce until everything was audited
    cpu: dict[str, float | None] = {"machine_busy_cores": None}
    seconds = max(drained - first, 1e-9)
    if busy0 is not None and busy1 is not None and busy1[1] > busy0[1]:
        share = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1])
        cpu["machine_busy_cores"] = share * (os.cpu_count() or 1)
    for name in cpu0:
        a, b = cpu0[name], cpu1[name]
        cpu[f"{name}_cores"] = (b - a) / seconds if a is not None and b is not None else None
    ours = [v for k, v in cpu.items() if k != "machine_busy_cores"]
    if cpu["machine_busy_cores"] is not None and None not in ours:
        # other work on the machine (other tests, the shared stack serving them)
        cpu["other_cores"] = max(0.0, cpu["machine_busy_cores"] - sum(ours))  # type: ignore[arg-type]
    return {
        "stamps": stamps,
        "first": first,
        "last": last,
        "drained": drained,
        "all_decided": all_decided,
        "cpu": cpu,
    }


def run(
    settings: Settings,
    *,
    events: int,
    rate: float,
    warmup: int,
    seed: int,
    inappropriate_rate: float,
    keep: bool = False,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    stack.up(settings, quiet=True)
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-alerts-"))
    key_path = workdir / "signing.key"
    write_keypair(key_path)
    # its own run_dir below: the local stack's logins are named explicitly first
    s = pin_login(settings).with_topic_suffix(
        f"-balerts-{tag}",
        clickhouse_database=f"careledger_balerts_{tag}",
        processor_app_id=f"careledger-balerts-{tag}",
        processor_web_port=0,
        signing_key=key_path,
        trusted_keys=(str(key_path) + ".pub",),
        audit_salt=f"benchmark-alerts-{tag}",
        run_dir=workdir / "run",
    )
    db = s.clickhouse_database
    figures: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "load_average_start": list(os.getloadavg())},
        "settings": {
            "partitions": s.partitions,
            "block_max_events": s.block_max_events,
            "block_max_ms": s.block_max_ms,
            "audit_poll_interval_s": s.audit_poll_interval_s,
        },
    }
    t = time.perf_counter()
    model = HospitalModel(seed=seed)
    scenario = simulate_audit_scenario(model, events, seed, DEFAULT_START, inappropriate_rate)
    say(
        f"scenario: {len(scenario.events):,} events, {len(scenario.all_truth()):,} labelled, "
        f"{len(scenario.reference_records):,} reference records "
        f"({time.perf_counter() - t:.1f} s)"
    )
    warm = scenario.events[: max(0, min(warmup, len(scenario.events) - 1))]
    timed = scenario.events[len(warm) :]
    rules_of = {
        g.event_id: sorted(set(map(str, g.rules)) - NOT_FOLLOWABLE) for g in scenario.all_truth()
    }
    labelled = [eid for eid, rules in rules_of.items() if rules]
    warm_ids = {e.event_id for e in warm}
    migrate(s)
    backend = ClickHouseBackend.from_settings(s)
    topics: list[str] = []
    done = False
    try:
        topics = _create_topics(s)
        # events are signed at the source, as in production (a source key registered
        # under the run's own directory, its registrar trusted by the children)
        s = ensure_local_source(s, say=lambda *_a: None, principal=ADMIN)
        measured = _measure(
            s,
            backend,
            scenario.reference_records,
            warm,
            timed,
            rate,
            workdir,
            _stack_pids(settings),  # the stack's own run directory, not the children's
            say,
        )
        figures["machine"]["load_average_end"] = list(os.getloadavg())
        ts_types = set()
        alerts: list[AlertRecord] = []
        for ts_type, ts_ms, _key, value in _read_topic(s, s.topic_alerts):
            ts_types.add(ts_type)
            if (rec := parse_alert(value, ts_ms / 1000.0)) is not None:
                alerts.append(rec)
        checkpoints: list[tuple[float, str, int]] = []
        for ts_type, ts_ms, _key, value in _read_topic(s, s.topic_checkpoints):
            ts_types.add(ts_type)
            if (parsed := parse_checkpoint_note(value)) is not None:
                checkpoints.append((ts_ms / 1000.0, *parsed))
        commits = CommitTimes(checkpoints)
        listings = first_listings(alerts)
        timed_labelled = [eid for eid in labelled if eid not in warm_ids]
        stamps = measured["stamps"]
        raisers = {eid for eid in timed_labelled if eid in listings}
        raisers.update(t for eid in list(raisers) for t in listings[eid].triggers)
        positions = _positions(backend, db, sorted(raisers))
        appended: dict[str, float] = {}
        for ts_type, ts_ms, _key, value in _read_topic(s, s.topic_events):
            ts_types.add(ts_type)
            m = _EVENT_ID.search(value)
            if m is not None and (eid := m.group(1).decode()) in raisers:
                appended.setdefault(eid, ts_ms / 1000.0)

        def chained_at(eid: str) -> float | None:
            pos = positions.get(eid)
            return None if pos is None else commits.at(*pos)

        latencies = match_latencies(timed_labelled, stamps, listings, chained_at, appended.get)
        done = True
    finally:
        try:
            if not keep:
                backend.execute(f"DROP DATABASE IF EXISTS {db}")
        finally:
            backend.close()
        if not keep:
            existing = _admin(s).list_topics(timeout=10).topics
            extra = [t for t in existing if t.startswith(f"{s.processor_app_id}-")]
            stack.delete_topics(s, [t for t in topics if t in existing] + extra)
        if done and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"logs kept in {workdir}")
    first, last, drained = measured["first"], measured["last"], measured["drained"]
    produce_s = max(last - first, 1e-9)
    figures["traffic"] = {
        "events": len(scenario.events),
        "warmup_events": len(warm),
        "timed_events": len(timed),
        "rate_asked_per_s": rate,
        "ingest_rate_per_s": (len(timed) - 1) / produce_s if len(timed) > 1 else None,
        "produce_seconds": produce_s,
        "all_decided": measured["all_decided"],
        "decided_after_last_produce_s": drained - last if measured["all_decided"] else None,
    }
    figures["scenario"] = {
        "seed": seed,
        "inappropriate_rate": inappropriate_rate,
        "labelled": len(labelled),
        "labelled_in_warmup": sum(1 for eid in labelled if eid in warm_ids),
        "excluded_rules": sorted(NOT_FOLLOWABLE),
        "reference_records": len(scenario.reference_records),
    }
    figures["latency"] = latency_figures(latencies)
    missed: dict[str, int] = {}
    for x in latencies:
        if x.alerted_at is None:
            for rule in rules_of[x.event_id]:
                missed[rule] = missed.get(rule, 0) + 1
    figures["latency"]["not_alerted_by_labelled_rule"] = missed
    figures["alerts_published"] = len(alerts)
    figures["alerts_distinct"] = len({a.alert_id for a in alerts})
    figures["timestamps"] = "LogAppendTime" if ts_types == {2} else f"types {sorted(ts_types)}"
    figures["cpu"] = measured["cpu"]
    figures["run"] = {
        "database": db,
        "topic_suffix": f"-balerts-{tag}",
        "kept": keep,
        "logs": str(workdir) if keep else None,
    }
    return figures


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def command_benchmark_alerts(args: argparse.Namespace, settings: Settings) -> int:
    if args.events < 2 or args.rate <= 0 or args.warmup < 0:
        print("benchmark-alerts: --events >= 2, --rate > 0, --warmup >= 0", file=sys.stderr)
        return 2
    figures = run(
        settings,
        events=args.events,
        rate=args.rate,
        warmup=args.warmup,
        seed=args.seed,
        inappropriate_rate=args.inappropriate_rate,
        keep=args.keep,
        say=lambda m: print(f"benchmark-alerts: {m}", file=sys.stderr, flush=True),
    )
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    return 0
