"""/health and /metrics of the services (careledger.service_health): the Prometheus text
read back with prometheus-client's own parser, the health answers, a snapshot that
fails, and the follow services saying 503 with the reason when their store is away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from careledger.service_health import ServiceHealth, render_metrics

ROOT = Path(__file__).resolve().parents[2]


def _families(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def test_numbers_become_gauges_totals_counters_and_mappings_labelled_families() -> None:
    families = _families(
        render_metrics(
            "processor",
            {
                "events_chained": 1200,
                "blocks_written_total": 7,
                "events_per_s_recent": 3.5,
                "ok": True,
                "name": "not a number",
                "nothing": None,
                "bad": float("nan"),
                "partition_lag": {"careledger.access-events/0": 3, "careledger.access-events/1": 0},
            },
        )
    )
    assert families["careledger_processor_events_chained"].type == "gauge"
    assert families["careledger_processor_events_chained"].samples[0].value == 1200
    assert families["careledger_processor_blocks_written"].type == "counter"
    assert families["careledger_processor_blocks_written"].samples[0].value == 7
    assert families["careledger_processor_ok"].samples[0].value == 1.0
    lag = {
        s.labels["partition"]: s.value
        for s in families["careledger_processor_partition_lag"].samples
    }
    assert lag == {"careledger.access-events/0": 3.0, "careledger.access-events/1": 0.0}
    assert not {
        "careledger_processor_name",
        "careledger_processor_nothing",
        "careledger_processor_bad",
    } & set(families)


def test_hostile_label_values_are_escaped_not_injected() -> None:
    hostile = 'x"} 1\ncareledger_fake 99\n#'
    families = _families(render_metrics("verifier", {"chain_heights": {hostile: 5}}))
    assert "careledger_fake" not in families
    sample = families["careledger_verifier_chain_heights"].samples[0]
    assert sample.labels["chain"] == hostile and sample.value == 5


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def test_the_server_answers_health_metrics_and_survives_a_failing_snapshot() -> None:
    state: dict[str, Any] = {"ok": True, "fail": False}

    def snapshot() -> dict[str, Any]:
        if state["fail"]:
            raise ValueError("broken snapshot")
        return {"cycles_total": 3}

    health = ServiceHealth("auditor", snapshot, lambda: (state["ok"], "because"), "127.0.0.1", 0)
    port = health.start()
    base = f"http://127.0.0.1:{port}"
    try:
        code, body, _ = _get(f"{base}/health")
        assert code == 200 and json.loads(body)["status"] == "ok"
        state["ok"] = False
        code, body, _ = _get(f"{base}/health")
        assert code == 503 and json.loads(body) == {
            "reason": "because",
            "service": "auditor",
            "status": "failing",
        }
        code, body, ctype = _get(f"{base}/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        assert _families(body)["careledger_auditor_cycles"].samples[0].value == 3
        state["fail"] = True
        assert _get(f"{base}/metrics")[0] == 500
        state["fail"] = False
        assert _get(f"{base}/metrics")[0] == 200  # still serving
        assert _get(f"{base}/other")[0] == 404
    finally:
        health.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("command", "service", "why"),
    [
        (["verify", "--follow", "--no-sources", "--no-audit"], "verifier", "cannot verify"),
        (["audit", "--follow"], "auditor", "ClickHouse"),
    ],
)
def test_a_follow_service_whose_store_is_away_says_503_with_the_reason(
    tmp_path: Path, command: list[str], service: str, why: str
) -> None:
    port = _closed_port()
    key = tmp_path / "trusted.pub"
    from careledger.keys import write_keypair

    write_keypair(tmp_path / "k.key")
    key.write_bytes((tmp_path / "k.key.pub").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")} | {
        "CARELEDGER_CONFIG": "",
        "CARELEDGER_RUN_DIR": str(tmp_path / "run"),
        "CARELEDGER_KAFKA_PORT": str(_closed_port()),
        "CARELEDGER_CLICKHOUSE_PORT": str(_closed_port()),
        "CARELEDGER_CLICKHOUSE_HTTP_PORT": str(_closed_port()),
        "CARELEDGER_TRUSTED_KEYS": str(key),
        "CARELEDGER_AUDIT_SALT": "a salt of the health test, long enough",
        "CARELEDGER_METRICS_PORT": str(port),
        "CARELEDGER_FOLLOW_INTERVAL_S": "1",
        "CARELEDGER_AUDIT_POLL_INTERVAL_S": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        answer: tuple[int, bytes, str] = (0, b"", "")
        while time.monotonic() < deadline:
            try:
                answer = _get(f"http://127.0.0.1:{port}/health")
            except OSError:
                time.sleep(0.3)
                continue
            if answer[0] == 503:
                break
            time.sleep(0.3)
        code, body, _ = answer
        assert code == 503, (code, body)
        doc = json.loads(body)
        assert doc["service"] == service and why in doc["reason"], doc
        metrics = _get(f"http://127.0.0.1:{port}/metrics")
        assert metrics[0] == 200
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_container_probe_exits_0_on_200_and_1_with_the_reason_otherwise(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from careledger.probe import main as probe

    state = {"ok": True}
    health = ServiceHealth(
        "replica", dict, lambda: (state["ok"], "no read for 99 s"), "127.0.0.1", 0
    )
    port = health.start()
    try:
        assert probe([f"http://127.0.0.1:{port}/health"]) == 0
        state["ok"] = False
        assert probe([f"http://127.0.0.1:{port}/health"]) == 1
        assert "503" in capsys.readouterr().err
    finally:
        health.stop()
    assert probe([f"http://127.0.0.1:{_closed_port()}/health", "--timeout", "1"]) == 1
