"""Time the signer cannot choose (ADR 0015), on the real stack: Kafka, the processor
process, ClickHouse and ``careledger verify``.

Before ADR 0015 a source key's status was decided at the batch's ``signed_at``, and the
±900 s skew was checked against the record's Kafka CreateTime, which the producer sets
too: whoever held a revoked key could backdate both and have events chained, and
``verify`` stayed silent. Now the events topic is stamped by the broker (LogAppendTime),
the processor judges keys at that time, and block headers sign it for ``verify``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from careledger import stack
from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.keys import load_signing_key, write_keypair
from careledger.sources import publish_key_event, register_key
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey
from careledger_core.source import (
    KeyEventStatement,
    encode_signed_event,
    sign_batch,
    statement_bytes,
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

pytestmark = pytest.mark.integration


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _events(count: int, seed: int) -> list[AccessEvent]:
    return list(simulate(HospitalModel(staff=40, patients=150, seed=seed), count, seed=seed))


def _signed(
    key: SigningKey,
    source_id: str,
    events: list[AccessEvent],
    signed_at: float,
    epoch: str,
    first_seq: int = 1,
) -> list[bytes]:
    canon = [canonical_event_bytes(e) for e in events]
    atts = sign_batch(
        key,
        source_id=source_id,
        epoch=epoch,
        first_seq=first_seq,
        event_leaf_hashes=[leaf_hash(c) for c in canon],
        signed_at=_iso(signed_at),
    )
    return [encode_signed_event(c, a) for c, a in zip(canon, atts, strict=True)]


def _produce(settings: Settings, values: list[bytes], create_time: float | None = None) -> None:
    """Produce as an attacker would: raw bytes, the Kafka timestamp set by the producer."""
    producer = Producer(kafka_config(settings, ADMIN, {"acks": "all"}))
    for v in values:
        kwargs: dict[str, Any] = {}
        if create_time is not None:
            kwargs["timestamp"] = int(create_time * 1000)
        producer.produce(settings.topic_events, value=v, key=b"k", **kwargs)
    assert producer.flush(30) == 0


def _read(settings: Settings, topic: str, expect: int, timeout: float = 60.0) -> list[Any]:
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
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            out.append(m)
    consumer.close()
    return out


def _codes(messages: list[Any]) -> list[str]:
    return sorted(dict(m.headers())["careledger-error-code"].decode() for m in messages)


def _set_timestamp_type(settings: Settings, value: str) -> None:
    admin = AdminClient(kafka_config(settings, ADMIN))
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        settings.topic_events,
        incremental_configs=[
            ConfigEntry(
                "message.timestamp.type", value, incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result()


def _timestamp_type(settings: Settings) -> str:
    admin = AdminClient(kafka_config(settings, ADMIN))
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topic_events)
    return str(
        admin.describe_configs([resource])[resource].result()["message.timestamp.type"].value
    )


def _revoked_source(settings: Settings, tmp_path: Path, revoked_at: float) -> SigningKey:
    """``lab-old``: registered long ago, revoked at ``revoked_at`` (ledgered)."""
    registrar = load_signing_key(settings.registrar_key, env={})
    retired = write_keypair(tmp_path / "keys" / "lab-old.key")
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
            valid_from=_iso(revoked_at),
            registrar_key_id=registrar.key_id,
        ),
        principal=ADMIN,
    )
    return retired


def _settings(isolated: Settings, tmp_path: Path) -> Settings:
    s = with_source(with_keys(isolated, tmp_path), tmp_path, source_id="ehr-main")
    return processor_settings(s, require_source_signatures=True)


def test_a_revoked_source_key_backdating_signed_at_and_create_time_is_quarantined(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _settings(isolated, tmp_path)
    assert _timestamp_type(settings) == "LogAppendTime", "the stack creates it so"
    now = time.time()
    retired = _revoked_source(settings, tmp_path, revoked_at=now - 300)
    events = _events(9, seed=51)
    ehr = load_signing_key(settings.source_key, env={})
    genuine = _signed(ehr, "ehr-main", events[:5], now, "00000000000000a1")
    # before the revocation, within the skew: judged at signed_at this was chained
    within = _signed(retired, "lab-old", events[5:7], now - 360, "00000000000000b1")
    # two hours back, CreateTime two hours back too: the old skew check passed
    beyond = _signed(retired, "lab-old", events[7:9], now - 7200, "00000000000000b2")
    _produce(settings, genuine)
    _produce(settings, within, create_time=now - 360)
    _produce(settings, beyond, create_time=now - 7200)
    # the broker stamped them all with its own clock
    stamped = _read(settings, settings.topic_events, expect=9)
    assert {m.timestamp()[0] for m in stamped} == {TIMESTAMP_LOG_APPEND_TIME}
    assert min(m.timestamp()[1] for m in stamped) >= (now - 60) * 1000

    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= 5, 120, what="genuine chained")
        quarantined = _read(settings, settings.topic_quarantine, expect=4)
    finally:
        stop(proc)
    assert _codes(quarantined) == ["REVOKED_KEY"] * 2 + ["SIGNED_AT_SKEW"] * 2
    assert {m.value() for m in quarantined} == {*within, *beyond}, "original bytes kept"
    alerts = [json.loads(m.value()) for m in _read(settings, settings.topic_alerts, expect=2)]
    rules = {a["rule"]: a for a in alerts if a.get("source") == "processor"}
    assert {"SOURCE_REVOKED_KEY", "SOURCE_SIGNED_AT_SKEW"} <= set(rules)
    assert rules["SOURCE_REVOKED_KEY"]["evidence"]["claimed_key_id"] == retired.key_id
    assert committed_event_count(store) == 5

    # the headers sign the broker times the keys were judged at
    headers = store.backend.execute(
        f"SELECT header FROM {store.db}.blocks WHERE event_count > 0 AND chain_id LIKE %(c)s",
        {"c": f"%/{settings.topic_events}/%"},
    )
    assert headers and all(b"first_append_time" in h for (h,) in headers)

    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert json.loads(result.stdout)["sources"]["signed_events"] == 5

    # --- the store-side variant: the attacker also writes to ClickHouse and swaps a
    # chained event's attestation for one its revoked key signed, backdated
    chain, height, idx, leaf = store.backend.execute(
        f"SELECT chain_id, height, idx, leaf_hash FROM {store.db}.access_events "
        "ORDER BY height, idx LIMIT 1"
    )[0]
    [att] = sign_batch(
        retired,
        source_id="lab-old",
        epoch="00000000000000b3",
        first_seq=1,
        event_leaf_hashes=[bytes.fromhex(leaf.decode())],
        signed_at=_iso(now - 360),
    )
    store.backend.execute(
        f"ALTER TABLE {store.db}.source_attestations UPDATE source_id = 'lab-old', "
        "key_id = %(k)s, epoch = '00000000000000b3', seq = 1, statement = %(st)s, "
        "signature = %(sig)s, batch_index = 0, proof = '' "
        "WHERE chain_id = %(c)s AND height = %(h)s AND idx = %(i)s",
        {
            "k": retired.key_id,
            "st": statement_bytes(att.statement).decode(),
            "sig": att.signature,
            "c": chain,
            "h": height,
            "i": idx,
        },
    )
    wait_until(
        lambda: (
            not store.backend.execute(
                "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
                {"db": store.db},
            )[0][0]
        ),
        60,
        what="the tamper",
    )
    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    found = [f for f in json.loads(result.stdout)["findings"] if f["code"] == "SOURCE_KEY_REVOKED"]
    assert [(f["chain_id"], f["height"], f["event_index"]) for f in found] == [
        (chain.decode(), height, idx)
    ]


def test_the_processor_refuses_an_events_topic_stamped_by_producers_and_up_fixes_it(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _settings(isolated, tmp_path)
    _set_timestamp_type(settings, "CreateTime")
    result = run_cli(settings, "process")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "message.timestamp.type=CreateTime" in line
    assert "careledger up" in line and "message.timestamp.type=LogAppendTime" in line
    # what `careledger up` does to the existing topics
    stack.ensure_topics(settings, stack.default_topics(settings))
    assert _timestamp_type(settings) == "LogAppendTime"


def test_records_stamped_by_their_producer_are_quarantined_as_untrusted_time(
    isolated: Settings, tmp_path: Path
) -> None:
    """The topic is switched to CreateTime while the processor runs (an administrator, or
    an attacker with admin rights on Kafka): what is appended then is not trusted."""
    settings = _settings(isolated, tmp_path)
    ehr = load_signing_key(settings.source_key, env={})
    events = _events(4, seed=52)
    now = time.time()
    _produce(settings, _signed(ehr, "ehr-main", events[:2], now, "00000000000000c1"))
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= 2, 120, what="genuine chained")
        _set_timestamp_type(settings, "CreateTime")
        wait_until(lambda: _timestamp_type(settings) == "CreateTime", 30, what="CreateTime")
        stamped = _signed(ehr, "ehr-main", events[2:], now, "00000000000000c1", first_seq=3)
        _produce(settings, stamped, create_time=now)
        quarantined = _read(settings, settings.topic_quarantine, expect=2)
    finally:
        stop(proc)
        _set_timestamp_type(settings, "LogAppendTime")
    assert _codes(quarantined) == ["UNTRUSTED_TIME"] * 2
    assert committed_event_count(store) == 2
    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
