"""Bitemporal audit decisions on the real stack (ADR 0008): reference data and an access
go through Kafka and the real processor into signed chains, ``careledger audit`` decides
the range; then a back-dated care relationship that would explain the flagged access is
chained. Replaying the range decides exactly as before (each decision keeps the
reference knowledge it had); ``--reconsider`` decides with what is known now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger.storage.kinds import reference_topics
from careledger.storage.store import ChainStore
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)
from tests.integration.test_auditor import (
    T_DIRECTORY,
    access,
    audit,
    envelope,
    patient,
    produce,
    staff,
)
from tests.integration.test_auditor import at as t0_plus
from verifiers.auditor.runner import DECISION_COLUMNS

pytestmark = pytest.mark.integration

#: every decision column but the time the row was written
COMPARED = [c for c in DECISION_COLUMNS if c != "decided_at"]


def send(settings: Settings, setting: str, items: list[tuple[bytes, bytes]]) -> None:
    with AccessEventProducer(settings, topic=getattr(settings, setting)) as producer:
        for key, value in items:
            producer.send_raw(value, key=key)
        assert producer.flush().ok


def committed_references(store: ChainStore) -> int:
    rows = store.backend.execute(
        f"SELECT count() FROM {store.db}.reference_records WHERE (chain_id, height, block_hash) "
        f"IN (SELECT chain_id, height, block_hash FROM {store.db}.blocks) "
        "AND kind NOT IN ('source-key', 'source-heartbeat')"  # the test pipeline's own source
    )
    return int(rows[0][0])


def newest_reference_block_time(store: ChainStore, settings: Settings) -> str:
    """The signed created_at of the newest reference block: what is known now."""
    rows = store.backend.execute(
        f"SELECT chain_id, created_at FROM {store.db}.blocks WHERE event_count > 0"
    )
    topics = reference_topics(settings) - {settings.topic_sources}
    times = [r[1].decode() for r in rows if r[0].decode().rsplit("/", 2)[1] in topics]
    return max(times)


def decisions(store: ChainStore) -> list[dict[str, Any]]:
    rows = store.backend.execute(
        f"SELECT {', '.join(COMPARED)} FROM {store.db}.access_decisions "
        "ORDER BY occurred_at, event_id, amends"
    )
    return [dict(zip(COMPARED, r, strict=True)) for r in rows]


def alerts(store: ChainStore) -> list[tuple[Any, ...]]:
    return store.backend.execute(
        f"SELECT alert_id, rule, event_ids, evidence FROM {store.db}.alerts FINAL ORDER BY alert_id"
    )


def test_a_replay_keeps_the_decision_after_a_back_dated_relationship_and_reconsider_uses_it(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path)).replace(
        audit_salt="bitemporal-test-salt"
    )
    proc = start_processor(settings, tmp_path / "processor.log")
    store = store_for(settings)
    try:
        send(settings, "topic_workforce", [staff("E1", "Okafor", "CARD")])
        send(settings, "topic_patients", [patient("PAT-SNOOPED", "Nguyen")])
        wait_until(lambda: committed_references(store) >= 2, 90, what="reference data chained")
        snoop = access("E1", "PAT-SNOOPED", t0_plus(60))
        treated = access("E1", "PAT-SNOOPED", t0_plus(3600))  # an hour later, same actor
        produce(settings, [snoop, treated])
        wait_until(lambda: committed_event_count(store) >= 2, 90, what="events chained")

        first = audit(settings)
        assert first["decisions"] == 2 and first["alerts"] >= 1
        known_then = newest_reference_block_time(store, settings)
        assert first["reference_known_at"] == known_then
        rows = decisions(store)
        assert [r["event_id"].decode() for r in rows] == [snoop.event_id, treated.event_id]
        assert {r["reference_known_at"].decode() for r in rows} == {known_then}
        assert all(b"NO_EXPLANATION" in r["flags"] for r in rows)
        flagged_alerts = alerts(store)

        # the care relationship arrives afterwards, back-dated: effective before the
        # accesses and its envelope even claims it was recorded then
        late = envelope(
            "care-relationship",
            "ENC-LATE",
            {
                "patient_id": "PAT-SNOOPED",
                "kind": "encounter",
                "practitioner_id": "E1",
                "department": "CARD",
                "start": "2026-11-01T08:00:00.000000Z",
                "end": "2026-11-05T08:00:00.000000Z",
            },
        )
        assert json.loads(late[1])["recorded_at"] == T_DIRECTORY < snoop.occurred_at
        send(settings, "topic_care_relationships", [late])
        wait_until(lambda: committed_references(store) >= 3, 90, what="relationship chained")
        known_now = newest_reference_block_time(store, settings)
        assert known_now > known_then

        # replay: the same decisions, the same alerts, nothing published again
        replay = audit(settings)
        assert decisions(store) == rows
        assert alerts(store) == flagged_alerts
        assert replay["alerts_published"] == 0
        assert replay["decisions_with_stored_knowledge"] == 2
        assert replay["reference_known_at"] == known_now

        # reconsider: decided with what is known now, the accesses are explained
        reconsidered = audit(settings, "--reconsider")
        assert reconsidered["reconsider"] is True
        assert reconsidered["decisions_with_stored_knowledge"] == 0
        now_rows = decisions(store)
        for row in now_rows:
            assert row["explanation_kind"] == b"relationship"
            assert json.loads(row["explanation"])["record_id"] == "ENC-LATE"
            assert row["flags"] == b"[]"
            assert row["reference_known_at"].decode() == known_now
        assert alerts(store) == []
        # a replay after that keeps the reconsidered decisions
        audit(settings)
        assert decisions(store) == now_rows

        # the option re-decides a range: it does not combine with --follow
        refused = run_cli(settings, "audit", "--follow", "--reconsider", "--max-cycles", "1")
        assert refused.returncode == 2 and "--reconsider" in refused.stderr
    finally:
        stop(proc)
