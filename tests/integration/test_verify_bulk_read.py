"""One row tampered with among the ~20,000 that ``verify`` reads in one query is found
at that row, as before the whole-block fast path (``fsck.events._block_sound``,
``fsck.bulk``) and the column reads (``ChainStore.event_columns``).

A ledger of 20,000 signed access events in batch records (the benchmark's,
``commands.benchmarks.verify_ledger``: one chain, blocks of 1,000 events) is written to
a real ClickHouse 18.16 database; the chain walk reads all of it in one query of event
rows. Then one row is tampered with the way an insider would, with SQL: a side column
changed with ``ALTER TABLE ... UPDATE``, its derived date moved, the row deleted, the row
duplicated. Each must be found at its block and row, with nothing else reported, and the
source checks must stay as they were (they read the rows on their own).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from careledger.config import Settings
from careledger.keys import load_public_keys
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.kinds import ACCESS
from careledger.storage.store import ChainStore
from careledger_core.signing import TrustedKeys
from commands.benchmarks.verify_ledger import build_ledger
from tests.ledger_builder import StoreLedger
from verifiers.integrity.fsck import verify_chain
from verifiers.integrity.fsck.model import DEFAULT_BATCH_EVENTS
from verifiers.integrity.run import VerificationRun, check_run_sources

pytestmark = pytest.mark.integration

EVENTS = 20_000
HEIGHT, IDX = 13, 517


class Ledger(StoreLedger):
    def __init__(self, settings: Settings) -> None:
        store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
        super().__init__(store, sync_mutations=False)
        self.chain = settings.chain_id(settings.topic_events, 0)
        built = build_ledger(
            store,
            [self.chain],
            settings.chain_id(settings.topic_sources, 0),
            events=EVENTS,
            batch_size=500,
            block_events=1000,
        )
        self.settings = settings.replace(
            trusted_keys=(built.processor_key,), trusted_registrar_keys=(built.registrar_key,)
        )
        self.keys = TrustedKeys(load_public_keys(self.settings.trusted_keys))

    def found(self) -> set[tuple[str, int | None, int | None]]:
        report = verify_chain(self.store, self.chain, self.keys, kind=ACCESS)
        assert report.events >= EVENTS - 1
        return {(str(f.code), f.height, f.event_index) for f in report.findings}

    def sources(self) -> tuple[int, list[str]]:
        run = VerificationRun(mode="full", database=self.db, scope={})
        check_run_sources(run, self.store, self.settings)
        assert run.sources is not None
        return run.sources["signed_events"], [str(f.code) for f in run.source_findings]


@pytest.fixture
def ledger(isolated: Settings) -> Iterator[Ledger]:
    led = Ledger(isolated)
    try:
        yield led
    finally:
        led.backend.close()


def test_the_ledger_is_read_in_one_query_and_verifies_clean(ledger: Ledger) -> None:
    assert EVENTS <= DEFAULT_BATCH_EVENTS
    assert ledger.found() == set()
    assert ledger.sources() == (EVENTS, [])


@pytest.mark.parametrize("column", ["patient_id", "actor_id", "event_id", "source_system"])
def test_a_side_column_updated_on_one_row_is_found_at_that_row(ledger: Ledger, column: str) -> None:
    ledger.update("access_events", f"{column} = concat({column}, 'x')", ledger.chain, HEIGHT, IDX)
    assert ledger.found() == {("EVENT_FIELD_MISMATCH", HEIGHT, IDX)}


def test_the_outcome_column_updated_on_one_row_is_found_at_that_row(ledger: Ledger) -> None:
    ledger.update("access_events", "outcome = outcome + 4", ledger.chain, HEIGHT, IDX)
    assert ledger.found() == {("EVENT_FIELD_MISMATCH", HEIGHT, IDX)}


def test_a_derived_date_moved_on_one_row_is_found_at_that_row(ledger: Ledger) -> None:
    ledger.reinsert("access_events", ledger.chain, HEIGHT, IDX, occurred_date="occurred_date + 1")
    assert ledger.found() == {("EVENT_FIELD_MISMATCH", HEIGHT, IDX)}


def test_a_deleted_row_is_found_at_that_row(ledger: Ledger) -> None:
    ledger.mutate(
        "ALTER TABLE {db}.access_events DELETE WHERE chain_id = %(c)s AND height = %(h)s "
        "AND idx = %(i)s",
        {"c": ledger.chain, "h": HEIGHT, "i": IDX},
    )
    assert ledger.found() == {
        ("EVENT_MISSING", HEIGHT, IDX),
        ("EVENT_COUNT_MISMATCH", HEIGHT, None),
    }
    _signed, codes = ledger.sources()
    assert codes == ["SOURCE_PROOF_INVALID"]


def test_a_duplicated_row_is_found_at_that_row(ledger: Ledger) -> None:
    where = f"chain_id = '{ledger.chain}' AND height = {HEIGHT} AND idx = {IDX}"
    ledger.copy_rows("access_events", where)
    found = ledger.found()
    assert ("EVENT_UNEXPECTED", HEIGHT, IDX) in found
    assert {h for _c, h, _i in found} == {HEIGHT}
