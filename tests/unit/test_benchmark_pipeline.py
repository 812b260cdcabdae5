"""`careledger benchmark`: the pure parts (statistics, pacing, retries, /proc parsing, the
table, the JSON and the plot) and the command's failure contract. Behaviour only: nothing
here measures or asserts speed."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import KafkaError, KafkaException

from careledger.stack import StackError
from careledger_core.errors import InfrastructureError
from careledger_core.event import AccessEvent, canonical_event_bytes
from commands.benchmarks import pipeline, pipeline_host, pipeline_report
from commands.benchmarks.pipeline_load import (
    EventPool,
    Produced,
    TokenBucket,
    event_id_for,
    leader_not_ready,
    retry_with_deadline,
    split_rate,
    threads_for,
)
from commands.benchmarks.pipeline_report import (
    DrainSample,
    chained_latencies,
    default_rates,
    drain_figures,
    histogram_diff,
    histogram_percentile,
    latency_summary,
    parse_rates,
    percentile,
    plot_series,
    render_table,
    send_latencies,
    to_json,
    weighted_percentile,
    weighted_summary,
)
from producers.simulator import HospitalModel, simulate

UUID = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


# --------------------------------------------------------------------------- percentiles


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 1) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_weighted_percentile_counts_each_event_of_a_record() -> None:
    # one record of 98 events at 0.1 s, one event at 5 s, one at 9 s: per event, p50 and
    # p95 are 0.1 s and p99 is 5 s; counted per record they would be 5 s
    pairs = [(0.1, 98), (5.0, 1), (9.0, 1)]
    assert weighted_percentile(pairs, 0.50) == 0.1
    assert weighted_percentile(pairs, 0.98) == 0.1
    assert weighted_percentile(pairs, 0.99) == 5.0
    assert weighted_percentile(pairs, 1.0) == 9.0
    assert weighted_percentile(list(reversed(pairs)), 0.99) == 5.0  # any order
    summary = weighted_summary(pairs)
    assert summary == {"count": 100, "p50_s": 0.1, "p95_s": 0.1, "p99_s": 5.0, "max_s": 9.0}
    assert weighted_summary([])["p99_s"] is None
    assert weighted_summary([(1.0, 0)])["count"] == 0
    with pytest.raises(ValueError):
        weighted_percentile([], 0.5)
    with pytest.raises(ValueError):
        weighted_percentile(pairs, 1.5)


def test_histogram_percentile_interpolates_inside_the_bucket() -> None:
    bounds = [1.0, 2.0, 4.0]
    # ten values in (1, 2]: the median is half-way through the bucket
    assert histogram_percentile(bounds, [0, 10, 0, 0], 0.5) == pytest.approx(1.5)
    assert histogram_percentile(bounds, [0, 10, 0, 0], 1.0) == pytest.approx(2.0)
    # bucket 0 starts at zero
    assert histogram_percentile(bounds, [4, 0, 0, 0], 0.25) == pytest.approx(0.25)
    # the overflow bucket has no upper bound: its lower bound is reported
    assert histogram_percentile(bounds, [0, 0, 0, 3], 0.99) == 4.0
    # 90 fast, 10 slow: p99 is in the slow bucket (2, 4]
    p99 = histogram_percentile(bounds, [90, 0, 10, 0], 0.99)
    assert p99 is not None and 2.0 < p99 <= 4.0
    assert histogram_percentile(bounds, [0, 0, 0, 0], 0.5) is None
    with pytest.raises(ValueError):
        histogram_percentile(bounds, [1, 2], 0.5)
    with pytest.raises(ValueError):
        histogram_percentile(bounds, [1, 0, 0, 0], 0.0)
    summary = latency_summary(bounds, [0, 10, 0, 0])
    assert summary["count"] == 10 and summary["p50_s"] == pytest.approx(1.5)


def test_histogram_diff_is_what_a_phase_observed() -> None:
    assert histogram_diff([1, 2, 3], [1, 5, 4]) == [0, 3, 1]
    assert histogram_diff(None, [1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="different"):
        histogram_diff([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="restart"):
        histogram_diff([5, 0], [1, 0])  # the processor restarted: counts went down


def test_chained_latencies_join_append_and_store_times_per_event() -> None:
    appended = {(0, 10): 100.0, (0, 11): 100.5, (1, 3): 101.0}
    stored = {(0, 2): 100.8, (1, 0): 101.2}
    rows = [
        (0, 10, 2, 500),  # a batch record of 500 events in block 2 of partition 0
        (0, 11, 2, 250),
        (1, 3, 0, 1),
        (1, 4, 0, 7),  # no append time read: unknown
        (0, 12, 9, 3),  # no checkpoint covers block 9: unknown
    ]
    pairs, unknown = chained_latencies(rows, appended, lambda p, h: stored.get((p, h)))
    assert [(round(v, 3), n) for v, n in pairs] == [(0.8, 500), (0.3, 250), (0.2, 1)]
    assert unknown == 10
    # a clock step never makes a latency negative
    pairs, _ = chained_latencies([(0, 10, 2, 1)], {(0, 10): 200.0}, lambda p, h: 100.0)
    assert pairs == [(0.0, 1)]


def test_send_latencies_from_each_events_send_time() -> None:
    sent_at = [10.0, 10.0, 10.5, 0.0]  # the fourth was never sent
    index_of = {"a": 0, "b": 1, "c": 2, "d": 3}
    stored = {(0, 1): 10.9, (1, 4): 11.0}
    rows = [("a", 0, 1), ("b", 1, 4), ("c", 0, 1), ("d", 0, 1), ("x", 0, 1), ("a", 3, 3)]
    pairs, unknown = send_latencies(rows, index_of, sent_at, lambda p, h: stored.get((p, h)))
    assert [(round(v, 3), n) for v, n in pairs] == [(0.9, 1), (1.0, 1), (0.4, 1)]
    assert unknown == 3  # not sent, an unknown id, a block no checkpoint covers


def test_drain_figures_measure_between_the_samples() -> None:
    first = DrainSample(10.0, 1_000, {"processor": 5.0, "kafka": 1.0, "clickhouse": None})
    last = DrainSample(20.0, 11_000, {"processor": 6.5, "kafka": 1.2, "clickhouse": 3.0})
    out = drain_figures(first, last, 11_000, 11_000)
    assert out["events_per_s"] == 1000.0
    assert out["events_measured"] == 10_000
    assert out["cpu_us_per_event"] == {"processor": 150.0, "kafka": 20.0, "clickhouse": None}
    # a baseline counts Kafka records: 110 records carrying 11,000 events
    out = drain_figures(
        DrainSample(0.0, 10, {"processor": 0.0}),
        DrainSample(2.0, 110, {"processor": 1.0}),
        110,
        11_000,
    )
    assert out["events_measured"] == 10_000 and out["events_per_s"] == 5000.0
    # nothing between the samples: no rate rather than a division by zero
    same = DrainSample(1.0, 5, {"processor": 1.0})
    assert drain_figures(same, same, 5, 5)["events_per_s"] is None


def test_default_rates_are_fractions_of_the_peak_rounded() -> None:
    assert default_rates(1877.0) == [470.0, 940.0, 1400.0]
    assert default_rates(30_000.0) == [7500.0, 15_000.0, 22_000.0]
    assert default_rates(12.0) == [10.0]  # never below 10/s; duplicates merged
    assert default_rates(None) == []
    assert default_rates(0.0) == []


def test_parse_rates() -> None:
    assert parse_rates("5000,15000") == [5000.0, 15000.0]
    assert parse_rates(" 15k , 2.5k,") == [15000.0, 2500.0]
    for bad in ("", "fast", "0", "-5", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_rates(bad)


def test_command_line_options() -> None:
    parser = argparse.ArgumentParser()
    pipeline.configure_benchmark(parser)
    args = parser.parse_args(["--events", "1_000_000", "--rates", "5000,15000", "--scale-out"])
    assert args.events == 1_000_000
    assert args.rates == [5000.0, 15000.0]
    assert args.scale_out and not args.verify
    defaults = parser.parse_args([])
    assert defaults.events == 100_000 and defaults.rates is None
    for bad in (["--rates", "0"], ["--events", "0"], ["--events", "many"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


# --------------------------------------------------------------------------- pacing


def test_token_bucket_paces_at_the_rate() -> None:
    # a sender that is never late: every token is spent as soon as it exists
    rate, now, sent = 1000.0, 0.0, 0
    bucket = TokenBucket(rate, capacity=100, now=now)
    assert bucket.take(now, 10) == 0  # starts empty: no burst at the start
    while now < 10.0:
        sent += bucket.take(now, 10_000)
        now += min(max(bucket.wait(now), 0.0005), 0.01)
    assert abs(sent - 10_000) <= 2
    assert bucket.dropped == 0


def test_token_bucket_drops_what_a_stalled_sender_missed() -> None:
    bucket = TokenBucket(1000.0, capacity=100, now=0.0)
    # the sender stalls for 2 s: it may send the capacity, not the 2000 it missed
    assert bucket.take(2.0, 10_000) == 100
    assert bucket.dropped == pytest.approx(1900)
    assert bucket.take(2.0, 10_000) == 0
    assert bucket.wait(2.0) == pytest.approx(0.001)
    # ``at_most`` caps a take; the rest stays for later
    assert bucket.take(2.0625, 20) == 20  # 62.5 tokens by then
    assert bucket.take(2.0625, 1000) == 42
    with pytest.raises(ValueError):
        TokenBucket(0.0, 1, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(10.0, 0.5, 0.0)


def test_rates_split_over_threads() -> None:
    assert split_rate(15_000.0, 3) == [5000.0, 5000.0, 5000.0]
    with pytest.raises(ValueError):
        split_rate(1.0, 0)
    assert threads_for(15_000.0, None) == 1
    assert threads_for(15_000.0, 100_000.0) == 1
    assert threads_for(15_000.0, 20_000.0) == 2  # half of 20k per thread
    assert threads_for(1e9, 20_000.0) == 4  # at most four


def test_produced_reports_the_achieved_rate() -> None:
    p = Produced(events=30_000, seconds=2.0, threads=2, target_rate=15_000.0, dropped=12)
    d = p.as_dict()
    assert d["offered_events_per_s"] == 15_000.0
    assert d["target_events_per_s"] == 15_000.0 and d["schedule_dropped_events"] == 12
    assert Produced(0, 0.0, 1).rate is None


# --------------------------------------------------------------------------- events


def test_event_pool_gives_each_index_its_own_id_deterministically() -> None:
    base = list(simulate(HospitalModel(seed=3), count=5, seed=3))
    pool = EventPool.of(base, seed=3)
    events = [pool.event(i) for i in range(12)]
    assert len({e.event_id for e in events}) == 12
    assert all(UUID.match(e.event_id) for e in events)
    assert pool.event(7) == events[7]  # the same event whenever asked
    assert EventPool.of(base, seed=4).event(7).event_id != events[7].event_id
    # copies of the pool's events, otherwise unchanged
    assert msgspec.structs.replace(events[6], event_id=base[1].event_id) == base[1]
    # and valid events: they decode as the processor decodes them
    decoded = msgspec.json.decode(canonical_event_bytes(events[11]), type=AccessEvent)
    assert decoded.event_id == event_id_for(3, 11)
    with pytest.raises(ValueError):
        EventPool.of([])


# --------------------------------------------------------------------------- retries


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def _not_leader() -> KafkaException:
    return KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))


def test_retry_with_deadline_retries_a_topic_electing_its_leader() -> None:
    clock = _Clock()
    calls = iter([_not_leader(), _not_leader(), "done"])

    def fn() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return str(item)

    out = retry_with_deadline(
        fn,
        retry_on=(KafkaException,),
        transient=leader_not_ready,
        timeout_s=10,
        pause_s=0.5,
        clock=clock,
        sleep=clock.sleep,
    )
    assert out == "done" and clock.sleeps == [0.5, 0.5]


def test_retry_with_deadline_gives_up_at_the_deadline_with_the_last_error() -> None:
    clock = _Clock()

    def fn() -> None:
        raise _not_leader()

    with pytest.raises(KafkaException):
        retry_with_deadline(
            fn,
            retry_on=(KafkaException,),
            transient=leader_not_ready,
            timeout_s=3,
            pause_s=1,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now <= 3


def test_retry_with_deadline_raises_other_errors_at_once() -> None:
    clock = _Clock()

    def denied() -> None:
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        retry_with_deadline(
            denied,
            retry_on=(KafkaException,),
            transient=leader_not_ready,
            timeout_s=60,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps == []

    def broken() -> None:
        raise ValueError("not a Kafka error")

    with pytest.raises(ValueError):
        retry_with_deadline(
            broken,
            retry_on=(KafkaException,),
            transient=lambda e: True,
            timeout_s=60,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps == []


def test_leader_not_ready_recognises_the_transient_errors() -> None:
    assert leader_not_ready(_not_leader())
    for code in (KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART):
        assert leader_not_ready(KafkaException(KafkaError(code)))
    # wrapped by careledger's own errors, with or without the cause attached
    try:
        try:
            raise _not_leader()
        except KafkaException as exc:
            raise StackError("cannot create the Kafka topics") from exc
    except StackError as wrapped:
        assert leader_not_ready(wrapped)
    assert leader_not_ready(StackError("topics ['x'] have no partition leader yet"))
    assert leader_not_ready(InfrastructureError("cannot read", code="KAFKA_UNAVAILABLE"))
    assert not leader_not_ready(InfrastructureError("bad", code="KAFKA_CONFIG"))
    assert not leader_not_ready(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert not leader_not_ready(ValueError("boom"))


# --------------------------------------------------------------------------- /proc


def test_proc_parsers() -> None:
    # the command name may hold spaces and parentheses
    stat = "4242 (faust (worker) 1) S 1 4242 4242 0 -1 4194560 10 0 0 0 250 75 3 1 20 0 9 0"
    assert pipeline_host.parse_stat_cpu_ticks(stat) == 325
    assert pipeline_host.parse_stat_reaped_ticks(stat) == 4  # cutime 3 + cstime 1
    assert pipeline_host.parse_stat_parent(stat) == 1
    with pytest.raises(ValueError):
        pipeline_host.parse_stat_reaped_ticks("4242 (short) S 1 2 3")
    with pytest.raises(ValueError):
        pipeline_host.parse_stat_cpu_ticks("garbage")
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  123456 kB\nVmRSS:\t  100000 kB\n"
    assert pipeline_host.parse_status_kib(status, "VmHWM") == 123456
    assert pipeline_host.parse_status_kib(status, "VmSwap") is None
    cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\n"
    assert pipeline_host.parse_cpu_model(cpuinfo) == "Intel(R) Xeon(R)"
    assert pipeline_host.parse_cpu_model("processor : 0\n") is None
    assert pipeline_host.parse_mem_total_bytes("MemTotal:  1024 kB\n") == 1024 * 1024
    assert pipeline_host.is_kafka(["java", "-Xmx1G", "kafka.Kafka", "server.properties"])
    assert not pipeline_host.is_kafka(["python", "-m", "commands.cli", "process"])
    assert pipeline_host.is_clickhouse_server(["/opt/ch/clickhouse", "server", "--config=x"])
    assert pipeline_host.is_clickhouse_server(["/usr/bin/clickhouse-server"])
    assert not pipeline_host.is_clickhouse_server(["clickhouse", "client"])
    assert not pipeline_host.is_clickhouse_server([])


def test_a_processs_tree_counts_the_cpu_and_memory_of_its_workers() -> None:
    # a processor's opening workers (ADR 0039) are children: their CPU and memory count
    import subprocess
    import sys
    import time

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time\np = subprocess.Popen([sys.executable, '-c', {burn!r}"
            " + 'time.sleep(60)'])\ntime.sleep(60)",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        tree = own = None
        while time.monotonic() < deadline:
            own = pipeline_host.cpu_seconds(parent.pid)
            tree = pipeline_host.tree_cpu_seconds(parent.pid)
            if own is not None and tree is not None and tree - own >= 0.4:
                break
            time.sleep(0.2)
        assert own is not None and tree is not None and tree - own >= 0.4, (own, tree)
        own_rss = pipeline_host.peak_rss_bytes(parent.pid)
        tree_rss = pipeline_host.tree_peak_rss_bytes(parent.pid)
        assert own_rss is not None and tree_rss is not None and tree_rss > own_rss
    finally:
        for child in pipeline_host._children(parent.pid):
            os.kill(child, 9)
        parent.kill()
        parent.wait()
    assert pipeline_host.tree_cpu_seconds(None) is None


def test_find_pid_finds_the_one_process_whose_command_line_matches() -> None:
    import subprocess
    import sys
    import time
    import uuid

    tag = f"careledger-find-pid-{uuid.uuid4().hex}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", tag])
    try:
        found = None
        deadline = time.monotonic() + 20
        while found is None and time.monotonic() < deadline:  # until the child has exec'd
            found = pipeline_host.find_pid(lambda argv: tag in argv)
            time.sleep(0.05)
        assert found == child.pid
        assert pipeline_host.find_pid(lambda argv: False) is None
    finally:
        child.kill()
        child.wait()


def test_own_process_readings() -> None:
    import os

    cpu = pipeline_host.cpu_seconds(os.getpid())
    rss = pipeline_host.peak_rss_bytes(os.getpid())
    # careledger runs on Linux (Debian): /proc is always there
    assert cpu is not None
    assert cpu >= 0 and rss is not None and rss > 0
    assert pipeline_host.cpu_seconds(None) is None
    machine = pipeline_host.machine(kafka_version="4.1.1")
    assert machine["cores"] and machine["kafka_version"] == "4.1.1"


# --------------------------------------------------------------------------- the report


def _figures() -> dict[str, Any]:
    return {
        "schema": pipeline_report.SCHEMA,
        "started_at": "2026-12-03T12:00:00Z",
        "machine": {
            "cores": 2,
            "cpu_model": "Test CPU",
            "memory_bytes": 8 * 2**30,
            "kafka_version": "4.1.1",
            "clickhouse_version": "18.16.1",
        },
        "settings": {
            "partitions": 4,
            "block_max_events": 1000,
            "block_max_ms": 250,
            "require_source_signatures": True,
            "source_batch_max_events": 500,
            "source_batch_max_ms": 50,
            "source_record_format": "batch",
        },
        "events": 100_000,
        "backlog": {
            "events": 100_000,
            "records": 200,
            "threads": 1,
            "offered_events_per_s": 90_000.0,
            "load_average_at_start": [0.5, 0.4, 0.3],
        },
        "drain": [
            {
                "mode": "chained",
                "processes": 1,
                "load_average_at_start": [0.52, 0.41, 0.3],
                "events_per_s": 31_234.5,
                "wall_seconds": 7.25,
                "cpu_us_per_event": {"processor": 30.1, "kafka": 5.0, "clickhouse": 12.0},
                "peak_rss_bytes": 180 * 2**20,
                "check": {"ok": True, "lost": 0, "duplicated": 0},
            },
            {
                "mode": "chained",
                "processes": 2,
                "load_average_at_start": [1.0, 0.5, 0.3],
                "events_per_s": 33_000.0,
                "cpu_us_per_event": {"processor": 35.0, "kafka": None, "clickhouse": None},
                "peak_rss_bytes": None,
                "check": {"ok": False, "lost": 3, "duplicated": 1},
            },
            {
                "mode": "baseline",
                "processes": 1,
                "load_average_at_start": None,
                "events_per_s": 34_000.0,
                "cpu_us_per_event": {},
                "peak_rss_bytes": 90 * 2**20,
            },
        ],
        "ratios": {"chained_over_baseline": 0.919, "two_processes_over_one": 1.057},
        "latency": [
            {
                "mode": "chained",
                "target_events_per_s": 15_000.0,
                "offered_events_per_s": 14_990.2,
                "threads": 1,
                "events": 300_000,
                "latency": {"p50_s": 0.21, "p95_s": 0.5, "p99_s": 0.81},
                "latency_from_send": {"p99_s": 0.87},
                "caught_up_after_s": 0.4,
                "cpu_us_per_event": {"processor": 40.0},
                "load_average_at_start": [1.5, 1.0, 0.5],
            },
            {
                "mode": "baseline",
                "target_events_per_s": 15_000.0,
                "offered_events_per_s": None,
                "threads": 2,
                "events": 300_000,
                "latency": {"p50_s": None, "p95_s": None, "p99_s": 12.5},
                "caught_up_after_s": None,
                "cpu_us_per_event": {},
                "load_average_at_start": None,
            },
        ],
        "notes": ["a note"],
        "json_path": "/tmp/x.json",
        "plot_skipped": "no matplotlib",
    }


def test_table_shows_every_figure_and_verdict() -> None:
    text = render_table(_figures())
    assert "2 cores (Test CPU)" in text and "Kafka 4.1.1" in text and "ClickHouse 18.16.1" in text
    assert "chained, 1 process " in text and "chained, 2 processes" in text
    assert "31,234" in text and "7.2 s" in text and "30 / 5 / 12" in text and "180 MB" in text
    assert "LOST 3 DUP 1" in text and " ok" in text
    assert "chained / baseline throughput: 0.92" in text
    assert "2 processes / 1 process (chained): 1.06" in text
    assert "0.52 0.41 0.30" in text  # the load at the start of each run
    assert "15,000" in text and "14,990" in text  # target next to the achieved rate
    assert (
        "210 ms" in text
        and "810 ms" in text
        and "870 ms" in text
        and "12.5 s" in text
        and "+0.4 s" in text
    )
    assert "n/a" in text  # unknown figures are said to be unknown
    assert "note: a note" in text and "plot:    skipped (no matplotlib)" in text


def test_json_round_trips_and_refuses_nan() -> None:
    figures = _figures()
    assert json.loads(to_json(figures)) == figures
    with pytest.raises(ValueError):
        to_json({"x": float("nan")})


def test_plot_series_and_png(tmp_path: Path) -> None:
    series = plot_series(_figures())
    assert series == {
        "chained": {
            "p50_s": [(14_990.2, 0.21)],
            "p95_s": [(14_990.2, 0.5)],
            "p99_s": [(14_990.2, 0.81)],
            "send_p99_s": [(14_990.2, 0.87)],
        }
    }  # a phase without an achieved rate is left out
    path = tmp_path / "plot.png"  # matplotlib is installed by deploy/bootstrap.sh
    assert pipeline_report.plot(_figures(), path) is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pipeline_report.plot({"latency": []}, tmp_path / "none.png") == "no latency figures"


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (StackError("Kafka did not become ready"), 2),
        (InfrastructureError("ClickHouse statement failed: Connection refused"), 2),
        (_not_leader(), 2),
        (pipeline.BenchmarkError("the processor exited with status 1"), 1),
        (pipeline.BenchmarkError("a custom status", exit_code=3), 3),
        (OSError("No space left on device"), 1),
    ],
)
def test_a_failure_is_one_line_and_an_exit_status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    status: int,
) -> None:
    def fail(args: argparse.Namespace, settings: Any) -> int:
        raise error

    monkeypatch.setattr(pipeline, "_benchmark", fail)
    assert pipeline.command_benchmark(argparse.Namespace(), None) == status  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("careledger benchmark: ")
    assert "Traceback" not in err


def test_the_sealed_drain_and_its_cost_are_in_the_table() -> None:
    """``--sealed`` (ADR 0037): the sealed backlog's produce rate, the sealed drain and
    the ratio that measures what encryption at rest costs."""
    parser = argparse.ArgumentParser()
    pipeline.configure_benchmark(parser)
    assert parser.parse_args(["--sealed"]).sealed and not parser.parse_args([]).sealed
    figures = _figures()
    chained = figures["drain"][0]
    figures["drain"].insert(1, {**chained, "mode": "chained-sealed", "events_per_s": 21_000.0})
    figures["backlog_sealed"] = {
        "events": 100_000,
        "records": 200,
        "threads": 1,
        "offered_events_per_s": 40_000.0,
        "load_average_at_start": [0.5, 0.4, 0.3],
    }
    figures["ratios"]["sealed_over_chained"] = 0.67
    text = render_table(figures)
    assert "sealed, 1 process" in text and "21,000" in text
    assert "sealed backlog: the same events in 200 Kafka records" in text and "40,000" in text
    assert "sealed / chained throughput (encryption at rest): 0.67" in text


def test_the_sealed_drain_by_two_processes_and_its_ratio_are_in_the_table() -> None:
    """``--sealed --scale-out``: the sealed backlog drained again by two processes
    sharing the partitions (the opening shared), and the ratio to one."""
    figures = _figures()
    chained = figures["drain"][0]
    one = {**chained, "mode": "chained-sealed", "events_per_s": 7_000.0}
    figures["drain"][1:1] = [one, {**one, "processes": 2, "events_per_s": 9_100.0}]
    figures["ratios"].update(sealed_over_chained=0.45, sealed_two_processes_over_one=1.3)
    text = render_table(figures)
    assert "sealed, 1 process" in text and "7,000" in text
    assert "sealed, 2 processes" in text and "9,100" in text
    assert "2 processes / 1 process (sealed): 1.30" in text
