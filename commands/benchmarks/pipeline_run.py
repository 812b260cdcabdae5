"""One run of `careledger benchmark`: its pipelines, databases, processors and phases.

``commands.benchmarks.pipeline`` (the command) says what is measured; this module does the
work on the local stack: topics with leaders elected and the local source registered
(retried while a fresh topic elects its leaders), a fresh database per processor run,
processors started as child processes (``careledger.processes``), the drains with their
store check, the latency phases with their metrics snapshots, and the clean-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.processes import run_cli, start_processor, stop
from careledger_core.errors import InfrastructureError
from commands.benchmarks import pipeline_host as host
from commands.benchmarks.alert_latency import CommitTimes
from commands.benchmarks.pipeline_kafka import (
    end_offsets,
    partition_ends,
    read_append_times,
    read_checkpoints,
)
from commands.benchmarks.pipeline_load import (
    EventPool,
    Produced,
    event_id_for,
    leader_not_ready,
    produce_backlog,
    produce_paced,
    retry_with_deadline,
    threads_for,
)
from commands.benchmarks.pipeline_report import (
    DrainSample,
    chained_latencies,
    drain_figures,
    histogram_diff,
    latency_summary,
    send_latencies,
    weighted_summary,
)

__all__ = ["BenchmarkError", "Run", "line_of"]

#: how long setting a pipeline up may retry a topic still electing its leaders
SETUP_TIMEOUT_S = 90.0
POLL_S = 0.05
#: the processor writes its metrics file this often (processors.app)
METRICS_INTERVAL_S = 5.0


class BenchmarkError(Exception):
    """The benchmark cannot go on: one line for the user, and the exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def line_of(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


@dataclass
class Run:
    args: argparse.Namespace
    base: Settings
    workdir: Path
    run_id: str
    pool: EventPool
    stack_pids: dict[str, int | None]
    backend: Any
    dbs: list[str] = field(default_factory=list)
    topics: list[tuple[Settings, list[str]]] = field(default_factory=list)
    app_ids: list[str] = field(default_factory=list)
    per_thread_rate: float | None = None
    admin: Any = None

    # ------------------------------------------------------------ setting up
    def pipeline(self, label: str) -> Settings:
        """Topics of their own (``-bench-<run>-<label>``), leaders elected, and the local
        source key registered on their sources topic."""
        from confluent_kafka import KafkaException

        from careledger import stack
        from careledger.sources import ensure_local_source

        s = self.base.with_topic_suffix(f"-bench-{self.run_id}-{label}")
        topics = stack.default_topics(s)
        self.topics.append((s, list(topics)))
        retry = (stack.StackError, InfrastructureError, KafkaException)
        retry_with_deadline(
            lambda: stack.ensure_topics(s, topics),
            retry_on=retry,
            transient=leader_not_ready,
            timeout_s=SETUP_TIMEOUT_S,
        )
        return retry_with_deadline(
            lambda: ensure_local_source(s, say=lambda *_: None, principal=ADMIN),
            retry_on=retry,
            transient=leader_not_ready,
            timeout_s=SETUP_TIMEOUT_S,
        )

    def sealed_pipeline(self, label: str) -> Settings:
        """A pipeline of its own whose events are sealed (ADR 0037): an ingest key pair
        in the work directory, the SDK sealing to it, the processor opening with it and
        keeping per-patient keys in the local SoftHSM2 token (made on first use)."""
        from careledger.ingest_keys import write_ingest_key

        ingest = self.workdir / f"ingest-{label}.key"
        write_ingest_key(ingest)
        return self.pipeline(label).replace(
            seal_events=True,
            ingest_key=ingest,
            ingest_public_key=Path(f"{ingest}.pub"),
            keystore_token_label="careledger-bench",
        )

    def database(self, s: Settings, label: str, *, baseline: bool) -> Settings:
        """A fresh database and processor app id for one processor run."""
        from careledger.stack.acls import ensure_acls
        from careledger.storage.migrations import migrate

        name = re.sub(r"[^0-9a-z_]", "_", label.lower())
        db = f"careledger_bench_{self.run_id}_{name}"
        app_id = f"careledger-bench-{self.run_id}-{name}"
        self.dbs.append(db)
        self.app_ids.append(app_id)
        out = s.replace(clickhouse_database=db, processor_app_id=app_id)
        ensure_acls(out)  # the processor's group and prefix (ADR 0033)
        migrate(out)
        if baseline:
            self.backend.execute(
                f"CREATE TABLE IF NOT EXISTS {db}.baseline_events "
                "(partition UInt32, kafka_offset UInt64, value String) ENGINE = MergeTree() "
                "ORDER BY (partition, kafka_offset)"
            )
        return out

    def own_outputs(self, s: Settings, label: str) -> Settings:
        """The processor's output topics (checkpoints, blocks, dead letters, quarantine,
        alerts) of its own: two chained drains of one backlog write different ledgers,
        and a verifier reading one's checkpoints must not find the other's."""
        from confluent_kafka import KafkaException

        from careledger import stack

        names = ("topic_checkpoints", "topic_blocks", "topic_dead_letter", "topic_quarantine")
        out = s.replace(**{n: f"{getattr(s, n)}-{label}" for n in (*names, "topic_alerts")})
        wanted = stack.default_topics(out)
        topics = {getattr(out, n): wanted[getattr(out, n)] for n in (*names, "topic_alerts")}
        self.topics.append((out, list(topics)))
        retry_with_deadline(
            lambda: stack.ensure_topics(out, topics),
            retry_on=(stack.StackError, InfrastructureError, KafkaException),
            transient=leader_not_ready,
            timeout_s=SETUP_TIMEOUT_S,
        )
        return out

    def cleanup(self, keep_logs: bool) -> None:
        from careledger import stack

        if self.args.keep:
            return
        for db in self.dbs:
            try:
                self.backend.execute(f"DROP DATABASE IF EXISTS {db}")
            except InfrastructureError as exc:
                print(
                    f"careledger benchmark: cannot drop database {db}: {line_of(exc)}",
                    file=sys.stderr,
                )
        for s, names in self.topics:
            try:
                stack.delete_topics(s, names)
            except stack.StackError as exc:
                print(f"careledger benchmark: {line_of(exc)}", file=sys.stderr)
        self._delete_groups()
        for app_id in self.app_ids:
            (self.base.run_dir / "metrics" / f"processor-{app_id}.json").unlink(missing_ok=True)
            shutil.rmtree(self.base.run_dir / "faust" / app_id, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _delete_groups(self) -> None:
        """The processors' consumer groups (their committed offsets), now empty."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        if not self.app_ids:
            return
        admin = self.admin or AdminClient(kafka_config(self.base, ADMIN, {"log_level": 3}))
        try:
            futures = admin.delete_consumer_groups(list(self.app_ids), request_timeout=10)
        except KafkaException:
            return
        for fut in futures.values():
            with contextlib.suppress(KafkaException):  # never joined, or already gone
                fut.result()

    # ------------------------------------------------------------ reading state
    def chains(self, s: Settings) -> tuple[str, ...]:
        return tuple(s.chain_id(s.topic_events, p) for p in range(s.partitions))

    def stored(self, s: Settings, *, baseline: bool) -> int:
        """Events stored in blocks of the events topic's chains, or baseline rows."""
        db = s.clickhouse_database
        if baseline:
            rows = self.backend.execute(f"SELECT count() FROM {db}.baseline_events")
        else:
            rows = self.backend.execute(
                f"SELECT sum(event_count) FROM {db}.blocks WHERE chain_id IN %(chains)s",
                {"chains": self.chains(s)},
            )
        return int(rows[0][0] or 0) if rows else 0

    def end_offsets(self, s: Settings, topics: list[str]) -> int:
        return end_offsets(s, topics)

    def consumed_topics(self, s: Settings) -> list[str]:
        from careledger.storage.kinds import raw_topics, reference_topics

        return [s.topic_events, *sorted(reference_topics(s)), *sorted(raw_topics(s))]

    def cpu(self, procs: list[subprocess.Popen[bytes]]) -> dict[str, float | None]:
        mine = [host.tree_cpu_seconds(p.pid) for p in procs]  # workers too (ADR 0039)
        return {
            "processor": None if any(c is None for c in mine) else sum(c or 0.0 for c in mine),
            "kafka": host.cpu_seconds(self.stack_pids.get("kafka")),
            "clickhouse": host.cpu_seconds(self.stack_pids.get("clickhouse")),
        }

    def group_holds(self, s: Settings, members: int) -> bool:
        """The processor's consumer group is stable with ``members`` members."""
        from confluent_kafka import ConsumerGroupState, KafkaException
        from confluent_kafka.admin import AdminClient

        if self.admin is None:  # one for the run: each client logs when it is destroyed
            self.admin = AdminClient(kafka_config(s, ADMIN, {"log_level": 3}))
        admin = self.admin
        try:
            futures = admin.describe_consumer_groups([s.processor_app_id], request_timeout=5)
            desc = futures[s.processor_app_id].result()
        except KafkaException:
            return False
        return bool(desc.state == ConsumerGroupState.STABLE and len(desc.members) >= members)

    def check_alive(self, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
        for proc, log in zip(procs, logs, strict=True):
            code = proc.poll()
            if code is not None:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                raise BenchmarkError(f"the processor {how}: {_last_line(log)} (log {log})")

    def wait_stored(
        self,
        s: Settings,
        target: int,
        procs: list[subprocess.Popen[bytes]],
        logs: list[Path],
        *,
        baseline: bool,
        members: int = 1,
        what: str,
    ) -> tuple[DrainSample | None, DrainSample]:
        """Poll until ``target`` units are stored. Returns the first sample taken once the
        processor's consumer group was stable with ``members`` members, i.e. when they
        could start consuming (None if the target was reached first; a batch-record
        backlog may be stored in a few writes), and the final sample. Raises when a
        processor dies or stores nothing new for ``--stall-seconds``."""
        first: DrainSample | None = None
        stable = False
        progress = (time.monotonic(), -1)
        while True:
            self.check_alive(procs, logs)
            if not stable:
                stable = self.group_holds(s, members)
            n = self.stored(s, baseline=baseline)
            now = time.monotonic()
            sample = DrainSample(now, n, self.cpu(procs))
            if n >= target:
                return first, sample
            if first is None and stable:
                first = sample
            if n > progress[1]:
                progress = (now, n)
            elif now - progress[0] > self.args.stall_seconds:
                raise BenchmarkError(
                    f"{what}: nothing new stored for {self.args.stall_seconds:g} s "
                    f"({n:,} of {target:,} stored{_metrics_hint(s)}); log {logs[0]}"
                )
            time.sleep(POLL_S)

    # ------------------------------------------------------------ phases
    def drain(self, backlog: Settings, mode: str, processes: int, label: str) -> dict[str, Any]:
        baseline = mode == "baseline"
        s = self.database(backlog, label, baseline=baseline)
        if not baseline:
            s = self.own_outputs(s, label)
        events = self.args.events
        # the baseline stores a row per event of a batch record and per other record
        # (processors.processor.handle_baseline)
        others = [t for t in self.consumed_topics(s) if t != s.topic_events]
        target = events if not baseline else events + self.end_offsets(s, others)
        load = host.load_average()
        logs = [self.workdir / f"{label}-{i}.log" for i in range(processes)]
        began = time.monotonic()
        procs = [start_processor(s, log, baseline=baseline) for log in logs]
        try:
            first, last = self.wait_stored(
                s,
                target,
                procs,
                logs,
                baseline=baseline,
                members=processes,
                what=f"{mode} drain ({processes} process{'es' if processes > 1 else ''})",
            )
            rss = [host.tree_peak_rss_bytes(p.pid) for p in procs]
        finally:
            for proc in procs:
                stop(proc)
        out: dict[str, Any] = {
            "mode": mode,
            "processes": processes,
            "load_average_at_start": load,
            # start to finish, processor start-up and group joins (rebalances) included
            "wall_seconds": round(last.t - began, 3),
            "wall_events_per_s": round(events / (last.t - began), 1),
        }
        if first is None or first.t >= last.t:
            out.update(events_measured=0, seconds=None, events_per_s=None, cpu_us_per_event={})
            out["note"] = (
                "the backlog was stored before the consumer group was seen stable: "
                "use more --events"
            )
        else:
            out.update(drain_figures(first, last, target, events))
        known = [r for r in rss if r is not None]
        out["peak_rss_bytes"] = max(known) if known else None
        out["peak_rss_bytes_each"] = rss
        if not baseline:
            out["check"] = self.check_chained(s, events)
            if self.args.verify:
                out["verify"] = self.verify(s)
        return out

    def check_chained(self, s: Settings, produced: int) -> dict[str, Any]:
        """Nothing lost, nothing duplicated: the events in committed blocks of the events
        topic's chains, their rows and distinct event ids all equal ``produced``."""
        db = s.clickhouse_database
        params = {"chains": self.chains(s)}
        blocks = self.backend.execute(
            f"SELECT count(), sum(event_count), sum(dead_lettered) FROM {db}.blocks "
            "WHERE chain_id IN %(chains)s",
            params,
        )[0]
        rows = self.backend.execute(
            f"SELECT count(), uniqExact(event_id) FROM {db}.access_events "
            "WHERE chain_id IN %(chains)s AND (chain_id, height) IN "
            f"(SELECT chain_id, height FROM {db}.blocks WHERE chain_id IN %(chains)s)",
            params,
        )[0]
        in_blocks, event_rows, distinct = int(blocks[1] or 0), int(rows[0]), int(rows[1])
        return {
            "produced": produced,
            "blocks": int(blocks[0]),
            "events_in_blocks": in_blocks,
            "event_rows": event_rows,
            "distinct_event_ids": distinct,
            "dead_lettered": int(blocks[2] or 0),
            "lost": produced - distinct,
            "duplicated": event_rows - distinct,
            "ok": in_blocks == event_rows == distinct == produced,
        }

    def verify(self, s: Settings) -> dict[str, Any]:
        began = time.monotonic()
        result = run_cli(s, "verify", "--no-audit", timeout=3600.0)
        lines = [x for x in (result.stdout + result.stderr).splitlines() if x.strip()]
        return {
            "exit_status": result.returncode,
            "seconds": round(time.monotonic() - began, 1),
            "last_line": lines[-1][:300] if lines else "",
        }

    def latency(self, mode: str, rates: list[float]) -> tuple[list[dict[str, Any]], int | None]:
        """The latency phases of one mode, on topics and a database of their own, one
        processor throughout. Returns the phases and the processor's peak RSS.

        Chained: each event's latency is the broker append time of its record to the
        time the block holding it was stored, read back afterwards (append times from
        the events topic, each block's store time from the processor's checkpoints, the
        record-to-block mapping from the store), exact and per event. The processor's
        own latency histogram is reported next to it (``processor_histogram``). Baseline:
        the processor's histogram (one observation per record, at the end of its insert).
        """
        baseline = mode == "baseline"
        pipe = self.pipeline(f"lat-{mode}")
        s = self.database(pipe, f"lat_{mode}", baseline=baseline)
        metrics = s.run_dir / "metrics" / f"processor-{s.processor_app_id}.json"
        log = self.workdir / f"lat-{mode}.log"
        proc = start_processor(s, log, baseline=baseline)
        procs, logs = [proc], [log]
        phases: list[dict[str, Any]] = []
        sent: list[_Sent] = []
        # the latency phases' events follow the backlog's: the same in both modes
        index = self.args.events
        try:
            before = self.stored(s, baseline=baseline)
            produce_backlog(s, self.pool, index, self.args.warmup_events)
            index += self.args.warmup_events
            target = self._target(s, baseline, before + self.args.warmup_events)
            _, done = self.wait_stored(
                s, target, procs, logs, baseline=baseline, what=f"{mode} warm-up"
            )
            snap = self.next_metrics(metrics, done, procs, logs)
            for rate in rates:
                count = max(1, math.ceil(rate * self.args.latency_seconds))
                threads = self.args.producer_threads or threads_for(rate, self.per_thread_rate)
                load = host.load_average()
                before = self.stored(s, baseline=baseline)
                start_offsets = partition_ends(s, s.topic_events)
                cpu0 = self.cpu(procs)
                produced = produce_paced(s, self.pool, index, count, rate, threads)
                index += count
                ends = partition_ends(s, s.topic_events)
                ranges = {p: (start_offsets.get(p, 0), e) for p, e in ends.items()}
                sent.append(_Sent(ranges, index - count, produced))
                target = self._target(s, baseline, before + count)
                _, done = self.wait_stored(
                    s, target, procs, logs, baseline=baseline, what=f"{mode} at {rate:,.0f}/s"
                )
                cpu1 = self.cpu(procs)
                after = self.next_metrics(metrics, done, procs, logs)
                try:
                    buckets = histogram_diff(snap["latency_buckets"], after["latency_buckets"])
                    histogram = latency_summary(after["latency_bucket_bounds_s"], buckets)
                except (KeyError, TypeError, ValueError) as exc:
                    raise BenchmarkError(f"{mode} latency histogram unusable: {exc}") from None
                phase: dict[str, Any] = {"mode": mode, **produced.as_dict()}
                phase.update(
                    load_average_at_start=load,
                    latency=histogram,
                    latency_source="processor histogram, per record",
                    caught_up_after_s=round(max(done.t - produced.finished, 0.0), 2),
                    cpu_us_per_event={
                        k: None
                        if cpu0.get(k) is None or cpu1.get(k) is None
                        else round(((cpu1[k] or 0.0) - (cpu0[k] or 0.0)) * 1e6 / count, 1)
                        for k in cpu0
                    },
                )
                phases.append(phase)
                snap = after
            rss = host.tree_peak_rss_bytes(proc.pid)
        finally:
            stop(proc)
        if not baseline:
            self.chained_latency(s, phases, sent)
        return phases, rss

    def chained_latency(self, s: Settings, phases: list[dict[str, Any]], sent: list[_Sent]) -> None:
        """Replace each chained phase's latency by the exact per-event figures (see
        ``latency``), keeping the processor's histogram as ``processor_histogram``; add
        the latency from each event's ``send`` (the SDK's batching and signing, the
        produce and the broker's append included) as ``latency_from_send``."""
        chains = self.chains(s)
        partition_of = {c: p for p, c in enumerate(chains)}
        commits = CommitTimes(read_checkpoints(s))

        def stored(p: int, height: int) -> float | None:
            return commits.at(chains[p], height)

        db = s.clickhouse_database
        for phase, meta in zip(phases, sent, strict=True):
            appended, producer_stamped = read_append_times(s, s.topic_events, meta.ranges)
            if not appended:
                continue
            where = " OR ".join(
                f"(chain_id = %(c{p})s AND kafka_offset >= {a} AND kafka_offset < {b})"
                for p, (a, b) in sorted(meta.ranges.items())
                if b > a and p < len(chains)
            )
            params = {f"c{p}": chains[p] for p in meta.ranges if p < len(chains)}
            rows = self.backend.execute(
                f"SELECT event_id, chain_id, kafka_offset, height FROM {db}.access_events "
                f"WHERE ({where}) AND (chain_id, height) IN "
                f"(SELECT chain_id, height FROM {db}.blocks)",
                params,
            )
            events = [
                (_text(r[0]), partition_of[c], int(r[2]), int(r[3]))
                for r in rows
                if (c := _text(r[1])) in partition_of
            ]
            per_record: dict[tuple[int, int, int], int] = {}
            for _eid, p, off, h in events:
                per_record[(p, off, h)] = per_record.get((p, off, h), 0) + 1
            pairs, unknown = chained_latencies(
                [(p, off, h, n) for (p, off, h), n in per_record.items()], appended, stored
            )
            phase["processor_histogram"] = phase["latency"]
            phase["latency"] = weighted_summary(pairs)
            phase["latency_source"] = "append time -> checkpoint of the block, per event"
            phase["latency_unknown_events"] = unknown
            if producer_stamped:
                phase["producer_stamped_records"] = producer_stamped
            if meta.produced.sent_at is not None:
                first, count = meta.first_index, meta.produced.events
                seed = self.pool.seed
                index_of = {event_id_for(seed, first + j): j for j in range(count)}
                from_send, unsent = send_latencies(
                    [(eid, p, h) for eid, p, _off, h in events],
                    index_of,
                    meta.produced.sent_at,
                    stored,
                )
                phase["latency_from_send"] = weighted_summary(from_send)
                phase["latency_from_send_unknown_events"] = unsent

    def _target(self, s: Settings, baseline: bool, chained_events: int) -> int:
        """What ``stored`` counts once everything produced so far is stored: chained,
        ``chained_events`` (the caller's count); baseline, every record of the topics the
        baseline consumes (events, reference data, the SDK's heartbeats)."""
        if baseline:
            return self.end_offsets(s, self.consumed_topics(s))
        return chained_events

    def next_metrics(
        self,
        path: Path,
        done: DrainSample,
        procs: list[subprocess.Popen[bytes]],
        logs: list[Path],
    ) -> dict[str, Any]:
        """The first metrics snapshot written at least half a second after ``done``
        and counting at least ``done.stored`` stored units: it holds the latencies of
        everything stored by then (they are observed just after the write)."""
        wall_done = time.time() - (time.monotonic() - done.t)
        deadline = time.monotonic() + 6 * METRICS_INTERVAL_S
        while time.monotonic() < deadline:
            self.check_alive(procs, logs)
            try:
                if path.stat().st_mtime >= wall_done + 0.5:
                    snap = json.loads(path.read_text(encoding="utf-8"))
                    if isinstance(snap, dict) and int(snap.get("events_chained", 0)) >= (
                        done.stored
                    ):
                        return snap
            except (OSError, ValueError):
                pass  # not written yet, or being replaced
            time.sleep(0.2)
        raise BenchmarkError(f"the processor wrote no usable metrics to {path}")


@dataclass(frozen=True)
class _Sent:
    """What a latency phase offered: its events' offsets (partition -> [start, end)),
    the index of its first event and the producing's figures (send times included)."""

    ranges: dict[int, tuple[int, int]]
    first_index: int
    produced: Produced


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _metrics_hint(s: Settings) -> str:
    path = s.run_dir / "metrics" / f"processor-{s.processor_app_id}.json"
    try:
        snap = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(snap, dict):
        return ""
    return (
        f"; processor: {snap.get('dead_lettered', 0)} dead-lettered, "
        f"{snap.get('quarantined', 0)} quarantined, {snap.get('store_failures', 0)} store failures"
    )


def _last_line(log: Path) -> str:
    try:
        with log.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(f.tell() - 8192, 0))
            lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return "no log"
    lines = [x for x in lines if x]
    return lines[-1][:300] if lines else "empty log"
