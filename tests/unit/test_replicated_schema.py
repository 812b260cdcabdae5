"""The replicated layout of the schema (ADR 0030): every table but the per-server
``schema_migrations`` becomes ``Replicated*MergeTree`` under a ZooKeeper path naming its
database and table; nothing else in a statement changes; the settings that point at a
cluster are validated."""

from __future__ import annotations

import re

import pytest

from careledger.config import ConfigError, load_settings
from careledger.storage.backend import StorageError
from careledger.storage.migrations import MIGRATIONS, replica_settings, replicated

_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS ([a-z_]+)\.([a-z_]+)")


def _statements() -> list[str]:
    return [s.format(db="careledger_x") for m in MIGRATIONS for s in m.statements]


def test_every_table_of_every_migration_becomes_replicated_under_its_own_path() -> None:
    tables = []
    for sql in _statements():
        out = replicated(sql)
        m = _CREATE.search(sql)
        if m is None:
            assert out == sql
            continue
        db, table = m.groups()
        tables.append(table)
        assert "ENGINE = Replicated" in out
        assert f"'/careledger/tables/{db}/{table}', '{{replica}}'" in out
        # everything but the engine clause is untouched
        strip = re.compile(r"ENGINE = [A-Za-z]*MergeTree\([^)]*\)")
        assert strip.sub("", out) == strip.sub("", sql)
    assert len(tables) == len(set(tables)), "two statements would share a ZooKeeper path"
    assert "access_events" in tables and "blocks" in tables


def test_replacing_keeps_its_version_column() -> None:
    sql = next(s for s in _statements() if "ReplacingMergeTree(" in s)
    out = replicated(sql)
    assert re.search(r"ReplicatedReplacingMergeTree\('[^']+', '\{replica\}', version\)", out)


def test_a_statement_with_two_engines_is_refused_not_half_rewritten() -> None:
    sql = "CREATE TABLE IF NOT EXISTS d.t (a UInt8) ENGINE = MergeTree() -- ENGINE = MergeTree()"
    with pytest.raises(ValueError, match="no single MergeTree engine"):
        replicated(sql)


def test_replica_settings_list_the_primary_then_each_replica_without_failover() -> None:
    s = load_settings(
        env={},
        clickhouse_port=19100,
        clickhouse_replicas=("127.0.0.1:19200", "ch-3:9000"),
        clickhouse_replicated=True,
    )
    servers = replica_settings(s)
    assert [(x.clickhouse_host, x.clickhouse_port) for x in servers] == [
        ("127.0.0.1", 19100),
        ("127.0.0.1", 19200),
        ("ch-3", 9000),
    ]
    assert all(x.clickhouse_replicas == () for x in servers)


def test_a_malformed_replica_entry_is_refused() -> None:
    s = load_settings(env={}, clickhouse_replicas=("no-port",))
    with pytest.raises(StorageError, match="not host:port"):
        replica_settings(s)


def test_brokers_list_becomes_the_bootstrap_and_insync_cannot_exceed_replication() -> None:
    s = load_settings(env={"CARELEDGER_KAFKA_BROKERS": "a:1, b:2,c:3"})
    assert s.kafka_bootstrap == "a:1,b:2,c:3"
    assert load_settings(env={}).kafka_bootstrap == "127.0.0.1:19092"
    with pytest.raises(ConfigError, match="min_insync"):
        load_settings(env={"CARELEDGER_KAFKA_MIN_INSYNC_REPLICAS": "2"})
