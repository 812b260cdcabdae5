"""The producer SDK against the real Kafka broker of the local stack.

Every event arrives exactly once, one patient's events stay in one partition in the
order they were sent, flush reports every acknowledgement, and an unreachable broker
turns into a DeliveryError instead of silent loss. Signed, a batch is one Kafka record
(``careledger.signed-batch/1``, ADR 0020): the same guarantees hold per event.
"""

from __future__ import annotations

import collections
import socket
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.sources import load_registrar_keys, read_heartbeats, read_registry
from careledger_core.batch_record import looks_batch, open_batch_record
from careledger_core.errors import InfrastructureError
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.signing import SigningKey
from careledger_core.source import BatchVerifier
from producers.sdk import AccessEventProducer, DeliveryError, partition_key
from producers.simulator import HospitalModel, run_simulation, simulate
from tests.integration.pipeline import run_cli, with_source

# the SDK's delivery guarantees, unsigned unless a test opts in with ``with_source``
pytestmark = [pytest.mark.integration, pytest.mark.bare_sources]

COUNT = 2_000


def _events(count: int = COUNT, seed: int = 5) -> list[AccessEvent]:
    return list(simulate(HospitalModel(staff=100, patients=300, seed=seed), count, seed=seed))


def _consume_all(settings: Settings, expected: int, timeout: float = 60.0) -> list[Message]:
    """Read the events topic from the beginning until ``expected`` messages (then a bit
    longer, so that duplicates would show)."""
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"careledger-test-sdk-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )
    try:
        consumer.assign(
            [
                TopicPartition(settings.topic_events, p, OFFSET_BEGINNING)
                for p in range(settings.partitions)
            ]
        )
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=1000, timeout=0.5)
            for m in batch:
                assert m.error() is None, m.error()
                messages.append(m)
            if len(messages) >= expected and settle_until is None:
                settle_until = time.monotonic() + 1.5
            if settle_until is not None and time.monotonic() > settle_until:
                break
        return messages
    finally:
        consumer.close()


def _closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_event_arrives_once_and_one_patient_stays_in_order(isolated: Settings) -> None:
    events = _events()
    with AccessEventProducer(isolated) as producer:
        for e in events:
            producer.send(e)
        report = producer.flush()
    assert (report.sent, report.acked, report.failed, report.pending) == (COUNT, COUNT, 0, 0)
    assert report.ok

    messages = _consume_all(isolated, COUNT)
    values = [m.value() for m in messages]
    assert len(values) == COUNT, "every event exactly once"
    assert sorted(values) == sorted(canonical_event_bytes(e) for e in events)  # type: ignore[type-var]

    # key = patient id; a patient's events share one partition, in the order sent
    sent_order: dict[bytes, list[bytes]] = collections.defaultdict(list)
    for e in events:
        sent_order[partition_key(e)].append(canonical_event_bytes(e))
    partitions: dict[bytes, set[int]] = collections.defaultdict(set)
    received: dict[bytes, list[tuple[int, bytes]]] = collections.defaultdict(list)
    for m in messages:
        key = m.key()
        assert isinstance(key, bytes)
        partitions[key].add(m.partition())  # type: ignore[arg-type]
        received[key].append((m.offset(), m.value()))  # type: ignore[arg-type]
    assert all(len(p) == 1 for p in partitions.values())
    for key, items in received.items():
        assert [v for _offset, v in sorted(items)] == sent_order[key]
    used = {p for ps in partitions.values() for p in ps}
    assert len(used) == isolated.partitions, "patients are spread over every partition"


def test_a_full_local_queue_waits_instead_of_failing(isolated: Settings) -> None:
    events = _events(1_000, seed=6)
    # a tiny queue forces BufferError on send: the SDK must serve reports and retry
    with AccessEventProducer(
        isolated, extra_config={"queue.buffering.max.messages": 50, "linger.ms": 1}
    ) as producer:
        for e in events:
            producer.send(e)
        report = producer.flush()
    assert report.acked == 1_000 and report.failed == 0
    assert len(_consume_all(isolated, 1_000)) == 1_000


def test_send_raw_passes_bytes_key_and_headers_through(isolated: Settings) -> None:
    with AccessEventProducer(isolated) as producer:
        producer.send_raw(b"{not json", key=b"poison", headers=[("origin", b"test")])
        producer.send_raw(b"\xff\xfe", key=None)
        report = producer.flush()
    assert report.acked == 2
    messages = _consume_all(isolated, 2)
    by_value = {m.value(): m for m in messages}
    assert set(by_value) == {b"{not json", b"\xff\xfe"}
    assert by_value[b"{not json"].key() == b"poison"
    assert by_value[b"{not json"].headers() == [("origin", b"test")]


def test_run_simulation_reports_every_acknowledgement(isolated: Settings) -> None:
    summary = run_simulation(isolated, 1_500, seed=8, progress=False)
    assert (summary.sent, summary.acked, summary.failed) == (1_500, 1_500, 0)
    assert len(_consume_all(isolated, 1_500)) == 1_500


def test_unreachable_broker_raises_delivery_error_on_flush(settings: Settings) -> None:
    events = _events(20, seed=9)
    producer = AccessEventProducer(
        settings,
        bootstrap=f"127.0.0.1:{_closed_port()}",
        topic="careledger.nowhere",
        extra_config={"message.timeout.ms": 1500},
    )
    for e in events:
        producer.send(e)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        producer.flush(timeout=20)
    assert time.monotonic() - started < 10
    error = caught.value
    assert isinstance(error, InfrastructureError)
    assert error.failed == 20 and error.report.acked == 0
    assert {f.error_code for f in error.failures} == {"_MSG_TIMED_OUT"}
    assert {f.event_id for f in error.failures} == {e.event_id for e in events}
    text = str(error) + repr(error.to_dict())
    assert not any(e.patient.id in text for e in events), "no patient id in the error"
    # the failures were reported once: a later flush has nothing new to complain about
    assert producer.flush(timeout=1).failed == 20
    producer.close(timeout=1)


def test_flush_timeout_with_messages_still_queued_is_an_error(settings: Settings) -> None:
    producer = AccessEventProducer(
        settings,
        bootstrap=f"127.0.0.1:{_closed_port()}",
        topic="careledger.nowhere",
        extra_config={"message.timeout.ms": 60_000},
    )
    for e in _events(5, seed=10):
        producer.send(e)
    with pytest.raises(DeliveryError) as caught:
        producer.flush(timeout=0.5)
    assert caught.value.report.pending == 5 and caught.value.failed == 0
    assert "still pending" in str(caught.value)
    with pytest.raises(DeliveryError):
        producer.close(timeout=0.2)  # leftovers are purged, the client is released


def test_run_simulation_against_a_dead_broker_says_so_before_sending(settings: Settings) -> None:
    dead = settings.replace(kafka_port=_closed_port())
    started = time.monotonic()
    with pytest.raises(InfrastructureError) as caught:
        run_simulation(dead, 50, seed=1, progress=False, message_timeout_s=1.0)
    assert caught.value.code == "KAFKA_UNREACHABLE"
    assert f"127.0.0.1:{dead.kafka_port}" in caught.value.message
    assert time.monotonic() - started < 25  # 10 s of trying, no closing heartbeat to wait for


def test_require_reachable_passes_on_a_live_broker(settings: Settings) -> None:
    producer = AccessEventProducer(settings, topic=settings.topic_events, sign=False)
    try:
        producer.require_reachable(timeout=5)
    finally:
        producer.close(timeout=5)


def test_a_record_refused_by_the_acls_raises_at_once(settings: Settings) -> None:
    # the producer's principal may write the ledger's topics, not a topic of its choosing
    producer = AccessEventProducer(settings, topic=f"careledger.not-granted-{uuid.uuid4().hex[:6]}")
    try:
        with pytest.raises(InfrastructureError) as caught:
            for _ in range(3):  # the first send may go out before metadata says no
                producer.send_raw(b"{}", b"k")
                producer.flush(timeout=5)
                time.sleep(0.5)
        assert caught.value.code == "TOPIC_AUTHORIZATION_FAILED", caught.value
        assert "not-granted" in caught.value.message
    finally:
        producer.close(timeout=5)


def test_simulate_says_in_one_line_that_kafka_cannot_be_reached(settings: Settings) -> None:
    dead = settings.replace(kafka_port=_closed_port())
    result = run_cli(dead, "simulate", "--count", "5", "--quiet", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    said = [line for line in result.stderr.splitlines() if "simulate:" in line]
    assert len(said) == 1 and "KAFKA_UNREACHABLE: cannot reach Kafka at" in said[0], said
    assert "Traceback" not in result.stderr
    assert "FAIL" not in result.stderr and "rdkafka" not in result.stderr, result.stderr
    assert "heartbeat" not in result.stderr, result.stderr


# --------------------------------------------------------------------------- signed batches


def _signing(isolated: Settings, tmp_path: Path, **changes: object) -> Settings:
    # batches close on size (and flush) only, so that the record count is exact
    return with_source(isolated, tmp_path, "ehr-main").replace(
        source_batch_max_ms=60_000, source_heartbeat_interval_s=3600, **changes
    )


def _opened_in_seq_order(settings: Settings, records: list[Message]) -> list[bytes]:
    """Every record is a batch record whose root and signature check against the
    registry read from Kafka; its events, in sequence-number order."""
    registry, problems = read_registry(settings, load_registrar_keys(settings), principal=ADMIN)
    assert problems == []
    verifier = BatchVerifier(registry)
    batches = []
    for m in records:
        value = m.value()
        assert isinstance(value, bytes) and looks_batch(value)
        opened = open_batch_record(value)
        verifier.verify_signature(opened.statement, opened.signature)
        st = opened.statement
        assert m.key() == f"{st.source_id}/{st.epoch}/{st.first_seq}".encode()
        batches.append((st.first_seq, st.last_seq, opened.events))
    batches.sort()
    assert [b[0] for b in batches] == [1, *(b[1] + 1 for b in batches[:-1])], "no gap, no repeat"
    return [e for b in batches for e in b[2]]


def test_signed_batches_arrive_once_each_as_one_record(isolated: Settings, tmp_path: Path) -> None:
    s = _signing(isolated, tmp_path, source_batch_max_events=100)
    events = _events()
    with AccessEventProducer(s) as producer:
        assert producer.signing
        for e in events:
            producer.send(e)
        report = producer.flush()
        epoch = producer.epoch
        assert producer.acked_seq() == COUNT
    assert (report.sent, report.acked, report.failed, report.pending) == (COUNT, COUNT, 0, 0)

    records = _consume_all(s, COUNT // 100)
    assert len(records) == COUNT // 100, "one record per batch of 100, each exactly once"
    assert _opened_in_seq_order(s, records) == [canonical_event_bytes(e) for e in events]
    used = {m.partition() for m in records}
    assert len(used) > 1, "batch records spread over the partitions"
    beats, problems = read_heartbeats(s, load_registrar_keys(s), principal=ADMIN)
    assert problems == []
    closing = [b.statement for b in beats if b.statement.epoch == epoch and b.statement.closing]
    assert [st.last_seq for st in closing] == [COUNT]


def test_signed_batch_records_stay_within_the_byte_budget(
    isolated: Settings, tmp_path: Path
) -> None:
    s = _signing(isolated, tmp_path, source_batch_max_events=10_000, source_batch_max_bytes=20_000)
    events = _events(600, seed=11)
    with AccessEventProducer(s) as producer:
        for e in events:
            producer.send(e)
        assert producer.flush().acked == 600
    records = _consume_all(s, 1)
    assert len(records) > 1
    assert all(len(m.value() or b"") <= 20_000 for m in records)
    assert _opened_in_seq_order(s, records) == [canonical_event_bytes(e) for e in events]


def test_signed_batches_wait_for_room_in_a_full_local_queue(
    isolated: Settings, tmp_path: Path
) -> None:
    s = _signing(isolated, tmp_path, source_batch_max_events=10)
    events = _events(500, seed=12)
    with AccessEventProducer(
        s, extra_config={"queue.buffering.max.messages": 2, "linger.ms": 1}
    ) as producer:
        for e in events:
            producer.send(e)
        report = producer.flush()
    assert (report.acked, report.failed) == (500, 0)
    records = _consume_all(s, 50)
    assert _opened_in_seq_order(s, records) == [canonical_event_bytes(e) for e in events]


def test_a_signed_batch_to_an_unreachable_broker_fails_every_event(settings: Settings) -> None:
    events = _events(20, seed=13)
    producer = AccessEventProducer(
        settings.replace(source_batch_max_events=8, source_heartbeat_interval_s=3600),
        bootstrap=f"127.0.0.1:{_closed_port()}",
        topic="careledger.nowhere",
        extra_config={"message.timeout.ms": 1500},
        source_key=SigningKey.from_seed(b"u" * 32),
        source_id="ehr-main",
        sign=True,
    )
    for e in events:
        producer.send(e)
    with pytest.raises(DeliveryError) as caught:
        producer.flush(timeout=20)
    error = caught.value
    assert error.failed == 20 and error.report.acked == 0 and error.report.pending == 0
    assert {f.error_code for f in error.failures} == {"_MSG_TIMED_OUT"}
    assert sorted(f.event_id or "" for f in error.failures) == sorted(e.event_id for e in events)
    text = str(error) + repr(error.to_dict())
    assert not any(e.patient.id in text for e in events), "no patient id in the error"
    assert producer.acked_seq() == 0 and producer.last_seq() == 20
    producer.close(timeout=1)


def test_pending_signed_batches_count_their_events(settings: Settings) -> None:
    producer = AccessEventProducer(
        settings.replace(source_heartbeat_interval_s=3600),
        bootstrap=f"127.0.0.1:{_closed_port()}",
        topic="careledger.nowhere",
        extra_config={"message.timeout.ms": 60_000},
        source_key=SigningKey.from_seed(b"u" * 32),
        source_id="ehr-main",
        sign=True,
    )
    for e in _events(5, seed=14):
        producer.send(e)
    with pytest.raises(DeliveryError) as caught:
        producer.flush(timeout=0.5)
    assert caught.value.report.pending == 5 and caught.value.failed == 0
    assert len(producer) == 5, "one batch record, five events"
    with pytest.raises(DeliveryError):
        producer.close(timeout=0.2)
