"""Fencing a zombie processor (ADR 0031), on ClickHouse 18.16 and current ClickHouse.

The attack: a processor stalls past its session, another takes its chains, the first
resumes and writes the blocks it had sealed. Without a fence that is a second block at
a height. Each test plays both processors' writes in the order that hurts and checks
that exactly one block stands at every height, the loser's rows are gone, and the chain
verifies intact."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator

import pytest

from careledger.config import Settings
from careledger.storage import fencing
from careledger.storage.backend import ChdbBackend, ClickHouseBackend, SqlBackend, quote
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import HEADER_COLUMNS, ChainStore
from careledger_core.event import canonical_event_bytes
from careledger_core.signing import SigningKey, TrustedKeys
from processors.chainer import PartitionChain
from producers.simulator import HospitalModel, simulate
from verifiers.integrity.fsck import verify_chain

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger fencing test key").digest())
CHAIN = "o/events/0"


@pytest.fixture(params=["clickhouse-18.16", "chdb-current"])
def store(request: pytest.FixtureRequest) -> Iterator[ChainStore]:
    if request.param.startswith("clickhouse"):
        settings: Settings = request.getfixturevalue("stack")
        backend: SqlBackend = ClickHouseBackend.from_settings(settings)
    else:
        backend = ChdbBackend()
    db = f"careledger_fence_{uuid.uuid4().hex[:10]}"
    migrate_backend(backend, db)
    yield ChainStore(backend, db)
    backend.execute(f"DROP DATABASE IF EXISTS {db}")
    backend.close()


def _sealed(seed: int, n_blocks: int = 2, per_block: int = 5) -> list:
    """Blocks 0..n-1 of CHAIN from the events of ``seed``: two processors' versions of
    the same heights differ in their events (and so in their block hashes)."""
    chain = PartitionChain.resume(CHAIN, None, 65536, earliest_offset=0)
    blocks = []
    events = simulate(HospitalModel(seed=seed), count=n_blocks * per_block, seed=seed)
    for offset, event in enumerate(events):
        chain.add(offset, canonical_event_bytes(event), None, 0.0, 0.0)
        if len(chain.pending) == per_block:
            blocks.append(chain.seal(KEY, now=1_800_000_000.0 + seed + offset))
    return blocks


def _hashes_at(store: ChainStore) -> dict[int, set[str]]:
    rows = store.backend.execute(
        f"SELECT height, block_hash FROM {store.db}.blocks WHERE chain_id = %(c)s", {"c": CHAIN}
    )
    out: dict[int, set[str]] = {}
    for height, block_hash in rows:
        text = block_hash.decode() if isinstance(block_hash, bytes) else block_hash
        out.setdefault(int(height), set()).add(text)
    return out


def _event_rows_named(store: ChainStore, hashes: list[str]) -> int:
    rows = store.backend.execute(
        f"SELECT count() FROM {store.db}.access_events WHERE block_hash IN %(h)s",
        {"h": tuple(hashes)},
    )
    return int(rows[0][0])


def _wait_gone(store: ChainStore, hashes: list[str]) -> None:
    deadline = time.monotonic() + 30
    while _event_rows_named(store, hashes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _event_rows_named(store, hashes) == 0, "the fenced write's rows were not deleted"


def _intact(store: ChainStore) -> None:
    report = verify_chain(store, CHAIN, TrustedKeys([KEY.public_key]))
    assert report.result == "intact", report.findings


def test_a_zombie_resuming_after_the_new_owner_wrote_cannot_write_a_second_block(
    store: ChainStore,
) -> None:
    zombie, successor = _sealed(seed=1), _sealed(seed=2)
    store.claim(CHAIN, "processor-a")
    store.claim(CHAIN, "processor-b")  # A stalled; the group gave the chain to B
    assert store.write_blocks(successor, owner="processor-b") == set()
    assert store.write_blocks(zombie, owner="processor-a") == {CHAIN}  # A resumes
    assert _hashes_at(store) == {b.header.height: {b.block_hash.hex()} for b in successor}
    _wait_gone(store, [b.block_hash.hex() for b in zombie])
    _intact(store)


def test_a_zombie_writing_before_the_new_owner_is_fenced_by_the_claim_alone(
    store: ChainStore,
) -> None:
    zombie, successor = _sealed(seed=3), _sealed(seed=4)
    store.claim(CHAIN, "processor-a")
    store.claim(CHAIN, "processor-b")
    assert store.write_blocks(zombie, owner="processor-a") == {CHAIN}
    assert _hashes_at(store) == {}
    assert store.write_blocks(successor, owner="processor-b") == set()
    _wait_gone(store, [b.block_hash.hex() for b in zombie])
    _intact(store)


def test_an_owner_that_read_a_stale_head_is_refused_above_a_stored_block(
    store: ChainStore,
) -> None:
    """The old owner's write landed just before the new owner's claim: the new owner,
    resuming from the head it read before, must not write a second block at height 0."""
    first, second = _sealed(seed=5), _sealed(seed=6)
    store.claim(CHAIN, "processor-a")
    assert store.write_blocks(first, owner="processor-a") == set()
    store.claim(CHAIN, "processor-b")
    assert store.write_blocks(second, owner="processor-b") == {CHAIN}
    assert _hashes_at(store) == {b.header.height: {b.block_hash.hex()} for b in first}
    _wait_gone(store, [b.block_hash.hex() for b in second])
    _intact(store)


def test_two_claims_racing_for_one_epoch_name_one_owner(store: ChainStore) -> None:
    store.backend.insert(
        f"{store.db}.chain_owners",
        ("chain_id", "epoch", "owner"),
        [(CHAIN, 7, "processor-a"), (CHAIN, 7, "processor-b")],
    )
    assert fencing.owner_of(store.backend, store.db, CHAIN) == "processor-b"
    assert store.write_blocks(_sealed(seed=7), owner="processor-a") == {CHAIN}
    assert store.write_blocks(_sealed(seed=8), owner="processor-b") == set()
    assert store.claim(CHAIN, "processor-c") == 8  # the next claim outranks both


def test_an_unclaimed_chain_cannot_be_written_by_a_processor(store: ChainStore) -> None:
    assert store.write_blocks(_sealed(seed=9), owner="processor-a") == {CHAIN}
    assert _hashes_at(store) == {}


def test_other_chains_of_the_same_write_are_stored_when_one_is_fenced(store: ChainStore) -> None:
    other = "o/events/1"
    fenced_blocks = _sealed(seed=10)
    chain = PartitionChain.resume(other, None, 65536, earliest_offset=0)
    for offset, event in enumerate(simulate(HospitalModel(seed=11), count=5, seed=11)):
        chain.add(offset, canonical_event_bytes(event), None, 0.0, 0.0)
    kept = chain.seal(KEY, now=1_800_000_100.0)
    store.claim(CHAIN, "processor-a")
    store.claim(CHAIN, "processor-b")
    store.claim(other, "processor-a")
    assert store.write_blocks([*fenced_blocks, kept], owner="processor-a") == {CHAIN}
    head = store.head(other)
    assert head is not None and head.block_hash == kept.block_hash.hex()


def _header_row(chain_id: str, height: int) -> tuple[object, ...]:
    """A ``blocks`` row of ~1 kB (a header's size) for the statement-size tests."""
    digest = hashlib.sha256(f"{chain_id}/{height}".encode()).hexdigest()
    values = {
        "chain_id": chain_id,
        "height": height,
        "block_hash": digest,
        "prev_hash": "00" * 32,
        "merkle_root": digest[::-1],
        "event_count": 1000,
        "first_offset": height * 1000,
        "last_offset": height * 1000 + 999,
        "dead_lettered": 0,
        "absent_offsets": 0,
        "first_event_time": "2026-12-07T06:00:00.000000Z",
        "last_event_time": "2026-12-07T06:00:00.250000Z",
        "created_at": "2026-12-07T06:00:00.300000Z",
        "key_id": "ab" * 8,
        "header": "{'quoted': \"x\\\\y\"}" + "h" * 600,
        "signature": "cd" * 64,
    }
    return tuple(values[c] for c in HEADER_COLUMNS)


def test_a_write_of_headers_larger_than_one_statement_is_stored_whole_and_still_fenced(
    store: ChainStore,
) -> None:
    """A processor catching up on a backlog writes hundreds of blocks at once: their
    header rows (~400 kB here) exceed what ClickHouse parses of one statement (256 KiB),
    so they go in several guarded statements, a chain never split. Every owned chain's
    rows are stored once, quoting intact, and a chain owned by someone else, in any of
    the statements, is still refused."""
    chains = [f"o/events/{p}" for p in range(40)]
    for chain_id in chains:
        store.claim(chain_id, "processor-a")
    store.claim(chains[27], "processor-b")  # taken over: its rows must be refused
    rows = {c: [_header_row(c, h) for h in range(10)] for c in chains}
    assert sum(len(quote(v)) for rs in rows.values() for r in rs for v in r) > 262_144
    types = fencing.column_types(store.backend, store.db, "blocks")
    fencing.insert_headers_fenced(
        store.backend, store.db, HEADER_COLUMNS, types, rows, "processor-a"
    )
    stored = store.backend.execute(
        f"SELECT chain_id, height, block_hash, header FROM {store.db}.blocks"
    )
    got = sorted(tuple(v.decode() if isinstance(v, bytes) else v for v in r) for r in stored)
    want = sorted(
        (c, h, r[HEADER_COLUMNS.index("block_hash")], r[HEADER_COLUMNS.index("header")])
        for c, rs in rows.items()
        if c != chains[27]
        for h, r in enumerate(rs)
    )
    assert got == want


def test_statements_split_by_chain_keep_each_chains_guard(store: ChainStore) -> None:
    """Forced into one statement per chain, the guard still judges each chain alone: an
    occupied height refuses that chain's rows, and only that chain's."""
    chains = ["o/events/0", "o/events/1", "o/events/2"]
    for chain_id in chains:
        store.claim(chain_id, "processor-a")
    types = fencing.column_types(store.backend, store.db, "blocks")
    first = {chains[1]: [_header_row(chains[1], 3)]}  # someone stored height 3 already
    fencing.insert_headers_fenced(
        store.backend, store.db, HEADER_COLUMNS, types, first, "processor-a"
    )
    rows = {c: [_header_row(c, 2), _header_row(c, 3)] for c in chains}
    fencing.insert_headers_fenced(
        store.backend, store.db, HEADER_COLUMNS, types, rows, "processor-a", max_statement_bytes=1
    )
    stored = store.backend.execute(f"SELECT chain_id, height FROM {store.db}.blocks")
    got = sorted((c.decode() if isinstance(c, bytes) else c, int(h)) for c, h in stored)
    assert got == [(chains[0], 2), (chains[0], 3), (chains[1], 3), (chains[2], 2), (chains[2], 3)]
