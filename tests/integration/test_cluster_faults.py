"""Faults on the local cluster under a steady stream of events (issue 12, point 2).

Each test sends events with the SDK while the real processor runs, injects one fault,
and then demands: every acknowledged event chained exactly once, both ClickHouse
replicas (each read alone) holding every event and ``verify`` intact on each, and every
component recovered by itself: the processor still running, never restarted by hand.
The faults: ClickHouse replica 1 (the processor's primary) SIGKILLed mid-stream and
back later; both replicas down for 20 s; one of two processors sharing the partitions
SIGKILLed. A broker killed mid-stream is in test_cluster.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.stack import cluster
from tests.integration.cluster_support import (
    Flow,
    assert_replicas_hold,
    cluster_settings,
    on_cluster,
    replica,
)
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)

pytestmark = pytest.mark.integration

__all__ = ["cluster_settings", "on_cluster"]

OUTAGE_S = 20.0
#: events per test: a few thousand (2 cores run six JVM/ClickHouse processes)
EVENTS = 3000


def _revive_clickhouse(settings: Settings) -> None:
    """The killed replicas started again (``up`` starts only what is down)."""
    assert cluster.up(settings, quiet=True, topics=False, schema=False).up


def _all_chained(s: Settings, produced: list[str], timeout: float) -> None:
    store = store_for(s)
    try:
        wait_until(
            lambda: committed_event_count(store) >= len(produced),
            timeout,
            what=f"all {len(produced)} acknowledged events chained",
        )
    finally:
        store.backend.close()


def test_primary_replica_killed_mid_stream_chains_on_and_replicas_converge(
    on_cluster: Settings, settings: Settings, tmp_path: Path
) -> None:
    s = processor_settings(with_keys(on_cluster, tmp_path), block_max_events=200)
    log = tmp_path / "processor.log"
    proc = start_processor(s, log)
    survivor = store_for(replica(s, 2))
    try:
        with Flow(s, limit=EVENTS, seed=41, pause_s=0.2, hold_at=EVENTS * 2 // 3) as flow:
            wait_until(lambda: committed_event_count(survivor) >= 300, 120, what="chaining started")
            cluster.kill_node(settings, "clickhouse-1")
            sent_at_fault = len(flow.ids)
            down_at = committed_event_count(survivor)
            # chaining goes on through replica 2 alone while replica 1 is down
            wait_until(
                lambda: committed_event_count(survivor) >= down_at + 300 or flow.error is not None,
                120,
                what="blocks written through replica 2 while replica 1 is down",
            )
            assert flow.error is None, flow.error
            assert proc.poll() is None, "the processor died when its primary replica did"
            _revive_clickhouse(settings)
            revived_at = len(flow.ids)
            flow.release()  # the last third is sent only after the replica is back
            wait_until(
                lambda: len(flow.ids) >= EVENTS or flow.error is not None,
                240,
                what="every event sent",
            )
        assert flow.error is None, flow.error
        produced = list(flow.ids)
        assert sent_at_fault < revived_at < len(produced), "the fault was not mid-stream"
        _all_chained(s, produced, 240)
        time.sleep(2.0)
        assert proc.poll() is None, "the processor stopped"
    finally:
        survivor.backend.close()
        stop(proc)
    assert_replicas_hold(s, produced)


def test_clickhouse_entirely_down_for_20s_while_events_flow_needs_no_operator(
    on_cluster: Settings, settings: Settings, tmp_path: Path
) -> None:
    s = processor_settings(with_keys(on_cluster, tmp_path), block_max_events=200)
    log = tmp_path / "processor.log"
    proc = start_processor(s, log)
    store = store_for(s)
    try:
        with Flow(s, limit=EVENTS, seed=42, pause_s=0.3, hold_at=EVENTS * 2 // 3) as flow:
            wait_until(lambda: committed_event_count(store) >= 300, 120, what="chaining started")
            cluster.kill_node(settings, "clickhouse-1")
            cluster.kill_node(settings, "clickhouse-2")
            sent_at_fault = len(flow.ids)
            time.sleep(OUTAGE_S)
            assert proc.poll() is None, "the processor died while ClickHouse was down"
            _revive_clickhouse(settings)
            # the single-node repro died ~5 s after ClickHouse came back: keep the
            # events flowing twice that long
            time.sleep(10.0)
            assert proc.poll() is None, "the processor died after ClickHouse came back"
            revived_at = len(flow.ids)
            flow.release()
            wait_until(
                lambda: len(flow.ids) >= EVENTS or flow.error is not None,
                240,
                what="every event sent",
            )
        assert flow.error is None, flow.error
        produced = list(flow.ids)
        assert sent_at_fault < revived_at < len(produced), "the outage was not mid-stream"
        _all_chained(s, produced, 300)
        time.sleep(2.0)
        assert proc.poll() is None, "the processor stopped"
    finally:
        store.backend.close()
        stop(proc)
    text = log.read_text(errors="replace")
    assert "store unavailable" in text, "the outage was not noticed: no failure exercised"
    assert "Drain messages raised" not in text
    assert_replicas_hold(s, produced)


def _chains_taken(log: Path) -> set[str]:
    return {
        line.split("chain ", 1)[1].split(" resumes", 1)[0]
        for line in log.read_text(errors="replace").splitlines()
        if " resumes at height " in line and "chain " in line
    }


def test_a_processor_killed_while_another_shares_the_partitions_loses_and_duplicates_nothing(
    on_cluster: Settings, tmp_path: Path
) -> None:
    # one consumer group (same app id), two processes, each its own web port
    s = processor_settings(with_keys(on_cluster, tmp_path), block_max_events=200)
    logs = [tmp_path / "processor-a.log", tmp_path / "processor-b.log"]
    procs = [start_processor(s, logs[0]), start_processor(s, logs[1])]
    access = f"/{s.topic_events}/"
    try:
        with Flow(s, limit=EVENTS, seed=43, pause_s=0.2, hold_at=EVENTS * 2 // 3) as flow:
            # both hold access-event chains: the partitions are shared
            wait_until(
                lambda: all(any(access in c for c in _chains_taken(lg)) for lg in logs),
                180,
                what="both processors to hold access-event chains",
            )
            store = store_for(s)
            try:
                start = committed_event_count(store)
                wait_until(
                    lambda: committed_event_count(store) >= start + 300,
                    120,
                    what="chaining by both",
                )
            finally:
                store.backend.close()
            victim, survivor = procs
            os.killpg(victim.pid, signal.SIGKILL)  # its own session: the whole group
            victim.wait(10)
            killed_at = len(flow.ids)
            flow.release()
            wait_until(
                lambda: len(flow.ids) >= EVENTS or flow.error is not None,
                240,
                what="every event sent",
            )
        assert flow.error is None, flow.error
        produced = list(flow.ids)
        assert killed_at < len(produced), "the processor was not killed mid-stream"
        _all_chained(s, produced, 300)
        time.sleep(2.0)
        assert survivor.poll() is None, "the surviving processor stopped"
    finally:
        for p in procs:
            stop(p)
    taken = _chains_taken(logs[1])
    victims = {c for c in _chains_taken(logs[0]) if access in c}
    assert victims <= taken, f"chains of the killed processor not taken over: {victims - taken}"
    assert_replicas_hold(s, produced)
