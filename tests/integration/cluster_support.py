"""Fixtures and helpers for the tests on the local cluster (ADR 0030).

``cluster_settings`` starts the cluster once per module (and stops it at the end if it
started it); ``on_cluster`` gives each test isolated topics, a database on both replicas
and a local source key, and brings back any node a test killed. Test modules import the
fixtures into their namespace (``from tests.integration.cluster_support import ...``)
for pytest to find them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger.stack import cluster, default_topics, ensure_topics
from careledger.storage.migrations import migrate
from careledger.storage.store import ChainStore
from producers.simulator import HospitalModel, simulate
from tests.conftest import _cleanup, _drop_database, _with_local_source, isolated_settings
from tests.integration.pipeline import (
    committed_event_count,
    row_census,
    run_cli,
    store_for,
    stored_event_ids,
    wait_until,
)

__all__ = ["Flow", "assert_replicas_hold", "cluster_settings", "heal", "on_cluster", "replica"]


#: the cluster was started by this test session (it then stops it when no module needs it)
_STARTED_HERE: list[bool] = []


def _needed_after(request: pytest.FixtureRequest) -> bool:
    """Whether a test of a later module uses the cluster: test_cluster.py and
    test_cluster_faults.py run one after the other, and one cluster start and stop
    (~40 s) is enough for both."""
    items = request.session.items
    here = [i for i, item in enumerate(items) if getattr(item, "module", None) is request.module]
    return bool(here) and any(
        "cluster_settings" in getattr(item, "fixturenames", ()) for item in items[here[-1] + 1 :]
    )


@pytest.fixture(scope="module")
def cluster_settings(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    was_up = cluster.status(settings).up
    ours = not was_up or bool(_STARTED_HERE)
    try:
        st = cluster.up(settings, quiet=True)
        assert st.up, f"cluster not up:\n{st}"
    except BaseException:
        # a half-started cluster must not outlive the module (three JVMs and ZooKeeper
        # left running slowed every later test of a CI run)
        if ours:
            cluster.down(settings)
            _STARTED_HERE.clear()
        raise
    if not was_up:
        _STARTED_HERE.append(True)
    try:
        yield cluster.cluster_settings(settings)
    finally:
        # kept up only for the next module that needs it, never for unrelated tests
        if ours and not _needed_after(request):
            cluster.down(settings)
            _STARTED_HERE.clear()


def heal(settings: Settings) -> None:
    """Bring every killed node back (``up`` is idempotent), as an operator's restart."""
    assert cluster.up(settings, quiet=True, topics=False, schema=False).up


@pytest.fixture
def on_cluster(
    cluster_settings: Settings, settings: Settings, tmp_path: Path
) -> Iterator[Settings]:
    heal(settings)
    s = isolated_settings(cluster_settings).replace(verifier_state_dir=tmp_path / "verifier")
    topics = default_topics(s)
    ensure_topics(s, topics)
    migrate(s)
    s = _with_local_source(s, tmp_path)
    try:
        yield s
    finally:
        heal(settings)
        _cleanup(s, list(topics))
        # _cleanup drops the database where the client lands (replica 1); the other
        # replica keeps its own copy of the tables otherwise
        for n in range(2, len(s.clickhouse_replicas) + 2):
            _drop_database(replica(s, n))


def replica(s: Settings, n: int) -> Settings:
    """``s`` reading only ClickHouse replica ``n`` (1 or 2), with no failover."""
    servers = [f"{s.clickhouse_host}:{s.clickhouse_port}", *s.clickhouse_replicas]
    host, _, port = servers[n - 1].rpartition(":")
    return s.replace(clickhouse_host=host, clickhouse_port=int(port), clickhouse_replicas=())


class Flow:
    """At most ``limit`` events produced steadily with the SDK on a thread until
    stopped; ``ids`` holds those Kafka acknowledged (a flush raises otherwise).

    ``hold_at`` keeps the flow waiting once that many events are sent until
    :meth:`release`: a test that must inject a fault *and* its recovery mid-stream
    holds back the tail instead of racing a fixed pace against a server's start-up.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        limit: int,
        seed: int,
        per_flush: int = 20,
        pause_s: float = 0.02,
        hold_at: int | None = None,
    ) -> None:
        self.settings = settings
        self.limit = limit
        self.seed = seed
        self.per_flush = per_flush
        self.pause_s = pause_s
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._hold_at = hold_at
        self._released = threading.Event()
        if hold_at is None:
            self._released.set()
        self._thread = threading.Thread(target=self._run, name="flow", daemon=True)

    def __enter__(self) -> Flow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def release(self) -> None:
        """Let a held flow send the rest."""
        self._released.set()

    @property
    def held(self) -> bool:
        """True once the flow has sent ``hold_at`` events and waits for release."""
        return (
            self._hold_at is not None
            and not self._released.is_set()
            and len(self.ids) >= self._hold_at
        )

    def stop(self) -> None:
        self._stop.set()
        self._released.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "the producer thread did not stop"

    def _run(self) -> None:
        events = iter(simulate(HospitalModel(seed=self.seed), count=self.limit, seed=self.seed))
        try:
            with AccessEventProducer(self.settings) as producer:
                while not self._stop.is_set() and len(self.ids) < self.limit:
                    if self._hold_at is not None and len(self.ids) >= self._hold_at:
                        self._released.wait()
                        if self._stop.is_set():
                            return
                    batch = [e for _, e in zip(range(self.per_flush), events, strict=False)]
                    if not batch:
                        return
                    for e in batch:
                        producer.send(e)
                    producer.flush()  # raises unless Kafka acknowledged every event
                    self.ids += [e.event_id for e in batch]
                    time.sleep(self.pause_s)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
            raise


def assert_replicas_hold(s: Settings, produced: list[str], timeout: float = 120.0) -> None:
    """Each replica alone holds every produced event exactly once, all in signed
    blocks, and ``verify`` finds its ledger intact."""
    expected = sorted(produced)
    for n in range(1, len(s.clickhouse_replicas) + 2):
        rs = replica(s, n)
        store = store_for(rs)
        try:

            def holds_all(store: ChainStore = store) -> bool:
                return committed_event_count(store) >= len(expected)

            wait_until(holds_all, timeout, what=f"replica {n} to hold every event")
            stored = stored_event_ids(store)
            assert len(stored) == len(set(stored)), (
                f"replica {n}: an event is stored twice ({row_census(store)})"
            )
            assert sorted(stored) == expected, f"replica {n}: events lost or extra"
            assert committed_event_count(store) == len(expected), f"replica {n}: unsigned rows"
        finally:
            store.backend.close()
        result = run_cli(rs, "verify", "--no-audit", "--json")
        assert result.returncode == 0, (
            f"replica {n}: " + result.stdout[-2000:] + result.stderr[-2000:]
        )
        assert json.loads(result.stdout)["result"] == "intact", f"replica {n} not intact"
