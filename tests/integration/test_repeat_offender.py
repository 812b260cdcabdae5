"""REPEAT_OFFENDER end to end, through the alert workflow, on the real stack.

An actor snoops; ``careledger audit --follow`` alerts; a privacy officer confirms the
alert with ``careledger alerts resolve`` while the follower keeps running; the actor
snoops again; the new access is flagged REPEAT_OFFENDER with the confirmed count and
weighs more, on the alerts topic and in ClickHouse. Another actor whose alert was
resolved as a false positive gets nothing more. A range replay decides the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
from careledger.storage.store import ChainStore
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
from verifiers.auditor.alerts_cli import status_event_id

pytestmark = pytest.mark.integration

T_DIRECTORY = "2026-01-01T00:00:00.000000Z"
SNOOPER, OTHER, OFFICER = "E1", "E5", "privacy-officer"
# day 1: the snooper twice (two alerts: more than the grouping hour apart), the other
# actor once; day 2, after the review: both snoop again
DAY1_FIRST = "2026-11-02T09:01:00.000000Z"
DAY1_OTHER = "2026-11-02T09:05:00.000000Z"
DAY1_SECOND = "2026-11-02T11:01:00.000000Z"
DAY2 = "2026-11-03T10:00:00.000000Z"
DAY2_OTHER = "2026-11-03T10:02:00.000000Z"


def _reference(kind: str, record_id: str, body: dict[str, Any]) -> tuple[bytes, bytes]:
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


def _staff(user_id: str, family: str, department: str) -> tuple[bytes, bytes]:
    body = {
        "user_id": user_id,
        "family_name": family,
        "given_name": "Alex",
        "roles": ["nurse"],
        "department": department,
        "status": "active",
        "start_date": "2020-01-01",
    }
    return _reference("staff", user_id, body)


def _patient(patient_id: str, family: str) -> tuple[bytes, bytes]:
    body = {"patient_id": patient_id, "family_name": family, "given_name": "Sam", "vip": False}
    return _reference("patient", patient_id, body)


def _reference_data() -> dict[str, list[tuple[bytes, bytes]]]:
    """Two nurses with no care relationship to anyone, and the privacy officer (in the
    directory: the review is itself ledgered and audited)."""
    return {
        "topic_workforce": [
            _staff(SNOOPER, "Okafor", "CARD"),
            _staff(OTHER, "Lindqvist", "CARD"),
            _staff(OFFICER, "Brandt", "PRIVACY"),
        ],
        "topic_patients": [
            _patient(f"PAT-{n}", family)
            for n, family in enumerate(("Silva", "Nguyen", "Moreau", "Achebe", "Kowalski"))
        ],
    }


def _access(actor: str, patient_id: str, when: str) -> AccessEvent:
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


def _produce(settings: Settings, events: list[AccessEvent]) -> None:
    with AccessEventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        assert producer.flush().ok


class _AlertsTopic:
    """Everything on the alerts topic so far, by alert id (latest document wins)."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = Consumer(
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
        self._consumer.subscribe([settings.topic_alerts])
        self.docs: dict[str, dict[str, Any]] = {}

    def poll(self) -> dict[str, dict[str, Any]]:
        while (msg := self._consumer.poll(0.2)) is not None:
            key, value = msg.key(), msg.value()
            if not msg.error() and key is not None and value is not None:
                self.docs[key.decode()] = json.loads(value)
        return self.docs

    def close(self) -> None:
        self._consumer.close()


def _alerts(store: ChainStore) -> dict[str, dict[str, Any]]:
    rows = store.backend.execute(
        "SELECT alert_id, rule, actor_id, severity, score, event_ids, evidence "
        f"FROM {store.db}.alerts FINAL"
    )
    return {
        r[0].decode(): {
            "rule": r[1].decode(),
            "actor_id": r[2].decode(),
            "severity": r[3].decode(),
            "score": float(r[4]),
            "event_ids": json.loads(r[5]),
            "evidence": json.loads(r[6]),
        }
        for r in rows
    }


def _decisions(store: ChainStore, event_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = store.backend.execute(
        "SELECT event_id, flags, severity, score, audit_run "
        f"FROM {store.db}.access_decisions WHERE event_id IN %(ids)s AND amends = 0",
        {"ids": tuple(event_ids)},
    )
    return {
        r[0].decode(): {
            "flags": {f["code"]: f for f in json.loads(r[1])},
            "severity": r[2].decode(),
            "score": float(r[3]),
            "audit_run": r[4].decode(),
        }
        for r in rows
    }


def _alert_of(alerts: dict[str, dict[str, Any]], rule: str, event: AccessEvent) -> str:
    hits = [k for k, a in alerts.items() if a["rule"] == rule and event.event_id in a["event_ids"]]
    assert len(hits) == 1, (rule, event.event_id, alerts)
    return hits[0]


def test_a_violation_confirmed_in_the_alert_workflow_makes_the_actors_next_snoop_a_repeat_offence(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path)).replace(
        audit_salt="repeat-offender-salt",
        audit_poll_interval_s=0.3,
        topic_alert_status=f"{isolated.topic_alerts}-status",
    )
    proc = start_processor(settings, tmp_path / "processor.log")
    follower: subprocess.Popen[bytes] | None = None
    topic = _AlertsTopic(settings)
    try:
        store = store_for(settings)
        refs = _reference_data()
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
        # the directory is committed before any access: every poll that reads an access
        # has applied it first
        follower = subprocess.Popen(
            [sys.executable, "-m", "commands.cli", "audit", "--follow", "--stop-after", "400"],
            cwd=REPO,
            env=cli_env(settings),
            stdout=open(tmp_path / "audit.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _scenario(settings, store, topic, follower)
    finally:
        topic.close()
        if follower is not None:
            stop(follower)
        stop(proc)
        delete_topics(settings, [settings.topic_alert_status])


def _scenario(
    settings: Settings,
    store: ChainStore,
    topic: _AlertsTopic,
    follower: subprocess.Popen[bytes],
) -> None:
    # 1. day 1: the snooper opens two charts nothing explains, the other actor one
    first = _access(SNOOPER, "PAT-0", DAY1_FIRST)
    other = _access(OTHER, "PAT-1", DAY1_OTHER)
    second = _access(SNOOPER, "PAT-2", DAY1_SECOND)
    _produce(settings, [first, other, second])
    wait_until(lambda: committed_event_count(store) >= 3, 90, what="day 1 chained")

    def alerted() -> set[str]:
        return {eid for a in _alerts(store).values() for eid in a["event_ids"]}

    day1_events = {first.event_id, other.event_id, second.event_id}
    wait_until(lambda: day1_events <= alerted(), 60, what="day 1 alerted")
    day1 = _alerts(store)
    assert {a["rule"] for a in day1.values()} == {"NO_EXPLANATION"}, day1
    confirmed = [_alert_of(day1, "NO_EXPLANATION", e) for e in (first, second)]
    assert confirmed[0] != confirmed[1], "two hours apart: two alerts"
    false_positive = _alert_of(day1, "NO_EXPLANATION", other)
    for aid in day1:
        assert day1[aid]["severity"] == "medium" and day1[aid]["score"] == 3.0
    wait_until(lambda: set(day1) <= set(topic.poll()), 30, what="day 1 alerts on the topic")
    assert not any(d["rule"] == "REPEAT_OFFENDER" for d in topic.docs.values())

    # 2. the privacy officer reviews while the follower runs: the snooper's two alerts
    # are confirmed (one acknowledged first), the other actor's is a false positive
    def cli(*args: str) -> None:
        out = run_cli(settings, "alerts", *args)
        assert out.returncode == 0, out.stdout + out.stderr

    cli("ack", confirmed[0], "--by", OFFICER, "--note", "asking the ward manager")
    cli("resolve", confirmed[0], "--by", OFFICER, "--note", "confirmed: no care role")
    cli("resolve", confirmed[1], "--by", OFFICER, "--note", "confirmed: curiosity")
    cli(
        "resolve",
        false_positive,
        "--by",
        OFFICER,
        "--note",
        "covering a colleague's patients",
        "--false-positive",
    )
    listed = run_cli(settings, "alerts", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    status = {a["alert_id"]: a["status"] for a in json.loads(listed.stdout)}
    assert status == {
        confirmed[0]: "resolved",
        confirmed[1]: "resolved",
        false_positive: "false-positive",
    }
    # the four changes are ledgered as accesses by the officer; once the follower has
    # decided them it has polled after the review (it reads the review every poll)
    history = store.backend.execute(f"SELECT entry_hash FROM {store.db}.alert_status")
    review_events = [status_event_id(r[0].decode()) for r in history]
    assert len(review_events) == 4
    wait_until(
        lambda: len(_decisions(store, review_events)) == 4, 90, what="review ledgered and audited"
    )
    assert all(not d["flags"] for d in _decisions(store, review_events).values())

    # 3. day 2: both snoop again
    again = _access(SNOOPER, "PAT-3", DAY2)
    other_again = _access(OTHER, "PAT-4", DAY2_OTHER)
    _produce(settings, [again, other_again])
    day2_ids = [again.event_id, other_again.event_id]
    wait_until(lambda: len(_decisions(store, day2_ids)) == 2, 90, what="day 2 decided")

    def repeat_published() -> bool:
        docs = topic.poll().values()
        return any(d["rule"] == "REPEAT_OFFENDER" for d in docs) and any(
            other_again.event_id in d["event_ids"] for d in docs
        )

    wait_until(repeat_published, 30, what="REPEAT_OFFENDER on the alerts topic")
    follow_decisions = _decisions(store, day2_ids)
    _assert_day2(store, topic.poll(), follow_decisions, again, other_again)

    # a range replay of day 2 reads the review from the store and decides the same
    stop(follower)
    replay = run_cli(
        settings, "audit", "--from", "2026-11-03", "--to", "2026-11-04", "--json", timeout=120
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    summary = json.loads(replay.stdout.strip().splitlines()[-1])
    assert summary["alerts_by_rule"] == {"NO_EXPLANATION": 2, "REPEAT_OFFENDER": 1}
    replayed = _decisions(store, day2_ids)
    assert {k: {**v, "audit_run": ""} for k, v in replayed.items()} == {
        k: {**v, "audit_run": ""} for k, v in follow_decisions.items()
    }
    assert {d["audit_run"] for d in replayed.values()} == {
        "range:2026-11-03T00:00:00.000000Z..2026-11-04T00:00:00.000000Z"
    }
    _assert_day2(store, topic.poll(), replayed, again, other_again)
    # the review is kept: the confirmed alerts stay resolved, the new ones are open
    listed = run_cli(settings, "alerts", "list", "--json", "--rule", "REPEAT_OFFENDER")
    assert listed.returncode == 0, listed.stderr
    assert [(a["actor_id"], a["status"]) for a in json.loads(listed.stdout)] == [(SNOOPER, "open")]


def _assert_day2(
    store: ChainStore,
    published: dict[str, dict[str, Any]],
    decisions: dict[str, dict[str, Any]],
    again: AccessEvent,
    other_again: AccessEvent,
) -> None:
    # the snooper's access: REPEAT_OFFENDER counts both confirmed violations, raises the
    # severity one level above the access's worst flag and doubles the weight
    d = decisions[again.event_id]
    assert set(d["flags"]) == {"NO_EXPLANATION", "REPEAT_OFFENDER"}
    repeat = d["flags"]["REPEAT_OFFENDER"]
    assert repeat["evidence"] == {"confirmed_violations": 2, "multiplier": 2.0}
    assert d["flags"]["NO_EXPLANATION"]["severity"] == "medium"
    assert repeat["severity"] == "high" and d["severity"] == "high"
    assert d["score"] == (3 + 6) * 2.0
    # the other actor's false positive does not count: the same access as on day 1
    o = decisions[other_again.event_id]
    assert set(o["flags"]) == {"NO_EXPLANATION"}
    assert o["severity"] == "medium" and o["score"] == 3.0

    alerts = _alerts(store)
    repeat_alert = _alert_of(alerts, "REPEAT_OFFENDER", again)
    a = alerts[repeat_alert]
    assert a["actor_id"] == SNOOPER and a["severity"] == "high" and a["score"] == 12.0
    assert a["evidence"]["samples"][0]["confirmed_violations"] == 2
    assert a["evidence"]["samples"][0]["multiplier"] == 2.0
    weighted = alerts[_alert_of(alerts, "NO_EXPLANATION", again)]
    assert weighted["severity"] == "medium" and weighted["score"] == 6.0, "weighed double"
    plain = alerts[_alert_of(alerts, "NO_EXPLANATION", other_again)]
    assert plain["severity"] == "medium" and plain["score"] == 3.0
    assert [x["actor_id"] for x in alerts.values() if x["rule"] == "REPEAT_OFFENDER"] == [SNOOPER]

    # the same on the topic the security team follows
    doc = published[repeat_alert]
    assert doc["rule"] == "REPEAT_OFFENDER" and doc["actor_id"] == SNOOPER
    assert doc["severity"] == "high" and doc["score"] == 12.0
    assert doc["event_ids"] == [again.event_id]
    assert doc["evidence"]["samples"][0]["confirmed_violations"] == 2
    assert [x["actor_id"] for x in published.values() if x["rule"] == "REPEAT_OFFENDER"] == [
        SNOOPER
    ]
    assert "PAT-" not in json.dumps(published)
