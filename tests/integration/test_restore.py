"""Restore from a replica on the real stack (ADR 0017): Kafka, ClickHouse 18.16, the
processor, ``careledger replica``, ``careledger verify`` and ``careledger restore``, each
a subprocess configured by its environment.

The attacker can write to the primary ClickHouse: a middle block deleted, an event row
rewritten. ``verify`` says TAMPERED, ``restore`` puts the genuine rows back from the
replica after checking it against the signed checkpoints, ledgers what it did, and
``verify`` says intact again. A replica that was tampered with too is refused.
"""

from __future__ import annotations

import pytest

from careledger.storage.store import ChainStore
from tests.integration.replica_support import Pipeline, pipeline

pytestmark = pytest.mark.integration

__all__ = ["pipeline"]


def rewrite_actor(store: ChainStore, chain: str, height: int) -> str:
    """The insider's rewrite of event 0 of a block: another actor, still canonical JSON
    (an SQL expression over the row's ``canonical``)."""
    [[actor]] = store.backend.execute(
        f"SELECT actor_id FROM {store.db}.access_events "
        "WHERE chain_id = %(c)s AND height = %(h)s AND idx = 0",
        {"c": chain, "h": height},
    )
    old = '"id":"' + actor.decode() + '"'
    return f"replaceAll(canonical, '{old}', '\"id\":\"insider\"')"


def _ready(pipeline: Pipeline) -> tuple[str, int]:
    pipeline.produce(3_000, seed=11)
    pipeline.wait_chained()
    done = pipeline.catch_up()
    assert done["blocks_stored"] > 0 and done["refused"] == 0 and done["held"] == 0
    assert pipeline.cli("replica", "compare").returncode == 0
    return pipeline.middle_block()


def test_a_deleted_middle_block_is_restored_from_the_replica_and_verify_is_intact(
    pipeline: Pipeline,
) -> None:
    chain, height = _ready(pipeline)
    pipeline.delete_block(pipeline.primary, chain, height)

    tampered = pipeline.json("verify", code=1)
    assert tampered["result"] == "tampered"
    # verify --replica also says where the primary parts from the replica
    against = pipeline.json("verify", "--replica", code=1)
    mismatches = {
        (f["details"]["kind"], f["details"]["table"], f["chain_id"], f["height"])
        for f in against["findings"]
        if f["code"] == "REPLICA_MISMATCH"
    }
    assert ("missing_in_primary", "blocks", chain, height) in mismatches
    assert {h for _, _, _, h in mismatches} == {height}
    diff = pipeline.json("replica", "compare", code=1)
    assert {(d["kind"], d["table"], d["chain_id"], d["height"]) for d in diff["differences"]} >= {
        ("missing_in_primary", "blocks", chain, height)
    }
    assert {d["height"] for d in diff["differences"]} == {height}

    done = pipeline.json("restore", "--by", "privacy-officer", code=0)
    assert done["restored"] == [{"chain_id": chain, "height": height}]
    assert done["checkpoints"]["kept"] > 0 and done["checkpoints"]["invalid"] == 0
    assert pipeline.cli("replica", "compare").returncode == 0

    # the restore is ledgered: an access event chained and signed like any other
    pipeline.wait_chained(extra=1)
    assert pipeline.restore_events() == 1
    [[actor, raw]] = pipeline.primary.backend.execute(
        f"SELECT actor_id, canonical FROM {pipeline.primary.db}.access_events "
        "WHERE source_system = 'careledger-restore'"
    )
    assert actor == b"privacy-officer" and chain.encode() in raw
    intact = pipeline.json("verify", code=0)
    assert intact["result"] == "intact"
    assert pipeline.json("verify", "--replica", "--no-audit", code=0)["result"] == "intact"
    # the replica gets the restore event too, and still matches
    pipeline.catch_up()
    assert pipeline.cli("replica", "compare").returncode == 0


def test_a_rewritten_event_row_is_restored(pipeline: Pipeline) -> None:
    chain, height = _ready(pipeline)
    attacker = pipeline.attacker(pipeline.primary)
    attacker.reinsert(
        "access_events",
        chain,
        height,
        0,
        actor_id="'insider'",
        canonical=rewrite_actor(pipeline.primary, chain, height),
    )
    assert pipeline.json("verify", code=1)["result"] == "tampered"
    diff = pipeline.json("replica", "compare", code=1)
    [changed] = [d for d in diff["differences"] if d["table"] == "access_events"]
    assert (changed["kind"], changed["height"], changed["idx"]) == ("differs", height, 0)
    assert set(changed["columns"]) == {"actor_id", "canonical"}

    dry = pipeline.json("restore", "--dry-run", code=0)
    assert dry["restored"] == [] and dry["blocks_to_restore"] == 1
    assert pipeline.json("verify", code=1)["result"] == "tampered"  # dry run: untouched

    done = pipeline.json("restore", code=0)
    assert done["restored"] == [{"chain_id": chain, "height": height}]
    pipeline.wait_chained(extra=1)
    assert pipeline.json("verify", code=0)["result"] == "intact"


def test_restore_refuses_a_replica_that_does_not_match_the_signed_checkpoints(
    pipeline: Pipeline,
) -> None:
    """The replica's copy of the block was altered as well: the replica no longer
    verifies (its event bytes are not the signed ones), so nothing is restored from it,
    nothing is ledgered, and verify still says TAMPERED."""
    chain, height = _ready(pipeline)
    pipeline.delete_block(pipeline.primary, chain, height)
    pipeline.attacker(pipeline.replica).reinsert(
        "access_events",
        chain,
        height,
        0,
        canonical=rewrite_actor(pipeline.replica, chain, height),
    )
    doc = pipeline.json("restore", code=1)
    [plan] = [c for c in doc["chains"] if c["chain_id"] == chain]
    # an event signed alone fails its attestation's proof first; one of a batch record
    # (ADR 0020) the block's Merkle root, checked before the batch's root
    assert plan["code"] in ("SOURCE_PROOF_INVALID", "MERKLE_ROOT_MISMATCH")
    assert f"height {height}" in plan["refused"]
    assert doc["restored"] == [] and plan["restore_heights"] == []
    assert pipeline.restore_events() == 0
    assert pipeline.json("verify", code=1)["result"] == "tampered"


def test_restore_refuses_a_replica_whose_block_was_replaced(pipeline: Pipeline) -> None:
    """The replica's block at that height is gone and another block stands in its
    place: the replica's tree is not the one the checkpoints signed."""
    chain, height = _ready(pipeline)
    pipeline.delete_block(pipeline.primary, chain, height)
    pipeline.attacker(pipeline.replica).mutate(
        "ALTER TABLE {db}.blocks UPDATE block_hash = %(x)s "
        "WHERE chain_id = %(c)s AND height = %(h)s",
        {"x": "ab" * 32, "c": chain, "h": height},
    )
    doc = pipeline.json("restore", code=1)
    [plan] = [c for c in doc["chains"] if c["chain_id"] == chain]
    assert plan["code"] in {"REPLICA_BROKEN", "REPLICA_MISMATCH"}, plan
    assert doc["restored"] == []
    assert pipeline.json("verify", code=1)["result"] == "tampered"
