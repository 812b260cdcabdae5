"""Batch records (ADR 0020) through the processor, on the real Kafka and ClickHouse.

One Kafka record per source-signed batch: the processor chains a record's events into
one block, writes one ``source_batches`` row per record (the statement and signature
once, and the entries it dead-lettered alone), rebuilds its replay state from those rows,
and loses and duplicates nothing when it is killed mid-stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.keys import load_signing_key
from careledger.storage.backend import StorageError
from careledger.storage.store import (
    BATCH_COLUMNS,
    EVENT_COLUMNS,
    ChainStore,
    SealedBlock,
    batch_rows,
    event_rows,
)
from careledger_core.batch_record import batch_root, encode_batch_record
from careledger_core.block import decode_header
from careledger_core.event import canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey
from careledger_core.source import BatchStatement, sign_batch, timestamp_of
from processors.dead_letters import read_dead_letters
from processors.records import Record
from processors.seq_state import BUCKET, load_snapshot, read_increment
from producers.simulator import HospitalModel, simulate
from tests.integration.pipeline import (
    processor_settings,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
    with_source,
)
from tests.integration.test_broker_time import _codes, _read
from tests.integration.test_replays import EHR, _feed, _processor

pytestmark = pytest.mark.integration

BLOCK_KEY = SigningKey.from_seed(hashlib.sha256(b"careledger batch record test key").digest())
EPOCH = "00000000000000d1"  # the epoch of test_replays' helpers
MALFORMED = b'{"schema":"careledger.access-event/1","action":"read"}'


def _payloads(count: int, seed: int) -> list[bytes]:
    model = HospitalModel(staff=40, patients=150, seed=seed)
    return [canonical_event_bytes(e) for e in simulate(model, count, seed=seed)]


def _batch(
    key: SigningKey, source_id: str, events: list[bytes], first_seq: int, epoch: str = EPOCH
) -> bytes:
    att = sign_batch(
        key,
        source_id=source_id,
        epoch=epoch,
        first_seq=first_seq,
        event_leaf_hashes=[leaf_hash(e) for e in events],
        signed_at=timestamp_of(time.time()),
    )[0]
    return encode_batch_record(att.statement, att.signature, events)


def _batches(
    key: SigningKey, source_id: str, events: list[bytes], size: int, first_seq: int = 1
) -> list[bytes]:
    return [
        _batch(key, source_id, events[i : i + size], first_seq + i)
        for i in range(0, len(events), size)
    ]


def _committed(store: ChainStore, table: str, columns: str, where: str = "") -> list[Any]:
    return store.backend.execute(
        f"SELECT {columns} FROM {store.db}.{table} WHERE (chain_id, height, block_hash) IN "
        f"(SELECT chain_id, height, block_hash FROM {store.db}.blocks){where}"
    )


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _check_batches(store: ChainStore) -> dict[tuple[str, str], set[int]]:
    """Every committed batch row reproduces its signed root from the committed events at
    its offset and its skipped entries; every header is valid (the record accounting
    included). Returns the chained numbers per (source, epoch)."""
    for (header,) in store.backend.execute(f"SELECT header FROM {store.db}.blocks"):
        decode_header(header if isinstance(header, bytes) else header.encode())
    leaves: dict[tuple[str, int, int], list[tuple[int, bytes]]] = {}
    for chain, height, offset, idx, leaf in _committed(
        store, "access_events", "chain_id, height, kafka_offset, idx, leaf_hash"
    ):
        leaves.setdefault((_text(chain), int(height), int(offset)), []).append(
            (int(idx), bytes.fromhex(_text(leaf)))
        )
    numbers: dict[tuple[str, str], set[int]] = {}
    rows = _committed(store, "source_batches", "chain_id, height, kafka_offset, statement, skipped")
    assert rows, "no batch row"
    for chain, height, offset, statement, skipped in rows:
        st = msgspec.json.decode(statement, type=BatchStatement)
        chained = [leaf for _, leaf in sorted(leaves[(_text(chain), int(height), int(offset))])]
        skip = {
            int(i): bytes.fromhex(h)
            for i, h in (item.split(":") for item in _text(skipped).split(",") if item)
        }
        it = iter(chained)
        entries = [skip[i] if i in skip else next(it) for i in range(st.size)]
        assert next(it, None) is None, "more events at the offset than the batch holds"
        assert batch_root(st.first_seq, entries).hex() == st.root
        numbers.setdefault((st.source_id, st.epoch), set()).update(
            st.first_seq + i for i in range(st.size) if i not in skip
        )
    return numbers


# --------------------------------------------------------------------------- direct drive


def test_batch_records_are_chained_in_whole_blocks_with_their_batch_rows(
    isolated: Settings,
) -> None:
    settings = isolated.replace(block_max_events=10, block_max_ms=60_000)
    store = store_for(settings)
    proc = _processor(settings, store, {})
    events = _payloads(42, seed=71)
    events[24] = MALFORMED  # index 3 of the fourth batch
    records = _batches(EHR, "ehr", events, 7)
    asyncio.run(_feed(proc, 0, 0, records))

    chain = settings.chain_id(settings.topic_events, 0)
    blocks = store.backend.execute(
        f"SELECT height, event_count, first_offset, last_offset FROM {store.db}.blocks "
        "WHERE chain_id = %(c)s ORDER BY height",
        {"c": chain},
    )
    # blocks close between records: 7 + 7 >= 10, and no record is split
    assert [(int(n), int(a), int(b)) for _, n, a, b in blocks] == [
        (14, 0, 1),
        (13, 2, 3),
        (14, 4, 5),
    ]
    [(split,)] = store.backend.execute(
        f"SELECT count() FROM (SELECT kafka_offset FROM {store.db}.access_events "
        "GROUP BY kafka_offset HAVING uniqExact(height) > 1)"
    )
    assert int(split) == 0
    [dead] = proc.outputs.rejected
    assert (dead.offset, dead.batch_index, dead.value, dead.code) == (
        3,
        3,
        MALFORMED,
        "EVENT_INVALID",
    )
    numbers = _check_batches(store)
    assert numbers == {("ehr", EPOCH): set(range(1, 43)) - {25}}
    assert proc.metrics.events_chained == 41 and proc.metrics.dead_lettered == 1
    # a restart rebuilds exactly those numbers from the batch rows
    snap = load_snapshot(store, chain[:-1])
    runs = snap.runs[("ehr", EPOCH)]
    assert [n for n in range(50) if runs.has(n)] == sorted(numbers[("ehr", EPOCH)])


def test_the_snapshot_reads_tiling_buckets_as_runs_and_the_others_row_by_row(
    isolated: Settings,
) -> None:
    """Committed batch rows: buckets whose ranges tile a run are read as one aggregate
    row; a gap, an overlap, a skipped entry or a lone batch across a bucket boundary are
    read row by row; rows a crash left without a header are not committed."""
    store = store_for(isolated)
    prefix = isolated.chain_id(isolated.topic_events, 0)[:-1]
    c0 = prefix + "0"
    rows: list[tuple[Any, ...]] = []
    expected: dict[tuple[str, str], set[int]] = {}

    def add(source: str, epoch: str, first: int, size: int, skipped: str = "", h: int = 0) -> None:
        digest = f"h{h}"
        rows.append(
            (c0, h, digest, len(rows), source, "k", epoch, first, size, "", "{}", "s", skipped)
        )
        if h == 0:
            skip = {int(i.split(":")[0]) for i in skipped.split(",") if i}
            expected.setdefault((source, epoch), set()).update(
                first + i for i in range(size) if i not in skip
            )

    for first in range(1, 3 * BUCKET, 500):  # tiles buckets 0..2, one crossing each edge
        add("ehr", EPOCH, first, 500)
    add("ehr", "00000000000000d3", 7, 3)  # a lone batch: tiles its bucket
    add("ehr", "00000000000000d2", 1, 10)
    add("ehr", "00000000000000d2", 21, 10)  # a gap
    add("lab", EPOCH, 1, 10)
    add("lab", EPOCH, 6, 10)  # an overlap (a replay chained twice)
    add("lab", EPOCH, 16, 10, skipped=f"3:{'00' * 32},9:{'11' * 32}")
    add("ehr", EPOCH, 5 * BUCKET, 10, h=1)  # written, header missing: not committed
    store.backend.insert(f"{store.db}.source_batches", BATCH_COLUMNS, rows)
    store.backend.insert(
        f"{store.db}.blocks", ("chain_id", "height", "block_hash"), [(c0, 0, "h0")]
    )

    snap = load_snapshot(store, prefix)
    assert set(snap.runs) == set(expected)
    for key, numbers in expected.items():
        runs = snap.runs[key]
        assert [n for n in range(5 * BUCKET + 20) if runs.has(n)] == sorted(numbers), key
    assert len(snap.runs[("ehr", EPOCH)]) == 1
    # rows read: only those of the buckets that do not tile (d2 and lab: 2 + 3)
    assert snap.rows_read == 5, snap.rows_read

    increment, heights = read_increment(store, {c0: -1})
    assert heights == {c0: 0}
    assert ("lab", EPOCH, 16, 18) in increment and ("lab", EPOCH, 20, 24) in increment
    assert all(first <= 3 * BUCKET for _s, _e, first, _l in increment), "uncommitted left out"


def test_a_batch_record_replayed_into_another_instances_partition_is_replayed(
    isolated: Settings,
) -> None:
    settings = isolated.replace(block_max_events=1000, block_max_ms=60_000, seq_refresh_ms=1)
    records = _batches(EHR, "ehr", _payloads(40, seed=72), 10)
    a = _processor(settings, store_for(settings), {})
    b = _processor(settings, store_for(settings), {})

    async def main() -> None:
        await _feed(a, 0, 0, records[:2])
        await _feed(b, 1, 0, records[2:])
        await asyncio.sleep(0.01)
        await _feed(a, 0, 2, [records[3], records[0]])  # B's, and its own

    asyncio.run(main())
    assert [r.code for r in a.outputs.rejected] == ["REPLAYED", "REPLAYED"]
    assert all(r.quarantine and r.value in records for r in a.outputs.rejected)
    assert a.metrics.seq_rows_refreshed >= 2, "A read B's batch rows"
    assert _check_batches(store_for(settings)) == {("ehr", EPOCH): set(range(1, 41))}


class FlakyStore(ChainStore):
    """The real store; chosen writes fail after the event and batch rows went in."""

    def __init__(self, inner: ChainStore, fail_calls: set[int]) -> None:
        super().__init__(inner.backend, inner.db)
        self.calls = 0
        self.fail_calls = fail_calls

    def write_blocks(self, blocks: list[SealedBlock], *, owner: str | None = None) -> set[str]:  # type: ignore[override]
        self.calls += 1
        if self.calls in self.fail_calls:
            self.backend.insert(f"{self.db}.access_events", EVENT_COLUMNS, event_rows(blocks))
            self.backend.insert(f"{self.db}.source_batches", BATCH_COLUMNS, batch_rows(blocks))
            raise StorageError("injected: connection lost before the header insert")
        return super().write_blocks(blocks, owner=owner)


def test_batch_records_read_again_after_a_failed_write_are_chained_once(
    isolated: Settings,
) -> None:
    settings = isolated.replace(block_max_events=10, block_max_ms=60_000)
    records = _batches(EHR, "ehr", _payloads(60, seed=73), 6)
    store = FlakyStore(store_for(settings), {2})
    position = {"next": 0}
    proc = _processor(settings, store, position)

    async def main() -> None:
        for _ in range(100):
            proc._backoff_s = 0.0
            start = position["next"]
            if start < len(records):
                batch = records[start : start + 3]
                position["next"] = start + len(batch)
                now = time.time()
                await proc.handle([Record(0, start + i, b"k", v, now) for i, v in enumerate(batch)])
                continue
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
    assert [r.code for r in proc.outputs.rejected] == [], "the same offsets are not replays"
    assert _check_batches(store) == {("ehr", EPOCH): set(range(1, 61))}
    [(events, batches)] = store.backend.execute(
        f"SELECT (SELECT count() FROM {store.db}.access_events WHERE "
        f"(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash FROM "
        f"{store.db}.blocks)), (SELECT count() FROM {store.db}.source_batches WHERE "
        f"(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash FROM "
        f"{store.db}.blocks))"
    )
    assert (int(events), int(batches)) == (60, 10)


# --------------------------------------------------------------------------- the real thing


def _produce(settings: Settings, values: list[bytes], key: bytes = b"k") -> None:
    producer = Producer(kafka_config(settings, ADMIN, {"acks": "all"}))
    for v in values:
        producer.produce(settings.topic_events, value=v, key=key)
    assert producer.flush(30) == 0


def test_batch_records_through_a_processor_killed_mid_stream_are_chained_exactly_once(
    isolated: Settings, tmp_path: Path
) -> None:
    s = with_source(with_keys(isolated, tmp_path), tmp_path, source_id="ehr-main")
    settings = processor_settings(
        s, require_source_signatures=True, block_max_events=200, block_max_ms=100
    )
    ehr = load_signing_key(settings.source_key, env={})
    events = _payloads(3000, seed=74)
    events[1234] = MALFORMED
    records = _batches(ehr, "ehr-main", events, 50)  # 60 records
    done = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(0, len(records), 2):
                # keys spread the records over the partitions, as the SDK's do
                _produce(settings, records[i : i + 2], key=f"r{i}".encode())
                time.sleep(0.25)  # ~8 s of traffic: the kills land mid-stream
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            done.set()

    log = tmp_path / "processor.log"
    proc = start_processor(settings, log)
    producer = threading.Thread(target=produce)
    producer.start()
    store = store_for(settings)
    killed_mid_stream: list[bool] = []

    def chained() -> int:
        [(n,)] = _committed(store, "access_events", "count()")
        return int(n)

    try:
        for _ in range(2):
            before = chained()

            def progressed(b: int = before) -> bool:
                return chained() > b

            wait_until(progressed, 90, 0.1, "processor progress")
            killed_mid_stream.append(not done.is_set())
            stop(proc, signal.SIGKILL)
            proc = start_processor(settings, log)
        producer.join(timeout=120)
        assert done.is_set() and not errors, errors
        wait_until(lambda: chained() >= 2999, 240, what="every event chained after the kills")
        # the insider replays a chained batch record: REPLAYED, whenever it comes
        _produce(settings, [records[5]])
        quarantined = _read(settings, settings.topic_quarantine, expect=1)
        time.sleep(1.0)
    finally:
        stop(proc)
    assert _codes(quarantined) == ["REPLAYED"] and quarantined[0].value() == records[5]
    # exactly once: every event but the malformed one, each once
    stored = [
        bytes(c) if not isinstance(c, str) else c.encode()
        for (c,) in _committed(store, "access_events", "canonical")
    ]
    assert sorted(stored) == sorted(e for e in events if e != MALFORMED)
    [(all_rows, uniq)] = store.backend.execute(
        f"SELECT count(), uniqExact(chain_id, kafka_offset, idx) FROM {store.db}.access_events"
    )
    assert int(all_rows) == int(uniq), "a row written twice"
    assert _check_batches(store) == {("ehr-main", EPOCH): set(range(1, 3001)) - {1235}}
    [(batch_rows_n,)] = _committed(store, "source_batches", "count()")
    assert int(batch_rows_n) == 60
    # the malformed event alone, with where it was, in the dead-letter topic: listed
    # once even when a kill between its flush and its block made the restarted
    # processor send it again (at most once per start: three starts)
    [dead] = [d for d in read_dead_letters(settings) if d.batch_index is not None]
    assert 1 <= dead.copies <= 3
    assert (dead.value, dead.batch_index, dead.batch_seq, dead.code) == (
        MALFORMED,
        34,
        1235,
        "EVENT_INVALID",
    )
    assert dead.summary()["source"].endswith(f"@{dead.source_offset}#34")
    text = log.read_text(errors="replace")
    assert "source sequence numbers loaded from the store" in text
    assert killed_mid_stream[0], "the first kill came while records were being produced"
    resumed = [int(h) for h in re.findall(r"resumes at height (\d+)", text)]
    assert any(h > 0 for h in resumed), "no restart resumed a chain mid-stream"


def test_dead_letters_of_batch_records_keep_their_bytes_index_and_reason(
    isolated: Settings,
) -> None:
    """The real outputs: an event refused alone carries its batch index and number; a
    quarantined batch record too large for the quarantine topic (Kafka's default message
    size) is kept in the dead-letter topic, marked, rather than stalling the processor."""
    from processors.chainer import Rejected
    from processors.outputs import KafkaOutputs

    part = (isolated.topic_events, 2)
    claim = (("first_seq", "7"), ("seq", "9"), ("source_id", "ehr"))
    huge = b'{"events":[' + b" " * 1_040_000 + b"]}"
    outputs = KafkaOutputs(isolated)
    outputs.send_dead_letters(
        [
            (
                part,
                Rejected(
                    5, MALFORMED, b"k", "EVENT_INVALID", "bad", "$.x", claim=claim, batch_index=2
                ),
            ),
            (part, Rejected(6, huge, b"k", "BAD_SIGNATURE", "does not verify", "$", True)),
            (part, Rejected(7, b"small", b"k", "BAD_PROOF", "not the batch", "$", True)),
        ]
    )
    assert outputs.flush(10) == 0
    dead = {d.source_offset: d for d in read_dead_letters(isolated)}
    assert set(dead) == {5, 6}
    event = dead[5]
    assert (event.value, event.batch_index, event.batch_seq, event.code, event.field) == (
        MALFORMED,
        2,
        9,
        "EVENT_INVALID",
        "$.x",
    )
    assert event.position == "2@5#2" and event.summary()["batch_index"] == 2
    assert dead[6].value == huge and dead[6].quarantined and dead[6].code == "BAD_SIGNATURE"
    [small] = read_dead_letters(isolated, topic=isolated.topic_quarantine)
    assert (small.value, small.code, small.batch_index, small.quarantined) == (
        b"small",
        "BAD_PROOF",
        None,
        False,
    )
