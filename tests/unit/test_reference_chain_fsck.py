"""Reference chains verified over a real store (the current ClickHouse engine, in-process)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import pytest

from careledger.storage.backend import ChdbBackend
from careledger.storage.kinds import REFERENCE
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import ChainStore
from careledger_core.findings import FindingCode
from careledger_core.reference import (
    REFERENCE_SCHEMA,
    canonical_reference_bytes,
    reference_from_dict,
)
from careledger_core.signing import SigningKey, TrustedKeys
from processors.chainer import PartitionChain
from verifiers.integrity.fsck import verify_chain

KEY = SigningKey.from_seed(hashlib.sha256(b"reference chain test key").digest())
CHAIN = "careledger.local/careledger.workforce/0"


def staff(version: int, status: str, user: str = "E1") -> bytes:
    return canonical_reference_bytes(
        reference_from_dict(
            {
                "schema": REFERENCE_SCHEMA,
                "kind": "staff",
                "record_id": user,
                "version": version,
                "recorded_at": f"2026-11-0{version}T08:00:00.000000Z",
                "effective_at": f"2026-11-0{version}T08:00:00.000000Z",
                "body": {
                    "user_id": user,
                    "family_name": "Smith",
                    "given_name": "Ana",
                    "roles": ["nurse"],
                    "department": "CARD",
                    "status": status,
                    "start_date": "2020-01-01",
                },
            }
        )
    )


@pytest.fixture
def store() -> Iterator[ChainStore]:
    backend = ChdbBackend()
    db = f"careledger_ref_{uuid.uuid4().hex[:8]}"
    migrate_backend(backend, db)
    yield ChainStore(backend, db, reference_topics=frozenset({"careledger.workforce"}))
    backend.execute(f"DROP DATABASE IF EXISTS {db}")
    backend.close()


def _chain(store: ChainStore, values: list[bytes]) -> None:
    chain = PartitionChain.resume(CHAIN, None, 65536, kind=REFERENCE)
    for offset, value in enumerate(values):
        assert chain.add(offset, value, b"E1", 0.0, 0.0) is None
    block = chain.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    store.write_blocks([block])


def test_two_versions_of_one_record_in_a_block_are_legitimate(store: ChainStore) -> None:
    _chain(store, [staff(1, "active"), staff(2, "terminated")])
    report = verify_chain(store, CHAIN, TrustedKeys([KEY.public_key]), kind=REFERENCE)
    assert report.result == "intact", [f.to_dict() for f in report.findings]
    assert report.events == 2


def test_the_same_version_twice_is_a_duplicate(store: ChainStore) -> None:
    _chain(store, [staff(1, "active"), staff(1, "active")])
    report = verify_chain(store, CHAIN, TrustedKeys([KEY.public_key]), kind=REFERENCE)
    assert [(f.code, f.event_index) for f in report.findings] == [
        (FindingCode.EVENT_DUPLICATE_ID, 1)
    ]


def test_a_forged_column_of_a_reference_row_is_found(store: ChainStore) -> None:
    _chain(store, [staff(1, "active"), staff(2, "terminated")])
    store.backend.execute(
        f"ALTER TABLE {store.db}.reference_records UPDATE version = 7 WHERE idx = 1 "
        "SETTINGS mutations_sync = 2"
    )
    report = verify_chain(store, CHAIN, TrustedKeys([KEY.public_key]), kind=REFERENCE)
    assert [(f.code, f.event_index, f.event_id) for f in report.findings] == [
        (FindingCode.EVENT_FIELD_MISMATCH, 1, "E1")
    ]
