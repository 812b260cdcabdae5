"""The columns products read, tampered with in ClickHouse 18.16 the way an insider would.

Each test writes a small signed ledger (``tests/ledger_builder.py``: signed access events
with a dead-lettered record in the first block, the registrar-signed key registration
on the sources chain, staff and raw records) into its own database, runs SQL against
it, and checks what the verifier's real reader and checks say: the same pass
``careledger verify`` runs (fsck of every chain, rows under impossible chain ids, the
source checks). The same attacks on the current engine: tests/unit/test_verify_hostile_store.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from careledger.config import PROJECT_ROOT, Settings
from careledger.processes import child_env
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.kinds import ACCESS
from careledger.storage.store import ChainStore
from careledger_core.event import decode_and_canonicalize
from careledger_core.signing import format_public_key
from tests.ledger_builder import (
    PROCESSOR,
    REGISTRAR,
    TRUSTED,
    StoreLedger,
    access_payloads,
    mixed_ledger,
    plain_chain,
)
from verifiers.integrity.run import (
    VerificationRun,
    chains_to_verify,
    check_run_sources,
    run_verification,
)

pytestmark = pytest.mark.integration

Where = tuple[str, str, int | None, int | None]


class Ledger(StoreLedger):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
        super().__init__(store, sync_mutations=False)
        self.access = settings.chain_id(settings.topic_events, 0)
        self.workforce = settings.chain_id(settings.topic_workforce, 0)

    def verify(self) -> VerificationRun:
        chains = chains_to_verify(self.store, None, {})
        run = run_verification(
            self.store, TRUSTED, mode="full", database=self.db, chains=chains, census=True
        )
        check_run_sources(run, self.store, self.settings)
        return run


def trusting(settings: Settings) -> Settings:
    return settings.replace(
        trusted_keys=(format_public_key(PROCESSOR.public_key),),
        trusted_registrar_keys=(format_public_key(REGISTRAR.public_key),),
    )


@pytest.fixture
def ledger(isolated: Settings) -> Iterator[Ledger]:
    ledger = Ledger(trusting(isolated))
    for blocks in mixed_ledger(ledger.settings).values():
        ledger.store.write_blocks(blocks)
    try:
        yield ledger
    finally:
        ledger.backend.close()


def where(run: VerificationRun) -> set[Where]:
    return {(str(f.code), f.chain_id, f.height, f.event_index) for f in run.findings()}


def test_the_signed_ledger_verifies_clean_on_clickhouse_18(ledger: Ledger) -> None:
    run = ledger.verify()
    assert list(run.findings()) == []
    assert run.sources is not None and run.sources["signed_events"] == 12


# --------------------------------------------------------------------------- derived dates


def _patient_payloads(patient: str, count: int) -> list[bytes]:
    """``count`` accesses to one patient, one a day from 2026-11-02."""
    out = []
    for i, raw in enumerate(p for p in access_payloads(200, seed=9) if b'"id":"-"' not in p):
        if len(out) == count:
            break
        doc = json.loads(raw)
        doc["patient"]["id"] = patient
        doc["occurred_at"] = doc["recorded_at"] = f"2026-11-{2 + i:02d}T10:00:00.000000Z"
        _event, canonical = decode_and_canonicalize(json.dumps(doc).encode())
        out.append(canonical)
    return out


def _report_lines(settings: Settings, patient: str) -> int:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "commands.cli",
            "access-report",
            "--patient",
            patient,
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-30",
            "--format",
            "json",
        ],
        cwd=PROJECT_ROOT,
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return len(json.loads(result.stdout)["lines"])


def test_a_moved_occurred_date_hides_an_access_from_the_report_and_verify_finds_it(
    isolated: Settings,
) -> None:
    settings = trusting(isolated).replace(require_source_signatures=False)
    ledger = Ledger(settings)
    chain = ledger.access
    ledger.store.write_blocks(
        plain_chain(ACCESS, chain, _patient_payloads("P-REPORT", 8), blocks=2, per_block=4)
    )
    assert _report_lines(settings, "P-REPORT") == 8
    # occurred_date is the partition key: it cannot be updated in place; the row is
    # re-inserted with the date moved 40 days back, and the original deleted
    ledger.reinsert("access_events", chain, 1, 1, occurred_date="occurred_date - 40")
    assert _report_lines(settings, "P-REPORT") == 7  # one access is gone from the report
    run = ledger.verify()
    assert where(run) == {("EVENT_FIELD_MISMATCH", chain, 1, 1)}
    [f] = list(run.findings())
    assert f.details["columns"] == {  # type: ignore[comparison-overlap]
        "occurred_date": {"column": "2026-09-28", "event": "2026-11-07"}
    }
    ledger.backend.close()


def test_a_moved_effective_date_is_found(ledger: Ledger) -> None:
    ledger.reinsert(
        "reference_records", ledger.workforce, 1, 1, effective_date="effective_date + 400"
    )
    assert where(ledger.verify()) == {("EVENT_FIELD_MISMATCH", ledger.workforce, 1, 1)}


# --------------------------------------------------------------------------- offsets


def test_a_kafka_offset_moved_into_a_dead_lettered_slot_is_found(ledger: Ledger) -> None:
    rows = ledger.sql("SELECT kafka_offset FROM {db}.access_events WHERE height = 0 ORDER BY idx")
    assert [r[0] for r in rows] == [0, 1, 3, 4]  # offset 2 was dead-lettered
    ledger.update("access_events", "kafka_offset = 2", ledger.access, 0, 2)
    run = ledger.verify()
    assert where(run) == {("EVENT_OFFSETS_MISMATCH", ledger.access, 0, None)}
    [f] = list(run.findings())
    assert f.details["stored_free_offsets"] == [3]


# --------------------------------------------------------------------------- attestations


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("seq", "seq + 100"),
        ("seq", "1"),
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
    ledger.update("source_attestations", f"{column} = {value}", ledger.access, 1, 3)
    run = ledger.verify()
    assert where(run) == {("SOURCE_ATTESTATION_INVALID", ledger.access, 1, 3)}
    [f] = run.source_findings
    assert set(f.details["columns"]) == {column}  # type: ignore[call-overload]


def test_a_second_attestation_row_for_one_event_is_found(ledger: Ledger) -> None:
    ledger.copy_rows("source_attestations", "height = 2 AND idx = 1", seq="seq + 1000")
    assert ("SOURCE_ATTESTATION_INVALID", ledger.access, 2, 1) in where(ledger.verify())


# --------------------------------------------------------------------------- malformed rows


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ("leaf_hash = ''", {"EVENT_HASH_MISMATCH", "SOURCE_PROOF_INVALID"}),
        ("leaf_hash = 'not hex at all'", {"EVENT_HASH_MISMATCH", "SOURCE_PROOF_INVALID"}),
        ("canonical = ''", {"EVENT_HASH_MISMATCH", "EVENT_NOT_CANONICAL"}),
        ("canonical = unhex('fffe00')", {"EVENT_HASH_MISMATCH", "EVENT_NOT_CANONICAL"}),
    ],
)
def test_malformed_values_are_findings_at_their_row(
    ledger: Ledger, sets: str, expected: set[str]
) -> None:
    ledger.update("access_events", sets, ledger.access, 2, 2)
    found = where(ledger.verify())
    assert {(code, ledger.access, 2, 2) for code in expected} <= found


@pytest.mark.parametrize(
    ("table", "column", "new_type", "code"),
    [
        ("access_events", "kafka_offset", "Nullable(UInt64)", "EVENT_FIELD_MISMATCH"),
        ("access_events", "leaf_hash", "Nullable(String)", "EVENT_HASH_MISMATCH"),
        ("source_attestations", "seq", "Nullable(UInt64)", "SOURCE_ATTESTATION_INVALID"),
    ],
)
def test_a_column_made_nullable_and_set_to_null_is_a_finding(
    ledger: Ledger, table: str, column: str, new_type: str, code: str
) -> None:
    ledger.mutate(f"ALTER TABLE {{db}}.{table} MODIFY COLUMN {column} {new_type}")
    ledger.update(table, f"{column} = NULL", ledger.access, 1, 1)
    assert (code, ledger.access, 1, 1) in where(ledger.verify())


def test_a_column_of_another_type_is_a_finding_on_every_row(ledger: Ledger) -> None:
    ledger.mutate("ALTER TABLE {db}.access_events MODIFY COLUMN outcome String")
    run = ledger.verify()
    report = next(r for r in run.reports if r.chain_id == ledger.access)
    assert report.counts["EVENT_FIELD_MISMATCH"] == 12


def test_rows_under_a_chain_id_that_is_not_utf8_are_found(ledger: Ledger) -> None:
    ledger.copy_rows("access_events", "height = 0 AND idx = 0", chain_id="unhex('ff6669')")
    [f] = list(ledger.verify().findings())
    assert f.code == "EVENT_UNEXPECTED" and f.chain_id == "\\xfffi"
    details: dict[str, Any] = dict(f.details)
    assert details == {"table": "access_events", "rows": 1, "chain_id_hex": "ff6669"}
