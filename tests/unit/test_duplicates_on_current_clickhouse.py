"""The duplicate-access search (ADR 0023) on the current ClickHouse engine (chDB): its
SQL runs there as on 18.16, and searching the key space in slices (flat memory on a
large ledger) finds exactly what one pass finds."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator

import msgspec
import pytest

from careledger.storage.backend import ChdbBackend
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import ChainStore
from careledger_core.event import canonical_event_bytes, decode_event
from careledger_core.signing import SigningKey
from commands.benchmarks.verify_ledger import _payloads
from processors.chainer import PartitionChain
from verifiers.integrity.duplicates import check_duplicate_events

KEY = SigningKey.from_seed(hashlib.sha256(b"duplicates on chdb").digest())
CHAIN = "careledger.local/careledger.access-events/0"


@pytest.fixture
def store() -> Iterator[ChainStore]:
    backend = ChdbBackend()
    db = f"careledger_dup_{uuid.uuid4().hex[:8]}"
    migrate_backend(backend, db)
    yield ChainStore(backend, db)
    backend.execute(f"DROP DATABASE IF EXISTS {db}")
    backend.close()


def _resent(data: bytes) -> bytes:
    """The same access sent again: another event id, the same content."""
    event = decode_event(data)
    return canonical_event_bytes(msgspec.structs.replace(event, event_id=str(uuid.uuid4())))


def test_sliced_and_single_pass_searches_find_the_same_resends(store: ChainStore) -> None:
    values = list(_payloads(40, dt.datetime(2026, 1, 1)))
    values += [_resent(values[3]), _resent(values[17]), _resent(values[17])]
    chain = PartitionChain.resume(CHAIN, None, 65536)
    for offset, value in enumerate(values):
        assert chain.add(offset, value, None, 0.0, 0.0) is None
    block = chain.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    store.write_blocks([block])

    def positions(rows_per_pass: int) -> list[tuple[str, int | None, int | None]]:
        found = check_duplicate_events(store, rows_per_pass=rows_per_pass)
        return sorted((f.chain_id, f.height, f.event_index) for f in found)

    one_pass = positions(1_000_000)
    assert one_pass == [(CHAIN, 0, 40), (CHAIN, 0, 41), (CHAIN, 0, 42)]
    assert positions(1) == positions(7) == one_pass  # 43 and 7 passes
