"""The local stack against the real services: Kafka 4.x (KRaft) and ClickHouse 18.16."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from careledger import stack as stack_mod
from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.stack import clickhouse_server, kafka_server
from careledger.storage.backend import ClickHouseBackend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_is_idempotent_and_fast_when_up(stack: Settings) -> None:
    before = stack_mod.status(stack)
    t0 = time.monotonic()
    after = stack_mod.up(stack, quiet=True)
    elapsed = time.monotonic() - t0
    assert after.up
    assert after.started == ()
    assert (after.kafka.pid, after.clickhouse.pid) == (before.kafka.pid, before.clickhouse.pid)
    assert elapsed < 5.0, f"up() on a running stack took {elapsed:.1f}s"


def test_status_reports_both_services_with_ports(stack: Settings) -> None:
    st = stack_mod.status(stack)
    assert st.up
    assert st.kafka.ready and st.clickhouse.ready
    assert st.kafka.ports == {"broker": stack.kafka_port, "controller": stack.kafka_controller_port}
    assert st.clickhouse.ports == {
        "tls": stack.clickhouse_port,
        "https": stack.clickhouse_http_port,
    }
    text = str(st)
    assert str(stack.kafka_port) in text and str(stack.clickhouse_port) in text
    assert st.as_dict()["up"] is True


def test_cli_status_exit_code(stack: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    assert stack_mod.command_status(argparse.Namespace(json=True), stack) == 0
    assert '"up": true' in capsys.readouterr().out


def test_produce_and_consume_through_the_broker(isolated: Settings) -> None:
    topic = isolated.topic_events
    payload = f"hello {uuid.uuid4()}".encode()
    producer = Producer(kafka_config(isolated, ADMIN, {"acks": "all"}))
    delivered: list[object] = []
    producer.produce(topic, payload, key=b"patient-1", on_delivery=lambda e, m: delivered.append(e))
    assert producer.flush(15) == 0
    assert delivered == [None]

    consumer = Consumer(
        kafka_config(
            isolated,
            ADMIN,
            {
                "group.id": f"test-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        got = None
        while got is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got = msg
        assert got is not None, "message not consumed within 30s"
        assert got.value() == payload
        assert got.key() == b"patient-1"
    finally:
        consumer.close()


def test_clickhouse_is_18_16(stack: Settings) -> None:
    backend = ClickHouseBackend.from_settings(stack)
    try:
        ((version,),) = backend.execute("SELECT version()")
        assert version.startswith(b"18.16"), version
        assert backend.execute("SELECT 1") == [(1,)]
    finally:
        backend.close()


def test_topics_exist_with_configured_partitions(stack: Settings) -> None:
    md = AdminClient(kafka_config(stack, ADMIN)).list_topics(timeout=10)
    for name, partitions in stack_mod.default_topics(stack).items():
        assert name in md.topics, name
        assert len(md.topics[name].partitions) == partitions, name
    assert len(md.topics[stack.topic_events].partitions) == stack.partitions


def test_isolated_fixture_has_own_topics_and_database(isolated: Settings, stack: Settings) -> None:
    assert isolated.clickhouse_database != stack.clickhouse_database
    assert isolated.topic_events != stack.topic_events
    md = AdminClient(kafka_config(isolated, ADMIN)).list_topics(timeout=10)
    assert len(md.topics[isolated.topic_events].partitions) == isolated.partitions
    backend = ClickHouseBackend.from_settings(isolated, "reader")
    try:
        dbs = {r[0] for r in backend.execute("SHOW DATABASES")}
        assert isolated.clickhouse_database.encode() in dbs
    finally:
        backend.close()


def test_ensure_topics_is_idempotent(isolated: Settings) -> None:
    topics = stack_mod.default_topics(isolated)
    stack_mod.ensure_topics(isolated, topics)
    stack_mod.ensure_topics(isolated, topics)


def test_readiness_probes_are_false_on_closed_ports(stack: Settings) -> None:
    closed = stack.replace(kafka_port=_free_port(), clickhouse_port=_free_port())
    t0 = time.monotonic()
    assert not stack_mod.kafka_ready(closed)
    assert not stack_mod.clickhouse_ready(closed)
    assert time.monotonic() - t0 < 3


def test_full_lifecycle_of_a_separate_stack(stack: Settings, tmp_path: Path) -> None:
    """up, up, down, up, down on private ports and run dir; the shared stack is untouched."""
    own = stack.replace(
        run_dir=tmp_path / "run",
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        clickhouse_port=_free_port(),
        clickhouse_http_port=_free_port(),
        partitions=2,
    )
    try:
        st = stack_mod.up(own, quiet=True)
        assert st.up and set(st.started) == {"kafka", "clickhouse"}
        assert st.kafka.pid and st.clickhouse.pid
        assert (own.run_dir / "logs" / "kafka" / "server.log").exists()
        assert (own.run_dir / "logs" / "clickhouse" / "clickhouse-server.log").exists()
        md = AdminClient(kafka_config(own, ADMIN)).list_topics(timeout=10)
        assert len(md.topics[own.topic_events].partitions) == 2

        again = stack_mod.up(own, quiet=True)
        assert again.started == () and again.kafka.pid == st.kafka.pid

        down = stack_mod.down(own)
        assert not down.kafka.ready and not down.clickhouse.ready
        assert down.kafka.pid is None and down.clickhouse.pid is None

        # Restart on the existing data: formatted storage and schema are reused.
        restarted = stack_mod.up(own, quiet=True)
        assert restarted.up and set(restarted.started) == {"kafka", "clickhouse"}
    finally:
        stack_mod.down(own)
    # The shared stack was not disturbed.
    assert stack_mod.status(stack).up


def _fresh(stack: Settings, tmp_path: Path) -> Settings:
    return stack.replace(
        run_dir=tmp_path / "run",
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        clickhouse_port=_free_port(),
        clickhouse_http_port=_free_port(),
    )


def test_missing_java_names_the_package(
    stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(kafka_server.shutil, "which", lambda name: None)
    with pytest.raises(stack_mod.StackError, match="apt-get install openjdk-17-jre-headless"):
        stack_mod.up(_fresh(stack, tmp_path), quiet=True, timeout=5)


def test_missing_clickhouse_names_the_package(
    stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = _fresh(stack, tmp_path)
    monkeypatch.setattr(
        clickhouse_server, "CLICKHOUSE_SERVER_CANDIDATES", (("/nonexistent/ch", ()),)
    )
    monkeypatch.setattr(stack_mod, "_start_kafka", lambda settings, quiet: None)
    monkeypatch.setattr(stack_mod, "kafka_ready", lambda settings: True)
    with pytest.raises(stack_mod.StackError, match="clickhouse-server not installed"):
        stack_mod.up(own, quiet=True, timeout=5, topics=False, schema=False)


def test_missing_maven_names_the_package(
    stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_server, "KAFKA_LIB_ROOT", tmp_path / "lib")
    monkeypatch.setattr(kafka_server.shutil, "which", lambda name: None)
    with pytest.raises(stack_mod.StackError, match="maven not found"):
        stack_mod.install_kafka(stack)


def test_port_taken_by_something_else_is_reported(stack: Settings, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        own = _fresh(stack, tmp_path).replace(kafka_port=int(squatter.getsockname()[1]))
        with pytest.raises(stack_mod.StackError, match="in use by another process"):
            stack_mod.up(own, quiet=True, timeout=5)


def test_cluster_ids_never_look_like_options() -> None:
    ids = {stack_mod.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
