"""Signing at the source, producer side (ADR 0010, 0020), without Kafka.

The pure batcher and acknowledgement tracker, the SDK wired to a fake Kafka producer
whose deliveries the test releases one by one, and the registry reading rules of
``careledger.sources`` over fake topic contents. A signed batch is one batch record
(``careledger.signed-batch/1``) by default, one signed-event record per event with
``source_record_format = "event"``: both shapes are tested.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec
import pytest

from careledger import sources
from careledger.config import Settings
from careledger.kafka import producer as sdk
from careledger.kafka.batching import (
    AckTracker,
    SignedBatch,
    SourceBatcher,
    batch_record_key,
    heartbeat_record,
)
from careledger.kafka.security import ADMIN
from careledger_core.batch_record import looks_batch, open_batch_record
from careledger_core.errors import ValidationError
from careledger_core.event import AccessEvent, canonical_event_bytes, event_from_dict
from careledger_core.hashing import leaf_hash
from careledger_core.reference import (
    SourceHeartbeatBody,
    canonical_reference_bytes,
    decode_reference,
)
from careledger_core.signing import SigningKey
from careledger_core.source import (
    BatchVerifier,
    KeyEventStatement,
    SourceRegistry,
    decode_signed_event,
    sign_key_event,
    verify_heartbeat,
)

SOURCE = SigningKey.from_seed(b"s" * 32)
REGISTRAR = SigningKey.from_seed(b"r" * 32)
TRUSTED = {REGISTRAR.key_id: REGISTRAR.public_key}
EPOCH = "00112233445566ff"
T0 = "2026-11-02T08:00:00.000000Z"


def key_event(
    key: SigningKey,
    source: str,
    *,
    status: str = "active",
    valid_from: str = "2026-01-01T00:00:00.000000Z",
    signs_for: tuple[str, ...] = (),
    registrar: SigningKey = REGISTRAR,
) -> KeyEventStatement:
    return KeyEventStatement(
        source_id=source,
        key_id=key.key_id,
        public_key=base64.b64encode(key.public_key.raw).decode(),
        status=status,  # type: ignore[arg-type]
        valid_from=valid_from,
        signs_for=signs_for,
        registrar_key_id=registrar.key_id,
    )


def event(i: int, patient: str = "P1", **extra: Any) -> AccessEvent:
    return event_from_dict(
        {
            "schema": "careledger.access-event/1",
            "event_id": f"00000000-0000-4000-8000-{i:012d}",
            "occurred_at": T0,
            "recorded_at": T0,
            "event_type": {
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "110110",
            },
            "action": "R",
            "outcome": 0,
            "actor": {"id": "N1", "roles": ["nurse"], "is_requestor": True},
            "source": {"system": "ehr", "type": 4},
            "patient": {"id": patient},
            **extra,
        }
    )


def verifier(*extra: KeyEventStatement) -> BatchVerifier:
    return BatchVerifier(SourceRegistry([key_event(SOURCE, "ehr"), *extra]))


# --------------------------------------------------------------------------- batcher


def batcher(
    max_events: int = 3,
    max_age_s: float = 0.05,
    *,
    record_format: str = "batch",
    max_bytes: int = 900_000,
) -> SourceBatcher:
    return SourceBatcher(
        SOURCE,
        "ehr",
        EPOCH,
        max_events=max_events,
        max_age_s=max_age_s,
        max_bytes=max_bytes,
        record_format=record_format,
    )


def opened_events(batch: SignedBatch | None) -> list[bytes]:
    """The events of a batch record, after checking its root and signature."""
    assert batch is not None and len(batch.records) == 1
    opened = open_batch_record(batch.records[0][1])
    verifier(key_event(SOURCE, "ehr", signs_for=("pacs",))).verify_signature(
        opened.statement, opened.signature
    )
    st = opened.statement
    assert (st.source_id, st.first_seq, st.last_seq) == (
        batch.source_id,
        batch.first_seq,
        batch.last_seq,
    )
    return list(opened.events)


def test_a_batch_is_one_record_keyed_by_source_epoch_and_first_seq() -> None:
    b = batcher(max_events=3)
    events = [canonical_event_bytes(event(i, patient=f"P{i}")) for i in range(8)]
    batches = []
    for value in events:
        source, _opened, full = b.add(value, b"", now=0.0)
        if full:
            batches.append(b.take(source, T0))
    batches.extend(b.take_all(T0))
    assert [(x.first_seq, x.last_seq, x.size) for x in batches if x] == [
        (1, 3, 3),
        (4, 6, 3),
        (7, 8, 2),
    ]
    for batch in batches:
        assert batch is not None and len(batch.records) == 1
        key, value = batch.records[0]
        assert key == f"ehr/{EPOCH}/{batch.first_seq}".encode()
        assert key == batch_record_key("ehr", EPOCH, batch.first_seq)
        assert looks_batch(value)
    assert [e for x in batches for e in opened_events(x)] == events
    assert b.last_seq() == 8 and b.buffered == 0


def test_an_event_that_would_overflow_the_byte_budget_closes_the_batch_first() -> None:
    b = batcher(max_events=1000, max_bytes=5000)
    events = [canonical_event_bytes(event(i)) for i in range(40)]
    batches: list[SignedBatch] = []
    for value in events:
        source = b.attribute(None)
        if b.overflows(source, len(value)):
            taken = b.take(source, T0)
            assert taken is not None
            batches.append(taken)
        source, _opened, full = b.add(value, b"", now=0.0)
        assert not full or b.overflows(source, len(value))
    batches.extend(b.take_all(T0))
    assert len(batches) > 1
    assert all(len(x.records[0][1]) <= 5000 for x in batches), "every record within budget"
    # the budget is used: a batch closed only because the next event did not fit
    assert all(len(x.records[0][1]) + len(events[0]) > 5000 - 1100 for x in batches[:-1])
    assert [e for x in batches for e in opened_events(x)] == events
    assert [x.first_seq for x in batches] == [
        1 + sum(x.size for x in batches[:i]) for i in range(len(batches))
    ]


def test_an_event_larger_than_the_budget_travels_alone() -> None:
    b = batcher(max_events=1000, max_bytes=4096)
    small = canonical_event_bytes(event(1))
    big = canonical_event_bytes(event(2, outcome_desc="x" * 5000))
    b.add(small, b"", now=0.0)
    assert b.overflows("ehr", len(big))
    first = b.take("ehr", T0)
    assert not b.overflows("ehr", len(big)), "an empty batch always takes the event"
    _s, _o, full = b.add(big, b"", now=0.0)
    assert full, "a batch over its budget closes at once"
    second = b.take("ehr", T0)
    assert opened_events(first) == [small] and opened_events(second) == [big]


def test_batcher_refuses_bad_settings() -> None:
    with pytest.raises(ValidationError, match="source_record_format"):
        batcher(record_format="avro")
    with pytest.raises(ValidationError, match="source_batch_max_bytes"):
        batcher(max_bytes=100)
    with pytest.raises(ValidationError, match="source_batch_max_events"):
        batcher(max_events=0)


def test_per_event_records_number_events_contiguously_and_sign_once_each() -> None:
    b = batcher(max_events=3, record_format="event")
    batches = []
    for i in range(8):
        source, _opened, full = b.add(canonical_event_bytes(event(i)), b"P1", now=0.0)
        if full:
            batches.append(b.take(source, T0))
    batches.extend(b.take_all(T0))
    assert [(x.first_seq, x.last_seq) for x in batches if x] == [(1, 3), (4, 6), (7, 8)]
    v = verifier()
    seqs = []
    for batch in batches:
        assert batch is not None
        for key, value in batch.records:
            _ev, canonical, att = decode_signed_event(value)
            v.check(leaf_hash(canonical), att)
            assert key == b"P1" and att.statement.epoch == EPOCH
            seqs.append(att.seq)
    assert seqs == list(range(1, 9))
    assert v.signature_checks == 3
    assert b.last_seq() == 8 and b.buffered == 0


def test_a_batch_is_due_after_its_first_event_waited_max_age() -> None:
    b = batcher(max_events=100, max_age_s=0.05)
    assert b.next_deadline() is None
    _s, opened, _f = b.add(b"{}", b"k", now=10.0)
    _s, opened2, _f = b.add(b"{}", b"k", now=10.04)
    assert opened and not opened2
    assert b.due(10.049) == [] and b.next_deadline() == pytest.approx(10.05)
    assert b.due(10.05) == ["ehr"]


def test_on_behalf_of_batches_have_their_own_numbers_and_name_the_signer() -> None:
    b = batcher(max_events=10)
    for i in range(3):
        b.add(canonical_event_bytes(event(i)), b"P1", 0.0)
    for i in range(2):
        b.add(canonical_event_bytes(event(10 + i)), b"P2", 0.0, on_behalf_of="pacs")
    own, relayed = list(b.take_all(T0))
    assert (own.source_id, own.first_seq, own.last_seq) == ("ehr", 1, 3)
    assert (relayed.source_id, relayed.first_seq, relayed.last_seq) == ("pacs", 1, 2)
    assert relayed.records[0][0] == f"pacs/{EPOCH}/1".encode()
    relayed_st = open_batch_record(relayed.records[0][1]).statement
    assert relayed_st.source_id == "pacs" and relayed_st.signed_by == "ehr"
    assert len(opened_events(relayed)) == 2
    assert open_batch_record(own.records[0][1]).statement.signed_by is None
    assert b.last_seqs() == {"ehr": 3, "pacs": 2}


def test_per_event_records_of_a_relayed_source_name_the_signer() -> None:
    b = batcher(max_events=10, record_format="event")
    b.add(canonical_event_bytes(event(10)), b"P2", 0.0, on_behalf_of="pacs")
    (relayed,) = list(b.take_all(T0))
    key, value = relayed.records[0]
    _e, canonical, att = decode_signed_event(value)
    assert key == b"P2"
    assert att.statement.source_id == "pacs" and att.statement.signed_by == "ehr"
    verifier(key_event(SOURCE, "ehr", signs_for=("pacs",))).check(leaf_hash(canonical), att)


def test_ack_tracker_claims_only_a_fully_acknowledged_prefix() -> None:
    t = AckTracker()
    t.sent("ehr", 1, 3)
    t.sent("ehr", 4, 5)
    for _ in range(2):
        t.delivered("ehr", 4, True)
    assert t.acked_through("ehr") == 0, "batch 2 acknowledged, batch 1 still in flight"
    t.delivered("ehr", 1, True)
    t.delivered("ehr", 1, True)
    assert t.acked_through("ehr") == 0
    t.delivered("ehr", 1, True)
    assert t.acked_through("ehr") == 5 and t.in_flight("ehr") == 0


def test_ack_tracker_settles_a_batch_record_with_one_delivery() -> None:
    t = AckTracker()
    t.sent("ehr", 1, 500, records=1)
    t.sent("ehr", 501, 600, records=1)
    assert t.in_flight("ehr") == 2
    t.delivered("ehr", 501, True)
    assert t.acked_through("ehr") == 0
    t.delivered("ehr", 1, True)
    assert t.acked_through("ehr") == 600 and t.in_flight("ehr") == 0
    t.sent("ehr", 601, 700, records=1)
    t.sent("ehr", 701, 800, records=1)
    t.delivered("ehr", 601, False)
    t.delivered("ehr", 701, True)
    assert t.acked_through("ehr") == 600 and t.failed("ehr")


def test_a_failed_delivery_freezes_the_acknowledged_prefix() -> None:
    t = AckTracker()
    t.sent("ehr", 1, 1)
    t.sent("ehr", 2, 2)
    t.sent("ehr", 3, 3)
    t.delivered("ehr", 1, True)
    t.delivered("ehr", 2, False)
    t.delivered("ehr", 3, True)
    assert t.acked_through("ehr") == 1 and t.failed("ehr")


def test_heartbeat_is_a_signed_reference_record() -> None:
    rec = heartbeat_record(
        SOURCE, source_id="ehr", epoch=EPOCH, beat=4, last_seq=9, sent_at=T0, closing=True
    )
    back = decode_reference(canonical_reference_bytes(rec))
    assert (back.kind, back.record_id, back.version) == ("source-heartbeat", f"ehr/{EPOCH}/4", 1)
    assert back.recorded_at == back.effective_at == T0
    assert isinstance(back.parsed, SourceHeartbeatBody)
    st = back.parsed.statement
    assert (st.last_seq, st.closing, st.key_id) == (9, True, SOURCE.key_id)
    verify_heartbeat(st, back.parsed.signature, SOURCE.public_key)


class FakeMessage:  # ------------------------------------------------------- the SDK
    def __init__(self, topic: str, value: bytes, key: bytes | None, callback: Any) -> None:
        self._topic, self._value, self._key, self.callback = topic, value, key, callback

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def partition(self) -> int:
        return 0


class FakeError:
    def name(self) -> str:
        return "_MSG_TIMED_OUT"

    def str(self) -> str:
        return "timed out"

    def retriable(self) -> bool:
        return False


class FakeProducer:
    """Holds messages until released (or failed); poll/flush deliver released ones."""

    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.messages: list[FakeMessage] = []
        self.outcome: dict[int, bool] = {}  # index -> ok, once released
        self.served: set[int] = set()
        #: the local queue is full: produce raises BufferError
        self.full = False
        FakeProducer.instances.append(self)

    list_topics = staticmethod(lambda *_a, **_k: None)  # the producer's _connect

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        on_delivery: Any = None,
        headers: Any = None,
    ) -> None:
        if self.full:
            raise BufferError("Local: Queue full")
        with self.lock:
            self.messages.append(
                FakeMessage(topic, value, key, on_delivery or self.config["on_delivery"])
            )

    def release(self, indices: range | list[int], ok: bool = True) -> None:
        with self.lock:
            for i in indices:
                self.outcome[i] = ok

    def poll(self, timeout: float = 0.0) -> int:
        with self.lock:
            ready = [i for i in self.outcome if i not in self.served]
            self.served.update(ready)
            todo = [(self.messages[i], self.outcome[i]) for i in sorted(ready)]
        for msg, ok in todo:
            msg.callback(None if ok else FakeError(), msg)
        return len(todo)

    def flush(self, timeout: float = 0.0) -> int:
        with self.lock:
            for i in range(len(self.messages)):
                self.outcome.setdefault(i, True)
        self.poll()
        return 0

    def __len__(self) -> int:
        with self.lock:
            return len(self.messages) - len(self.served)

    def purge(self) -> None:
        pass

    def topic_values(self, topic: str) -> list[bytes]:
        with self.lock:
            return [m.value() for m in self.messages if m.topic() == topic]


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    FakeProducer.instances = []
    monkeypatch.setattr(sdk, "Producer", FakeProducer)
    return FakeProducer


def settings(**changes: Any) -> Settings:
    base = Settings(
        source_batch_max_events=3, source_batch_max_ms=60_000, source_heartbeat_interval_s=3600
    )
    return base.replace(**changes)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def heartbeats(fake: FakeProducer, s: Settings) -> list[Any]:
    out = []
    for value in fake.topic_values(s.topic_sources):
        rec = decode_reference(value)
        assert isinstance(rec.parsed, SourceHeartbeatBody)
        out.append(rec.parsed.statement)
    return out


def test_sdk_heartbeat_claims_only_what_kafka_acknowledged(
    fake_kafka: type[FakeProducer],
) -> None:
    s = settings()
    producer = sdk.AccessEventProducer(s, source_key=SOURCE, source_id="ehr")
    fake = fake_kafka.instances[-1]
    assert producer.signing and producer.epoch is not None and len(producer.epoch) == 16
    for i in range(7):
        producer.send(event(i))
    # two full batches went out as one record each, the seventh event waits in its batch
    values = fake.topic_values(s.topic_events)
    assert len(values) == 2 and all(looks_batch(v) for v in values)
    assert [m.key() for m in fake.messages] == [
        f"ehr/{producer.epoch}/1".encode(),
        f"ehr/{producer.epoch}/4".encode(),
    ]
    assert producer.last_seq() == 6 and len(producer) == 7
    assert producer.report().pending == 7, "pending counts events, not records"
    producer.send_heartbeats()
    fake.release([1])  # the second batch first
    wait_for(lambda: producer.report().acked == 3)
    assert producer.acked_seq() == 0
    assert producer.report().pending == 3 + 1 + 1, "batch 1, the open batch, the heartbeat"
    producer.send_heartbeats()
    fake.release([0])
    wait_for(lambda: producer.acked_seq() == 6)
    producer.send_heartbeats()
    assert [h.last_seq for h in heartbeats(fake, s)] == [0, 0, 6]
    assert [h.beat for h in heartbeats(fake, s)] == [1, 2, 3]
    report = producer.close()
    assert (report.sent, report.acked, report.failed) == (7, 7, 0)
    last = heartbeats(fake, s)[-1]
    assert (last.last_seq, last.closing, last.source_id, last.epoch) == (
        7,
        True,
        "ehr",
        producer.epoch,
    )
    assert producer.heartbeats_sent == 4
    events = [e for v in fake.topic_values(s.topic_events) for e in open_batch_record(v).events]
    assert events == [canonical_event_bytes(event(i)) for i in range(7)]


def test_sdk_per_event_records_claim_only_fully_acknowledged_batches(
    fake_kafka: type[FakeProducer],
) -> None:
    s = settings(source_record_format="event")
    producer = sdk.AccessEventProducer(s, source_key=SOURCE, source_id="ehr")
    fake = fake_kafka.instances[-1]
    for i in range(7):
        producer.send(event(i))
    values = fake.topic_values(s.topic_events)
    assert len(values) == 6 and [m.key() for m in fake.messages] == [b"P1"] * 6
    assert [decode_signed_event(v)[2].seq for v in values] == list(range(1, 7))
    assert producer.last_seq() == 6 and len(producer) == 7
    producer.send_heartbeats()
    fake.release(range(3, 6))  # the second batch first
    wait_for(lambda: producer.report().acked == 3)
    assert producer.acked_seq() == 0
    producer.send_heartbeats()
    fake.release(range(0, 2))  # two of the first batch's three
    wait_for(lambda: producer.report().acked == 5)
    producer.send_heartbeats()
    fake.release([2])
    wait_for(lambda: producer.acked_seq() == 6)
    producer.send_heartbeats()
    assert [h.last_seq for h in heartbeats(fake, s)] == [0, 0, 0, 6]
    report = producer.close()
    assert (report.sent, report.acked, report.failed) == (7, 7, 0)
    assert heartbeats(fake, s)[-1].last_seq == 7


def test_sdk_closes_a_waiting_batch_after_max_ms(fake_kafka: type[FakeProducer]) -> None:
    s = settings(source_batch_max_events=100, source_batch_max_ms=30)
    with sdk.AccessEventProducer(s, source_key=SOURCE, source_id="ehr") as producer:
        fake = fake_kafka.instances[-1]
        producer.send(event(1))
        producer.send(event(2))
        wait_for(lambda: len(fake.topic_values(s.topic_events)) == 1, timeout=2.0)
        (value,) = fake.topic_values(s.topic_events)
        opened = open_batch_record(value)
        assert (opened.statement.first_seq, opened.statement.size) == (1, 2)
        assert opened.events == (canonical_event_bytes(event(1)), canonical_event_bytes(event(2)))


def test_sdk_keeps_every_batch_record_within_the_byte_budget(
    fake_kafka: type[FakeProducer],
) -> None:
    s = settings(source_batch_max_events=1000, source_batch_max_bytes=6000)
    with sdk.AccessEventProducer(s, source_key=SOURCE, source_id="ehr") as producer:
        for i in range(50):
            producer.send(event(i, patient=f"P{i % 7}"))
        producer.send(event(99, outcome_desc="x" * 8000))  # alone over budget: travels alone
        producer.send(event(100))
    values = fake_kafka.instances[-1].topic_values(s.topic_events)
    opened = [open_batch_record(v) for v in values]
    assert len(values) > 3
    assert all(len(v) <= 6000 for v, o in zip(values, opened, strict=True) if o.statement.size > 1)
    sent = [canonical_event_bytes(event(i, patient=f"P{i % 7}")) for i in range(50)]
    sent += [
        canonical_event_bytes(event(99, outcome_desc="x" * 8000)),
        canonical_event_bytes(event(100)),
    ]
    assert [e for o in opened for e in o.events] == sent
    assert [o.statement.first_seq for o in opened] == [
        1 + sum(o.statement.size for o in opened[:i]) for i in range(len(opened))
    ]


def test_sdk_a_failed_batch_record_fails_all_its_events(
    fake_kafka: type[FakeProducer],
) -> None:
    s = settings()
    producer = sdk.AccessEventProducer(s, source_key=SOURCE, source_id="ehr")
    fake = fake_kafka.instances[-1]
    for i in range(6):
        producer.send(event(i))
    fake.release([0])
    fake.release([1], ok=False)  # the second batch (seqs 4..6)
    with pytest.raises(sdk.DeliveryError) as caught:
        producer.close()
    assert caught.value.failed == 3 and caught.value.report.acked == 3
    assert [f.event_id for f in caught.value.failures] == [event(i).event_id for i in (3, 4, 5)]
    assert {f.error_code for f in caught.value.failures} == {"_MSG_TIMED_OUT"}
    assert "P1" not in str(caught.value) + repr(caught.value.to_dict())
    assert producer.acked_seq() == 3, "the acknowledged prefix stops before the failed batch"
    assert not [h for h in heartbeats(fake, s) if h.closing]


def test_sdk_failure_details_name_the_first_events_and_count_them_all(
    fake_kafka: type[FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdk, "MAX_FAILURE_DETAILS", 2)
    s = settings()
    producer = sdk.AccessEventProducer(s, source_key=SOURCE, source_id="ehr")
    fake = fake_kafka.instances[-1]
    for i in range(6):
        producer.send(event(i))
    fake.release([0, 1], ok=False)
    with pytest.raises(sdk.DeliveryError) as caught:
        producer.flush()
    assert caught.value.failed == 6
    assert [f.event_id for f in caught.value.failures] == [event(0).event_id, event(1).event_id]
    producer.close()


def test_sdk_failed_per_event_record_raises_and_no_closing_heartbeat_claims_it(
    fake_kafka: type[FakeProducer],
) -> None:
    s = settings(source_record_format="event")
    producer = sdk.AccessEventProducer(s, source_key=SOURCE, source_id="ehr")
    fake = fake_kafka.instances[-1]
    for i in range(3):
        producer.send(event(i))
    fake.release([0, 2])
    fake.release([1], ok=False)
    with pytest.raises(sdk.DeliveryError) as caught:
        producer.close()
    assert caught.value.failed == 1
    assert {f.event_id for f in caught.value.failures} == {event(1).event_id}
    assert producer.acked_seq() == 0
    assert not [h for h in heartbeats(fake, s) if h.closing]


def test_sdk_a_batch_record_lost_to_a_full_queue_fails_all_its_events(
    fake_kafka: type[FakeProducer],
) -> None:
    s = settings()
    producer = sdk.AccessEventProducer(s, source_key=SOURCE, source_id="ehr")
    fake = fake_kafka.instances[-1]
    producer._queue_full_timeout = 0.2  # not two minutes
    for i in range(3):
        producer.send(event(i))
    fake.release([0])
    fake.full = True
    producer.send(event(3))
    producer.send(event(4))
    with pytest.raises(sdk.DeliveryError, match="stayed full"):
        producer.send(event(5))  # the batch closes: its record finds no room
    assert producer.last_seq() == 6, "its sequence numbers are spent"
    fake.full = False
    with pytest.raises(sdk.DeliveryError) as caught:
        producer.flush()
    assert caught.value.failed == 3 and caught.value.report.pending == 0
    assert {f.error_code for f in caught.value.failures} == {"_QUEUE_FULL"}
    assert [f.event_id for f in caught.value.failures] == [event(i).event_id for i in (3, 4, 5)]
    assert producer.acked_seq() == 3
    producer.send(event(6))
    report = producer.close()  # later batches are delivered; the gap stays a gap
    assert (report.sent, report.acked, report.failed) == (7, 4, 3)
    assert producer.acked_seq() == 3


def test_sdk_sends_periodic_heartbeats_per_attributed_source(
    fake_kafka: type[FakeProducer],
) -> None:
    s = settings(source_heartbeat_interval_s=0.05)
    with sdk.AccessEventProducer(s, source_key=SOURCE, source_id="gw") as producer:
        fake = fake_kafka.instances[-1]
        producer.send(event(1), on_behalf_of="pacs")
        producer.flush()
        assert producer.last_seqs() == {"gw": 0, "pacs": 1}
        wait_for(lambda: {h.source_id for h in heartbeats(fake, s) if h.last_seq} == {"pacs"})
    beats = heartbeats(fake, s)
    closing = {h.source_id: h.last_seq for h in beats if h.closing}
    assert closing == {"gw": 0, "pacs": 1}
    assert all(h.key_id == SOURCE.key_id for h in beats)


def test_sdk_without_a_key_sends_plain_events(fake_kafka: type[FakeProducer]) -> None:
    s = settings()
    with sdk.AccessEventProducer(s) as producer:
        assert not producer.signing and producer.epoch is None
        producer.send(event(1))
        with pytest.raises(sdk.ValidationError):
            producer.send(event(2), on_behalf_of="pacs")
    fake = fake_kafka.instances[-1]
    assert fake.topic_values(s.topic_events) == [canonical_event_bytes(event(1))]
    assert fake.topic_values(s.topic_sources) == []


def test_sdk_loads_the_source_key_from_settings_or_environment(
    fake_kafka: type[FakeProducer], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from careledger.keys import SOURCE_KEY_TEXT_ENV, write_keypair
    from careledger_core.signing import format_private_key

    path = tmp_path / "source.key"
    key = write_keypair(path)
    monkeypatch.delenv(SOURCE_KEY_TEXT_ENV, raising=False)
    s = settings(source_key=path, source_id="lab")
    with sdk.AccessEventProducer(s) as producer:
        assert producer.source_id == "lab"
        producer.send(event(1))
    value = fake_kafka.instances[-1].topic_values(s.topic_events)[0]
    assert open_batch_record(value).statement.key_id == key.key_id
    # a producer of another topic (reference data) stays plain
    with sdk.AccessEventProducer(s, topic=s.topic_consents) as producer:
        assert not producer.signing
    other = SigningKey.from_seed(b"o" * 32)
    monkeypatch.setenv(SOURCE_KEY_TEXT_ENV, format_private_key(other))
    with sdk.AccessEventProducer(settings()) as producer:
        producer.send(event(2))
    value = fake_kafka.instances[-1].topic_values(s.topic_events)[0]
    assert open_batch_record(value).statement.key_id == other.key_id
    monkeypatch.delenv(SOURCE_KEY_TEXT_ENV)
    with pytest.raises(sdk.KeyFileError):
        sdk.AccessEventProducer(settings(), sign=True)


# --------------------------------------------------------------------------- registry


def key_record(st: KeyEventStatement, version: int = 1, signer: SigningKey = REGISTRAR) -> bytes:
    rec = sources.publishing._key_record(st, sign_key_event(signer, st), version)
    return canonical_reference_bytes(rec)


def read_with(
    monkeypatch: pytest.MonkeyPatch, values: list[bytes | None]
) -> sources.SourcesSnapshot:
    monkeypatch.setattr(
        sources.reading, "_read_topic", lambda *a, **k: [(0, i, v) for i, v in enumerate(values)]
    )
    return sources.read_sources(Settings(), TRUSTED, principal=ADMIN)


def test_key_events_of_an_untrusted_registrar_are_skipped_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rogue = SigningKey.from_seed(b"x" * 32)
    lab = SigningKey.from_seed(b"l" * 32)
    hb = heartbeat_record(SOURCE, source_id="ehr", epoch=EPOCH, beat=1, last_seq=0, sent_at=T0)
    snap = read_with(
        monkeypatch,
        [
            key_record(key_event(SOURCE, "ehr")),
            key_record(key_event(lab, "lab", registrar=rogue), signer=rogue),
            key_record(key_event(SOURCE, "lab"), version=1),  # another source's key id
            canonical_reference_bytes(hb),
            b"not json",
            None,
        ],
    )
    assert len(snap.registry) == 1 and [e.statement.source_id for e in snap.key_events] == ["ehr"]
    assert [(p.offset, p.code) for p in snap.problems] == [
        (1, "UNKNOWN_REGISTRAR"),
        (2, "KEY_ID_TAKEN"),
        (4, "REFERENCE_INVALID"),
        (5, "REFERENCE_INVALID"),
    ]
    assert "UNKNOWN_REGISTRAR" in str(snap.problems[0]) and "lab/" in str(snap.problems[0])
    assert len(snap.heartbeats) == 1
    assert snap.versions == {
        f"ehr/{SOURCE.key_id}": 1,
        f"lab/{lab.key_id}": 1,
        f"lab/{SOURCE.key_id}": 1,
    }


def test_summary_shows_a_revoked_key_revoked_from_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    revoked_at = "2026-06-01T00:00:00.000000Z"
    snap = read_with(
        monkeypatch,
        [
            key_record(key_event(SOURCE, "ehr", signs_for=("pacs",))),
            key_record(key_event(SOURCE, "ehr", status="revoked", valid_from=revoked_at), 2),
        ],
    )
    (summary,) = sources.summarize_keys(snap.key_events)
    assert summary.valid_from == "2026-01-01T00:00:00.000000Z"
    assert summary.revoked_at == revoked_at and summary.version == 2
    assert summary.status_at("2026-05-31T23:59:59.999999Z") == "active"
    assert summary.status_at(revoked_at) == "revoked"
    assert summary.status_at("2025-12-31T00:00:00.000000Z") == "pending"
    assert summary.to_dict(revoked_at)["signs_for"] == ["pacs"]


def test_heartbeats_are_checked_against_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    good = heartbeat_record(SOURCE, source_id="ehr", epoch=EPOCH, beat=1, last_seq=3, sent_at=T0)
    stranger = SigningKey.from_seed(b"z" * 32)
    bad = heartbeat_record(stranger, source_id="ehr", epoch=EPOCH, beat=2, last_seq=9, sent_at=T0)
    values = [
        key_record(key_event(SOURCE, "ehr")),
        canonical_reference_bytes(good),
        canonical_reference_bytes(bad),
    ]
    monkeypatch.setattr(
        sources.reading, "_read_topic", lambda *a, **k: [(0, i, v) for i, v in enumerate(values)]
    )
    beats, problems = sources.read_heartbeats(Settings(), TRUSTED, principal=ADMIN)
    assert [b.statement.last_seq for b in beats] == [3]
    assert [(p.offset, p.code) for p in problems] == [(2, "UNKNOWN_KEY")]


def test_times_on_the_command_line_need_a_zone() -> None:
    assert sources.parse_time("2026-03-01T10:00:00Z") == "2026-03-01T10:00:00.000000Z"
    assert sources.parse_time("2026-03-01T12:00:00.5+02:00") == "2026-03-01T10:00:00.500000Z"
    with pytest.raises(ValidationError):
        sources.parse_time("2026-03-01T10:00:00")
    assert len(sources.parse_time("now")) == len(T0)


def test_key_event_body_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    st = key_event(SOURCE, "ehr")
    rec = decode_reference(key_record(st, version=3))
    assert rec.record_id == f"ehr/{SOURCE.key_id}" and rec.version == 3
    assert rec.effective_at == st.valid_from
    assert msgspec.to_builtins(st) == dict(rec.body["statement"])
