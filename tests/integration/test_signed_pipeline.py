"""Source identity end to end (ADR 0010): SDK -> Kafka -> processor -> ClickHouse -> verify.

With ``require_source_signatures`` on, only events signed by a registered source are
chained. Each way an insider with write access to the events topic could try to slip
records in is quarantined with its reason and alerted; a sequence gap (events lost
between a source and Kafka) is reported by ``verify``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import ADMIN
from careledger.keys import load_signing_key, write_keypair
from careledger.sources import publish_key_event, register_key
from careledger.storage.store import ChainStore
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey
from careledger_core.source import (
    KeyEventStatement,
    decode_signed_event,
    encode_signed_event,
    sign_batch,
)
from producers.simulator import HospitalModel, simulate
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
    with_source,
)
from tests.integration.test_pipeline import accounted_records

pytestmark = pytest.mark.integration

EPOCH = "5e5e5e5e5e5e5e5e"


def _events(count: int, seed: int) -> list[AccessEvent]:
    return list(simulate(HospitalModel(staff=40, patients=150, seed=seed), count, seed=seed))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _signed_records(
    key: SigningKey, source_id: str, events: list[AccessEvent], first_seq: int = 1
) -> list[bytes]:
    canon = [canonical_event_bytes(e) for e in events]
    atts = sign_batch(
        key,
        source_id=source_id,
        epoch=EPOCH,
        first_seq=first_seq,
        event_leaf_hashes=[leaf_hash(c) for c in canon],
        signed_at=_now(),
    )
    return [encode_signed_event(c, a) for c, a in zip(canon, atts, strict=True)]


def _send_raw(settings: Settings, values: list[bytes]) -> None:
    with AccessEventProducer(settings, sign=False) as producer:
        for v in values:
            producer.send_raw(v, key=b"k")
        producer.flush()


def _read(
    settings: Settings,
    topic: str,
    expect: int,
    timeout: float = 60.0,
    until: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """At least ``expect`` records of ``topic`` (or, with ``until``, until it holds)."""
    done = until or (lambda out: len(out) >= expect)
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while not done(out) and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            out.append(m)
    consumer.close()
    return out


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _wait_registry_ledgered(settings: Settings, store: ChainStore) -> None:
    """Wait until every record now on the sources topic (the key registrations the
    processor authorised events with, heartbeats) is in a signed block: ``verify``
    rebuilds the registry from the *ledgered* key events, and a processor stopped as soon
    as the access events are chained may not have chained them yet (they are not lost:
    it would on its next start)."""
    topic = settings.topic_sources
    consumer = Consumer(kafka_config(settings, ADMIN, {"group.id": "hw-probe"}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        on_topic = sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()
    assert on_topic > 0, "no key registration on the sources topic"
    where, params = " WHERE chain_id LIKE %(chains)s", {"chains": f"%/{topic}/%"}
    wait_until(
        lambda: accounted_records(store, where, params) >= on_topic,
        60,
        what="the source registry ledgered",
    )


def _signed_settings(isolated: Settings, tmp_path: Path) -> Settings:
    s = with_source(with_keys(isolated, tmp_path), tmp_path, source_id="ehr-main")
    return processor_settings(s, require_source_signatures=True)


def test_signed_traffic_is_chained_attested_and_verified(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _signed_settings(isolated, tmp_path)
    events = _events(3_000, seed=31)
    with AccessEventProducer(settings) as producer:
        assert producer.signing
        for e in events:
            producer.send(e)
        producer.flush()
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= len(events), 120, what="chained")
        _wait_registry_ledgered(settings, store)
    finally:
        stop(proc)
    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["sources"]["signed_events"] == len(events)
    assert report["sources"]["unsigned_events"] == 0
    assert report["sources"]["sources"]["ehr-main"]["events"] == len(events)
    assert report["result"] == "intact", report["findings"][:5]
    # One source_batches row per batch record chained (ADR 0020): the rows' sequence
    # ranges tile 1..len(events) exactly (nothing missing, nothing signed twice), nothing
    # was dead-lettered out of a batch, and each row's offset holds its batch's events.
    db = settings.clickhouse_database
    committed = (
        f"(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash FROM {db}.blocks)"
    )
    batches = store.backend.execute(
        f"SELECT chain_id, height, kafka_offset, source_id, first_seq, size, skipped "
        f"FROM {db}.source_batches WHERE {committed}"
    )
    assert {_text(b[3]) for b in batches} == {"ehr-main"}
    assert all(_text(b[6]) == "" for b in batches), "no event was dead-lettered"
    ranges = sorted((int(b[4]), int(b[5])) for b in batches)
    expected_next = 1
    for first, size in ranges:
        assert first == expected_next, f"batch at seq {first}, expected {expected_next}"
        expected_next = first + size
    assert expected_next == len(events) + 1
    assert 1 < len(batches) < len(events), "the SDK sent several events per record"
    assert report["sources"]["signed_batches"] == len(batches)
    per_record = store.backend.execute(
        f"SELECT chain_id, height, kafka_offset, count() FROM {db}.access_events "
        f"WHERE {committed} GROUP BY chain_id, height, kafka_offset"
    )
    covered = {(_text(c), int(h), int(o)): int(n) for c, h, o, n in per_record}
    assert {(_text(b[0]), int(b[1]), int(b[2])): int(b[5]) for b in batches} == covered


def test_forged_unknown_revoked_replayed_and_unsigned_records_are_quarantined(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _signed_settings(isolated, tmp_path)
    registrar = load_signing_key(settings.registrar_key, env={})
    events = _events(60, seed=32)
    genuine_key = load_signing_key(settings.source_key, env={})
    genuine = _signed_records(genuine_key, "ehr-main", events[:10])

    # a wrong signature: the statement claims other sequence numbers than were signed
    doc = json.loads(genuine[3])
    doc["attestation"]["statement"]["first_seq"] = 1000
    bad_signature = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    # a key nobody registered
    rogue = SigningKey.from_seed(b"\x07" * 32)
    unknown = _signed_records(rogue, "ehr-main", events[10:12], first_seq=11)

    # a key registered, then revoked an hour ago
    retired_path = tmp_path / "keys" / "retired.key"
    retired = write_keypair(retired_path)
    register_key(
        settings,
        registrar,
        "lab-old",
        retired.public_key,
        valid_from="2026-01-01T00:00:00.000000Z",
        principal=ADMIN,
    )
    publish_key_event(
        settings,
        registrar,
        KeyEventStatement(
            source_id="lab-old",
            key_id=retired.key_id,
            public_key=base64.b64encode(retired.public_key.raw).decode(),
            status="revoked",
            valid_from=time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - 3600)),
            registrar_key_id=registrar.key_id,
        ),
        principal=ADMIN,
    )
    revoked = _signed_records(retired, "lab-old", events[12:14])

    plain = [canonical_event_bytes(events[20])]
    replayed = [genuine[0]]  # the very same signed record, produced again

    _send_raw(settings, genuine)  # offsets 0..9 of their partition: chained
    _send_raw(settings, [bad_signature, *unknown, *revoked, *plain])
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= 10, 120, what="genuine chained")
        _send_raw(settings, replayed)
        quarantined = _read(settings, settings.topic_quarantine, expect=7)
        time.sleep(1.0)
        _wait_registry_ledgered(settings, store)
    finally:
        stop(proc)
    codes = sorted(dict(m.headers())["careledger-error-code"].decode() for m in quarantined)
    assert codes == sorted(
        [
            "BAD_SIGNATURE",
            "UNKNOWN_KEY",
            "UNKNOWN_KEY",
            "REVOKED_KEY",
            "REVOKED_KEY",
            "UNSIGNED",
            "REPLAYED",
        ]
    )
    # original bytes kept for the operator
    assert {m.value() for m in quarantined} == {
        bad_signature,
        *unknown,
        *revoked,
        *plain,
        genuine[0],
    }
    # one alert per reason and claim *of a write batch*: records quarantined in different
    # batches raise one each, so read until every reason has been alerted (or time out)
    wanted = {
        "SOURCE_BAD_SIGNATURE",
        "SOURCE_UNKNOWN_KEY",
        "SOURCE_REVOKED_KEY",
        "SOURCE_REPLAYED",
    }

    def processor_rules(messages: list[Any]) -> set[str]:
        docs = [json.loads(m.value()) for m in messages]
        return {a["rule"] for a in docs if a.get("source") == "processor"}

    alerts = _read(
        settings, settings.topic_alerts, expect=5, until=lambda out: wanted <= processor_rules(out)
    )
    assert wanted <= processor_rules(alerts)
    assert committed_event_count(store) == 10
    # every offset is accounted for: chained + rejected (quarantined) = produced
    total = store.backend.execute(
        f"SELECT sum(event_count), sum(dead_lettered) FROM {settings.clickhouse_database}.blocks "
        "WHERE chain_id LIKE %(chains)s",
        {"chains": f"%/{settings.topic_events}/%"},
    )
    chained, rejected = (int(x) for x in total[0])
    assert (chained, rejected) == (10, 7)
    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 0, result.stdout[-3000:]
    listing = run_cli(settings, "dead-letters", "--quarantine", "--json")
    assert listing.returncode == 0 and len(listing.stdout.strip().splitlines()) == 7


def test_events_lost_between_a_source_and_kafka_are_reported_by_verify(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _signed_settings(isolated, tmp_path)
    key = load_signing_key(settings.source_key, env={})
    events = _events(10, seed=33)
    records = _signed_records(key, "ehr-main", events)
    sent = records[:5] + records[7:]  # sequence numbers 6 and 7 never reach Kafka
    _send_raw(settings, sent)
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= len(sent), 120, what="chained")
        _wait_registry_ledgered(settings, store)
    finally:
        stop(proc)
    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 1, result.stdout[-3000:]
    report = json.loads(result.stdout)
    gaps = [f for f in report["findings"] if f["code"] == "SOURCE_SEQ_GAP"]
    assert len(gaps) == 1, report["findings"][:10]
    assert (gaps[0]["details"]["first_missing"], gaps[0]["details"]["last_missing"]) == (6, 7)
    assert gaps[0]["details"]["source_id"] == "ehr-main"
    assert decode_signed_event(records[5])[2].seq == 6
