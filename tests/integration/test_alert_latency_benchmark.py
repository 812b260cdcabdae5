"""`careledger benchmark-alerts` runs end to end on the real stack (a few hundred
events): processor and `audit --follow` as child processes, labelled traffic at a
steady rate, alerts read back from the topic. Asserts the figures' structure and
sanity (every labelled access alerted, ordered percentiles), never a speed."""

from __future__ import annotations

import json
import os

import pytest
from confluent_kafka.admin import AdminClient

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.storage.backend import ClickHouseBackend
from tests.integration.pipeline import run_cli

pytestmark = pytest.mark.integration


def test_benchmark_alerts_prints_latency_figures(stack: Settings) -> None:
    done = run_cli(
        stack,
        "benchmark-alerts",
        "--events",
        "600",
        "--rate",
        "300",
        "--warmup",
        "100",
        "--inappropriate-rate",
        "0.04",
        "--json",
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout)

    assert figures["machine"]["cores"] == os.cpu_count()
    assert figures["timestamps"] == "LogAppendTime"
    traffic = figures["traffic"]
    assert traffic["warmup_events"] == 100
    assert traffic["warmup_events"] + traffic["timed_events"] == traffic["events"]
    assert traffic["all_decided"] is True
    assert traffic["ingest_rate_per_s"] > 0

    lat = figures["latency"]
    scenario = figures["scenario"]
    assert lat["labelled"] > 0
    assert lat["labelled"] == scenario["labelled"] - scenario["labelled_in_warmup"]
    assert lat["alerted"] == lat["labelled"], "every labelled inappropriate access is alerted"
    assert lat["alerted_share"] == 1.0
    for key in ("produce_to_alert", "own_produce_to_alert"):
        d = lat[key]
        assert d["count"] == lat["alerted"]
        assert 0 < d["p50_s"] <= d["p95_s"] <= d["p99_s"] <= d["max_s"]
    # every alerted access's block was seen committed (its checkpoint), before its alert
    assert lat["produce_to_chained"]["count"] == lat["alerted"]
    assert lat["chained_to_alert"]["count"] == lat["alerted"]
    assert lat["produce_to_chained"]["p50_s"] > 0
    assert lat["chained_to_alert"]["p50_s"] > 0
    assert lat["own_produce_to_alert"]["max_s"] >= lat["produce_to_alert"]["max_s"]
    assert figures["alerts_distinct"] > 0
    assert figures["cpu"]["processor_cores"] > 0 and figures["cpu"]["auditor_cores"] > 0

    # nothing left behind
    run = figures["run"]
    assert run["kept"] is False
    backend = ClickHouseBackend.from_settings(stack)
    try:
        databases = {r[0] for r in backend.execute("SHOW DATABASES")}
    finally:
        backend.close()
    assert run["database"].encode() not in databases and run["database"] not in databases
    topics = AdminClient(kafka_config(stack, ADMIN)).list_topics(timeout=10)
    assert not [t for t in topics.topics if run["topic_suffix"] in t]
