"""Storage on both engines: ClickHouse 18.16 (the real server) and current ClickHouse (chDB).

Every statement the project issues goes through these code paths, so running
them on both engines proves the SQL works on the oldest and the newest version
we support.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import pytest

from careledger.config import Settings
from careledger.storage.backend import ChdbBackend, ClickHouseBackend, SqlBackend, StorageError
from careledger.storage.migrations import LATEST_VERSION, applied_versions, migrate_backend
from careledger.storage.store import ChainStore
from careledger_core.event import canonical_event_bytes
from careledger_core.signing import SigningKey
from processors.chainer import PartitionChain
from producers.simulator import HospitalModel, simulate

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger test key").digest())


@pytest.fixture(params=["clickhouse-18.16", "chdb-current"])
def backend(request: pytest.FixtureRequest) -> Iterator[SqlBackend]:
    if request.param.startswith("clickhouse"):
        settings: Settings = request.getfixturevalue("stack")
        b: SqlBackend = ClickHouseBackend.from_settings(settings)
    else:
        b = ChdbBackend()
    yield b
    b.close()


@pytest.fixture
def store(backend: SqlBackend) -> Iterator[ChainStore]:
    db = f"careledger_st_{uuid.uuid4().hex[:10]}"
    migrate_backend(backend, db)
    yield ChainStore(backend, db)
    backend.execute(f"DROP DATABASE IF EXISTS {db}")


def _blocks(chain_id: str, n_blocks: int, per_block: int, seed: int = 3) -> list:
    payloads = [
        canonical_event_bytes(e)
        for e in simulate(HospitalModel(seed=seed), count=n_blocks * per_block, seed=seed)
    ]
    chain = PartitionChain.resume(chain_id, None, 65536, earliest_offset=0)
    blocks = []
    for offset, value in enumerate(payloads):
        chain.add(offset, value, None, 0.0, 0.0)
        if len(chain.pending) == per_block:
            blocks.append(chain.seal(KEY, now=1_800_000_000.0 + offset))
    return blocks


def test_migrations_are_versioned_and_idempotent(backend: SqlBackend) -> None:
    db = f"careledger_mig_{uuid.uuid4().hex[:10]}"
    try:
        first = migrate_backend(backend, db)
        again = migrate_backend(backend, db)
        assert first == list(range(1, LATEST_VERSION + 1))
        assert again == []
        assert applied_versions(backend, db) == set(first)
    finally:
        backend.execute(f"DROP DATABASE IF EXISTS {db}")


def test_blocks_round_trip_byte_for_byte(store: ChainStore) -> None:
    blocks = _blocks("o/t/0", 3, 20)
    store.write_blocks(blocks)
    head = store.head("o/t/0")
    assert head is not None
    assert (head.height, head.block_hash, head.last_offset) == (2, blocks[-1].block_hash.hex(), 59)
    headers = list(store.headers("o/t/0", page_size=2))  # several pages
    assert [h.height for h in headers] == [0, 1, 2]
    for stored, block in zip(headers, blocks, strict=True):
        assert stored.header == block.header_bytes
        assert bytes.fromhex(stored.signature.decode()) == block.signature
    events = store.events("o/t/0", 0, 2)
    assert len(events) == 60
    originals = [e for b in blocks for e in b.events]
    assert [e.canonical for e in events] == [o.canonical for o in originals]
    assert [e.leaf_hash.decode() for e in events] == [o.leaf_hash.hex() for o in originals]
    assert [e.patient_id.decode() for e in events] == [o.event.patient.id for o in originals]
    assert store.chain_ids() == ["o/t/0"]


def test_rows_left_without_a_header_are_uncommitted_and_discarded(store: ChainStore) -> None:
    blocks = _blocks("o/t/1", 3, 10)
    store.write_blocks(blocks[:2])
    # A crash after the events insert of block 2 and before its header insert:
    from careledger.storage.store import EVENT_COLUMNS

    orphan = blocks[2]
    rows = [
        (
            "o/t/1",
            2,
            i,
            orphan.block_hash.hex(),
            e.offset,
            e.event.event_id,
            e.event.occurred_at,
            __import__("datetime").date(2026, 11, 2),
            e.event.actor.id,
            e.event.patient.id,
            e.event.action,
            e.event.outcome,
            e.event.source.system,
            e.canonical,
            e.leaf_hash.hex(),
        )
        for i, e in enumerate(orphan.events)
    ]
    store.backend.insert(f"{store.db}.access_events", EVENT_COLUMNS, rows)
    head = store.head("o/t/1")
    assert head is not None and head.height == 1
    assert store.uncommitted_count("o/t/1", head.height) == 10
    assert store.discard_uncommitted("o/t/1", head.height) == 10
    assert store.uncommitted_count("o/t/1", head.height) == 0
    assert len(store.events("o/t/1", 0, 1)) == 20  # committed rows untouched


def test_strings_come_back_as_bytes_even_when_not_utf8(store: ChainStore) -> None:
    # What an attacker may write is not necessarily UTF-8; reading it must not crash.
    store.backend.execute(
        f"INSERT INTO {store.db}.blocks (chain_id, height, header) SELECT 'x', 0, unhex('fffe00')"
    )
    (stored,) = list(store.headers("x"))
    assert stored.header == b"\xff\xfe\x00"


def test_unreachable_server_is_an_infrastructure_error() -> None:
    backend = ClickHouseBackend("127.0.0.1", 1, connect_timeout=0.5)
    with pytest.raises(StorageError) as info:
        backend.execute("SELECT 1")
    assert info.value.code == "STORAGE_UNAVAILABLE"


def test_raw_records_chain_store_and_verify(store: ChainStore) -> None:
    """Raw records (the gateway's received bytes) have a table of their own (migration),
    may be far larger than an access event, and verify like any chain."""
    from careledger.raw_record import build_envelope
    from careledger.storage.kinds import RAW
    from careledger.storage.store import StoredRaw
    from careledger_core.signing import TrustedKeys
    from verifiers.integrity.fsck import verify_chain

    raw_store = ChainStore(store.backend, store.db, raw_topics=frozenset({"raw"}))
    chain = PartitionChain.resume("o/raw/0", None, 65536, earliest_offset=0, kind=RAW)
    payloads = [b"<85>1 - - - - - - <AuditMessage/>", b"x" * (200 * 1024)]
    values = []
    for i, data in enumerate(payloads):
        _env, value = build_envelope(
            record_id=str(uuid.UUID(int=i + 1, version=4)),
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            format="syslog+dicom-audit+xml",
            received_at="2026-11-29T10:00:00.000000Z",
            transport={"protocol": "syslog-tls", "source_id": "pacs"},
        )
        values.append(value)
        assert chain.add(i, value, b"pacs", 0.0, 0.0) is None  # 270 KiB is chained
    block = chain.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    raw_store.write_blocks([block])
    rows = raw_store.events("o/raw/0", 0, 0)
    assert all(isinstance(r, StoredRaw) for r in rows)
    assert [r.canonical for r in rows] == values
    assert [r.source_id for r in rows] == [b"pacs", b"pacs"]
    assert raw_store.chain_ids() == ["o/raw/0"]
    report = verify_chain(raw_store, "o/raw/0", TrustedKeys([KEY.public_key]), kind=RAW)
    assert report.result == "intact", report.findings
