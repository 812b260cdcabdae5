"""Batch records (ADR 0020) tampered with in ClickHouse 18.16 the way an insider would.

Each test writes the standard batch ledger (``tests/batch_ledger.py``) with the source's
key registration into its own database, runs SQL against ``source_batches`` or the event
rows of a batch, and checks what ``careledger verify``'s real reader and checks say (fsck
of every chain, then the source checks). The ledger, by (height, idx):

* height 0: offset 0 batch A (seq 1-4, idx 0-3); offset 1 dead-lettered; offset 2 batch B
  (seq 5-7, seq 6 dead-lettered alone: idx 4-5); offset 3 one signed event (seq 8, idx 6);
* height 1: offset 4 batch C (seq 9-11, idx 0-2); offset 5 batch D (seq 12-15, idx 3-6);
* height 2: offset 6 batch E (seq 16-17, idx 0-1); offset 7 dead-lettered.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from careledger.config import Settings
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import ChainStore
from careledger_core.signing import format_public_key
from tests.batch_ledger import Batch, chain_of, payloads, standard_batches
from tests.ledger_builder import PROCESSOR, REGISTRAR, TRUSTED, StoreLedger, sources_chain
from verifiers.integrity.run import (
    VerificationRun,
    chains_to_verify,
    check_run_sources,
    run_verification,
)

pytestmark = pytest.mark.integration

Where = tuple[str, str, int | None, int | None]
GAP: Where = ("SOURCE_SEQ_GAP", "", None, None)


class Ledger(StoreLedger):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.replace(
            trusted_keys=(format_public_key(PROCESSOR.public_key),),
            trusted_registrar_keys=(format_public_key(REGISTRAR.public_key),),
        )
        store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
        super().__init__(store, sync_mutations=False)
        self.access = settings.chain_id(settings.topic_events, 0)
        self.store.write_blocks(
            sources_chain(chain_id=settings.chain_id(settings.topic_sources, 0))
        )

    def verify(self) -> VerificationRun:
        chains = chains_to_verify(self.store, None, {})
        run = run_verification(
            self.store, TRUSTED, mode="full", database=self.db, chains=chains, census=True
        )
        check_run_sources(run, self.store, self.settings)
        return run

    def where(self) -> set[Where]:
        return {
            (str(f.code), f.chain_id, f.height, f.event_index) for f in self.verify().findings()
        }

    def batch_update(self, sets: str, height: int, offset: int) -> None:
        self.mutate(
            f"ALTER TABLE {{db}}.source_batches UPDATE {sets} "
            "WHERE chain_id = %(c)s AND height = %(h)s AND kafka_offset = %(o)s",
            {"c": self.access, "h": height, "o": offset},
        )

    def batch_value(self, column: str, height: int, offset: int) -> str:
        [[value]] = self.sql(
            f"SELECT {column} FROM {{db}}.source_batches "
            "WHERE chain_id = %(c)s AND height = %(h)s AND kafka_offset = %(o)s",
            {"c": self.access, "h": height, "o": offset},
        )
        return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
def ledger(isolated: Settings) -> Iterator[Ledger]:
    ledger = Ledger(isolated)
    ledger.store.write_blocks(chain_of(standard_batches(), ledger.access))
    try:
        yield ledger
    finally:
        ledger.backend.close()


def at(ledger: Ledger, code: str, height: int | None, idx: int | None) -> Where:
    return (code, ledger.access, height, idx)


def test_the_batch_ledger_verifies_clean_and_a_skipped_entry_is_no_gap(ledger: Ledger) -> None:
    run = ledger.verify()
    assert list(run.findings()) == []
    assert run.sources is not None
    assert run.sources["signed_events"] == 16 and run.sources["signed_batches"] == 5
    [[rows]] = ledger.sql("SELECT count() FROM {db}.source_batches")
    assert rows == 5  # one row per batch record, none for the event signed alone


# --------------------------------------------------------------------------- the batch row


def test_an_edited_statement_fails_the_signature_and_its_seqs_are_a_gap(ledger: Ledger) -> None:
    statement = ledger.batch_value("statement", 1, 4)
    root = statement.split('"root":"')[1][:64]
    ledger.batch_update(f"statement = replaceOne(statement, '{root}', '{'0' * 64}')", 1, 4)
    assert ledger.where() == {at(ledger, "SOURCE_SIGNATURE_INVALID", 1, 0), GAP}


def test_an_edited_signature_is_found(ledger: Ledger) -> None:
    other = ledger.batch_value("signature", 1, 5)  # batch D's, well-formed
    ledger.batch_update(f"signature = '{other}'", 1, 4)
    assert ledger.where() == {at(ledger, "SOURCE_SIGNATURE_INVALID", 1, 0), GAP}


def test_a_statement_that_is_not_json_is_found(ledger: Ledger) -> None:
    ledger.batch_update("statement = 'not a statement'", 1, 4)
    assert ledger.where() == {at(ledger, "SOURCE_ATTESTATION_INVALID", 1, 0), GAP}


@pytest.mark.parametrize(
    ("skipped", "code", "idx"),
    [
        ("'1:' || '{zeros}'", "SOURCE_PROOF_INVALID", 4),  # another leaf hash
        ("replaceOne(skipped, '1:', '0:')", "SOURCE_PROOF_INVALID", 4),  # another index
        ("''", "SOURCE_PROOF_INVALID", 4),  # the dead-lettered entry hidden
        ("'junk'", "SOURCE_ATTESTATION_INVALID", 4),
        ("'5:' || '{zeros}'", "SOURCE_ATTESTATION_INVALID", 4),  # outside the batch
        ("concat(skipped, ',', skipped)", "SOURCE_ATTESTATION_INVALID", 4),  # repeated
        # entry 2 (idx 5) claimed dead-lettered too: found at that event
        ("concat(skipped, ',2:', {leaf2})", "SOURCE_ATTESTATION_INVALID", 5),
    ],
)
def test_an_edited_skipped_column_is_found(
    ledger: Ledger, skipped: str, code: str, idx: int
) -> None:
    leaf2 = "(SELECT leaf_hash FROM {db}.access_events WHERE height = 0 AND idx = 5)"
    [[leaf]] = ledger.sql(leaf2)
    sets = skipped.format(zeros="0" * 64, leaf2=f"'{leaf.decode()}'")
    ledger.batch_update(f"skipped = {sets}", 0, 2)
    assert ledger.where() == {at(ledger, code, 0, idx)}


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("source_id", "'lab'"),
        ("key_id", "'0123456789abcdef'"),
        ("epoch", "'00000000000000ff'"),
        ("first_seq", "first_seq + 100"),
        ("size", "size + 1"),
        ("signed_by", "'gateway'"),
    ],
)
def test_an_edited_side_column_is_found(ledger: Ledger, column: str, value: str) -> None:
    ledger.batch_update(f"{column} = {value}", 1, 5)
    run = ledger.verify()
    assert {(str(f.code), f.chain_id, f.height, f.event_index) for f in run.findings()} == {
        at(ledger, "SOURCE_ATTESTATION_INVALID", 1, 3)
    }
    [f] = run.source_findings
    assert set(f.details["columns"]) == {column}  # type: ignore[call-overload]


def test_a_deleted_batch_row_leaves_its_events_unsigned_and_its_seqs_a_gap(
    ledger: Ledger,
) -> None:
    ledger.mutate("ALTER TABLE {db}.source_batches DELETE WHERE height = 1 AND kafka_offset = 4")
    assert ledger.where() == {
        at(ledger, "SOURCE_UNSIGNED", 1, 0),
        at(ledger, "SOURCE_UNSIGNED", 1, 1),
        at(ledger, "SOURCE_UNSIGNED", 1, 2),
        GAP,
    }


@pytest.mark.parametrize("changes", [{}, {"first_seq": "first_seq + 1000"}])
def test_a_second_batch_row_for_one_record_is_found(
    ledger: Ledger, changes: dict[str, str]
) -> None:
    ledger.copy_rows("source_batches", "height = 1 AND kafka_offset = 4", **changes)
    assert ledger.where() == {at(ledger, "SOURCE_ATTESTATION_INVALID", 1, 0)}


def test_a_batch_row_moved_to_another_offset_names_no_events(ledger: Ledger) -> None:
    # kafka_offset is a key column: moved by re-inserting the row
    ledger.copy_rows("source_batches", "height = 1 AND kafka_offset = 4", kafka_offset="7")
    ledger.mutate("ALTER TABLE {db}.source_batches DELETE WHERE height = 1 AND kafka_offset = 4")
    assert ledger.where() == {
        at(ledger, "SOURCE_ATTESTATION_INVALID", 1, None),
        at(ledger, "SOURCE_UNSIGNED", 1, 0),
        at(ledger, "SOURCE_UNSIGNED", 1, 1),
        at(ledger, "SOURCE_UNSIGNED", 1, 2),
        GAP,
    }


def test_a_batch_column_made_nullable_and_set_to_null_is_a_finding(ledger: Ledger) -> None:
    ledger.mutate("ALTER TABLE {db}.source_batches MODIFY COLUMN first_seq Nullable(UInt64)")
    ledger.batch_update("first_seq = NULL", 1, 4)
    assert ledger.where() == {at(ledger, "SOURCE_ATTESTATION_INVALID", 1, 0)}


# --------------------------------------------------------------------------- the event rows


def test_an_event_moved_to_the_next_batch_record_is_found(ledger: Ledger) -> None:
    ledger.update("access_events", "kafka_offset = 2", ledger.access, 0, 3)
    assert ledger.where() == {
        at(ledger, "EVENT_OFFSETS_MISMATCH", 0, None),
        at(ledger, "SOURCE_PROOF_INVALID", 0, 0),  # batch A lost an event
        at(ledger, "SOURCE_PROOF_INVALID", 0, 3),  # batch B has one too many
    }


def test_an_event_moved_to_a_dead_lettered_offset_is_found(ledger: Ledger) -> None:
    ledger.update("access_events", "kafka_offset = 1", ledger.access, 0, 3)
    assert ledger.where() == {
        at(ledger, "EVENT_OFFSETS_MISMATCH", 0, None),
        at(ledger, "SOURCE_PROOF_INVALID", 0, 0),
        at(ledger, "SOURCE_UNSIGNED", 0, 3),
    }


def test_an_event_moved_out_of_the_block_range_is_found(ledger: Ledger) -> None:
    ledger.update("access_events", "kafka_offset = 9", ledger.access, 1, 6)
    found = ledger.where()
    assert {
        at(ledger, "EVENT_OFFSET_OUT_OF_RANGE", 1, 6),
        at(ledger, "SOURCE_PROOF_INVALID", 1, 3),
        at(ledger, "SOURCE_UNSIGNED", 1, 6),
    } <= found


@pytest.mark.parametrize("forged", [False, True])
def test_an_event_row_inserted_at_a_batch_offset_is_found(ledger: Ledger, forged: bool) -> None:
    changes = {"idx": "7"}
    if forged:  # other bytes, consistent leaf hash
        changes["canonical"] = 'replaceOne(canonical, \'"action":"\', \'"action":"D\')'
        changes["leaf_hash"] = "lower(hex(SHA256(concat(unhex('00'), canonical))))"
    ledger.copy_rows("access_events", "height = 1 AND idx = 2", **changes)
    found = ledger.where()
    assert {
        at(ledger, "EVENT_UNEXPECTED", 1, 7),
        at(ledger, "EVENT_COUNT_MISMATCH", 1, None),
        at(ledger, "SOURCE_PROOF_INVALID", 1, 0),
    } == found


def test_events_of_a_batch_reordered_are_found(ledger: Ledger) -> None:
    ids = {
        int(i): eid.decode()
        for i, eid in ledger.sql(
            "SELECT idx, event_id FROM {db}.access_events WHERE height = 1 AND idx IN (0, 1)"
        )
    }
    ledger.copy_rows("access_events", "height = 1 AND idx IN (0, 1)", idx="1 - idx")
    ledger.mutate(
        "ALTER TABLE {db}.access_events DELETE WHERE height = 1 AND "
        "((idx = 0 AND event_id = %(e0)s) OR (idx = 1 AND event_id = %(e1)s))",
        {"e0": ids[0], "e1": ids[1]},
    )
    assert ledger.where() == {
        at(ledger, "MERKLE_ROOT_MISMATCH", 1, None),
        at(ledger, "SOURCE_PROOF_INVALID", 1, 0),
    }


# --------------------------------------------------------------------------- replays


def test_a_batch_replayed_on_another_partition_is_a_duplicate(ledger: Ledger) -> None:
    other = ledger.settings.chain_id(ledger.settings.topic_events, 1)
    p = payloads(20)
    replay = Batch(p[8:11], 9)  # batch C, signed again: the very same record
    assert replay == standard_batches(p)[1][0]
    ledger.store.write_blocks(chain_of([[replay]], other))
    run = ledger.verify()
    found = {(str(f.code), f.chain_id, f.height, f.event_index) for f in run.findings()}
    assert found == {("SOURCE_SEQ_DUPLICATE", other, 0, i) for i in range(3)}


def test_a_batch_replayed_on_its_own_chain_is_a_duplicate(isolated: Settings) -> None:
    ledger = Ledger(isolated)
    try:
        records = standard_batches()
        replay = records[0][0]  # batch A again, at offset 8 of height 3
        ledger.store.write_blocks(chain_of([*records, [replay]], ledger.access))
        assert ledger.where() == {at(ledger, "SOURCE_SEQ_DUPLICATE", 3, i) for i in range(4)}
    finally:
        ledger.backend.close()
