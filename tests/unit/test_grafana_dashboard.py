"""deploy/grafana/careledger.json against what the services emit and the schema:
every Prometheus metric it asks for is one a service serves (careledger.service_health
names ``careledger_<service>_<key>``; the key must be in that service's snapshot), and
every ClickHouse query runs on the current ClickHouse (chDB) against a migrated
database; tests/integration/test_grafana_sql.py runs them on ClickHouse 18.16."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careledger.storage.backend import ChdbBackend
from careledger.storage.migrations import migrate_backend

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "careledger.json"
#: service -> the files whose snapshot names its keys
SERVICE_SOURCES = {
    "processor": ["processors/app.py", "processors/metrics.py"],
    "verifier": ["verifiers/integrity/follow.py"],
    "auditor": ["verifiers/auditor/cli.py"],
    "gateway": ["producers/gateway/server.py"],
    "witness": ["witness/server.py"],
    "replica": ["replica/cli.py", "replica/follow.py"],
    "cosigner": ["processors/cosign_cli.py"],
    "forwarder_siem": ["verifiers/auditor/forward_cli.py"],
}
_METRIC = re.compile(r"\bcareledger_([a-z0-9_]+)")


def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def targets(kind: str) -> list[dict[str, Any]]:
    return [
        t for p in dashboard()["panels"] if p["datasource"]["type"] == kind for t in p["targets"]
    ]


def _service_and_key(name: str) -> tuple[str, str]:
    for service in sorted(SERVICE_SOURCES, key=len, reverse=True):
        if name.startswith(service + "_"):
            return service, name[len(service) + 1 :]
    raise AssertionError(f"careledger_{name}: no service serves it")


def test_every_prometheus_metric_is_served_by_a_service() -> None:
    exprs = [t["expr"] for t in targets("prometheus")]
    assert len(exprs) >= 10
    for expr in exprs:
        names = _METRIC.findall(expr)
        assert names, expr
        for name in names:
            service, key = _service_and_key(name)
            base = key.removesuffix("_total")
            text = "\n".join(
                (ROOT / f).read_text(encoding="utf-8") for f in SERVICE_SOURCES[service]
            )
            assert f'"{key}"' in text or f'"{base}"' in text or f"{base}_total" in text, (
                f"{expr}: {service} serves no {key!r}"
            )
            if key.endswith("_total"):  # a rate() needs a counter
                assert f'"{key}"' in text or f'"{base}"' in text


def test_the_processor_counters_are_counters_in_its_snapshot() -> None:
    from processors.app import _COUNTERS
    from processors.metrics import ProcessorMetrics

    snap = ProcessorMetrics().snapshot()
    assert set(snap) >= _COUNTERS
    exprs = " ".join(t["expr"] for t in targets("prometheus"))
    for name in re.findall(r"careledger_processor_([a-z_]+)_total", exprs):
        assert name in _COUNTERS, name


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[ChdbBackend, str]]:
    backend = ChdbBackend()
    db = f"careledger_grafana_{uuid.uuid4().hex[:8]}"
    migrate_backend(backend, db)
    try:
        yield backend, db
    finally:
        backend.execute(f"DROP DATABASE IF EXISTS {db}")
        backend.close()


def test_every_clickhouse_query_runs_on_current_clickhouse(
    database: tuple[ChdbBackend, str],
) -> None:
    backend, db = database
    queries = [t["rawSql"] for t in targets("grafana-clickhouse-datasource")]
    assert len(queries) >= 4
    for sql in queries:
        assert "${database}" in sql, sql  # the dashboard's variable, not a fixed name
        backend.execute(sql.replace("${database}", db))
