"""Signing at the source, producer side (ADR 0010), without Kafka.

The pure batcher and acknowledgement tracker, the SDK wired to a fake Kafka producer
whose deliveries the test releases one by one, and the registry reading rules of
``careledger.sources`` over fake topic contents.
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
from careledger.kafka.batching import AckTracker, SourceBatcher, heartbeat_record
from careledger.sources import publishing as sources_publishing
from careledger.sources import reading as sources_reading
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


def event(i: int, patient: str = "P1") -> AccessEvent:
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
        }
    )


def verifier(*extra: KeyEventStatement) -> BatchVerifier:
    return BatchVerifier(SourceRegistry([key_event(SOURCE, "ehr"), *extra]))


# --------------------------------------------------------------------------- batcher


def batcher(max_events: int = 3, max_age_s: float = 0.05) -> SourceBatcher:
    return SourceBatcher(SOURCE, "ehr", EPOCH, max_events=max_events, max_age_s=max_age_s)


def test_batches_number_events_contiguously_from_one_and_sign_once_each() -> None:
    b = batcher(max_events=3)
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
    _e, canonical, att = decode_signed_event(relayed.records[0][1])
    assert att.statement.source_id == "pacs" and att.statement.signed_by == "ehr"
    verifier(key_event(SOURCE, "ehr", signs_for=("pacs",))).check(leaf_hash(canonical), att)
    _e, _c, own_att = decode_signed_event(own.records[0][1])
    assert own_att.statement.signed_by is None
    assert b.last_seqs() == {"ehr": 3, "pacs": 2}


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


# --------------------------------------------------------------------------- the SDK


class FakeMessage:
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
    """Holds every message until the test releases (or fails) it; poll/flush deliver
    released ones. ``flush`` releases everything not marked to fail."""

    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.messages: list[FakeMessage] = []
        self.outcome: dict[int, bool] = {}  # index -> ok, once released
        self.served: set[int] = set()
        FakeProducer.instances.append(self)

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        on_delivery: Any = None,
        headers: Any = None,
    ) -> None:
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
    # two full batches went out, the seventh event waits in its batch
    assert len(fake.topic_values(s.topic_events)) == 6
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
    assert [h.beat for h in heartbeats(fake, s)] == [1, 2, 3, 4]
    report = producer.close()
    assert (report.sent, report.acked, report.failed) == (7, 7, 0)
    last = heartbeats(fake, s)[-1]
    assert (last.last_seq, last.closing, last.source_id, last.epoch) == (
        7,
        True,
        "ehr",
        producer.epoch,
    )
    assert producer.heartbeats_sent == 5


def test_sdk_closes_a_waiting_batch_after_max_ms(fake_kafka: type[FakeProducer]) -> None:
    s = settings(source_batch_max_events=100, source_batch_max_ms=30)
    with sdk.AccessEventProducer(s, source_key=SOURCE, source_id="ehr") as producer:
        fake = fake_kafka.instances[-1]
        producer.send(event(1))
        producer.send(event(2))
        wait_for(lambda: len(fake.topic_values(s.topic_events)) == 2, timeout=2.0)
        values = fake.topic_values(s.topic_events)
        atts = [decode_signed_event(v)[2] for v in values]
        assert [a.seq for a in atts] == [1, 2] and atts[0].statement == atts[1].statement


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


def test_sdk_failed_delivery_raises_and_no_closing_heartbeat_claims_it(
    fake_kafka: type[FakeProducer],
) -> None:
    s = settings()
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
    assert decode_signed_event(value)[2].statement.key_id == key.key_id
    # a producer of another topic (reference data) stays plain
    with sdk.AccessEventProducer(s, topic=s.topic_consents) as producer:
        assert not producer.signing
    other = SigningKey.from_seed(b"o" * 32)
    monkeypatch.setenv(SOURCE_KEY_TEXT_ENV, format_private_key(other))
    with sdk.AccessEventProducer(settings()) as producer:
        producer.send(event(2))
    value = fake_kafka.instances[-1].topic_values(s.topic_events)[0]
    assert decode_signed_event(value)[2].statement.key_id == other.key_id
    monkeypatch.delenv(SOURCE_KEY_TEXT_ENV)
    with pytest.raises(sdk.KeyFileError):
        sdk.AccessEventProducer(settings(), sign=True)


# --------------------------------------------------------------------------- registry


def key_record(st: KeyEventStatement, version: int = 1, signer: SigningKey = REGISTRAR) -> bytes:
    rec = sources_publishing._key_record(st, sign_key_event(signer, st), version)
    return canonical_reference_bytes(rec)


def read_with(
    monkeypatch: pytest.MonkeyPatch, values: list[bytes | None]
) -> sources.SourcesSnapshot:
    monkeypatch.setattr(
        sources_reading, "_read_topic", lambda *a, **k: [(0, i, v) for i, v in enumerate(values)]
    )
    return sources.read_sources(Settings(), {REGISTRAR.key_id: REGISTRAR.public_key})


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
        sources_reading, "_read_topic", lambda *a, **k: [(0, i, v) for i, v in enumerate(values)]
    )
    beats, problems = sources.read_heartbeats(Settings(), {REGISTRAR.key_id: REGISTRAR.public_key})
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
