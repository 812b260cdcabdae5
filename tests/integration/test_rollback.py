"""Rollback attacks against the ledger and its checkpoints, on the real Kafka and
ClickHouse (issue 9, ADR 0012), each seen by a verifier whose state directory is empty
unless the test says otherwise.

The attacker can write to ClickHouse and administer Kafka; in the tests marked so, they
also hold the processor's signing key. Setup as in ``test_checkpoints.py``: two chains
of five blocks, one checkpoint per block (tree root over the block hashes, with its
consistency proof from the previous one).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.storage.store import ChainHead, SealedBlock
from careledger.storage.trees import stored_consistency_proof, stored_root
from careledger_core.chain_tree import ChainTree
from careledger_core.merkle import verify_consistency
from processors.chainer import PartitionChain
from tests.integration.test_checkpoints import (
    BLOCKS,
    CHAINS,
    HEAD,
    KEY,
    PER_BLOCK,
    Result,
    Setup,
    setup,
)

pytestmark = pytest.mark.integration

__all__ = ["setup"]  # the fixture, imported from test_checkpoints


def delete_checkpoint_records(setup: Setup) -> int:
    """DeleteRecords up to the end of every partition of the checkpoints topic."""
    topic = setup.settings.topic_checkpoints
    consumer = Consumer(kafka_config(setup.settings, ADMIN, {"group.id": "rollback-test"}))
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    admin = AdminClient(kafka_config(setup.settings, ADMIN))
    futures = admin.delete_records([TopicPartition(topic, 0, high)])
    for future in futures.values():
        deleted = future.result(timeout=30)
        assert deleted.low_watermark == high
    return int(high)


def findings(result: Result, code: str) -> list[dict[str, Any]]:
    return [f for f in result.doc["findings"] if f["code"] == code]


def relinked(
    setup: Setup, chain: str, from_height: int, payloads: list[bytes]
) -> list[SealedBlock]:
    """The key holder's rewrite: block ``from_height`` with other events, and every later
    block re-linked and re-signed with the processor key (the same events otherwise)."""
    genuine = setup.blocks[chain]
    on = genuine[from_height - 1]
    resumed = PartitionChain.resume(
        chain,
        ChainHead(chain, on.header.height, on.block_hash.hex(), on.header.last_offset),
        max_event_bytes=65536,
    )
    blocks = []
    for height in range(from_height, BLOCKS):
        events = (
            payloads if height == from_height else [e.canonical for e in genuine[height].events]
        )
        first = genuine[height].header.first_offset
        for i, value in enumerate(events):
            assert resumed.add(first + i, value, b"k", 0.0, 0.0) is None
        block = resumed.seal(KEY, now=1_800_000_000.0 + height)
        assert block is not None
        blocks.append(block)
    return blocks


def replace_from(setup: Setup, chain: str, height: int, blocks: list[SealedBlock]) -> None:
    setup.delete_from(chain, height)
    setup.store.write_blocks(blocks)


# --------------------------------------------------------------------------- truncation


def test_newest_blocks_of_every_chain_deleted_seen_with_an_empty_state(setup: Setup) -> None:
    for chain in setup.chains:
        setup.delete_from(chain, HEAD - 1)
    result = setup.verify()
    assert result.code == 1, result
    assert result.where == {("CHAIN_TRUNCATED", chain, HEAD - 1) for chain in setup.chains}
    assert result.doc["result"] == "tampered"
    # The checkpoints below the stored heads still match the stored trees.
    trees = result.doc["checkpoints"]["trees"]
    assert trees["matched"] == CHAINS * (BLOCKS - 2) and trees["mismatched"] == 0
    assert trees["above_store"] == CHAINS * 2


def test_wiped_ledger_seen_with_an_empty_state(setup: Setup) -> None:
    for table in ("blocks", "access_events", "source_attestations"):
        setup.store.backend.execute(f"TRUNCATE TABLE {setup.db}.{table}")
    result = setup.verify()
    assert result.code == 1, result
    assert result.where == {("CHAIN_TRUNCATED", chain, 0) for chain in setup.chains}
    for chain in result.doc["chains"]:
        assert (chain["head_height"], chain["known_height"]) == (None, HEAD)
    assert result.doc["totals"]["blocks"] == 0


# --------------------------------------------------------------------------- DeleteRecords


def test_delete_records_on_the_checkpoints_topic_after_a_truncation(setup: Setup) -> None:
    """The truncation a verifier reported must not turn into "ok" when the notes that
    proved it are deleted from Kafka: its state remembers the newest checkpoint it read,
    and the topic's moved log-start offset is itself reported."""
    chain = setup.chains[0]
    setup.delete_from(chain, HEAD - 1)
    first = setup.verify()
    assert first.where == {("CHAIN_TRUNCATED", chain, HEAD - 1)}
    memory = setup.settings.verifier_state / f"checkpoints-{setup.db}.json"
    remembered = json.loads(memory.read_text())["chains"]
    assert {c: e["size"] for c, e in remembered.items()} == dict.fromkeys(setup.chains, BLOCKS)

    deleted = delete_checkpoint_records(setup)
    assert deleted == CHAINS * BLOCKS
    again = setup.verify()
    assert again.code == 1, again
    cp = again.doc["checkpoints"]
    assert cp["status"] == "incomplete" and cp["notes"] == 0
    assert cp["log_start_offsets"] == {"0": deleted}
    assert cp["remembered"] == CHAINS
    # Still truncated, against the remembered checkpoint.
    truncated = findings(again, "CHAIN_TRUNCATED")
    assert [(f["chain_id"], f["height"]) for f in truncated] == [(chain, HEAD - 1)]
    assert truncated[0]["details"]["known_source"] == "checkpoint"
    # The deletion is named: the topic's first records, and each remembered checkpoint.
    missing = findings(again, "CHECKPOINTS_MISSING")
    assert {(f["chain_id"], f["height"]) for f in missing} == {
        (setup.settings.topic_checkpoints, None),
        *((c, HEAD) for c in setup.chains),
    }
    assert f"log start offset {deleted}" in missing[0]["message"]


def test_delete_records_seen_by_a_verifier_that_never_read_the_notes(setup: Setup) -> None:
    """Without any memory the deleted notes' content is lost (witnesses keep it), but
    the deletion itself is a finding: never "checkpoints: ok, notes 0"."""
    setup.delete_from(setup.chains[1], HEAD - 1)
    deleted = delete_checkpoint_records(setup)
    result = setup.verify()
    assert result.code == 1, result
    assert result.where == {("CHECKPOINTS_MISSING", setup.settings.topic_checkpoints, None)}
    cp = result.doc["checkpoints"]
    assert (cp["status"], cp["notes"], cp["log_start_offsets"]) == (
        "incomplete",
        0,
        {"0": deleted},
    )


# --------------------------------------------------------------------------- key holder


def test_rewritten_middle_block_resigned_with_the_processor_key(setup: Setup) -> None:
    """Block 2 gets other events; blocks 2..4 are re-signed and re-linked with the
    processor key, so the store is self-consistent and verifies on its own. The signed
    tree roots name the rewrite: size 3 is the first checkpoint whose root differs."""
    chain = setup.chains[0]
    forged = relinked(setup, chain, 2, setup.spare[:PER_BLOCK])
    replace_from(setup, chain, 2, forged)
    assert setup.verify("--no-checkpoints").code == 0  # the store alone is "intact"
    (setup.settings.verifier_state / f"heads-{setup.db}.json").unlink()

    result = setup.verify()
    assert result.code == 1, result
    assert result.where == {
        ("CHECKPOINT_ROOT_MISMATCH", chain, 2),
        ("CHAIN_REWRITTEN", chain, HEAD),
    }
    mismatch = findings(result, "CHECKPOINT_ROOT_MISMATCH")[0]
    d = mismatch["details"]
    genuine_hashes = [b.block_hash for b in setup.blocks[chain]]
    forged_hashes = genuine_hashes[:2] + [b.block_hash for b in forged]
    assert d["size"] == 3 and d["last_matching_size"] == 2
    assert d["checkpoint_root"] == ChainTree.of_blocks(genuine_hashes[:3]).root.hex()
    assert d["stored_root"] == ChainTree.of_blocks(forged_hashes[:3]).root.hex()
    assert d["mismatching_checkpoints"] == 3  # sizes 3, 4 and 5
    assert "a block in 2..2 was changed" in mismatch["message"]


def test_rewritten_middle_block_resigned_but_not_relinked(setup: Setup) -> None:
    chain = setup.chains[1]
    genuine = setup.blocks[chain]
    forged = setup.next_block(chain, genuine[1], KEY, setup.spare[:PER_BLOCK])
    setup.delete_from(chain, 2)
    setup.store.write_blocks([forged, *genuine[3:]])
    result = setup.verify()
    assert result.code == 1, result
    assert ("CHECKPOINT_ROOT_MISMATCH", chain, 2) in result.where
    assert ("PREV_HASH_MISMATCH", chain, 3) in result.where
    assert findings(result, "CHECKPOINT_ROOT_MISMATCH")[0]["details"]["size"] == 3


def test_forged_checkpoint_not_consistent_with_the_previous(setup: Setup) -> None:
    """The key holder signs a checkpoint of size 6 for a history forked at block 2 and
    attaches its tree's honest proof from size 5: the proof reaches the forged root from
    another root at size 5 than the one signed before, which proves the fork."""
    chain = setup.chains[0]
    forged = relinked(setup, chain, 2, setup.spare[:PER_BLOCK])
    forged_chain = [*setup.blocks[chain][:2], *forged]
    extra = setup.next_block(chain, forged_chain[HEAD], KEY, setup.spare[PER_BLOCK : PER_BLOCK + 5])
    setup.publish([extra], below=forged_chain)

    result = setup.verify()
    assert result.code == 1, result
    inconsistent = findings(result, "CHECKPOINT_INCONSISTENT")
    assert [(f["chain_id"], f["height"]) for f in inconsistent] == [(chain, BLOCKS)]
    d = inconsistent[0]["details"]
    assert (d["older"]["size"], d["newer"]["size"], d["how"]) == (
        BLOCKS,
        BLOCKS + 1,
        "consistency proof",
    )
    genuine_root = ChainTree.of_blocks([b.block_hash for b in setup.blocks[chain]]).root.hex()
    assert d["older"]["root"] == genuine_root
    assert d["newer_tree_root_at_older_size"] != genuine_root
    assert result.doc["checkpoints"]["inconsistent"] == 1


# --------------------------------------------------------------------------- proofs


def test_proofs_between_any_two_sizes_from_the_store(setup: Setup) -> None:
    """What a witness client or ``careledger restore`` asks the store for."""
    chain = setup.chains[1]
    hashes = [b.block_hash for b in setup.blocks[chain]]
    for n in range(1, BLOCKS + 1):
        root = stored_root(setup.store, chain, n)
        assert root == ChainTree.of_blocks(hashes[:n]).root
        for m in range(n + 1):
            proof = stored_consistency_proof(setup.store, chain, m, n)
            verify_consistency(m, n, ChainTree.of_blocks(hashes[:m]).root, root, proof)
    # Every checkpoint in the topic carried the proof from the one before it.
    result = setup.verify()
    assert result.code == 0, result
    cp = result.doc["checkpoints"]
    assert (cp["proofs_verified"], cp["proofs_unusable"], cp["proofs_pending"]) == (
        CHAINS * BLOCKS,
        0,
        0,
    )


def test_a_corrupt_checkpoint_memory_is_a_configuration_error_not_an_all_clear(
    setup: Setup,
) -> None:
    """Forgetting the remembered checkpoints would hide what they proved: refuse to run."""
    memory = setup.settings.verifier_state / f"checkpoints-{setup.db}.json"
    memory.parent.mkdir(parents=True, exist_ok=True)
    memory.write_text("{ not json")
    result = setup.verify()
    assert result.code == 2, result
    assert str(memory) in result.proc.stderr and "corrupt" in result.proc.stderr
    assert "Traceback" not in result.proc.stderr
