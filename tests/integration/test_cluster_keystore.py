"""The key store on the local cluster (ADR 0037, issue 14 point 2): the wrapped data keys
live in a ``ReplicatedMergeTree`` table beside the ledger's, so both ClickHouse replicas
hold every key; a destruction is confirmed on each replica read alone; a replica that
is down during the destruction is named as still holding the rows, and drops them by
itself when it comes back (the replicated mutation waits for it in ZooKeeper)."""

from __future__ import annotations

import time

import pytest

from careledger.config import Settings
from careledger.keystore import open_keystore
from careledger.stack import cluster
from careledger.storage.backend import ClickHouseBackend
from tests.integration.cluster_support import cluster_settings, heal, on_cluster, replica
from tests.softhsm import with_token

pytestmark = pytest.mark.integration

__all__ = ["cluster_settings", "on_cluster"]


def _held(s: Settings, lookup: bytes) -> int:
    backend = ClickHouseBackend.from_settings(s)
    try:
        rows = backend.execute(
            f"SELECT count() FROM {s.clickhouse_database}.data_keys WHERE lookup = %(l)s",
            {"l": lookup.hex()},
        )
        return int(rows[0][0])
    finally:
        backend.close()


def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def test_every_replica_holds_the_keys_and_confirms_their_destruction(
    on_cluster: Settings,
) -> None:
    s, _token = with_token(on_cluster)
    first, second = replica(s, 1), replica(s, 2)
    with open_keystore(s, create=True) as store:
        erased = store.lookup("s", "MRN-ERASED")
        kept = store.lookup("s", "MRN-KEPT")
        store.data_key(erased, "ingest", create=True)
        store.data_key(kept, "ingest", create=True)
        _until(lambda: _held(second, erased) == 1, 30, "replica 2 holds the key")
        assert _held(first, erased) == 1
        gone = store.destroy(erased)
        assert gone.complete and gone.rows == 1
        assert len(gone.confirmed) == 2  # each replica asked on its own
    assert _held(first, erased) == 0 and _held(second, erased) == 0
    assert _held(first, kept) == 1 and _held(second, kept) == 1


def test_a_replica_down_during_the_destruction_is_named_and_drops_the_key_when_back(
    on_cluster: Settings, settings: Settings
) -> None:
    s, _token = with_token(on_cluster)
    second = replica(s, 2)
    with open_keystore(s, create=True, destroy_wait_s=3.0) as store:
        lookup = store.lookup("s", "MRN-WHILE-DOWN")
        store.data_key(lookup, "ingest", create=True)
        _until(lambda: _held(second, lookup) == 1, 30, "replica 2 holds the key")
        cluster.kill_node(settings, "clickhouse-2")
        try:
            gone = store.destroy(lookup)
            assert not gone.complete
            assert gone.still_held == (f"{second.clickhouse_host}:{second.clickhouse_port}",)
            assert store.data_key(lookup, "report") is None  # the primary has none
        finally:
            heal(settings)
    _until(lambda: _held(second, lookup) == 0, 60, "the revived replica drops the key")
