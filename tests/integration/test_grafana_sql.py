"""The Grafana dashboard's ClickHouse queries on the oldest ClickHouse we support (the
local stack's 18.16), over a migrated database with a chained ledger in it."""

from __future__ import annotations

import pytest

from careledger.config import Settings
from careledger.storage.backend import ClickHouseBackend
from tests.unit.test_grafana_dashboard import targets

pytestmark = pytest.mark.integration


def test_every_clickhouse_query_of_the_dashboard_runs_on_clickhouse_18_16(
    isolated: Settings,
) -> None:
    backend = ClickHouseBackend.from_settings(isolated, "reader")
    try:
        version = backend.execute("SELECT version()")[0][0]
        for target in targets("grafana-clickhouse-datasource"):
            sql = target["rawSql"].replace("${database}", isolated.clickhouse_database)
            backend.execute(sql)  # raises StorageError on a function 18.16 lacks
    finally:
        backend.close()
    assert str(version.decode() if isinstance(version, bytes) else version).startswith("18.16")
