"""``careledger status`` shows the pipeline, on the real stack (issue 13 point 5).

Before, it said only whether Kafka and ClickHouse ran. The claims tried here: events
sent while no processor runs are shown as not yet signed (never as an all-clear);
once chained, nothing is behind, the chain's height and newest block age are there,
the processor is reporting; after `verify` the last verification is shown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
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
)

pytestmark = pytest.mark.integration


def _status(settings: Settings) -> dict[str, Any]:
    done = run_cli(settings, "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    assert doc["pipeline"] is not None
    return doc["pipeline"]


def _records_behind(pipeline: dict[str, Any], settings: Settings) -> int:
    """Records of the events topic past the signed heads (a record is one source-signed
    batch, ADR 0020: 40 events sent in one flush are one record per partition)."""
    prefix = settings.chain_id(settings.topic_events, 0)[:-1]
    return sum(c["behind"] for c in pipeline["chains"] if c["chain_id"].startswith(prefix))


def test_status_says_what_is_not_yet_signed_then_that_nothing_is(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(
        with_keys(isolated, tmp_path), block_max_events=20, block_max_ms=200
    )
    with AccessEventProducer(settings) as producer:
        for e in simulate(HospitalModel(seed=51), count=40, seed=51):
            producer.send(e)
        producer.flush()
    before = _status(settings)
    assert _records_behind(before, settings) >= 1, before["chains"]
    assert before["last_verification"] is None

    proc = start_processor(settings, tmp_path / "processor.log")
    store = store_for(settings)
    try:
        wait_until(lambda: committed_event_count(store) >= 40, 90, what="events chained")
        wait_until(
            lambda: any(p["reporting"] for p in _status(settings)["processors"]),
            30,
            what="the processor reporting",
        )
        after = _status(settings)
    finally:
        stop(proc)
    assert _records_behind(after, settings) == 0, after["chains"]
    chained = [c for c in after["chains"] if c["height"] is not None]
    assert chained and all(c["newest_block_age_s"] < 600 for c in chained)
    assert after["open_alerts"] == 0 and after["cannot_tell"] == []

    verified = run_cli(settings, "verify")
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    last = _status(settings)["last_verification"]
    assert last is not None and last["result"] == "intact" and last["events"] >= 40
