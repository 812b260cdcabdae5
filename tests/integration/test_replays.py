"""A replayed signed record is REPLAYED whenever it arrives (ADR 0015), on the real stack.

Before, the processor remembered the sequence numbers it admitted in memory only: after
a restart (or on a partition another instance writes) a copy of a chained record was
chained again, and ``verify`` then reported ``SOURCE_SEQ_DUPLICATE`` for good, so anyone
who could produce to the events topic could leave the ledger "tampered". The processor
now rebuilds the chained sequence numbers from ClickHouse; reading the same offset again
(after a failed write) is still not a replay.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.keys import load_signing_key
from careledger.storage.backend import StorageError
from careledger.storage.store import (
    ATTESTATION_COLUMNS,
    EVENT_COLUMNS,
    ChainStore,
    SealedBlock,
    attestation_rows,
    event_rows,
)
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey, TrustedKeys
from careledger_core.source import (
    KeyEventStatement,
    SeqRuns,
    SourceRegistry,
    encode_signed_event,
    sign_batch,
)
from processors.processor import Processor
from processors.records import Record
from processors.seq_state import BUCKET, load_snapshot
from processors.sources import SourceGate
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
    with_source,
)
from tests.integration.test_broker_time import _codes, _read
from verifiers.integrity.fsck import verify_chain
from verifiers.integrity.sources import check_sources, read_source_rows

pytestmark = pytest.mark.integration

BLOCK_KEY = SigningKey.from_seed(hashlib.sha256(b"careledger replay test key").digest())
EHR = SigningKey.from_seed(hashlib.sha256(b"careledger replay test source").digest())
EPOCH = "00000000000000d1"


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _events(count: int, seed: int) -> list[AccessEvent]:
    return list(simulate(HospitalModel(staff=40, patients=150, seed=seed), count, seed=seed))


def _signed(
    key: SigningKey, source_id: str, events: list[AccessEvent], first_seq: int = 1
) -> list[bytes]:
    canon = [canonical_event_bytes(e) for e in events]
    atts = sign_batch(
        key,
        source_id=source_id,
        epoch=EPOCH,
        first_seq=first_seq,
        event_leaf_hashes=[leaf_hash(c) for c in canon],
        signed_at=_iso(time.time()),
    )
    return [encode_signed_event(c, a) for c, a in zip(canon, atts, strict=True)]


def _produce(
    settings: Settings,
    values: list[bytes],
    *,
    partition: int | None = None,
    create_time: float | None = None,
) -> None:
    producer = Producer(kafka_config(settings, ADMIN, {"acks": "all"}))
    for v in values:
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if create_time is not None:
            kwargs["timestamp"] = int(create_time * 1000)
        producer.produce(settings.topic_events, value=v, key=b"k", **kwargs)
    assert producer.flush(30) == 0


def test_a_record_replayed_after_a_processor_restart_is_quarantined_as_replayed(
    isolated: Settings, tmp_path: Path
) -> None:
    s = with_source(with_keys(isolated, tmp_path), tmp_path, source_id="ehr-main")
    settings = processor_settings(s, require_source_signatures=True)
    ehr = load_signing_key(settings.source_key, env={})
    events = _events(25, seed=61)
    first = time.time()
    records = _signed(ehr, "ehr-main", events[:20])
    _produce(settings, records, create_time=first)
    proc = start_processor(settings, tmp_path / "processor-1.log")
    store = store_for(settings)
    try:
        wait_until(lambda: committed_event_count(store) >= 20, 120, what="first run chained")
    finally:
        stop(proc)
    [(partition,)] = store.backend.execute(
        f"SELECT DISTINCT toUInt32(splitByChar('/', chain_id)[-1]) FROM {store.db}.access_events"
    )
    # The insider replays two chained records while no processor runs: one into the same
    # partition with its original timestamp, one into another partition.
    _produce(settings, [records[3]], partition=partition, create_time=first)
    _produce(settings, [records[7]], partition=(partition + 1) % settings.partitions)
    _produce(settings, _signed(ehr, "ehr-main", events[20:], first_seq=21))

    proc = start_processor(settings, tmp_path / "processor-2.log")  # nothing in memory
    try:
        wait_until(lambda: committed_event_count(store) >= 25, 120, what="second run chained")
        quarantined = _read(settings, settings.topic_quarantine, expect=2)
        time.sleep(1.0)  # nothing else arrives
    finally:
        stop(proc)
    assert _codes(quarantined) == ["REPLAYED", "REPLAYED"]
    assert {m.value() for m in quarantined} == {records[3], records[7]}
    log = (tmp_path / "processor-2.log").read_text(encoding="utf-8", errors="replace")
    assert "source sequence numbers loaded from the store" in log
    assert committed_event_count(store) == 25
    [(rows, seqs)] = store.backend.execute(
        f"SELECT count(), uniqExact(seq) FROM {store.db}.source_attestations"
    )
    assert (rows, seqs) == (25, 25)
    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "SOURCE_SEQ_DUPLICATE" not in result.stdout


# --------------------------------------------------------------------------- direct drive


class Outputs:
    """The processor's Kafka outputs, kept in memory."""

    def __init__(self) -> None:
        self.rejected: list[Any] = []

    def send_dead_letters(self, rejected: list[Any]) -> None:
        self.rejected.extend(r for _, r in rejected)

    def publish_checkpoints(self, heads: list[Any], key: Any) -> None:
        pass

    def publish_blocks(self, blocks: list[Any]) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0


def _registry() -> SourceRegistry:
    return SourceRegistry(
        [
            KeyEventStatement(
                source_id="ehr",
                key_id=EHR.key_id,
                public_key=base64.b64encode(EHR.public_key.raw).decode(),
                status="active",
                valid_from="2026-01-01T00:00:00.000000Z",
                registrar_key_id="00000000000000aa",
            )
        ]
    )


def _processor(settings: Settings, store: ChainStore, position: dict[str, int]) -> Processor:
    """A processor over the real store; its seeks move ``position["next"]`` (where Kafka
    would deliver from)."""
    registry = _registry()

    async def seek(p: Any, offset: int) -> None:
        position["next"] = offset
        position["seeks"] = position.get("seeks", 0) + 1

    async def earliest(p: Any) -> int:
        return 0

    gate = SourceGate(require_signatures=True, load_registry=lambda: registry)
    return Processor(settings, BLOCK_KEY, store, seek, earliest, Outputs(), gate=gate)


async def _feed(proc: Processor, partition: int, first_offset: int, values: list[bytes]) -> None:
    """Records of one partition, then every open block sealed and written."""
    now = time.time()
    await proc.handle(
        [Record(partition, first_offset + i, b"k", v, now) for i, v in enumerate(values)]
    )
    for chain in proc.chains.values():
        if chain.opened_at is not None:
            chain.opened_at = -1e9
    await proc.flush_aged()
    await proc.drain()


def _codes_of(proc: Processor) -> list[str]:
    return [r.code for r in proc.outputs.rejected]


def _no_duplicates(settings: Settings, store: ChainStore) -> None:
    events, _keys, _beats = read_source_rows(store)
    report = check_sources(events, _registry(), require_signatures=True)
    assert [f.code for f in report.findings] == []


def test_a_replay_to_a_partition_another_instance_writes_is_replayed(isolated: Settings) -> None:
    """Two processor instances of one group: A writes partition 0, B partition 1. A source
    writes to both; the insider replays into A's partition a record B chained after A
    started."""
    settings = isolated.replace(block_max_events=1000, block_max_ms=60_000, seq_refresh_ms=1)
    records = _signed(EHR, "ehr", _events(12, seed=62))
    a = _processor(settings, store_for(settings), {})
    b = _processor(settings, store_for(settings), {})

    async def main() -> None:
        await _feed(a, 0, 0, records[:6])  # A loads its snapshot: nothing of B yet
        await _feed(b, 1, 0, records[6:])
        await asyncio.sleep(0.01)
        await _feed(a, 0, 6, [records[9], records[2]])  # from B's partition, and its own

    asyncio.run(main())
    assert _codes_of(a) == ["REPLAYED", "REPLAYED"]
    assert _codes_of(b) == []
    assert a.metrics.seq_rows_refreshed >= 6, "A read what B chained"
    store = store_for(settings)
    assert committed_event_count(store) == 12
    _no_duplicates(settings, store)


class FlakyStore(ChainStore):
    """The real store; the chosen writes fail after the event and attestation rows went in."""

    def __init__(self, inner: ChainStore, fail_calls: set[int]) -> None:
        super().__init__(inner.backend, inner.db)
        self.calls = 0
        self.fail_calls = fail_calls

    def write_blocks(self, blocks: list[SealedBlock], *, owner: str | None = None) -> set[str]:  # type: ignore[override]
        self.calls += 1
        if self.calls in self.fail_calls:
            self.backend.insert(f"{self.db}.access_events", EVENT_COLUMNS, event_rows(blocks))
            self.backend.insert(
                f"{self.db}.source_attestations", ATTESTATION_COLUMNS, attestation_rows(blocks)
            )
            raise StorageError("injected: connection lost before the header insert")
        return super().write_blocks(blocks, owner=owner)


def test_signed_records_read_again_after_a_failed_write_are_not_replays(
    isolated: Settings,
) -> None:
    settings = isolated.replace(block_max_events=10, block_max_ms=60_000)
    records = _signed(EHR, "ehr", _events(40, seed=63))
    store = FlakyStore(store_for(settings), {2})
    position = {"next": 0}
    proc = _processor(settings, store, position)

    async def main() -> None:
        for _ in range(100):
            proc._backoff_s = 0.0  # no need to wait in a test
            start = position["next"]
            if start < len(records):
                batch = records[start : start + 15]
                position["next"] = start + len(batch)
                now = time.time()
                await proc.handle([Record(0, start + i, b"k", v, now) for i, v in enumerate(batch)])
                continue
            # Kafka is drained: the timer closes open blocks and re-reads what the failed
            # write made the processor forget (its seek moves the position back)
            for chain in proc.chains.values():
                if chain.opened_at is not None:
                    chain.opened_at = -1e9
            await proc.flush_aged()
            await proc.drain()
            if (
                position["next"] >= len(records)
                and not proc._recover
                and all(c.opened_at is None for c in proc.chains.values())
            ):
                return
        raise AssertionError("the processor did not settle")

    asyncio.run(main())
    assert store.calls >= 2 and position.get("seeks"), "the write failed and was resumed"
    assert _codes_of(proc) == [], "the same offsets again are not replays"
    assert committed_event_count(store) == 40
    chain = settings.chain_id(settings.topic_events, 0)
    report = verify_chain(store, chain, TrustedKeys([BLOCK_KEY.public_key]))
    assert report.result == "intact", [f.to_dict() for f in report.findings]
    _no_duplicates(settings, store)


def test_the_snapshot_reads_full_buckets_as_runs_and_only_partial_ones_row_by_row(
    isolated: Settings,
) -> None:
    """What ``load_snapshot`` rebuilds from ClickHouse is exactly the committed numbers:
    runs across buckets, gaps, a number chained twice, another epoch and source, and
    attestation rows a crash left without a header (not committed) left out."""
    store = store_for(isolated)
    prefix = isolated.chain_id(isolated.topic_events, 0)[:-1]
    c0, c1 = prefix + "0", prefix + "1"
    committed: dict[tuple[str, str], set[int]] = {
        ("ehr", EPOCH): set(range(1, 5 * BUCKET + 10)) - {4 * BUCKET + 5},
        ("ehr", "00000000000000d2"): {1, 2, 3, 7},
        ("lab", EPOCH): set(range(1, 101)),
    }
    rows: list[tuple[Any, ...]] = []
    blocks: list[tuple[Any, ...]] = []
    height = {c0: 0, c1: 0}
    for n, ((source, epoch), seqs) in enumerate(sorted(committed.items())):
        for i, seq in enumerate(sorted(seqs)):
            chain = c0 if (seq + n) % 2 else c1
            rows.append((chain, height[chain], i, f"h{height[chain]}", source, epoch, seq))
        for chain in (c0, c1):
            blocks.append((chain, height[chain], f"h{height[chain]}"))
            height[chain] += 1
    rows.append((c0, 0, 99_999, "h0", "ehr", EPOCH, 4 * BUCKET + 7))  # chained twice
    # a crash's leftovers: rows of a block whose header was never written
    rows += [(c0, height[c0], i, "uncommitted", "ehr", EPOCH, 4 * BUCKET + 5) for i in range(2)]
    columns = ("chain_id", "height", "idx", "block_hash", "source_id", "epoch", "seq")
    store.backend.insert(f"{store.db}.source_attestations", columns, rows)
    store.backend.insert(f"{store.db}.blocks", ("chain_id", "height", "block_hash"), blocks)

    snap = load_snapshot(store, prefix)
    assert set(snap.runs) == set(committed)
    for key, seqs in committed.items():
        runs = snap.runs[key]
        top = max(seqs) + 5
        assert [n for n in range(top) if runs.has(n)] == sorted(seqs), key
    assert len(snap.runs[("lab", EPOCH)]) == 1
    assert isinstance(snap.runs[("ehr", EPOCH)], SeqRuns) and len(snap.runs[("ehr", EPOCH)]) == 2
    assert snap.heights == {c0: height[c0] - 1, c1: height[c1] - 1}
    # rows read one by one: those of the partial buckets only (the one with the gap and
    # the duplicate, and the small epoch), not the ~16,000 of the full ones
    assert snap.rows_read == BUCKET + 4, snap.rows_read
    assert snap.buckets == 6 + 1 + 1
