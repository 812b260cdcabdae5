"""The auditor's rows checked end to end (ADR 0016): real Kafka, the real processor,
``careledger audit --follow`` (twice: the second resumes warm), a reviewer's
``careledger alerts resolve`` ledgered through the processor, a range replay over part of
the followed period, then ``careledger verify``: intact. Then an insider deletes the
resolved alert's status row and closes another alert in the table: TAMPERED, each with
its place.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
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
from tests.integration.test_auditor import FROM, produce, reference_data, scenario
from verifiers.auditor.runner import STATUS_COLUMNS, status_entry_hash
from verifiers.auditor.runner.rows import utc_now_ts

pytestmark = pytest.mark.integration


def _cli(settings: Settings, *args: str) -> Any:
    result = run_cli(settings, *args, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _verify(settings: Settings, *extra: str) -> tuple[int, dict[str, Any], str]:
    result = run_cli(settings, "verify", "--json", "--no-record", "--audit-settle", "0", *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def test_followed_reviewed_and_replayed_rows_verify_and_tampering_is_found(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path)).replace(
        audit_salt="end-to-end-salt-of-the-tests",
        audit_poll_interval_s=0.2,
        topic_alert_status=f"{isolated.topic_alerts}-status",
    )
    store = store_for(settings)
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        for setting, items in reference_data().items():
            with AccessEventProducer(settings, topic=getattr(settings, setting)) as producer:
                for key, value in items:
                    producer.send_raw(value, key=key)
                assert producer.flush().ok
        events = [e for group in scenario().values() for e in group]
        produce(settings, events)
        wait_until(lambda: committed_event_count(store) >= len(events), 120, what="chained")

        _cli(settings, "audit", "--follow", "--max-cycles", "5", "--no-publish")
        alerts = {a["rule"] + ":" + a["actor_id"]: a for a in _alerts(settings)}
        snoop = alerts["NO_EXPLANATION:E1"]["alert_id"]
        family = alerts["FAMILY:E3"]["alert_id"]
        _cli(settings, "alerts", "resolve", snoop, "--by", "privacy-officer", "--note", "ok")
        wait_until(
            lambda: json.loads(_cli(settings, "alerts", "show", snoop, "--json").stdout)[
                "status_history_ledgered"
            ],
            60,
            what="status change chained",
        )
        # a second follower resumes warm and decides the status change's own event
        _cli(settings, "audit", "--follow", "--max-cycles", "5", "--no-publish")
        # and a range replay of the first hours replaces part of what was followed
        _cli(settings, "audit", "--from", FROM, "--to", "2026-11-02T09:05:00", "--no-publish")

        code, doc, said = _verify(settings, "--progress")
        assert code == 0, json.dumps(doc)[:3000]
        # the replays say how far they are, as the chain checks do (here: forced)
        assert re.search(r"^verify: audit runs replayed over [\d,]+ accesses", said, re.M), said
        audit = doc["audit"]
        assert audit["result"] == "intact" and audit["findings_total"] == 0
        assert audit["runs"]["follow"] == 2 and audit["runs"]["range"] == 1
        assert audit["status_changes"] == {"rows": 1, "ledgered": 1, "pending": 0}

        # an insider deletes the resolution, and closes the alert about their own access
        store.backend.execute(
            f"ALTER TABLE {store.db}.alert_status DELETE WHERE alert_id = %(a)s", {"a": snoop}
        )
        entry = {
            "alert_id": family,
            "seq": 0,
            "status": "false-positive",
            "changed_by": "E3",
            "changed_at": "2026-11-02T10:00:00.000000Z",
            "note": "",
            "prev_hash": "",
        }
        entry["entry_hash"] = status_entry_hash("", entry)
        store.backend.insert(
            f"{store.db}.alert_status", STATUS_COLUMNS, [tuple(entry[c] for c in STATUS_COLUMNS)]
        )
        wait_until(
            lambda: (
                int(
                    store.backend.execute(
                        "SELECT count() FROM system.mutations WHERE database = %(db)s "
                        "AND is_done = 0",
                        {"db": store.db},
                    )[0][0]
                )
                == 0
            ),
            60,
            what="mutation done",
        )
        code, doc, _said = _verify(settings)
        assert code == 1, json.dumps(doc)[:3000]
        assert doc["result"] == "tampered"
        by_code = {f["code"]: f for f in doc["findings"] if f["code"].startswith("ALERT_")}
        assert by_code["ALERT_STATUS_MISSING"]["details"]["alert_id"] == snoop
        assert by_code["ALERT_STATUS_MISSING"]["chain_id"].startswith(
            settings.chain_id(settings.topic_events, 0)[:-1]
        )
        assert by_code["ALERT_STATUS_NOT_LEDGERED"]["details"]["alert_id"] == family
        listed = {a["alert_id"]: a for a in _alerts(settings)}
        assert listed[snoop]["status"] == "resolved" and not listed[snoop]["status_history_intact"]
        assert listed[family]["status"] == "open" and not listed[family]["status_history_intact"]
        assert utc_now_ts() > entry["changed_at"]
    finally:
        stop(proc)


def _alerts(settings: Settings) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(_cli(settings, "alerts", "list", "--json").stdout)
    return result
