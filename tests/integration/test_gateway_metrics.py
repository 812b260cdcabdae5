"""The gateway's /health and /metrics (careledger.service_health) on a real gateway and
Kafka: records counted per transport once Kafka acknowledged them, refused frames by
their code, healthy while Kafka answers."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from careledger.config import Settings
from tests.integration.test_gateway import (
    atna_xml,
    post,
    r4_event,
    relaying_gateway,
    send_stream,
    syslog_message,
)

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_the_gateway_counts_acknowledged_records_per_transport(
    isolated: Settings, tmp_path: Path
) -> None:
    port = _free_port()
    with relaying_gateway(isolated, tmp_path, metrics_port=port) as gateway:
        for n in range(3):
            r = post(
                gateway,
                "/AuditEvent",
                r4_event(f"PAT-M-{n}"),
                sign=False,
                headers={"X-Careledger-Source": "legacy-lab"},
            )
            assert r.status_code == 201, r.text
        refused = post(gateway, "/AuditEvent", r4_event(), sign=False)
        assert refused.status_code == 401  # not a record: not counted
        send_stream(
            gateway,
            "syslog-tcp",
            b"".join(
                f"{len(m)} ".encode() + m for m in [syslog_message(atna_xml(["PAT-S-1"]))] * 2
            ),
        )
        m = _samples(port)
        assert m[("careledger_gateway_records_by_transport", "transport=http")] == 3
        assert m[("careledger_gateway_records_by_transport", "transport=syslog-tcp")] == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["service"] == "gateway"
