"""Hostile rows in a real store (the current ClickHouse engine, in-process through chDB),
read by the verifier's real reader: ``run_verification`` + the source checks, as
``careledger verify`` runs them. ClickHouse 18.16: tests/integration/test_tamper_columns.py.

The attacks are SQL an insider with write access can run: ``ALTER TABLE ... UPDATE``,
``DELETE``, ``INSERT ... SELECT`` of a changed copy (a key or partition column cannot be
updated in place, so ``occurred_date`` is moved by re-inserting the row), and schema
changes (``MODIFY COLUMN`` to another type or to Nullable, then NULL).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from careledger.config import Settings
from careledger.storage.backend import ChdbBackend
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import ChainStore
from careledger_core.signing import format_public_key
from tests.ledger_builder import (
    ACCESS_CHAIN,
    RAW_CHAIN,
    REFERENCE_CHAIN,
    REGISTRAR,
    SOURCES_CHAIN,
    TRUSTED,
    StoreLedger,
    mixed_ledger,
)
from verifiers.integrity.run import (
    VerificationRun,
    chains_to_verify,
    check_run_sources,
    run_verification,
)

Where = tuple[str, str, int | None, int | None]


class Ledger(StoreLedger):
    def __init__(self, backend: ChdbBackend, db: str) -> None:
        self.settings = Settings(
            clickhouse_database=db,
            trusted_registrar_keys=(format_public_key(REGISTRAR.public_key),),
        )
        super().__init__(ChainStore.for_settings(backend, self.settings), sync_mutations=True)

    def verify(self) -> VerificationRun:
        chains = chains_to_verify(self.store, None, {})
        run = run_verification(
            self.store, TRUSTED, mode="full", database=self.db, chains=chains, census=True
        )
        check_run_sources(run, self.store, self.settings)
        return run


@pytest.fixture(scope="module")
def blocks() -> dict[str, Any]:
    return mixed_ledger()


@pytest.fixture
def ledger(blocks: dict[str, Any]) -> Iterator[Ledger]:
    backend = ChdbBackend()
    db = f"careledger_hostile_{uuid.uuid4().hex[:8]}"
    migrate_backend(backend, db)
    ledger = Ledger(backend, db)
    for chain_blocks in blocks.values():
        ledger.store.write_blocks(chain_blocks)
    try:
        yield ledger
    finally:
        backend.execute(f"DROP DATABASE IF EXISTS {db}")
        backend.close()


def where(run: VerificationRun) -> set[Where]:
    return {(str(f.code), f.chain_id, f.height, f.event_index) for f in run.findings()}


def test_the_signed_ledger_verifies_clean_in_a_real_store(ledger: Ledger) -> None:
    run = ledger.verify()
    assert list(run.findings()) == []
    assert run.sources is not None and run.sources["signed_events"] == 12
    assert {r.chain_id for r in run.reports} == {
        ACCESS_CHAIN,
        SOURCES_CHAIN,
        REFERENCE_CHAIN,
        RAW_CHAIN,
    }


@pytest.mark.parametrize("leaf", ["", "zz" * 32, "ab", "AB" * 32])
def test_an_empty_or_non_hex_leaf_hash_is_a_finding_not_a_traceback(
    ledger: Ledger, leaf: str
) -> None:
    ledger.update("access_events", f"leaf_hash = '{leaf}'", ACCESS_CHAIN, 1, 2)
    found = where(ledger.verify())
    assert ("EVENT_HASH_MISMATCH", ACCESS_CHAIN, 1, 2) in found
    assert ("SOURCE_PROOF_INVALID", ACCESS_CHAIN, 1, 2) in found


def test_empty_canonical_bytes_are_a_finding_not_a_traceback(ledger: Ledger) -> None:
    ledger.update("access_events", "canonical = ''", ACCESS_CHAIN, 0, 1)
    found = where(ledger.verify())
    assert {
        ("EVENT_HASH_MISMATCH", ACCESS_CHAIN, 0, 1),
        ("EVENT_NOT_CANONICAL", ACCESS_CHAIN, 0, 1),
        ("MERKLE_ROOT_MISMATCH", ACCESS_CHAIN, 0, None),
    } <= found


def test_a_moved_occurred_date_is_found(ledger: Ledger) -> None:
    ledger.reinsert("access_events", ACCESS_CHAIN, 2, 0, occurred_date="occurred_date - 40")
    assert where(ledger.verify()) == {("EVENT_FIELD_MISMATCH", ACCESS_CHAIN, 2, 0)}


def test_a_moved_effective_date_is_found(ledger: Ledger) -> None:
    ledger.reinsert(
        "reference_records", REFERENCE_CHAIN, 1, 1, effective_date="effective_date + 400"
    )
    assert where(ledger.verify()) == {("EVENT_FIELD_MISMATCH", REFERENCE_CHAIN, 1, 1)}


def test_a_kafka_offset_moved_into_a_dead_lettered_slot_is_found(ledger: Ledger) -> None:
    ledger.update("access_events", "kafka_offset = 2", ACCESS_CHAIN, 0, 2)
    assert where(ledger.verify()) == {("EVENT_OFFSETS_MISMATCH", ACCESS_CHAIN, 0, None)}


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("seq", "seq + 100"),
        ("seq", "1"),  # another event's number: a reader would see a replay
        ("epoch", "'00000000000000ff'"),
        ("source_id", "'lab'"),
        ("key_id", "'0123456789abcdef'"),
        ("event_id", "'00000000-0000-4000-8000-000000000000'"),
        ("signed_by", "'gateway'"),
    ],
)
def test_an_edited_attestation_side_column_is_found(
    ledger: Ledger, column: str, value: str
) -> None:
    ledger.update("source_attestations", f"{column} = {value}", ACCESS_CHAIN, 1, 3)
    run = ledger.verify()
    assert where(run) == {("SOURCE_ATTESTATION_INVALID", ACCESS_CHAIN, 1, 3)}
    [f] = run.source_findings
    assert set(f.details["columns"]) == {column}


def test_a_second_attestation_row_for_one_event_is_found(ledger: Ledger) -> None:
    ledger.copy_rows("source_attestations", "height = 2 AND idx = 1", seq="seq + 1000")
    assert ("SOURCE_ATTESTATION_INVALID", ACCESS_CHAIN, 2, 1) in where(ledger.verify())


def test_an_attestation_row_for_no_event_is_found(ledger: Ledger) -> None:
    ledger.copy_rows("source_attestations", "height = 2 AND idx = 1", idx="7")
    assert where(ledger.verify()) == {("SOURCE_ATTESTATION_INVALID", ACCESS_CHAIN, 2, 7)}


_ACC, _REF = ACCESS_CHAIN, REFERENCE_CHAIN
_ATT = "SOURCE_ATTESTATION_INVALID"


@pytest.mark.parametrize(
    ("table", "column", "nullable", "chain", "code"),
    [
        ("access_events", "kafka_offset", "Nullable(UInt64)", _ACC, "EVENT_FIELD_MISMATCH"),
        ("access_events", "leaf_hash", "Nullable(String)", _ACC, "EVENT_HASH_MISMATCH"),
        ("access_events", "canonical", "Nullable(String)", _ACC, "EVENT_NOT_CANONICAL"),
        ("access_events", "block_hash", "Nullable(String)", _ACC, "EVENT_UNEXPECTED"),
        ("access_events", "outcome", "Nullable(UInt8)", _ACC, "EVENT_FIELD_MISMATCH"),
        ("reference_records", "version", "Nullable(UInt32)", _REF, "EVENT_FIELD_MISMATCH"),
        ("source_attestations", "seq", "Nullable(UInt64)", _ACC, _ATT),
        ("source_attestations", "statement", "Nullable(String)", _ACC, _ATT),
        ("source_attestations", "batch_index", "Nullable(UInt32)", _ACC, _ATT),
    ],
)
def test_a_column_made_nullable_and_set_to_null_is_a_finding(
    ledger: Ledger, table: str, column: str, nullable: str, chain: str, code: str
) -> None:
    ledger.mutate(f"ALTER TABLE {{db}}.{table} MODIFY COLUMN {column} {nullable}")
    ledger.update(table, f"{column} = NULL", chain, 1, 1)
    found = where(ledger.verify())
    assert any(c == code and ch == chain and h == 1 for c, ch, h, _ in found), found


def test_a_header_column_made_nullable_and_set_to_null_is_a_finding(ledger: Ledger) -> None:
    ledger.mutate("ALTER TABLE {db}.blocks MODIFY COLUMN event_count Nullable(UInt32)")
    ledger.mutate(
        "ALTER TABLE {db}.blocks UPDATE event_count = NULL WHERE chain_id = %(c)s AND height = 1",
        {"c": ACCESS_CHAIN},
    )
    assert ("BLOCK_HEADER_MISMATCH", ACCESS_CHAIN, 1, None) in where(ledger.verify())


@pytest.mark.parametrize(
    ("column", "new_type"),
    [("outcome", "String"), ("kafka_offset", "Float64"), ("occurred_at", "Nullable(String)")],
)
def test_a_column_of_another_type_is_a_finding_on_every_row(
    ledger: Ledger, column: str, new_type: str
) -> None:
    ledger.mutate(f"ALTER TABLE {{db}}.access_events MODIFY COLUMN {column} {new_type}")
    run = ledger.verify()
    report = next(r for r in run.reports if r.chain_id == ACCESS_CHAIN)
    if column == "occurred_at":  # same values, a Nullable type: nothing a reader sees changed
        assert run.failures == 0
    else:
        assert report.counts["EVENT_FIELD_MISMATCH"] == 12


def test_rows_under_a_chain_id_that_is_not_utf8_are_found(ledger: Ledger) -> None:
    ledger.copy_rows("access_events", "height = 0 AND idx = 0", chain_id="unhex('ff6669')")
    run = ledger.verify()
    [f] = list(run.findings())
    assert f.code == "EVENT_UNEXPECTED" and f.chain_id == "\\xfffi"
    assert f.details == {"table": "access_events", "rows": 1, "chain_id_hex": "ff6669"}
