"""The local cluster (ADR 0030): three Kafka nodes (KRaft), ZooKeeper and two ClickHouse
replicas, started by ``careledger.stack.cluster`` like ``careledger up --cluster``.

What a cluster promises, each tried as a fault: topics replicated three times and a write
acknowledged only when two brokers have it (two brokers killed: nothing acknowledged);
a broker killed mid-stream loses and duplicates nothing and chains on; every row written
through one ClickHouse replica is on the other, and clients fail over when one is down.
The cluster is started once for the module and stopped at the end if this module
started it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from careledger.config import Settings
from careledger.kafka.clients import client_config
from careledger.kafka.producer import AccessEventProducer
from careledger.stack import cluster, default_topics
from careledger.storage.backend import ClickHouseBackend
from producers.simulator import HospitalModel, simulate
from tests.integration.cluster_support import cluster_settings, heal, on_cluster, replica
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    stored_event_ids,
    wait_until,
    with_keys,
)

pytestmark = pytest.mark.integration

__all__ = ["cluster_settings", "on_cluster"]


# the fixtures live in cluster_support (shared with test_cluster_faults); imported here
# for pytest to find them
_replica = replica
_heal = heal


def test_every_topic_is_replicated_three_times_and_writes_need_two_in_sync(
    on_cluster: Settings,
) -> None:
    admin = AdminClient(client_config(on_cluster.kafka_bootstrap))
    md = admin.list_topics(timeout=10)
    assert len(md.brokers) == 3
    for name in default_topics(on_cluster):
        for part in md.topics[name].partitions.values():
            assert len(part.replicas) == 3, f"{name}/{part.id} has replicas {part.replicas}"
    resource = ConfigResource(ConfigResource.Type.TOPIC, on_cluster.topic_events)
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["min.insync.replicas"].value == "2"


def test_with_two_brokers_down_nothing_is_acknowledged(
    on_cluster: Settings, settings: Settings
) -> None:
    """acks=all and min.insync.replicas=2: one surviving broker must not acknowledge."""
    cluster.kill_node(settings, "kafka-2")
    cluster.kill_node(settings, "kafka-3")
    results: list[Any] = []
    producer = Producer(
        client_config(
            on_cluster.kafka_bootstrap,
            {"acks": "all", "enable.idempotence": True, "message.timeout.ms": 8000},
        )
    )
    for i in range(5):
        producer.produce(
            on_cluster.topic_alerts,
            f"probe-{i}".encode(),
            on_delivery=lambda e, m: results.append(e),
        )
    producer.flush(20)
    assert len(results) == 5
    assert all(err is not None for err in results), "a write was acknowledged by one broker"


def test_a_broker_killed_mid_stream_loses_and_duplicates_nothing_and_both_replicas_verify(
    on_cluster: Settings, settings: Settings, tmp_path: Path
) -> None:
    s = processor_settings(with_keys(on_cluster, tmp_path), block_max_events=200)
    events = list(simulate(HospitalModel(seed=11), count=4000, seed=11))
    proc = start_processor(s, tmp_path / "processor.log")
    try:
        with AccessEventProducer(s) as producer:
            for e in events[:2000]:
                producer.send(e)
            producer.flush()
            store = store_for(s)
            wait_until(lambda: committed_event_count(store) >= 500, 120, what="first blocks")
            cluster.kill_node(settings, "kafka-1")  # the bootstrap's first broker
            for e in events[2000:]:
                producer.send(e)
            producer.flush()
        wait_until(
            lambda: committed_event_count(store) >= len(events), 240, what="every event chained"
        )
        assert proc.poll() is None, "processor stopped"
    finally:
        stop(proc)
    produced = sorted(e.event_id for e in events)
    for n in (1, 2):
        replica = store_for(_replica(s, n))
        wait_until(
            lambda replica=replica: committed_event_count(replica) == len(events),
            60,
            what=f"replica {n} to hold every event",
        )
        stored = stored_event_ids(replica)
        assert sorted(stored) == produced, f"replica {n}: events lost or duplicated"
        result = run_cli(_replica(s, n), "verify", "--no-audit", "--json")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert json.loads(result.stdout)["result"] == "intact"


def test_clients_fail_over_to_the_other_replica(on_cluster: Settings, settings: Settings) -> None:
    """The primary replica killed: a client built from the cluster's settings answers
    from the other replica, which holds the same replicated tables."""
    cluster.kill_node(settings, "clickhouse-1")
    backend = ClickHouseBackend.from_settings(on_cluster)
    try:
        rows = backend.execute("SELECT substitution FROM system.macros WHERE macro = 'replica'")
        assert rows and rows[0][0] in (b"clickhouse-2", "clickhouse-2")
        db = on_cluster.clickhouse_database
        rows = backend.execute(
            "SELECT count() FROM system.replicas WHERE database = %(db)s", {"db": db}
        )
        assert int(rows[0][0]) >= 10, "the replica answering lacks the replicated tables"
    finally:
        backend.close()
