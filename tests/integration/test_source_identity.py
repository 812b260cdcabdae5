"""Source identity, producer side (ADR 0010), against the real Kafka broker.

The SDK signs at the source: its records on the events topic (one per signed batch,
ADR 0020, or one per event with ``source_record_format = "event"``) decode and verify
against the registry read back from the sources topic, with contiguous sequence numbers
and one signature per batch; a gateway's batches for a relayed source say who signed
them; heartbeats claim what Kafka acknowledged; the ``careledger source`` commands
round-trip through Kafka; and a key event signed by a registrar nobody trusts is never
applied.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import ADMIN
from careledger.keys import write_keypair
from careledger.sources import (
    load_registrar_keys,
    read_heartbeats,
    read_registry,
    read_sources,
    register_key,
)
from careledger_core.batch_record import looks_batch, open_batch_record
from careledger_core.event import AccessEvent, canonical_event_bytes, decode_and_canonicalize
from careledger_core.hashing import leaf_hash
from careledger_core.source import BatchStatement, BatchVerifier, decode_signed_event
from producers.simulator import HospitalModel, simulate
from tests.integration.pipeline import run_cli, with_source

# these tests build the source registry themselves, from an empty sources topic
pytestmark = [pytest.mark.integration, pytest.mark.bare_sources]


def _events(count: int, seed: int = 21) -> list[AccessEvent]:
    return list(simulate(HospitalModel(staff=50, patients=200, seed=seed), count, seed=seed))


def _events_in(value: bytes) -> int:
    """How many events one record of the events topic carries (a batch record several)."""
    return len(json.loads(value)["events"]) if looks_batch(value) else 1


def _consume(settings: Settings, expected: int) -> list[Message]:
    """The events topic's records, until they carry at least ``expected`` events, then
    for one second more (so that records beyond those would be seen too)."""
    topic, partitions = settings.topic_events, settings.partitions
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"careledger-test-sources-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            },
        )
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        out: list[Message] = []
        carried = 0
        deadline = time.monotonic() + 60
        settle: float | None = None
        while time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                assert m.error() is None, m.error()
                out.append(m)
                carried += _events_in(m.value() or b"")
            if carried >= expected and settle is None:
                settle = time.monotonic() + 1.0
            if settle is not None and time.monotonic() > settle:
                break
        return out
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class _Signed:
    """One event read back from the events topic, verified: the statement signing its
    batch, its sequence number and its bytes as they stand in the record."""

    statement: BatchStatement
    seq: int
    canonical: bytes


def _verified(
    settings: Settings, expected: int
) -> tuple[list[_Signed], BatchVerifier, list[Message]]:
    """Every event of the events topic, checked against the registry read from Kafka:
    a batch record (ADR 0020) must carry exactly the events its statement signs, under a
    signature of a key that may sign for the source; a signed-event record its inclusion
    proof and the batch signature. Returns the events, the verifier and the records."""
    registry, problems = read_registry(settings, load_registrar_keys(settings), principal=ADMIN)
    assert problems == []
    verifier = BatchVerifier(registry)
    signed: list[_Signed] = []
    records = _consume(settings, expected)
    for m in records:
        value = m.value()
        assert isinstance(value, bytes)
        if looks_batch(value):
            opened = open_batch_record(value)  # raises unless the events are the signed ones
            st = opened.statement
            verifier.authorize(st, st.signed_at)
            verifier.verify_signature(st, opened.signature)
            assert m.key() == f"{st.source_id}/{st.epoch}/{st.first_seq}".encode()
            for i, raw in enumerate(opened.events):
                _event, canonical = decode_and_canonicalize(raw)
                assert canonical == raw, "the SDK puts canonical bytes in the record"
                signed.append(_Signed(st, st.first_seq + i, raw))
        else:
            event, canonical, att = decode_signed_event(value)
            verifier.check(leaf_hash(canonical), att)
            assert m.key() == event.patient.id.encode()
            signed.append(_Signed(att.statement, att.seq, canonical))
    return signed, verifier, records


@pytest.mark.parametrize("record_format", ["batch", "event"])
def test_sdk_records_verify_against_the_registry_read_from_kafka(
    isolated: Settings, tmp_path: Path, record_format: str
) -> None:
    s = with_source(isolated, tmp_path, "ehr-main").replace(
        source_batch_max_events=100, source_record_format=record_format
    )
    events = _events(450)
    with AccessEventProducer(s) as producer:
        assert producer.signing and producer.source_id == "ehr-main"
        for e in events:
            producer.send(e)
        report = producer.flush()
        epoch = producer.epoch
        assert producer.last_seq() == 450
    assert (report.acked, report.failed) == (450, 0)

    atts, verifier, records = _verified(s, 450)
    assert len(atts) == 450
    assert {a.statement.source_id for a in atts} == {"ehr-main"}
    assert {a.statement.epoch for a in atts} == {epoch}
    assert sorted(a.seq for a in atts) == list(range(1, 451)), "contiguous from 1, no repeat"
    batches = {(a.statement.first_seq, a.statement.size) for a in atts}
    assert batches == {(1, 100), (101, 100), (201, 100), (301, 100), (401, 50)}
    assert verifier.signature_checks == 5, "one signature per batch"
    assert all(a.statement.signed_by is None for a in atts)
    # the record shape is the one configured: a record per batch, or a record per event
    shapes = {looks_batch(m.value() or b"") for m in records}
    assert (shapes, len(records)) == (({True}, 5) if record_format == "batch" else ({False}, 450))
    # the records carry the very bytes the producer would have sent unsigned
    inside = [a.canonical for a in atts]
    assert sorted(inside) == sorted(canonical_event_bytes(e) for e in events)


def test_gateway_batches_for_a_relayed_source_carry_signed_by(
    isolated: Settings, tmp_path: Path
) -> None:
    s = with_source(isolated, tmp_path, "gateway", signs_for=("legacy-pacs", "legacy-lis"))
    events = _events(30, seed=22)
    with AccessEventProducer(s) as producer:
        for i, e in enumerate(events):
            producer.send(e, on_behalf_of=("legacy-pacs", "legacy-lis", None)[i % 3])
        producer.flush()
        assert producer.last_seqs() == {"gateway": 10, "legacy-pacs": 10, "legacy-lis": 10}

    atts, _verifier, _records = _verified(s, 30)
    seqs: dict[str, list[int]] = collections.defaultdict(list)
    for a in atts:
        st = a.statement
        assert st.signed_by == (None if st.source_id == "gateway" else "gateway")
        seqs[st.source_id].append(a.seq)
    assert {k: sorted(v) for k, v in seqs.items()} == {
        src: list(range(1, 11)) for src in ("gateway", "legacy-pacs", "legacy-lis")
    }


def test_heartbeats_claim_the_acknowledged_sequence_numbers(
    isolated: Settings, tmp_path: Path
) -> None:
    s = with_source(isolated, tmp_path, "ehr-beats", signs_for=("relayed",)).replace(
        source_heartbeat_interval_s=0.3, source_batch_max_events=7
    )
    events = _events(40, seed=23)
    with AccessEventProducer(s) as producer:
        epoch = producer.epoch
        for e in events[:25]:
            producer.send(e)
        producer.send(events[25], on_behalf_of="relayed")
        producer.flush()
        time.sleep(1.0)  # a few periodic heartbeats after the acknowledgements
    registrars = load_registrar_keys(s)
    beats, problems = read_heartbeats(s, registrars, principal=ADMIN)
    assert problems == []
    ours = [b.statement for b in beats if b.statement.epoch == epoch]
    by_source: dict[str, list[int]] = collections.defaultdict(list)
    for st in ours:
        by_source[st.source_id].append(st.last_seq)
    assert set(by_source) == {"ehr-beats", "relayed"}
    for source, last in (("ehr-beats", 25), ("relayed", 1)):
        claims = by_source[source]
        assert claims == sorted(claims), "claims only grow"
        assert max(claims) == last and last in claims[:-1], "periodic beats reached it"
        closing = [st for st in ours if st.source_id == source and st.closing]
        assert len(closing) == 1 and closing[0].last_seq == last
        beats_numbers = [st.beat for st in ours if st.source_id == source]
        assert beats_numbers == list(range(1, len(beats_numbers) + 1))
    assert all(st.key_id == ours[0].key_id for st in ours)


def test_source_cli_register_revoke_list_round_trip(isolated: Settings, tmp_path: Path) -> None:
    registrar = tmp_path / "keys" / "registrar.key"
    s = isolated.replace(
        run_dir=tmp_path / "run",
        registrar_key=registrar,
        trusted_registrar_keys=(f"{registrar}.pub",),
    )
    key_path = tmp_path / "lab.key"
    out = run_cli(s, "source", "keygen", "--source-id", "lab", "--out", str(key_path))
    assert out.returncode == 0, out.stderr
    assert (key_path.stat().st_mode & 0o777) == 0o600
    assert "careledger-ed25519-private" not in out.stdout + out.stderr
    key_id = next(
        line.split(": ")[1] for line in out.stdout.splitlines() if line.startswith("key id:")
    )

    out = run_cli(s, "source", "register", "--source-id", "lab", "--public-key", f"{key_path}.pub")
    assert out.returncode == 2 and "--init-registrar" in out.stderr, "no registrar key yet"
    out = run_cli(
        s,
        "source",
        "register",
        "--source-id",
        "lab",
        "--public-key",
        f"{key_path}.pub",
        "--valid-from",
        "2026-01-01T00:00:00Z",
        "--signs-for",
        "lab-legacy",
        "--init-registrar",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (registrar.stat().st_mode & 0o777) == 0o600
    assert f"registered key {key_id} for source lab" in out.stdout
    assert "careledger-ed25519-private" not in out.stdout + out.stderr

    at = "2026-06-01T12:00:00Z"
    out = run_cli(s, "source", "revoke", "--source-id", "lab", "--key-id", key_id, "--at", at)
    assert out.returncode == 0, out.stdout + out.stderr

    out = run_cli(s, "source", "list", "--json", "--at", "2026-07-01T00:00:00Z")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["problems"] == []
    (key,) = doc["keys"]
    assert (key["source_id"], key["key_id"], key["status"]) == ("lab", key_id, "revoked")
    assert key["valid_from"] == "2026-01-01T00:00:00.000000Z"
    assert key["revoked_at"] == "2026-06-01T12:00:00.000000Z"
    assert key["signs_for"] == ["lab-legacy"] and key["version"] == 2

    out = run_cli(s, "source", "list", "--json", "--at", "2026-05-01T00:00:00Z")
    assert json.loads(out.stdout)["keys"][0]["status"] == "active"
    out = run_cli(s, "source", "list")
    assert out.returncode == 0 and key_id in out.stdout and "revoked" in out.stdout

    # the registry itself agrees: signing before the revocation only
    registry, _ = read_registry(s, load_registrar_keys(s), principal=ADMIN)
    registry.authorize("lab", key_id, "2026-05-31T00:00:00.000000Z")
    registry.authorize("lab-legacy", key_id, "2026-05-31T00:00:00.000000Z")
    with pytest.raises(Exception, match="revoked"):
        registry.authorize("lab", key_id, "2026-06-01T12:00:00.000000Z")


def test_key_event_of_an_untrusted_registrar_is_skipped_and_reported(
    isolated: Settings, tmp_path: Path
) -> None:
    s = with_source(isolated, tmp_path, "ehr-trusted")
    rogue_registrar = write_keypair(tmp_path / "rogue" / "registrar.key")
    intruder = write_keypair(tmp_path / "rogue" / "intruder.key")
    record = register_key(s, rogue_registrar, "ehr-trusted", intruder.public_key, principal=ADMIN)
    assert record.version == 1

    registry, problems = read_registry(s, load_registrar_keys(s), principal=ADMIN)
    assert len(registry) == 1, "only the trusted registration is applied"
    (problem,) = problems
    assert problem.code == "UNKNOWN_REGISTRAR"
    assert problem.record_id == f"ehr-trusted/{intruder.key_id}"
    assert registry.key_source(intruder.key_id) is None
    # trusting the rogue registrar (explicitly) would apply it: it is the trust that decides
    both = {**load_registrar_keys(s), rogue_registrar.key_id: rogue_registrar.public_key}
    assert len(read_sources(s, both, principal=ADMIN).registry) == 2


def test_local_tooling_creates_and_registers_the_local_source_once(
    isolated: Settings, tmp_path: Path
) -> None:
    from careledger.sources import ensure_local_source

    said: list[str] = []
    base = isolated.replace(run_dir=tmp_path / "run")
    s = ensure_local_source(base, say=said.append, principal=ADMIN)
    assert s.source_id == "careledger-local"
    assert s.source_key == tmp_path / "run" / "keys" / "source.key"
    assert s.registrar_key == tmp_path / "run" / "keys" / "registrar.key"
    for path in (s.source_key, s.registrar_key):
        assert path is not None and (path.stat().st_mode & 0o777) == 0o600
    assert len(said) == 3 and said[-1].startswith("== registered source careledger-local")
    again = ensure_local_source(base, say=said.append, principal=ADMIN)
    assert again == s and len(said) == 3, "nothing created or registered twice"
    assert len(read_sources(s, load_registrar_keys(s), principal=ADMIN).key_events) == 1

    with AccessEventProducer(s) as producer:
        for e in _events(5, seed=24):
            producer.send(e)
    atts, _verifier, _records = _verified(s, 5)
    assert sorted(a.seq for a in atts) == [1, 2, 3, 4, 5]
