"""``careledger restore`` over real stores (current ClickHouse through chDB: the
``ALTER TABLE ... DELETE`` and every read run on the newest engine; ClickHouse 18.16 and
the real processor: tests/integration/test_restore.py).

Primary and replica hold the same ``mixed_ledger``; the checkpoints are C2SP notes
signed by the processor key, one per block, as the processor publishes them. Attacks on
the primary are repaired; attacks on the replica (or on the checkpoints) make the
restore refuse, touch nothing and ledger nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from careledger.config import Settings
from careledger.storage.backend import ChdbBackend
from careledger.storage.compare import compare
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.block import block_hash, header_bytes
from careledger_core.chain_tree import ChainTree
from careledger_core.checkpoint import checkpoint_for, format_checkpoint, sign_note
from careledger_core.cosignature import (
    WitnessKey,
    WitnessPolicy,
    attach_cosignatures,
    cosign,
    split_note,
)
from careledger_core.signing import SigningKey
from replica.checkpoints import SignedCheckpoints, accept_note
from replica.restore import RestorePlan, apply_restore, plan_restore
from tests.ledger_builder import ACCESS_CHAIN, ORIGIN, PROCESSOR, TRUSTED, StoreLedger, mixed_ledger

CHAIN = ACCESS_CHAIN
WITNESS = SigningKey.from_seed(hashlib.sha256(b"restore plan witness").digest())


def notes_for(blocks: list[SealedBlock], key: SigningKey = PROCESSOR) -> list[str]:
    """One signed checkpoint per block, as the processor publishes them."""
    notes = []
    for block in blocks:
        tree = ChainTree.of_blocks([b.block_hash for b in blocks[: block.header.height + 1]])
        cp = checkpoint_for(block.header, tree)
        notes.append(sign_note(format_checkpoint(cp), cp.origin, key))
    return notes


def cosigned(note: str) -> str:
    body, _ = split_note(note)
    return attach_cosignatures(
        note, [cosign(body, "witness.example/w", WITNESS, 1_800_000_000).line]
    )


class World:
    def __init__(self, ledger: dict[str, list[SealedBlock]]) -> None:
        self.backend = ChdbBackend()
        tag = uuid.uuid4().hex[:8]
        self.primary = self._store(f"careledger_xp_{tag}")
        self.replica = self._store(f"careledger_xr_{tag}")
        for blocks in ledger.values():
            self.primary.write_blocks(blocks)
            self.replica.write_blocks(blocks)
        self.checkpoints = SignedCheckpoints()
        for blocks in ledger.values():
            for note in notes_for(blocks):
                accept_note(note, [PROCESSOR.public_key], ORIGIN, None, self.checkpoints)
        self.attacker_primary = StoreLedger(self.primary, sync_mutations=True)
        self.attacker_replica = StoreLedger(self.replica, sync_mutations=True)
        self.ledgered: list[list[SealedBlock]] = []

    def _store(self, db: str) -> ChainStore:
        migrate_backend(self.backend, db)
        return ChainStore.for_settings(self.backend, Settings(clickhouse_database=db))

    def close(self) -> None:
        for store in (self.primary, self.replica):
            self.backend.execute(f"DROP DATABASE IF EXISTS {store.db}")
        self.backend.close()

    def plan(self, checkpoints: SignedCheckpoints | None = None) -> RestorePlan:
        return plan_restore(self.primary, self.replica, TRUSTED, checkpoints or self.checkpoints)

    def ledger(self, blocks: list[SealedBlock]) -> None:
        # ledgered before anything is touched: the primary still differs here
        assert compare(self.primary, self.replica).total > 0
        self.ledgered.append(blocks)

    def delete_block(self, attacker: StoreLedger, chain: str, height: int) -> None:
        for table in ("blocks", "access_events", "source_attestations"):
            attacker.mutate(
                f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = %(c)s AND height = %(h)s",
                {"c": chain, "h": height},
            )


@pytest.fixture(scope="module")
def ledger() -> dict[str, list[SealedBlock]]:
    return mixed_ledger()


@pytest.fixture
def world(ledger: dict[str, list[SealedBlock]]) -> Iterator[World]:
    w = World(ledger)
    try:
        yield w
    finally:
        w.close()


def chain_plan(plan: RestorePlan, chain: str = CHAIN) -> Any:
    return next(c for c in plan.chains if c.chain_id == chain)


def test_an_untouched_primary_needs_nothing(world: World) -> None:
    plan = world.plan()
    assert plan.blocks == [] and plan.complete
    assert chain_plan(plan).covered == 3 and chain_plan(plan).checkpoints_matched == 3
    assert apply_restore(plan, world.primary, world.ledger) == [] and world.ledgered == []


def test_a_deleted_middle_block_is_restored_after_being_ledgered(world: World) -> None:
    world.delete_block(world.attacker_primary, CHAIN, 1)
    plan = world.plan()
    assert chain_plan(plan).heights == [1] and plan.complete
    done = apply_restore(plan, world.primary, world.ledger)
    assert done == [(CHAIN, 1)]
    assert [[b.header.height for b in blocks] for blocks in world.ledgered] == [[1]]
    assert compare(world.primary, world.replica).total == 0


def test_a_rewritten_event_and_an_inserted_row_are_restored(world: World) -> None:
    world.attacker_primary.reinsert(
        "access_events", CHAIN, 2, 1, actor_id="'someone-else'", canonical="'{}'"
    )
    world.attacker_primary.copy_rows(
        "access_events", f"chain_id = '{CHAIN}' AND height = 0 AND idx = 0", idx="7"
    )
    plan = world.plan()
    assert chain_plan(plan).heights == [0, 2]
    assert apply_restore(plan, world.primary, world.ledger) == [(CHAIN, 0), (CHAIN, 2)]
    assert compare(world.primary, world.replica).total == 0


def test_a_replica_rewritten_and_resigned_by_the_key_holder_is_refused(world: World) -> None:
    """The replica verifies on its own (re-signed with the processor key, re-linked),
    but its tree is not the signed one: nothing is restored from it."""
    world.delete_block(world.attacker_primary, CHAIN, 1)
    blocks = mixed_ledger()[CHAIN]
    header = msgspec.structs.replace(blocks[2].header, created_at="2030-01-01T00:00:00.000000Z")
    resigned = SealedBlock(
        header,
        header_bytes(header),
        block_hash(header),
        PROCESSOR.sign_header(header),
        blocks[2].events,
    )
    world.delete_block(world.attacker_replica, CHAIN, 2)
    world.replica.write_blocks([resigned])
    before = compare(world.primary, world.replica).total
    plan = world.plan()
    cp = chain_plan(plan)
    assert cp.code == "REPLICA_MISMATCH" and cp.blocks == [] and not plan.complete
    assert "size 3" in (cp.refused or "")
    assert apply_restore(plan, world.primary, world.ledger) == [] and world.ledgered == []
    assert compare(world.primary, world.replica).total == before  # untouched


def test_a_replica_whose_copy_of_the_block_was_altered_is_refused(world: World) -> None:
    world.delete_block(world.attacker_primary, CHAIN, 1)
    world.attacker_replica.reinsert(
        "access_events", CHAIN, 1, 0, actor_id="'someone-else'", canonical="'{\"a\":1}'"
    )
    plan = world.plan()
    cp = chain_plan(plan)
    assert cp.code == "EVENT_NOT_CANONICAL" and "height 1" in (cp.refused or "")
    assert apply_restore(plan, world.primary, world.ledger) == [] and world.ledgered == []


def test_a_replica_with_a_derived_column_altered_is_reported_not_copied(world: World) -> None:
    world.attacker_replica.reinsert(
        "access_events", CHAIN, 0, 0, occurred_date="toDate('2001-01-01')"
    )
    plan = world.plan()
    cp = chain_plan(plan)
    assert cp.blocks == [] and cp.replica_rows_altered == [0] and cp.refused is None


def test_checkpoints_signed_for_two_histories_make_the_chain_unrestorable(
    world: World, ledger: dict[str, list[SealedBlock]]
) -> None:
    world.delete_block(world.attacker_primary, CHAIN, 1)
    blocks = ledger[CHAIN]
    header = msgspec.structs.replace(blocks[0].header, created_at="2030-01-01T00:00:00.000000Z")
    other = SealedBlock(header, header_bytes(header), block_hash(header), b"", [])
    cp = checkpoint_for(other.header, ChainTree.of_blocks([other.block_hash]))
    note = sign_note(format_checkpoint(cp), cp.origin, PROCESSOR)
    accept_note(note, [PROCESSOR.public_key], ORIGIN, None, world.checkpoints)
    assert world.checkpoints.conflicting == [(CHAIN, 1)]
    plan = world.plan()
    assert chain_plan(plan).code == "CHECKPOINT_CONFLICT"
    assert apply_restore(plan, world.primary, world.ledger) == []


def test_with_a_witness_policy_only_cosigned_checkpoints_count(
    world: World, ledger: dict[str, list[SealedBlock]]
) -> None:
    """The processor's own signature is not enough once witnesses are required: nothing
    is covered, the deleted block is reported as not restorable."""
    world.delete_block(world.attacker_primary, CHAIN, 1)
    policy = WitnessPolicy((WitnessKey("witness.example/w", WITNESS.public_key),), 1)
    checkpoints = SignedCheckpoints(witnessed=True)
    for blocks in ledger.values():
        for note in notes_for(blocks):
            accept_note(note, [PROCESSOR.public_key], ORIGIN, policy, checkpoints)
    assert checkpoints.kept == 0 and checkpoints.below_quorum > 0
    plan = world.plan(checkpoints)
    cp = chain_plan(plan)
    assert cp.covered == 0 and cp.not_covered == [1] and not plan.complete
    assert apply_restore(plan, world.primary, world.ledger) == []
    # the same notes cosigned by the witness: covered, restored
    cosigned_checkpoints = SignedCheckpoints(witnessed=True)
    for blocks in ledger.values():
        for note in notes_for(blocks):
            accept_note(
                cosigned(note), [PROCESSOR.public_key], ORIGIN, policy, cosigned_checkpoints
            )
    assert cosigned_checkpoints.below_quorum == 0
    plan = world.plan(cosigned_checkpoints)
    assert chain_plan(plan).heights == [1] and plan.complete
    assert apply_restore(plan, world.primary, world.ledger) == [(CHAIN, 1)]
    assert compare(world.primary, world.replica).total == 0
