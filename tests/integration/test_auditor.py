"""The access auditor on the real stack: reference data and access events go through
Kafka and the real processor into signed chains; ``careledger audit`` decides them,
stores decisions and alerts in ClickHouse and publishes alerts to Kafka;
``careledger alerts`` reviews them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import ADMIN
from careledger.stack import delete_topics
from careledger.stack.acls import ensure_acls
from careledger_core.event import AccessEvent, event_from_dict
from careledger_core.reference import (
    REFERENCE_SCHEMA,
    canonical_reference_bytes,
    reference_from_dict,
)
from tests.integration.pipeline import (
    NOT_SOURCE_KINDS,
    REPO,
    cli_env,
    committed_event_count,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)
from verifiers.auditor._time import US_PER_SECOND, ts_to_us, us_to_ts

pytestmark = pytest.mark.integration

T_DIRECTORY = "2026-01-01T00:00:00.000000Z"
T0 = "2026-11-02T09:00:00.000000Z"  # a Monday
FROM, TO = "2026-11-02T08:00:00", "2026-11-02T12:00:00"
HOME = {"line": "4 Orchard Row", "city": "Northbridge", "postcode": "NB2 7QT"}
BURST = 100


def at(seconds: float) -> str:
    return us_to_ts(ts_to_us(T0) + int(seconds * US_PER_SECOND))


def envelope(kind: str, record_id: str, body: dict[str, Any]) -> tuple[bytes, bytes]:
    rec = reference_from_dict(
        {
            "schema": REFERENCE_SCHEMA,
            "kind": kind,
            "record_id": record_id,
            "version": 1,
            "recorded_at": T_DIRECTORY,
            "effective_at": T_DIRECTORY,
            "body": body,
        }
    )
    return record_id.encode(), canonical_reference_bytes(rec)


def staff(user_id: str, family: str, department: str, **extra: Any) -> tuple[bytes, bytes]:
    body = {
        "user_id": user_id,
        "family_name": family,
        "given_name": "Alex",
        "roles": ["nurse"],
        "department": department,
        "status": "active",
        "start_date": "2020-01-01",
        **extra,
    }
    return envelope("staff", user_id, body)


def patient(patient_id: str, family: str, **extra: Any) -> tuple[bytes, bytes]:
    body = {"patient_id": patient_id, "family_name": family, "given_name": "Sam", "vip": False}
    return envelope("patient", patient_id, {**body, **extra})


def access(actor: str, patient_id: str, when: str) -> AccessEvent:
    return event_from_dict(
        {
            "schema": "careledger.access-event/1",
            "event_id": str(uuid.uuid4()),
            "occurred_at": when,
            "recorded_at": when,
            "event_type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest",
            },
            "action": "R",
            "outcome": 0,
            "purpose_of_use": ["TREAT"],
            "actor": {"id": actor, "roles": ["nurse"], "is_requestor": True},
            "source": {"system": "ehr", "type": 4},
            "patient": {"id": patient_id},
        }
    )


def reference_data() -> dict[str, list[tuple[bytes, bytes]]]:
    """E1 treats PAT-EXPLAINED; E2 was terminated; E3 shares a home with PAT-FAMILY;
    E4 is a researcher who opens a hundred charts."""
    return {
        "topic_workforce": [
            staff("E1", "Okafor", "CARD"),
            staff("E2", "Haddad", "CARD", status="terminated", end_date="2026-06-30"),
            staff("E3", "Marsh", "RAD", address=HOME),
            staff("E4", "Larsen", "RES"),
        ],
        "topic_patients": [
            patient("PAT-EXPLAINED", "Silva"),
            patient("PAT-SNOOPED", "Nguyen"),
            patient("PAT-FAMILY", "Marsh", address=HOME),
        ],
        "topic_care_relationships": [
            envelope(
                "care-relationship",
                "ENC-1",
                {
                    "patient_id": "PAT-EXPLAINED",
                    "kind": "encounter",
                    "practitioner_id": "E1",
                    "department": "CARD",
                    "start": "2026-11-01T08:00:00.000000Z",
                    "end": "2026-11-05T08:00:00.000000Z",
                },
            )
        ],
    }


def scenario() -> dict[str, list[AccessEvent]]:
    return {
        "explained": [access("E1", "PAT-EXPLAINED", at(0))],
        "snooping": [access("E1", "PAT-SNOOPED", at(60))],
        "terminated": [access("E2", "PAT-SNOOPED", at(120))],
        "family": [access("E3", "PAT-FAMILY", at(180))],
        "burst": [access("E4", f"PAT-B{i:03d}", at(600 + 2 * i)) for i in range(BURST)],
    }


def audit(settings: Settings, *extra: str) -> dict[str, Any]:
    result = run_cli(settings, "audit", "--from", FROM, "--to", TO, "--json", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def read_topic(settings: Settings, topic: str, want: int, timeout: float = 30.0) -> list[Any]:
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"test-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < want:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.key().decode(), json.loads(msg.value())))
    finally:
        consumer.close()
    return out


def produce(settings: Settings, events: list[AccessEvent]) -> None:
    with AccessEventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        assert producer.flush().ok


def test_audit_stores_explanations_and_alerts_replays_identically_and_alerts_are_reviewed(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path)).replace(
        audit_salt="integration-test-salt", topic_alert_status=f"{isolated.topic_alerts}-status"
    )
    ensure_acls(settings)  # the renamed status topic's ACLs (on a SASL_SSL broker)
    try:
        _review_scenario(settings, tmp_path)
    finally:
        delete_topics(settings, [settings.topic_alert_status])


def _review_scenario(settings: Settings, tmp_path: Path) -> None:
    refs = reference_data()
    cases = scenario()
    events = [e for group in cases.values() for e in group]
    proc = start_processor(settings, tmp_path / "processor.log")
    store = store_for(settings)
    try:
        for setting, items in refs.items():
            with AccessEventProducer(settings, topic=getattr(settings, setting)) as producer:
                for key, value in items:
                    producer.send_raw(value, key=key)
                producer.flush()
        n_refs = sum(len(v) for v in refs.values())

        def references() -> int:
            rows = store.backend.execute(
                f"SELECT count() FROM {store.db}.reference_records WHERE (chain_id, height) "
                f"IN (SELECT chain_id, height FROM {store.db}.blocks){NOT_SOURCE_KINDS}"
            )
            return int(rows[0][0])

        wait_until(lambda: references() >= n_refs, 90, what="reference data chained")
        produce(settings, events)
        wait_until(lambda: committed_event_count(store) >= len(events), 90, what="events chained")
        # the processor keeps running: status changes are chained too
        _audit_and_review(settings, store, cases, events)
    finally:
        stop(proc)


def _audit_and_review(
    settings: Settings, store: Any, cases: dict[str, list[AccessEvent]], events: list[AccessEvent]
) -> None:
    first = audit(settings)
    assert first["decisions"] == len(events)
    db = store.db

    def decisions() -> list[tuple[Any, ...]]:
        return store.backend.execute(
            "SELECT event_id, chain_id, height, idx, occurred_at, actor_id, patient_ref, "
            "amends, explanation_kind, explanation, searched, flags, severity, score, audit_run "
            f"FROM {db}.access_decisions ORDER BY occurred_at, event_id, amends"
        )

    rows = decisions()
    assert len(rows) == len(events)
    by_event = {r[0].decode(): r for r in rows}

    # explained: the explanation is stored and nothing is alerted
    explained = by_event[cases["explained"][0].event_id]
    assert explained[8] == b"relationship"
    assert json.loads(explained[9])["record_id"] == "ENC-1"
    assert explained[11] == b"[]"

    alerts = {
        r[0].decode(): (r[1].decode(), r[2].decode(), json.loads(r[3]), r[4].decode())
        for r in store.backend.execute(
            f"SELECT alert_id, rule, actor_id, event_ids, patient_ref FROM {db}.alerts FINAL"
        )
    }
    assert all(cases["explained"][0].event_id not in ids for _r, _a, ids, _p in alerts.values())

    def alert_for(rule: str, event: AccessEvent) -> str:
        hits = [k for k, (r, _a, ids, _p) in alerts.items() if r == rule and event.event_id in ids]
        assert len(hits) == 1, (rule, alerts)
        return hits[0]

    snoop_alert = alert_for("NO_EXPLANATION", cases["snooping"][0])
    terminated_alert = alert_for("INACTIVE_USER", cases["terminated"][0])
    family_alert = alert_for("FAMILY", cases["family"][0])
    burst_alerts = [
        (k, ids) for k, (r, a, ids, _p) in alerts.items() if r == "NO_EXPLANATION" and a == "E4"
    ]
    assert len(burst_alerts) == 1, "a burst is one alert"
    assert set(burst_alerts[0][1]) == {e.event_id for e in cases["burst"]}
    assert len(burst_alerts[0][1]) == BURST
    assert all(not p.startswith("PAT-") for *_x, p in alerts.values())

    # the same alerts went to the alerts topic, keyed by alert id
    published = dict(read_topic(settings, settings.topic_alerts, len(alerts)))
    assert set(published) == set(alerts)
    assert published[family_alert]["rule"] == "FAMILY"
    assert published[terminated_alert]["severity"] == "critical"
    assert "PAT-" not in json.dumps(published)
    tail = run_cli(
        settings,
        "alerts",
        "tail",
        "--from-beginning",
        "--json",
        "--max-messages",
        str(len(alerts)),
        "--timeout",
        "60",
    )
    assert tail.returncode == 0, tail.stderr
    assert {json.loads(line)["alert_id"] for line in tail.stdout.splitlines()} == set(alerts)
    human_tail = run_cli(
        settings, "alerts", "tail", "--from-beginning", "--max-messages", "1", "--timeout", "60"
    )
    assert "NO_EXPLANATION" in human_tail.stdout or "actor=" in human_tail.stdout
    assert "PAT-" not in human_tail.stdout

    # replaying the range gives the same decisions (but decided_at) and publishes nothing new
    second = audit(settings)
    assert second["alerts"] == first["alerts"] and second["alerts_published"] == 0
    forced = audit(settings, "--republish")
    assert forced["alerts_published"] == len(alerts)
    assert decisions() == rows
    again = {
        r[0].decode() for r in store.backend.execute(f"SELECT alert_id FROM {db}.alerts FINAL")
    }
    assert again == set(alerts)

    # review: acknowledge one, resolve another as a false positive
    ack = run_cli(settings, "alerts", "ack", snoop_alert, "--by", "privacy-officer")
    assert ack.returncode == 0, ack.stdout + ack.stderr
    fp = run_cli(
        settings,
        "alerts",
        "resolve",
        family_alert,
        "--by",
        "privacy-officer",
        "--note",
        "spouse is the patient's nurse by consent",
        "--false-positive",
    )
    assert fp.returncode == 0, fp.stdout + fp.stderr
    again_ack = run_cli(settings, "alerts", "ack", family_alert, "--by", "x")
    assert again_ack.returncode == 1, "a resolved alert cannot be acknowledged"

    def listed(*filters: str) -> set[str]:
        out = run_cli(settings, "alerts", "list", "--json", *filters)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "PAT-" not in out.stdout
        return {a["alert_id"] for a in json.loads(out.stdout)}

    assert listed("--status", "acknowledged") == {snoop_alert}
    assert listed("--status", "false-positive") == {family_alert}
    assert snoop_alert not in listed("--status", "open")
    assert terminated_alert in listed("--status", "open")
    assert listed("--rule", "INACTIVE_USER") == {terminated_alert}
    assert listed("--actor", "E4", "--rule", "NO_EXPLANATION") == {burst_alerts[0][0]}
    assert listed("--severity", "critical") >= {terminated_alert}
    family_ref = alerts[family_alert][3]
    assert family_alert in listed("--patient-ref", family_ref)

    def shown() -> dict[str, Any]:
        out = run_cli(settings, "alerts", "show", family_alert, "--json")
        assert out.returncode == 0, out.stderr
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    doc = shown()
    assert doc["status"] == "false-positive" and doc["status_by"] == "privacy-officer"
    assert doc["status_history_intact"] is True
    # the change went through the processor into a signed chain like any access
    wait_until(lambda: shown()["status_history_ledgered"], 60, what="status change chained")
    ledgered = shown()["status_history"][0]["ledgered"]
    assert ledgered["chain_id"].startswith(settings.origin + "/" + settings.topic_events)
    human = run_cli(settings, "alerts", "list")
    assert human.returncode == 0 and "PAT-" not in human.stdout

    # status changes were published too
    changes = read_topic(settings, settings.topic_alert_status, 2)
    assert [c[1]["status"] for c in changes] == ["acknowledged", "false-positive"]

    # a confirmed violation weighs only the actor's later accesses (E2 has none): a replay
    # after the review decides the same and keeps the review
    confirmed = run_cli(
        settings, "alerts", "resolve", terminated_alert, "--by", "hr", "--note", "confirmed"
    )
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    audit(settings)
    assert decisions() == rows
    assert listed("--status", "resolved") == {terminated_alert}
    assert listed("--status", "acknowledged") == {snoop_alert}


def test_follow_alerts_within_seconds_of_the_block(isolated: Settings, tmp_path: Path) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path)).replace(
        audit_salt="integration-test-salt", audit_poll_interval_s=0.3
    )
    proc = start_processor(settings, tmp_path / "processor.log")
    follower = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "audit", "--follow", "--stop-after", "120"],
        cwd=REPO,
        env=cli_env(settings),
        stdout=open(tmp_path / "audit.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    store = store_for(settings)
    try:
        with AccessEventProducer(settings, topic=settings.topic_workforce) as producer:
            key, value = staff("E1", "Okafor", "CARD")
            producer.send_raw(value, key=key)
            producer.flush()
        wait_until(
            lambda: (
                int(
                    store.backend.execute(
                        f"SELECT count() FROM {store.db}.reference_records "
                        f"WHERE 1{NOT_SOURCE_KINDS}"
                    )[0][0]
                )
                == 1
            ),
            90,
            what="directory chained",
        )
        time.sleep(2)  # the follower has polled the directory
        snoop = access("E1", "PAT-SNOOPED", at(0))
        produce(settings, [snoop])
        wait_until(lambda: committed_event_count(store) == 1, 60, 0.05, what="event chained")
        landed = time.monotonic()
        got = read_topic(settings, settings.topic_alerts, 1, timeout=30)
        assert got and got[0][1]["rule"] == "NO_EXPLANATION"
        assert got[0][1]["event_ids"] == [snoop.event_id]
        latency = time.monotonic() - landed
        assert latency < 5, f"alert {latency:.2f}s after the block landed"
        rows = store.backend.execute(
            f"SELECT alert_id FROM {store.db}.alerts FINAL WHERE rule = 'NO_EXPLANATION'"
        )
        assert [r[0].decode() for r in rows] == [got[0][0]]
        rules = store.backend.execute(f"SELECT DISTINCT rule FROM {store.db}.alerts")
        assert [r[0] for r in rules] == [b"NO_EXPLANATION"], "E1 is known from the directory"
    finally:
        stop(follower)
        stop(proc)
