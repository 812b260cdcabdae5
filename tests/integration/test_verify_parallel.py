"""``careledger verify`` over several chains in worker processes finds what the
sequential run finds, in the same order (``verifiers.integrity.parallel``).

A ledger of three access chains of batch records (ADR 0020) and the sources chain is
written to a real ClickHouse 18.16 database; then it is tampered with the way an insider
would (an event's bytes, a column, a deleted row, a header, a batch row) on two of the
chains, and verified with 1, 2 and 3 processes: the findings, the chain reports and the
source checks must be identical. The CLI is run both ways too (``--processes``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from careledger.config import Settings
from careledger.processes import run_cli
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import ChainStore
from careledger_core.signing import format_public_key
from tests.batch_ledger import Batch, chain_of, payloads
from tests.ledger_builder import PROCESSOR, REGISTRAR, TRUSTED, StoreLedger, sources_chain
from verifiers.integrity.cli import open_chain_store
from verifiers.integrity.run import (
    VerificationRun,
    chains_to_verify,
    check_run_sources,
    run_verification,
)

pytestmark = pytest.mark.integration


class Ledger(StoreLedger):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.replace(
            trusted_keys=(format_public_key(PROCESSOR.public_key),),
            trusted_registrar_keys=(format_public_key(REGISTRAR.public_key),),
        )
        store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
        super().__init__(store, sync_mutations=False)
        self.chains = [settings.chain_id(settings.topic_events, p) for p in range(3)]
        self.store.write_blocks(
            sources_chain(chain_id=settings.chain_id(settings.topic_sources, 0))
        )
        p = payloads(60)
        seq = 1
        for n, chain in enumerate(self.chains):
            blocks: list[list[Any]] = []
            for b in range(3):
                first = n * 20 + b * 6
                blocks.append(
                    [Batch(p[first : first + 4], seq), Batch(p[first + 4 : first + 6], seq + 4)]
                )
                seq += 6
            self.store.write_blocks(chain_of(blocks, chain))

    def verify(self, processes: int) -> VerificationRun:
        chains = chains_to_verify(self.store, None, {})
        return run_verification(
            self.store,
            TRUSTED,
            mode="full",
            database=self.db,
            chains=chains,
            census=True,
            processes=processes,
            open_store=functools.partial(open_chain_store, self.settings),
            alongside=lambda run: check_run_sources(run, self.store, self.settings),
        )


def outcome(run: VerificationRun) -> dict[str, Any]:
    doc = run.to_json()
    return {
        "findings": doc["findings"],
        "chains": [{k: v for k, v in c.items() if k != "elapsed_s"} for c in doc["chains"]],
        "sources": doc["sources"],
        "totals": {k: v for k, v in doc["totals"].items() if k != "events_per_s"},
        "result": doc["result"],
    }


@pytest.fixture
def ledger(isolated: Settings) -> Iterator[Ledger]:
    ledger = Ledger(isolated)
    try:
        yield ledger
    finally:
        ledger.backend.close()


def test_a_clean_ledger_verifies_the_same_with_one_and_several_processes(ledger: Ledger) -> None:
    one = outcome(ledger.verify(1))
    assert one["result"] == "intact" and one["findings"] == []
    assert one["totals"]["events"] == 54 + 1  # and the key registration
    assert outcome(ledger.verify(2)) == one
    assert outcome(ledger.verify(3)) == one


def test_a_tampered_ledger_gives_the_same_findings_with_one_and_several_processes(
    ledger: Ledger,
) -> None:
    a, b, c = ledger.chains
    # chain a: an event's bytes edited, a column edited, a row deleted
    ledger.update(
        "access_events",
        "canonical = replaceOne(canonical, '\"outcome\":0', '\"outcome\":4')",
        a,
        0,
        1,
    )
    ledger.update("access_events", "action = 'D'", a, 1, 2)
    ledger.mutate(
        "ALTER TABLE {db}.access_events DELETE WHERE chain_id = %(c)s AND height = 2 AND idx = 3",
        {"c": a},
    )
    # chain c: a header's Merkle root edited, a batch row's signature swapped
    ledger.mutate(
        "ALTER TABLE {db}.blocks UPDATE merkle_root = '00' WHERE chain_id = %(c)s AND height = 1",
        {"c": c},
    )
    [[other]] = ledger.sql(
        "SELECT signature FROM {db}.source_batches WHERE chain_id = %(c)s AND height = 0 "
        "ORDER BY kafka_offset DESC LIMIT 1",
        {"c": c},
    )
    ledger.mutate(
        "ALTER TABLE {db}.source_batches UPDATE signature = %(s)s "
        "WHERE chain_id = %(c)s AND height = 2",
        {"s": other, "c": c},
    )
    one = outcome(ledger.verify(1))
    assert one["result"] == "tampered"
    chains_with_findings = {f["chain_id"] for f in one["findings"]}
    assert a in chains_with_findings and c in chains_with_findings and b not in chains_with_findings
    codes = set(one["totals"]["findings_by_code"])
    assert {"EVENT_FIELD_MISMATCH", "EVENT_MISSING", "SOURCE_SIGNATURE_INVALID"} <= codes
    assert outcome(ledger.verify(2)) == one
    assert outcome(ledger.verify(3)) == one

    # the command itself, both ways
    def cli(processes: int) -> dict[str, Any]:
        # a state directory of its own: each run remembers the heads that verified clean
        settings = ledger.settings.replace(
            verifier_state_dir=ledger.settings.verifier_state / f"p{processes}"
        )
        proc = run_cli(
            settings,
            "verify",
            "--no-audit",
            "--no-checkpoints",
            "--no-record",
            "--json",
            "--processes",
            str(processes),
        )
        assert proc.returncode == 1, proc.stderr
        doc = json.loads(proc.stdout)
        return {
            "findings": doc["findings"],
            "chains": [{k: v for k, v in ch.items() if k != "elapsed_s"} for ch in doc["chains"]],
        }

    assert cli(2) == cli(1)
