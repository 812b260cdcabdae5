"""The alert-latency benchmark's pure parts: percentiles, reading alerts and checkpoints,
matching labelled accesses to their first alert (no service, no timing asserted)."""

from __future__ import annotations

import json

import pytest

from careledger_core.checkpoint import Checkpoint, format_checkpoint, sign_note
from careledger_core.signing import SigningKey
from commands.benchmarks.alerts import (
    AlertRecord,
    CommitTimes,
    first_listings,
    latency_figures,
    match_latencies,
    parse_alert,
    parse_checkpoint_note,
    percentile,
    render,
    summarize,
)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    # 10 values: p99 is the largest, p50 the 5th
    ten = [0.1 * i for i in range(1, 11)]
    assert percentile(ten, 99) == pytest.approx(1.0)
    assert percentile(ten, 50) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_summary_sorts_and_handles_no_values() -> None:
    s = summarize([3.0, 1.0, 2.0])
    assert s == {"count": 3, "p50_s": 2.0, "p95_s": 3.0, "p99_s": 3.0, "max_s": 3.0}
    assert summarize([]) == {"count": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}


def _alert(alert_id: str, related: list[str], flagged: list[str], rule: str = "R") -> bytes:
    return json.dumps(
        {
            "schema": "careledger.alert/1",
            "source": "auditor",
            "alert_id": alert_id,
            "rule": rule,
            "event_ids": related + flagged,
            "evidence": {"flagged_events": len(flagged), "related_events": len(related)},
        }
    ).encode()


def test_only_auditor_alerts_are_read() -> None:
    rec = parse_alert(_alert("a1", ["r1"], ["f1", "f2"], "VOLUME_SPIKE"), 12.5)
    assert rec == AlertRecord(12.5, "a1", "VOLUME_SPIKE", ("r1", "f1", "f2"), 1)
    assert rec.flagged == ("f1", "f2")
    finding = json.dumps({"code": "SIGNATURE_INVALID", "chain_id": "c"}).encode()
    assert parse_alert(finding, 1.0) is None
    assert parse_alert(b"not json", 1.0) is None
    processor = json.loads(_alert("q1", [], ["f1"]))
    processor["source"] = "processor"
    assert parse_alert(json.dumps(processor).encode(), 1.0) is None


def test_first_listing_of_each_event_and_what_raised_it() -> None:
    records = [
        # published again when it grows; listed out of append order on purpose
        AlertRecord(20.0, "burst", "VOLUME_SPIKE", ("e1", "e2", "e3", "e4"), 2),
        AlertRecord(10.0, "burst", "VOLUME_SPIKE", ("e1", "e2", "e3"), 2),
        AlertRecord(15.0, "single", "NO_EXPLANATION", ("e5",), 0),
        AlertRecord(30.0, "other", "AFTER_HOURS", ("e3",), 0),
    ]
    first = first_listings(records)
    assert set(first) == {"e1", "e2", "e3", "e4", "e5"}
    # e1, e2: related events of the flag on e3 (the flagged event new in that publication)
    assert first["e1"].at == 10.0 and not first["e1"].flagged
    assert first["e1"].triggers == ("e3",)
    assert first["e3"].at == 10.0 and first["e3"].flagged and first["e3"].triggers == ("e3",)
    # e4 first appears when the alert grows
    assert first["e4"].at == 20.0 and first["e4"].flagged
    assert first["e5"].rule == "NO_EXPLANATION"


def test_related_events_listed_again_count_from_the_new_flag() -> None:
    records = [
        AlertRecord(1.0, "a", "DENIED_BURST", ("x", "f1"), 1),
        AlertRecord(2.0, "a", "DENIED_BURST", ("x", "y", "f1", "f2"), 2),
    ]
    first = first_listings(records)
    assert first["y"].at == 2.0 and first["y"].triggers == ("f2",)


def test_commit_times_from_checkpoints() -> None:
    commits = CommitTimes(
        [
            (5.0, "c/0", 3),  # heights 0..2
            (2.0, "c/0", 1),  # height 0 (out of order)
            (6.0, "c/0", 2),  # a late, smaller checkpoint: adds nothing
            (9.0, "c/0", 6),  # heights 3..5
            (4.0, "c/1", 1),
        ]
    )
    assert commits.at("c/0", 0) == 2.0
    assert commits.at("c/0", 1) == 5.0
    assert commits.at("c/0", 2) == 5.0
    assert commits.at("c/0", 5) == 9.0
    assert commits.at("c/0", 6) is None
    assert commits.at("c/1", 0) == 4.0
    assert commits.at("nope", 0) is None


def test_checkpoint_notes_are_parsed() -> None:
    key = SigningKey.from_seed(bytes(range(32)))
    body = format_checkpoint(Checkpoint(origin="o/t/2", size=17, root_hash=bytes(32)))
    note = sign_note(body, "careledger.local", key)
    assert parse_checkpoint_note(note.encode()) == ("o/t/2", 17)
    assert parse_checkpoint_note(b"\xff") is None
    assert parse_checkpoint_note(b"garbage\n") is None


def test_latency_per_labelled_event() -> None:
    produced = {"e1": 100.0, "e2": 101.0, "e3": 102.0, "e5": 103.0, "late": 104.0}
    listings = first_listings(
        [
            AlertRecord(102.5, "burst", "VOLUME_SPIKE", ("e1", "e2", "e3"), 2),
            AlertRecord(104.0, "single", "NO_EXPLANATION", ("e5",), 0),
        ]
    )
    chained = {"e3": 102.2, "e5": 103.4}
    in_kafka = {"e3": 102.05, "e5": 103.1}
    lat = match_latencies(
        ["e1", "e2", "e3", "e5", "late", "never-produced"],
        produced,
        listings,
        chained.get,
        in_kafka.get,
    )
    by_id = {x.event_id: x for x in lat}
    assert set(by_id) == {"e1", "e2", "e3", "e5", "late"}
    # a related event counts from the produce of the flagged access that listed it
    assert by_id["e1"].raised_by_at == 102.0 and not by_id["e1"].flagged_itself
    assert by_id["e1"].chained_at == 102.2
    assert by_id["e5"].raised_by_at == 103.0 and by_id["e5"].flagged_itself
    assert by_id["late"].alerted_at is None
    fig = latency_figures(lat)
    assert fig["labelled"] == 5 and fig["alerted"] == 4
    assert fig["alerted_share"] == pytest.approx(0.8)
    assert fig["alerted_as_related_only"] == 2
    assert fig["produce_to_alert"]["count"] == 4
    assert fig["produce_to_alert"]["max_s"] == pytest.approx(1.0)  # e5: 103.0 -> 104.0
    assert fig["produce_to_alert"]["p50_s"] == pytest.approx(0.5)  # e1, e2, e3: 102 -> 102.5
    assert fig["own_produce_to_alert"]["max_s"] == pytest.approx(2.5)  # e1: 100 -> 102.5
    assert fig["produce_to_chained"]["max_s"] == pytest.approx(0.4)
    assert fig["chained_to_alert"]["max_s"] == pytest.approx(0.6)
    assert fig["produce_to_kafka"]["max_s"] == pytest.approx(0.1)  # e5: 103.0 -> 103.1
    assert fig["kafka_to_chained"]["max_s"] == pytest.approx(0.3)  # e5: 103.1 -> 103.4
    assert fig["kafka_to_chained"]["count"] == 4


def test_a_trigger_produced_before_the_event_is_not_its_reference() -> None:
    produced = {"early": 1.0, "e": 2.0}
    # the alert grew by "early" (flagged) while listing "e" as related: the access
    # that made it list "e" is unknown, so "e" counts from its own produce
    listings = first_listings([AlertRecord(3.0, "a", "R", ("e", "early"), 1)])
    (x,) = match_latencies(["e"], produced, listings, lambda _e: None)
    assert x.raised_by_at == 2.0 and x.chained_at is None
    fig = latency_figures([x])
    assert fig["produce_to_chained"]["count"] == 0
    assert fig["produce_to_kafka"]["count"] == 0
    assert fig["produce_to_alert"]["max_s"] == pytest.approx(1.0)


def test_text_rendering() -> None:
    lat = latency_figures(
        match_latencies(
            ["e"],
            {"e": 1.0},
            first_listings([AlertRecord(1.25, "a", "R", ("e",), 0)]),
            {"e": 1.1}.get,
        )
    )
    text = render(
        {
            "machine": {"cores": 2, "load_average_start": [0.1, 0.2, 0.3]},
            "settings": {
                "partitions": 4,
                "block_max_events": 1000,
                "block_max_ms": 250,
                "audit_poll_interval_s": 0.5,
            },
            "traffic": {
                "timed_events": 10,
                "ingest_rate_per_s": 5.0,
                "rate_asked_per_s": 5.0,
                "warmup_events": 2,
                "decided_after_last_produce_s": 0.3,
            },
            "latency": lat,
            "cpu": {"processor_cores": 0.5, "machine_busy_cores": 1.0},
        }
    )
    assert "produce -> alert" in text and "250" in text
    assert "alerted 1 (100.0%" in text
    assert "processor 0.50" in text
