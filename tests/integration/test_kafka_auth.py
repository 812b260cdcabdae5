"""A local Kafka broker's TLS, SCRAM logins and ACLs (issue 12, ADR 0033), attacked.

The module starts its own broker exactly as ``careledger up`` does (SASL_SSL, the
default; its own run_dir, ports, CA and passwords, so the attacks cannot be helped by
anything the shared stack was given), creates topics and ACLs as the stack does, and
attacks it.

Every client logs in over SASL_SSL as its component's principal, and the broker's
StandardAuthorizer lets each do only what ``careledger.kafka.security.acl_matrix``
grants: a plaintext client, a wrong password or a client that does not trust the
stack's CA get nothing; a source cannot write alerts, checkpoints, blocks, quarantine
or the registry; a verifier or a replica cannot write the ledger's inputs; a
principal cannot read a topic it was not granted.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from careledger.config import Settings
from careledger.credentials import tls_dir
from careledger.kafka.clients import client_config, kafka_config
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import (
    ADMIN,
    AUDITOR,
    COSIGNER,
    PROCESSOR,
    PRODUCER,
    REGISTRAR,
    REPLICA,
    REPLICA_GROUP,
    SOURCES_READER_GROUP,
    VERIFIER,
    VERIFIER_CHECKPOINTS_GROUP,
    kafka_login,
    local_scram_password_file,
)
from careledger.stack.acls import ensure_acls
from careledger.stack.kafka_server import _start_kafka
from careledger.stack.model import StackError
from careledger.stack.paths import _paths
from careledger.stack.processes import _our_pid
from careledger.stack.readiness import kafka_ready
from careledger.stack.topics import default_topics, ensure_topics, events_topic_time_problem
from careledger.storage.migrations import migrate
from producers.simulator import HospitalModel, simulate
from tests.conftest import _with_local_source, isolated_settings
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
from verifiers.auditor.casework import publish_status

pytestmark = pytest.mark.integration

#: the module's own broker (the local stack's is 19092, the cluster's 19192..19392)
SASL_PORT = 19592

#: a per-run group prefix each reading principal is granted (as its real consumers use)
_GROUPS = {
    PROCESSOR: SOURCES_READER_GROUP,
    PRODUCER: SOURCES_READER_GROUP,
    REPLICA: REPLICA_GROUP,
    VERIFIER: VERIFIER_CHECKPOINTS_GROUP,
}
FAST = {"message.timeout.ms": 5000, "socket.connection.setup.timeout.ms": 3000}
#: for attempts that must fail, which fail by timing out
REFUSED = {"message.timeout.ms": 2500, "socket.connection.setup.timeout.ms": 2000}


def _send(s: Settings, principal: str | None, topic: str, *, refused: bool = False) -> str:
    """Produce one record to partition 0 as ``principal`` (None: a plaintext client
    with no login); the delivery error's name, or "ok". ``refused``: shorter timeouts."""
    extra = {"acks": "all", "enable.idempotence": True, **(REFUSED if refused else FAST)}
    if principal is None:
        config = client_config(s.kafka_bootstrap, extra, login=None)
    else:
        config = kafka_config(s, principal, extra)
    producer = Producer(config)
    errors: list[Any] = []
    try:
        producer.produce(topic, b"attack", partition=0, on_delivery=lambda e, _m: errors.append(e))
        producer.flush(15)
    except KafkaException as exc:  # fatal: e.g. no idempotent-write grant on the cluster
        return str(exc.args[0].name())
    if not errors:
        return "not delivered"
    return "ok" if errors[0] is None else str(errors[0].name())


def _read(s: Settings, principal: str, topic: str) -> str:
    """Fetch the record the admin put in partition 0 of ``topic`` as ``principal``:
    "ok" once it arrives, else the error's name, else "nothing" (after 20 s)."""
    assert _send(s, ADMIN, topic) == "ok"
    consumer = Consumer(
        kafka_config(
            s,
            principal,
            {
                "group.id": f"{_GROUPS[principal]}{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )
    try:
        # a topic the principal may not even describe is refused in its metadata (the
        # fetcher would wait silently)
        err = consumer.list_topics(topic, timeout=10).topics[topic].error
        if err is not None:
            return str(err.name())
        consumer.assign([TopicPartition(topic, 0, 0)])
        for _ in range(20):
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                return "ok"
            if err.code() != KafkaError._PARTITION_EOF:
                return str(err.name())
        return "nothing"
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def sasl_broker(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A SASL_SSL broker of its own, started by the stack's code; stopped at the end."""
    run_dir = tmp_path_factory.mktemp("sasl-broker")
    s = stack.replace(
        run_dir=run_dir,
        kafka_port=SASL_PORT,
        kafka_controller_port=SASL_PORT + 1,
        kafka_security_protocol="SASL_SSL",
        kafka_secrets_dir=None,  # this broker's own passwords and CA, under run_dir
        kafka_ca_file=None,
    )
    p = _paths(s)
    try:
        _start_kafka(s, quiet=True)
        deadline = time.monotonic() + 90
        while not kafka_ready(s):
            assert time.monotonic() < deadline, "the SASL_SSL broker did not start"
            time.sleep(0.5)
        yield s
    finally:
        pid = _our_pid(p.kafka_pid, str(p.kafka_props))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def on_sasl(sasl_broker: Settings) -> Settings:
    """Topics of their own on the SASL_SSL broker, with the matrix's ACLs (once for the
    module: each attack sends or reads one record of its own, so they share them)."""
    s = isolated_settings(sasl_broker)
    ensure_topics(s, default_topics(s))
    return s


def test_the_broker_speaks_sasl_ssl_only_with_acls_enforced(sasl_broker: Settings) -> None:
    stack = sasl_broker
    props = _paths(stack).kafka_props.read_text()
    assert "PLAINTEXT://" not in props and "SASL_SSL://" in props
    assert "allow.everyone.if.no.acl.found=false" in props
    assert "StandardAuthorizer" in props
    for secret in (tls_dir(stack) / "kafka.key", local_scram_password_file(stack, PRODUCER)):
        assert secret.stat().st_mode & 0o077 == 0, secret


def test_a_plaintext_client_a_wrong_password_and_an_untrusting_client_write_nothing(
    on_sasl: Settings, tmp_path: Path
) -> None:
    s, topic = on_sasl, on_sasl.topic_events
    assert _send(s, None, topic) != "ok"  # plaintext
    assert _send(s.replace(kafka_password="guessed-password"), PRODUCER, topic) != "ok"
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes((tls_dir(s) / "kafka.pem").read_bytes())  # not a CA: trust fails
    assert _send(s.replace(kafka_ca_file=other_ca), PRODUCER, topic) != "ok"
    assert _send(s, PRODUCER, topic) == "ok"  # the right login does


@pytest.mark.parametrize(
    ("principal", "topic", "allowed"),
    [
        (PRODUCER, "topic_events", True),
        (PRODUCER, "topic_raw", True),
        (PRODUCER, "topic_alerts", False),
        (PRODUCER, "topic_checkpoints", False),
        (PRODUCER, "topic_blocks", False),
        (PRODUCER, "topic_quarantine", False),
        (REGISTRAR, "topic_sources", True),
        (REGISTRAR, "topic_events", False),
        (PROCESSOR, "topic_checkpoints", True),
        (PROCESSOR, "topic_sources", False),
        (VERIFIER, "topic_events", False),
        (VERIFIER, "topic_checkpoints", False),
        (COSIGNER, "topic_checkpoints", True),
        (COSIGNER, "topic_events", False),
        (REPLICA, "topic_blocks", False),
        (AUDITOR, "topic_checkpoints", False),
    ],
)
def test_each_principal_writes_only_what_its_acls_grant(
    on_sasl: Settings, principal: str, topic: str, allowed: bool
) -> None:
    result = _send(on_sasl, principal, getattr(on_sasl, topic))
    if allowed:
        assert result == "ok"
    else:
        assert result in ("TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED"), result


@pytest.mark.parametrize(
    ("principal", "topic", "allowed"),
    [
        (PROCESSOR, "topic_events", True),
        (REPLICA, "topic_blocks", True),
        (REPLICA, "topic_events", False),
        (VERIFIER, "topic_checkpoints", True),
        (VERIFIER, "topic_events", False),
        (PRODUCER, "topic_events", False),
    ],
)
def test_each_principal_reads_only_what_its_acls_grant(
    on_sasl: Settings, principal: str, topic: str, allowed: bool
) -> None:
    result = _read(on_sasl, principal, getattr(on_sasl, topic))
    if allowed:
        assert result == "ok"
    else:
        assert result in ("TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED"), result


def test_every_principal_has_its_own_password(sasl_broker: Settings) -> None:
    logins = {p: kafka_login(sasl_broker, p).password for p in (PRODUCER, PROCESSOR, VERIFIER)}
    assert len(set(logins.values())) == 3 and all(len(v) >= 32 for v in logins.values())


def test_the_pipeline_runs_over_sasl_ssl_each_part_as_its_own_principal(
    on_sasl: Settings, tmp_path: Path
) -> None:
    """The SDK (producer), the processor (faust, as processor) and verify (as verifier,
    reading checkpoints) over SASL_SSL with the matrix's ACLs: every event chained once
    and the ledger verifies intact. Each holds only its own password, as deployed
    (``CARELEDGER_KAFKA_PASSWORD``): a part that logged in as another principal
    anywhere (the admin, say) would be refused, not helped by the local secrets."""
    migrate(on_sasl)
    s = processor_settings(with_keys(_with_local_source(on_sasl, tmp_path), tmp_path))

    def only(principal: str) -> Settings:
        return s.replace(kafka_password=kafka_login(s, principal).password)

    events = list(simulate(HospitalModel(seed=9), count=2_000, seed=9))
    proc = start_processor(only(PROCESSOR), tmp_path / "processor.log")
    try:
        with AccessEventProducer(only(PRODUCER)) as producer:
            for e in events:
                producer.send(e)
            producer.flush()
        store = store_for(s)
        wait_until(lambda: committed_event_count(store) >= len(events), 120, what="chained")
        assert proc.poll() is None, "the processor stopped"
    finally:
        stop(proc)
    log = (tmp_path / "processor.log").read_text()
    assert "Authenticated as processor via SCRAM-SHA-512" in log
    assert "cannot describe topic" not in log  # its LogAppendTime check ran, as processor
    assert sorted(stored_event_ids(store)) == sorted(e.event_id for e in events)
    out = run_cli(only(VERIFIER), "verify", "--json")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert '"result": "intact"' in out.stdout


def test_alerts_ack_creates_the_status_topic_as_the_auditor_with_only_its_password(
    sasl_broker: Settings,
) -> None:
    """An analyst's ``alerts ack`` holds the auditor's password, not the admin's: it
    creates the alert-status topic and publishes as the auditor (the matrix grants it
    CREATE on that one topic), and may create no other topic. Before, it created the
    topic as the admin and, with the auditor's password, was refused: the status change
    was never published (the failure seen when the suite ran on SASL_SSL)."""
    s = isolated_settings(sasl_broker)
    ensure_acls(s)  # the matrix for this test's names; no topic exists yet
    analyst = s.replace(kafka_password=kafka_login(s, AUDITOR).password)
    alert_id = f"alert-{uuid.uuid4().hex}"
    assert publish_status(analyst, {"alert_id": alert_id, "status": "acknowledged"})
    with pytest.raises(StackError, match="Authorization failed"):
        ensure_topics(analyst, {f"{s.topic_alerts}-other": 1}, acls=False, principal=AUDITOR)
    consumer = Consumer(
        kafka_config(
            s, ADMIN, {"group.id": f"check-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    try:
        consumer.assign([TopicPartition(s.topic_alert_status, 0, 0)])
        keys = []
        for _ in range(20):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                keys.append(msg.key())
                break
    finally:
        consumer.close()
    assert keys == [alert_id.encode()]


def test_a_processor_with_only_its_password_still_finds_a_producer_stamped_events_topic(
    sasl_broker: Settings,
) -> None:
    """The processor's start-up check of the events topic's timestamps (ADR 0015) runs
    as the processor. As the admin, with the processor's password, it was refused and
    the check silently skipped: a topic stamped by the producers' clocks went unnoticed."""
    s = isolated_settings(sasl_broker)
    ensure_acls(s)
    admin = AdminClient(kafka_config(s, ADMIN, {}))
    topic = NewTopic(s.topic_events, num_partitions=1, replication_factor=1)
    admin.create_topics([topic], operation_timeout=10)[s.topic_events].result()
    processor = s.replace(kafka_password=kafka_login(s, PROCESSOR).password)
    problem = events_topic_time_problem(processor)
    assert problem is not None and "CreateTime" in problem, problem
