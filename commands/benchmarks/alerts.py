"""`careledger benchmark-alerts`: latency from produce to alert at a sustained ingest rate.

On the real local stack, with a database and topics of its own: loads the reference
data of a labelled audit scenario (``producers.scenarios``), starts the processor and
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
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from careledger.config import Settings

ALERT_SCHEMA = "careledger.alert/1"
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


# --------------------------------------------------------------------------- pure parts


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the smallest value with at least ``q`` % of the values
    at or below it) of ascending ``sorted_values``; ``q`` in (0, 100]."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError("q must be in (0, 100]")
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return float(sorted_values[max(rank, 1) - 1])


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """count, p50, p95, p99 and max (seconds; None when there are no values)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}
    return {
        "count": len(ordered),
        "p50_s": percentile(ordered, 50),
        "p95_s": percentile(ordered, 95),
        "p99_s": percentile(ordered, 99),
        "max_s": ordered[-1],
    }


@dataclass(frozen=True)
class AlertRecord:
    """One alert document as appended to the alerts topic."""

    appended_at: float  # seconds since the epoch (broker append time)
    alert_id: str
    rule: str
    #: related (unflagged) events first, then the flagged ones (``Alert.event_ids``)
    event_ids: tuple[str, ...]
    related: int  # how many of ``event_ids`` are related, not flagged

    @property
    def flagged(self) -> tuple[str, ...]:
        return self.event_ids[self.related :]


def parse_alert(value: bytes, appended_at: float) -> AlertRecord | None:
    """An auditor alert from the alerts topic; None for anything else (verifier findings)."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("schema") != ALERT_SCHEMA:
        return None
    if doc.get("source", "auditor") != "auditor":  # e.g. the processor's quarantine alerts
        return None
    event_ids = tuple(str(e) for e in doc.get("event_ids", ()))
    evidence = doc.get("evidence") or {}
    related = int(evidence.get("related_events", 0)) if isinstance(evidence, dict) else 0
    return AlertRecord(
        appended_at=appended_at,
        alert_id=str(doc.get("alert_id", "")),
        rule=str(doc.get("rule", "")),
        event_ids=event_ids,
        related=max(0, min(related, len(event_ids))),
    )


@dataclass(frozen=True)
class Listing:
    """The first alert record that lists an event."""

    at: float
    alert_id: str
    rule: str
    flagged: bool  # the event is among the alert's flagged events (not only related)
    #: flagged events this publication added to the alert (the accesses whose decisions
    #: made it list the event); the event itself when it is flagged
    triggers: tuple[str, ...]


def first_listings(records: Iterable[AlertRecord]) -> dict[str, Listing]:
    """Event id -> the earliest alert record listing it (records in append order; an
    alert is published again, with the same id, each time it grows)."""
    seen_flagged: dict[str, set[str]] = {}
    out: dict[str, Listing] = {}
    for rec in sorted(records, key=lambda r: r.appended_at):  # stable: topic order on ties
        before = seen_flagged.setdefault(rec.alert_id, set())
        flagged = rec.flagged
        new = tuple(e for e in flagged if e not in before)
        before.update(flagged)
        flagged_set = set(flagged)
        for eid in rec.event_ids:
            if eid in out:
                continue
            if eid in flagged_set:
                out[eid] = Listing(rec.appended_at, rec.alert_id, rec.rule, True, (eid,))
            else:
                out[eid] = Listing(rec.appended_at, rec.alert_id, rec.rule, False, new or flagged)
    return out


class CommitTimes:
    """When each block of each chain was committed, from the processor's checkpoints:
    (append time, chain id, size) records; a block at height h is committed by the
    first checkpoint of its chain with size > h."""

    def __init__(self, checkpoints: Iterable[tuple[float, str, int]]) -> None:
        per_chain: dict[str, list[tuple[float, int]]] = {}
        for at, chain_id, size in checkpoints:
            per_chain.setdefault(chain_id, []).append((at, size))
        self._times: dict[str, list[float]] = {}
        self._sizes: dict[str, list[int]] = {}
        for chain_id, entries in per_chain.items():
            entries.sort()
            times, sizes, top = [], [], 0
            for at, size in entries:
                if size > top:  # a late, smaller checkpoint adds nothing
                    top = size
                    times.append(at)
                    sizes.append(size)
            self._times[chain_id] = times
            self._sizes[chain_id] = sizes

    def at(self, chain_id: str, height: int) -> float | None:
        sizes = self._sizes.get(chain_id)
        if not sizes:
            return None
        i = bisect.bisect_right(sizes, height)  # first size > height
        return self._times[chain_id][i] if i < len(sizes) else None


def parse_checkpoint_note(note: bytes) -> tuple[str, int] | None:
    """(chain id, size) of a signed checkpoint note, or None if it is not one."""
    from careledger_core.checkpoint import parse_checkpoint
    from careledger_core.errors import CareledgerError

    try:
        body = note.decode("utf-8").split("\n\n", 1)[0] + "\n"
        cp = parse_checkpoint(body)
    except (UnicodeDecodeError, ValueError, CareledgerError):
        return None
    return cp.origin, cp.size


@dataclass(frozen=True)
class EventLatency:
    event_id: str
    produced_at: float
    alerted_at: float | None
    #: produce time of the access whose decision raised the alert (see the module doc)
    raised_by_at: float | None
    chained_at: float | None  # commit time of the block holding that access
    flagged_itself: bool
    rule: str | None
    in_kafka_at: float | None = None  # that access's record appended to the events topic


def match_latencies(
    labelled: Iterable[str],
    produced_at: Mapping[str, float],
    listings: Mapping[str, Listing],
    chained_at: Callable[[str], float | None],
    in_kafka_at: Callable[[str], float | None] = lambda _e: None,
) -> list[EventLatency]:
    """One ``EventLatency`` per labelled event with a produce time (alerted or not).
    ``chained_at(event_id)``: commit time of the block holding the event, if known;
    ``in_kafka_at(event_id)``: when its record was appended to the events topic."""
    out: list[EventLatency] = []
    for eid in labelled:
        t0 = produced_at.get(eid)
        if t0 is None:
            continue
        listing = listings.get(eid)
        if listing is None:
            out.append(EventLatency(eid, t0, None, None, None, False, None))
            continue
        raiser = eid
        if not listing.flagged:
            later = [
                (produced_at[t], t)
                for t in listing.triggers
                if t in produced_at and produced_at[t] >= t0
            ]
            if later:
                raiser = min(later)[1]
        out.append(
            EventLatency(
                event_id=eid,
                produced_at=t0,
                alerted_at=listing.at,
                raised_by_at=produced_at[raiser],
                chained_at=chained_at(raiser),
                flagged_itself=listing.flagged,
                rule=listing.rule,
                in_kafka_at=in_kafka_at(raiser),
            )
        )
    return out


def latency_figures(latencies: Sequence[EventLatency]) -> dict[str, Any]:
    """The distributions printed by the benchmark."""
    raised: list[float] = []
    own: list[float] = []
    to_chained: list[float] = []
    to_alert: list[float] = []
    to_kafka: list[float] = []
    kafka_to_chained: list[float] = []
    related_only = 0
    for x in latencies:
        if x.alerted_at is None or x.raised_by_at is None:
            continue
        raised.append(x.alerted_at - x.raised_by_at)
        own.append(x.alerted_at - x.produced_at)
        related_only += not x.flagged_itself
        if x.chained_at is not None:
            to_chained.append(x.chained_at - x.raised_by_at)
            to_alert.append(x.alerted_at - x.chained_at)
        if x.in_kafka_at is not None:
            to_kafka.append(x.in_kafka_at - x.raised_by_at)
            if x.chained_at is not None:
                kafka_to_chained.append(x.chained_at - x.in_kafka_at)
    return {
        "labelled": len(latencies),
        "alerted": len(raised),
        "alerted_share": len(raised) / len(latencies) if latencies else None,
        "alerted_as_related_only": related_only,
        "produce_to_alert": summarize(raised),
        "own_produce_to_alert": summarize(own),
        "produce_to_chained": summarize(to_chained),
        "produce_to_kafka": summarize(to_kafka),
        "kafka_to_chained": summarize(kafka_to_chained),
        "chained_to_alert": summarize(to_alert),
    }


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

    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap})


def _create_topics(settings: Settings) -> list[str]:
    """The pipeline's topics; alerts and checkpoints stamped with the broker's append time."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    from careledger import stack

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

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"careledger-bench-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    out: list[tuple[int, int, bytes | None, bytes]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends: dict[int, int] = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
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
    from careledger import stack

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
    from careledger.processes import start_cli, start_processor, stop
    from producers.simulator import produce_reference

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
        with AccessEventProducer(s) as producer:
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
    from careledger import stack
    from careledger.keys import write_keypair
    from careledger.sources import ensure_local_source
    from careledger.storage.backend import ClickHouseBackend
    from careledger.storage.migrations import migrate
    from producers.scenarios import simulate_audit_scenario
    from producers.simulator import DEFAULT_START, HospitalModel

    stack.up(settings, quiet=True)
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-alerts-"))
    key_path = workdir / "signing.key"
    write_keypair(key_path)
    s = settings.with_topic_suffix(
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
        s = ensure_local_source(s, say=lambda *_a: None)
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


def _ms(value: float | None) -> str:
    return "    n/a" if value is None else f"{value * 1000:7.0f}"


def command_benchmark_alerts(args: argparse.Namespace, settings: Settings) -> int:
    import sys

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


def render(figures: Mapping[str, Any]) -> str:
    """The figures as the text ``careledger benchmark-alerts`` prints."""
    m, tr, lat, st = figures["machine"], figures["traffic"], figures["latency"], figures["settings"]
    load = " ".join(f"{x:.2f}" for x in m["load_average_start"])
    lines: list[str] = []
    lines.append(
        f"careledger benchmark-alerts on {m['cores']} cores (load average {load} at start), "
        f"{st['partitions']} partitions, blocks <= {st['block_max_events']} events or "
        f"{st['block_max_ms']} ms, audit poll every {st['audit_poll_interval_s']} s"
    )
    rate = tr["ingest_rate_per_s"] or 0.0
    after = tr["decided_after_last_produce_s"]
    lines.append(
        f"  ingest: {tr['timed_events']:,} events at {rate:,.0f} events/s "
        f"(asked {tr['rate_asked_per_s']:,.0f}; {tr['warmup_events']:,} warm-up events "
        "before the clock), "
        + (
            f"all audited {after:.2f} s after the last produce"
            if after is not None
            else "NOT all audited"
        )
    )
    share = lat["alerted_share"]
    in_warmup = figures.get("scenario", {}).get("labelled_in_warmup", 0)
    lines.append(
        f"  labelled inappropriate accesses: {lat['labelled']:,} timed "
        f"(+{in_warmup:,} in the warm-up), alerted {lat['alerted']:,} "
        f"({'n/a' if share is None else f'{share:.1%}'}; "
        f"{lat['alerted_as_related_only']:,} only as related events of a later flag)"
        + (
            f"; not alerted, by labelled rule: {lat['not_alerted_by_labelled_rule']}"
            if lat.get("not_alerted_by_labelled_rule")
            else ""
        )
    )
    lines.append(f"  {'latency (ms)':38} {'count':>6} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
    for key, label in (
        ("produce_to_alert", "produce -> alert"),
        ("produce_to_kafka", "  produce -> in Kafka (SDK, broker)"),
        ("kafka_to_chained", "  in Kafka -> chained (signed block)"),
        ("chained_to_alert", "  chained -> alert (audit --follow)"),
        ("own_produce_to_alert", "from the labelled access's own produce"),
    ):
        d = lat[key]
        lines.append(
            f"  {label:38} {d['count']:6,} {_ms(d['p50_s'])} {_ms(d['p95_s'])} "
            f"{_ms(d['p99_s'])} {_ms(d['max_s'])}"
        )
    cpu = figures["cpu"]
    names = ("processor", "auditor", "kafka", "clickhouse", "producer", "other")
    parts = [
        f"{name} {cpu[f'{name}_cores']:.2f}"
        for name in names
        if cpu.get(f"{name}_cores") is not None
    ]
    if cpu.get("machine_busy_cores") is not None:
        parts.append(f"machine busy {cpu['machine_busy_cores']:.2f} of {m['cores']}")
    end = " ".join(f"{x:.2f}" for x in m.get("load_average_end", ()))
    lines.append(f"  cores used while timed: {', '.join(parts)}; load average {end} at the end")
    return "\n".join(lines)
