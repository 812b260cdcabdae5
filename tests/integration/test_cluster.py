"""The local cluster (ADR 0030): three Kafka nodes (KRaft), ZooKeeper and two ClickHouse
replicas, started by ``careledger.stack.cluster`` like ``careledger up --cluster``.

What a cluster promises, each tried as a fault: topics replicated three times and a write
acknowledged only when two brokers have it (two brokers killed: nothing acknowledged);
a broker killed mid-stream loses and duplicates nothing and chains on; every row written
through one ClickHouse replica is on the other, and clients fail over when one is down.
The cluster is started once for the module and stopped at the end if this module
started it."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import ADMIN
from careledger.stack import cluster, default_topics
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.event import canonical_event_bytes
from careledger_core.signing import SigningKey
from processors.chainer import PartitionChain
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

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger cluster test key").digest())

__all__ = ["cluster_settings", "on_cluster"]


# the fixtures live in cluster_support (shared with test_cluster_faults); imported here
# for pytest to find them
_replica = replica
_heal = heal


def test_every_topic_is_replicated_three_times_and_writes_need_two_in_sync(
    on_cluster: Settings,
) -> None:
    admin = AdminClient(kafka_config(on_cluster, ADMIN))
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
        kafka_config(
            on_cluster,
            ADMIN,
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


def _sealed(chain_id: str, sealed_at: list[float]) -> list[SealedBlock]:
    """Blocks of 10 simulated events each, sealed at these times (one per block)."""
    events = simulate(HospitalModel(seed=5), count=len(sealed_at) * 10, seed=5)
    chain = PartitionChain.resume(chain_id, None, 65536, earliest_offset=0)
    blocks: list[SealedBlock] = []
    for offset, event in enumerate(events):
        chain.add(offset, canonical_event_bytes(event), None, 0.0, 0.0)
        if len(chain.pending) == 10:
            block = chain.seal(KEY, now=sealed_at[len(blocks)])
            assert block is not None
            blocks.append(block)
    return blocks


def _rows_at(store: ChainStore, table: str, chain_id: str, height: int) -> list[str]:
    rows = store.backend.execute(
        f"SELECT block_hash FROM {store.db}.{table} WHERE chain_id = %(c)s AND height = %(h)s",
        {"c": chain_id, "h": height},
    )
    return sorted(str(r[0].decode() if isinstance(r[0], bytes) else r[0]) for r in rows)


def test_a_write_only_a_dead_replica_held_is_deleted_where_it_lands_not_kept_beside_the_rewrite(
    on_cluster: Settings,
) -> None:
    """ADR 0030 addendum, made deterministic: a write committed on replica 1 that replica
    2 has not fetched (fetches stopped stand for replica 1 dying first). The processor
    resumes from replica 2, which shows no rows above the head, and writes that height
    anew; when the first write reaches replica 2 it must not land beside the rewrite."""
    chain_id = on_cluster.chain_id(on_cluster.topic_events, 0)
    first, second = replica(on_cluster, 1), replica(on_cluster, 2)
    one, two = store_for(first), store_for(second)
    db = two.db
    tables = ("access_events", "source_attestations", "source_batches", "blocks")
    try:
        lost = _sealed(chain_id, [1_800_000_000.0, 1_800_000_001.0])
        rewrite = _sealed(chain_id, [1_800_000_000.0, 1_800_000_100.0])  # sealed later
        assert lost[0].block_hash == rewrite[0].block_hash != b""
        assert lost[1].block_hash != rewrite[1].block_hash
        # block 0 through replica 2 itself: waiting for it to fetch from replica 1 could
        # take minutes when replica 1 was down just before (18.16 backs off its fetches)
        two.write_blocks(lost[:1])
        for table in tables:
            two.backend.execute(f"SYSTEM STOP FETCHES {db}.{table}")
        one.write_blocks(lost[1:])  # committed on replica 1 only
        head = two.head(chain_id)
        assert head is not None and head.height == 0
        assert two.uncommitted_count(chain_id, head.height) == 0  # nothing shows there

        two.discard_uncommitted(chain_id, head.height, in_flight=True)
        two.write_blocks(rewrite[1:])
        for table in tables:
            two.backend.execute(f"SYSTEM START FETCHES {db}.{table}")

        want = [rewrite[1].block_hash.hex()]

        def settled() -> bool:
            return all(
                _rows_at(s, "blocks", chain_id, 1) == want
                and _rows_at(s, "access_events", chain_id, 1) == want * 10
                for s in (one, two)
            )

        try:
            wait_until(settled, 90, what="the rewrite alone at height 1 on both replicas")
        except AssertionError:
            census = {
                n: {
                    t: dict(Counter(h[:12] for h in _rows_at(s, t, chain_id, 1)))
                    for t in ("blocks", "access_events")
                }
                for n, s in (("replica 1", one), ("replica 2", two))
            }
            raise AssertionError(f"height 1 holds, rows per block hash: {census}") from None
    finally:
        for table in tables:
            two.backend.execute(f"SYSTEM START FETCHES {db}.{table}")
        one.backend.close()
        two.backend.close()


def _interserver(port: int, ca: Path, user: str | None, password: str = "") -> int:
    """The status of a part request to a replica's interserver port over HTTPS (the
    server checked against ``ca``), with these credentials or none."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=ssl.create_default_context(cafile=str(ca)), timeout=10
    )
    headers = {}
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("POST", "/?endpoint=DataPartsExchange%3Aprobe&part=all_0_0_0", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_replicas_fetch_parts_over_https_and_only_with_the_interserver_password(
    on_cluster: Settings, cluster_settings: Settings
) -> None:
    """ADR 0032, addendum: the replicas fetch each other's parts over HTTPS (their
    certificates checked against the cluster's CA) and only with the interserver
    password; plain HTTP, no password and a wrong one get no part."""
    cs = cluster_settings
    ca = Path(cs.run_dir) / "tls" / "ca.pem"
    for n in (1, 2):
        port = cs.clickhouse_port + cluster.PORT_STEP * (n - 1) + 9
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            sock.settimeout(10)
            try:
                answer = sock.recv(64)
            except (ConnectionResetError, TimeoutError):
                answer = b""
        assert not answer.startswith(b"HTTP/"), f"replica {n} answers plain HTTP"
        assert _interserver(port, ca, None) == 401
        assert _interserver(port, ca, cluster.INTERSERVER_USER, "guessed") == 401
        # the right login passes the gate (to a part that does not exist: 500)
        password = cluster.interserver_password_file(cs).read_text().strip()
        assert _interserver(port, ca, cluster.INTERSERVER_USER, password) not in (401, 403)
    # and a part written through replica 1 reaches replica 2 over that port
    db = on_cluster.clickhouse_database
    path = f"/clickhouse/tables/{{shard}}/{db}/interserver_probe"
    for n in (1, 2):
        ClickHouseBackend.from_settings(replica(on_cluster, n)).execute(
            f"CREATE TABLE {db}.interserver_probe (x UInt8) "
            f"ENGINE = ReplicatedMergeTree('{path}', '{{replica}}') ORDER BY x"
        )
    ClickHouseBackend.from_settings(replica(on_cluster, 1)).insert(
        f"{db}.interserver_probe", ["x"], [(7,)]
    )
    second = ClickHouseBackend.from_settings(replica(on_cluster, 2))
    wait_until(
        lambda: second.execute(f"SELECT count() FROM {db}.interserver_probe") == [(1,)],
        60,
        what="the part fetched by replica 2",
    )
