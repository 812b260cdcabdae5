"""A running pipeline with a replica, for the replica and restore tests (ADR 0017).

The real processor (a ``careledger process`` child) chains signed simulated traffic into
the test's own database; the replica is another database on the same ClickHouse server
(its own server in docker-compose.yml), fed by ``careledger replica`` children. Every
command runs as a subprocess configured only by its environment, as an operator runs it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import ChainStore
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
from tests.ledger_builder import StoreLedger

__all__ = ["Pipeline", "pipeline"]


@dataclass
class Pipeline:
    settings: Settings
    tmp: Path
    processor: subprocess.Popen[bytes] | None = None
    produced: int = 0

    @property
    def primary(self) -> ChainStore:
        return store_for(self.settings)

    @property
    def replica(self) -> ChainStore:
        s = self.settings
        backend = ClickHouseBackend.from_settings(s, "replica")
        return ChainStore.for_settings(backend, s.replace(clickhouse_database=self.replica_db))

    @property
    def replica_db(self) -> str:
        return self.settings.replica_clickhouse_database

    def start(self) -> None:
        self.processor = start_processor(self.settings, self.tmp / "processor.log")

    def stop(self) -> None:
        if self.processor is not None:
            stop(self.processor)
            self.processor = None

    def produce(self, count: int, seed: int, rate: float = 0.0) -> None:
        """``count`` signed simulated events (at about ``rate`` per second if given)."""
        events = list(simulate(HospitalModel(seed=seed), count=count, seed=seed))
        started = time.monotonic()
        with AccessEventProducer(self.settings) as producer:
            for i, e in enumerate(events):
                producer.send(e)
                if rate and i % 50 == 49:
                    ahead = (i + 1) / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            producer.flush()
        self.produced += count

    def wait_chained(self, extra: int = 0, timeout: float = 180) -> None:
        """Every produced event (plus ``extra`` others) is in a signed block."""
        store = self.primary
        want = self.produced + extra
        wait_until(lambda: committed_event_count(store) >= want, timeout, what=f"{want} events")

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_cli(self.settings, *args, timeout=timeout)

    def json(self, *args: str, code: int | None = None) -> Any:
        result = self.cli(*args, "--json")
        if code is not None:
            assert result.returncode == code, (args, result.stdout, result.stderr)
        return json.loads(result.stdout)

    def catch_up(self, code: int = 0) -> Any:
        return self.json("replica", "catch-up", code=code)

    def attacker(self, store: ChainStore) -> StoreLedger:
        return StoreLedger(store, sync_mutations=False)

    def delete_block(self, store: ChainStore, chain: str, height: int) -> None:
        """The attack: a block and everything under it gone, with ALTER TABLE DELETE."""
        attacker = self.attacker(store)
        for table in ("blocks", "access_events", "source_attestations"):
            attacker.mutate(
                f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = %(c)s AND height = %(h)s",
                {"c": chain, "h": height},
            )

    def middle_block(self, min_blocks: int = 3) -> tuple[str, int]:
        """An access-events chain with at least ``min_blocks`` blocks, and a height in
        its middle whose block holds events."""
        rows = self.primary.backend.execute(
            f"SELECT chain_id, max(height) FROM {self.primary.db}.blocks "
            "WHERE chain_id LIKE %(p)s GROUP BY chain_id ORDER BY chain_id",
            {"p": f"%/{self.settings.topic_events}/%"},
        )
        for chain, top in rows:
            if int(top) + 1 >= min_blocks:
                chain_id = chain.decode()
                events = self.primary.backend.execute(
                    f"SELECT height FROM {self.primary.db}.blocks WHERE chain_id = %(c)s "
                    "AND event_count > 0 AND height > 0 AND height < %(top)s ORDER BY height",
                    {"c": chain_id, "top": int(top)},
                )
                if events:
                    return chain_id, int(events[len(events) // 2][0])
        raise AssertionError("no chain with a middle block")

    def restore_events(self) -> int:
        """Committed access events that ledger a restore."""
        rows = self.primary.backend.execute(
            f"SELECT count() FROM {self.primary.db}.access_events "
            "WHERE source_system = 'careledger-restore' AND (chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {self.primary.db}.blocks)"
        )
        return int(rows[0][0])


@pytest.fixture
def pipeline(isolated: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    settings = processor_settings(
        with_keys(isolated, tmp_path),
        block_max_events=200,
        # batches (ADR 0020) smaller than a block: chains of several blocks, each of
        # several batch records
        source_batch_max_events=50,
        replica_clickhouse_database=f"{isolated.clickhouse_database}_replica",
    )
    p = Pipeline(settings, tmp_path)
    p.start()
    try:
        yield p
    finally:
        p.stop()
        backend = ClickHouseBackend.from_settings(settings)
        try:
            backend.execute(f"DROP DATABASE IF EXISTS {p.replica_db}")
        finally:
            backend.close()
