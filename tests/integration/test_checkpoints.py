"""The verifier against the signed checkpoints the processor publishes to Kafka.

Each test gets its own ClickHouse database and topics (fixture ``isolated``) and a
verifier state directory that has never been used: the verifier knows nothing of
the chains but what the store and the checkpoints topic say. Chains are built by the
real chainer and written with ``ChainStore.write_blocks``; after each block the
checkpoint of the new head (ADR 0012: the RFC 6962 root over the chain's block hashes,
with the consistency proof from the previous checkpoint) is published exactly as the
processor does it (``processors.app.KafkaOutputs.publish_checkpoints``), so the topic
holds one checkpoint per block. The rollback attacks against these checkpoints are in
``test_rollback.py``. ``careledger verify`` runs as a subprocess configured only by
its environment. (The real processor publishing checkpoints end to end is covered by
``test_pipeline.py``.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from careledger.config import PROJECT_ROOT, Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import ChainHead, ChainStore, SealedBlock
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.checkpoint import checkpoint_for, format_checkpoint, sign_note
from careledger_core.event import canonical_event_bytes
from careledger_core.signing import SigningKey, format_public_key
from processors.app import KafkaOutputs
from processors.chainer import PartitionChain
from processors.records import ChainUpdate
from producers.simulator import HospitalModel, simulate
from verifiers.integrity.checkpoints import CheckpointReader

pytestmark = pytest.mark.integration

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger checkpoint test key").digest())
ATTACKER_KEY = SigningKey.from_seed(hashlib.sha256(b"checkpoint attacker key").digest())
CHAINS, BLOCKS, PER_BLOCK = 2, 5, 20
HEAD = BLOCKS - 1


@dataclass
class Setup:
    settings: Settings
    store: ChainStore
    chains: list[str]
    blocks: dict[str, list[SealedBlock]]
    spare: list[bytes]
    key_file: Path

    @property
    def db(self) -> str:
        return self.store.db

    # -- running the verifier ------------------------------------------------------
    def verify(self, *args: str, timeout: float = 120, **overrides: Any) -> Result:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
        env.update(self.settings.replace(**overrides).as_env())
        env["CARELEDGER_TRUSTED_KEYS"] = str(self.key_file)
        proc = subprocess.run(
            [sys.executable, "-m", "commands.cli", "verify", "--json", "--no-record", *args],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(proc)

    # -- publishing checkpoints -----------------------------------------------------
    def update(self, block: SealedBlock, below: list[SealedBlock] | None = None) -> ChainUpdate:
        """The checkpoint of ``block`` on top of ``below`` (default: the genuine blocks
        under it), with the proof from the checkpoint just below it."""
        chain = block.header.chain_id
        below = self.blocks[chain] if below is None else below
        return chain_update(block, [b.block_hash for b in below[: block.header.height]])

    def publish(
        self,
        blocks: list[SealedBlock],
        key: SigningKey = KEY,
        below: list[SealedBlock] | None = None,
    ) -> None:
        """One checkpoint per block, as the processor publishes after each write."""
        outputs = KafkaOutputs(self.settings)
        for block in blocks:
            outputs.publish_checkpoints([self.update(block, below)], key)
        assert outputs.flush(30.0) == 0
        assert outputs.checkpoint_failures == 0

    def write_and_publish(self, blocks: list[SealedBlock]) -> None:
        """Each block stored, then its checkpoint published: the processor's order."""
        outputs = KafkaOutputs(self.settings)
        for block in blocks:
            self.store.write_blocks([block])
            outputs.publish_checkpoints([self.update(block, blocks)], KEY)
        assert outputs.flush(30.0) == 0
        assert outputs.checkpoint_failures == 0

    def publish_raw(self, key: str, note: str) -> None:
        producer = Producer(kafka_config(self.settings, ADMIN))
        producer.produce(self.settings.topic_checkpoints, key=key.encode(), value=note.encode())
        assert producer.flush(30.0) == 0

    # -- tampering with the store ---------------------------------------------------
    def mutate(self, statement: str, params: dict[str, Any]) -> None:
        self.store.backend.execute(statement, params)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = self.store.backend.execute(
                "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
                {"db": self.db},
            )
            if int(rows[0][0]) == 0:
                return
            time.sleep(0.05)
        raise AssertionError("mutation did not finish")

    def delete_from(self, chain: str, height: int) -> None:
        """Delete blocks ``height``.. of ``chain``: headers and their events."""
        for table in ("blocks", "access_events"):
            self.mutate(
                f"ALTER TABLE {self.db}.{table} DELETE WHERE chain_id = %(c)s AND height >= %(h)s",
                {"c": chain, "h": height},
            )

    def next_block(
        self, chain: str, on: SealedBlock, key: SigningKey, payloads: list[bytes]
    ) -> SealedBlock:
        """A block that links correctly to ``on``, with other events, signed by ``key``."""
        resumed = PartitionChain.resume(
            chain,
            ChainHead(chain, on.header.height, on.block_hash.hex(), on.header.last_offset),
            max_event_bytes=65536,
        )
        for i, value in enumerate(payloads):
            assert resumed.add(on.header.last_offset + 1 + i, value, None, 0.0, 0.0) is None
        block = resumed.seal(key, now=1_900_000_000.0)
        assert block is not None
        return block


@dataclass
class Result:
    proc: subprocess.CompletedProcess[str]

    @property
    def code(self) -> int:
        return self.proc.returncode

    @property
    def doc(self) -> dict[str, Any]:
        assert self.proc.stdout, self.proc.stderr
        return json.loads(self.proc.stdout)

    @property
    def where(self) -> set[tuple[str, str, int | None]]:
        return {(f["code"], f["chain_id"], f["height"]) for f in self.doc["findings"]}

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout: {self.proc.stdout}\nstderr: {self.proc.stderr}"


def chain_update(block: SealedBlock, below: list[bytes]) -> ChainUpdate:
    """What the processor publishes for ``block`` on top of blocks with hashes ``below``."""
    old = ChainTree.of_blocks(below)
    leaf = block_leaf_hash(block.block_hash)
    return ChainUpdate(block.header, old.append(leaf), old.size, old.consistency_proof([leaf]))


def build_chain(chain_id: str, payloads: list[bytes]) -> list[SealedBlock]:
    chain = PartitionChain(chain_id, max_event_bytes=65536)
    it = iter(payloads)
    sealed = []
    offset = 0
    for b in range(BLOCKS):
        for _ in range(PER_BLOCK):
            assert chain.add(offset, next(it), b"k", 0.0, 0.0) is None
            offset += 1
        block = chain.seal(KEY, now=1_800_000_000.0 + b)
        assert block is not None
        sealed.append(block)
    return sealed


@pytest.fixture
def setup(isolated: Settings, tmp_path: Path) -> Iterator[Setup]:
    # Chains built here by hand from plain events: legacy mode, no source checks
    # (signed events and the source checks are tested in test_signed_pipeline.py).
    isolated = isolated.replace(require_source_signatures=False)
    model = HospitalModel(seed=9, staff=60, patients=300)
    n = BLOCKS * PER_BLOCK
    events = [canonical_event_bytes(e) for e in simulate(model, count=CHAINS * n + 100, seed=9)]
    store = ChainStore(ClickHouseBackend.from_settings(isolated), isolated.clickhouse_database)
    chains = [isolated.chain_id(isolated.topic_events, p) for p in range(CHAINS)]
    key_file = tmp_path / "trusted" / "signing.pub"
    key_file.parent.mkdir()
    key_file.write_text(format_public_key(KEY.public_key) + "\n")
    s = Setup(isolated, store, chains, {}, events[CHAINS * n :], key_file)
    for i, chain in enumerate(chains):
        s.blocks[chain] = build_chain(chain, events[i * n : (i + 1) * n])
        s.write_and_publish(s.blocks[chain])
    assert not isolated.verifier_state.exists(), "every test starts with no verifier state"
    try:
        yield s
    finally:
        store.backend.close()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- intact


def test_intact_chains_verify_against_their_checkpoints(setup: Setup) -> None:
    result = setup.verify()
    assert result.code == 0, result
    doc = result.doc
    assert doc["result"] == "intact" and doc["findings"] == []
    cp = doc["checkpoints"]
    assert cp["status"] == "ok" and cp["topic"] == setup.settings.topic_checkpoints
    assert (cp["notes"], cp["verified"], cp["untrusted"], cp["invalid"], cp["chains"]) == (
        CHAINS * BLOCKS,
        CHAINS * BLOCKS,
        0,
        0,
        CHAINS,
    )
    for chain in doc["chains"]:
        assert (chain["known_height"], chain["known_source"]) == (HEAD, "checkpoint")
        assert chain["head_height"] == HEAD


def test_human_output_says_what_the_checkpoints_gave(setup: Setup) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
    env.update(setup.settings.as_env())
    env["CARELEDGER_TRUSTED_KEYS"] = str(setup.key_file)
    proc = subprocess.run(
        [sys.executable, "-m", "commands.cli", "verify", "--no-record"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"checkpoints: {CHAINS * BLOCKS} notes in {setup.settings.topic_checkpoints}, " in (
        proc.stdout
    )
    assert f"heads of {CHAINS} chain(s)" in proc.stdout


# --------------------------------------------------------------------------- truncation


def test_truncated_newest_blocks_detected_with_no_verifier_state(setup: Setup) -> None:
    chain, other = setup.chains[1], setup.chains[0]
    setup.delete_from(chain, HEAD - 1)  # the newest 2 blocks
    result = setup.verify()
    assert result.code == 1, result
    assert result.where == {("CHAIN_TRUNCATED", chain, HEAD - 1)}
    finding = result.doc["findings"][0]
    assert finding["severity"] == "critical"
    assert finding["details"]["known_height"] == HEAD
    assert finding["details"]["known_hash"] == setup.blocks[chain][HEAD].block_hash.hex()
    assert finding["details"]["known_source"] == "checkpoint"
    assert finding["details"]["stored_head_height"] == HEAD - 2
    assert f"blocks {HEAD - 1}..{HEAD} are gone" in finding["message"]
    by_chain = {c["chain_id"]: c for c in result.doc["chains"]}
    assert by_chain[chain]["result"] == "tampered" and by_chain[other]["result"] == "intact"
    # The truncated chain's shorter head is not remembered as good: still reported.
    assert setup.verify().where == {("CHAIN_TRUNCATED", chain, HEAD - 1)}


def test_chain_deleted_entirely_is_truncated(setup: Setup) -> None:
    chain = setup.chains[0]
    setup.delete_from(chain, 0)
    result = setup.verify()
    assert result.code == 1, result
    assert result.where == {("CHAIN_TRUNCATED", chain, 0)}
    by_chain = {c["chain_id"]: c for c in result.doc["chains"]}
    assert by_chain[chain]["head_height"] is None and by_chain[chain]["known_height"] == HEAD


def test_without_checkpoints_a_fresh_verifier_cannot_see_a_truncation(setup: Setup) -> None:
    """The limitation --no-checkpoints brings back: a shorter chain is self-consistent."""
    chain = setup.chains[1]
    setup.delete_from(chain, HEAD - 1)
    result = setup.verify("--no-checkpoints")
    assert result.code == 0, result
    assert result.doc["checkpoints"]["status"] == "skipped"
    assert result.doc["findings"] == []
    # It even remembers the shorter head; the checkpoints still know better.
    result = setup.verify()
    assert result.where == {("CHAIN_TRUNCATED", chain, HEAD - 1)}


# --------------------------------------------------------------------------- rewriting


def test_newest_block_replaced_by_one_signed_with_the_trusted_key(setup: Setup) -> None:
    """Whoever holds the signing key re-signs other events at the head: every block is
    well-formed and correctly signed and linked; only the checkpoint tells."""
    chain = setup.chains[0]
    genuine = setup.blocks[chain]
    forged = setup.next_block(chain, genuine[HEAD - 1], KEY, setup.spare[:PER_BLOCK])
    assert forged.header.height == HEAD and forged.block_hash != genuine[HEAD].block_hash
    setup.delete_from(chain, HEAD)
    setup.store.write_blocks([forged])
    assert setup.verify("--no-checkpoints").code == 0  # fresh state, store alone: clean
    (setup.settings.verifier_state / f"heads-{setup.db}.json").unlink()
    result = setup.verify()
    assert result.code == 1, result
    # The head block differs from the one the checkpoint names, and the stored blocks
    # no longer hash to the checkpoint's tree root at size HEAD + 1 (ADR 0012).
    assert result.where == {
        ("CHAIN_REWRITTEN", chain, HEAD),
        ("CHECKPOINT_ROOT_MISMATCH", chain, HEAD),
    }
    by_code = {f["code"]: f["details"] for f in result.doc["findings"]}
    assert by_code["CHAIN_REWRITTEN"] == {
        "known_hash": genuine[HEAD].block_hash.hex(),
        "stored_hash": forged.block_hash.hex(),
        "known_source": "checkpoint",
    }
    assert by_code["CHECKPOINT_ROOT_MISMATCH"]["last_matching_size"] == HEAD


def test_newest_block_replaced_by_one_signed_with_another_key(setup: Setup) -> None:
    chain = setup.chains[1]
    genuine = setup.blocks[chain]
    forged = setup.next_block(chain, genuine[HEAD - 1], ATTACKER_KEY, setup.spare[:PER_BLOCK])
    setup.delete_from(chain, HEAD)
    setup.store.write_blocks([forged])
    result = setup.verify()
    assert result.code == 1, result
    assert result.where == {
        ("KEY_UNKNOWN", chain, HEAD),
        ("CHAIN_REWRITTEN", chain, HEAD),
        ("CHECKPOINT_ROOT_MISMATCH", chain, HEAD),
    }


def test_checkpoints_of_two_histories_are_a_fork(setup: Setup) -> None:
    """The trusted key signed two different heads at one height."""
    chain = setup.chains[0]
    genuine = setup.blocks[chain]
    other = setup.next_block(chain, genuine[HEAD - 1], KEY, setup.spare[:PER_BLOCK])
    setup.publish([other])
    result = setup.verify()
    assert result.code == 1, result
    assert result.where == {("HEIGHT_FORK", chain, HEAD)}
    fork = result.doc["findings"][0]
    assert fork["details"]["source"] == "checkpoint"
    assert fork["details"]["kept"] == genuine[HEAD].block_hash.hex()  # the first one seen
    assert {b["block_hash"] for b in fork["details"]["blocks"]} == {
        genuine[HEAD].block_hash.hex(),
        other.block_hash.hex(),
    }
    assert result.doc["checkpoints"]["forks"] == 1


# --------------------------------------------------------------------------- notes


def test_note_signed_by_an_unknown_key_is_ignored_but_counted(setup: Setup) -> None:
    """An attacker who can write to Kafka claims a longer chain: not signed by a trusted
    key, so it proves nothing and changes nothing."""
    chain = setup.chains[0]
    longer = setup.next_block(chain, setup.blocks[chain][HEAD], ATTACKER_KEY, setup.spare[:5])
    setup.publish([longer], key=ATTACKER_KEY)
    result = setup.verify()
    assert result.code == 0, result
    assert result.doc["findings"] == []
    cp = result.doc["checkpoints"]
    assert (cp["notes"], cp["verified"], cp["untrusted"]) == (
        CHAINS * BLOCKS + 1,
        CHAINS * BLOCKS,
        1,
    )
    assert {c["known_height"] for c in result.doc["chains"]} == {HEAD}


def test_note_with_a_failing_signature_of_the_trusted_key_is_a_finding(setup: Setup) -> None:
    """A note that names the trusted key (its key hash is public) with a signature that
    does not verify: someone forges checkpoints. It is not used as a head."""
    chain = setup.chains[1]
    longer = setup.next_block(chain, setup.blocks[chain][HEAD], KEY, setup.spare[:5])
    update = setup.update(longer, [*setup.blocks[chain], longer])
    note = sign_note(
        format_checkpoint(checkpoint_for(longer.header, update.tree)), setup.settings.origin, KEY
    )
    body, _, sig_line = note[:-1].rpartition("\n")
    name, blob = sig_line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[10] ^= 0x01
    forged = f"{body}\n{name} {base64.b64encode(bytes(raw)).decode()}\n"
    setup.publish_raw(chain, forged)
    setup.publish_raw(chain, "not a signed note\n")
    result = setup.verify()
    assert result.code == 1, result
    assert result.where == {("SIGNATURE_INVALID", chain, HEAD + 1)}
    finding = result.doc["findings"][0]
    assert finding["details"]["source"] == "checkpoint"
    assert finding["details"]["key_id"] == KEY.key_id
    assert finding["details"]["offset"] == CHAINS * BLOCKS
    cp = result.doc["checkpoints"]
    assert (cp["invalid"], cp["malformed"], cp["verified"]) == (1, 1, CHAINS * BLOCKS)
    # The chains themselves are intact and compared with the genuine heads.
    assert all(c["result"] == "intact" for c in result.doc["chains"])
    assert {c["known_height"] for c in result.doc["chains"]} == {HEAD}


# --------------------------------------------------------------------------- Kafka down


def test_kafka_unreachable_warns_and_verifies_the_store(setup: Setup) -> None:
    setup.delete_from(setup.chains[0], HEAD)  # not detectable without checkpoints
    result = setup.verify(kafka_port=_unused_port())
    assert result.code == 0, result
    assert "warning: checkpoints unavailable" in result.proc.stderr
    assert "Traceback" not in result.proc.stderr
    cp = result.doc["checkpoints"]
    assert cp["status"] == "unavailable" and "Kafka" in cp["error"]
    assert result.doc["totals"]["blocks"] == CHAINS * BLOCKS - 1


def test_missing_checkpoints_topic_is_unavailable_not_empty(setup: Setup) -> None:
    result = setup.verify(topic_checkpoints=f"{setup.settings.topic_checkpoints}-absent")
    assert result.code == 0, result
    cp = result.doc["checkpoints"]
    assert cp["status"] == "unavailable" and "does not exist" in cp["error"]


# --------------------------------------------------------------------------- follow


def test_follow_reads_only_new_checkpoints_and_alerts_a_truncation(setup: Setup) -> None:
    reader = CheckpointReader(setup.settings, [KEY.public_key])
    first = reader.refresh()
    assert (first.status, first.read, first.counts["chains"]) == ("ok", CHAINS * BLOCKS, CHAINS)
    assert reader.refresh().read == 0
    chain = setup.chains[0]
    block = setup.next_block(chain, setup.blocks[chain][HEAD], KEY, setup.spare[:5])
    setup.store.write_blocks([block])
    setup.publish([block])
    again = reader.refresh()
    assert again.read == 1 and again.heads[chain].height == HEAD + 1

    # A follower started with no state notices the truncation in its first cycle.
    setup.delete_from(chain, HEAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
    env.update(setup.settings.as_env())
    env["CARELEDGER_TRUSTED_KEYS"] = str(setup.key_file)
    command = ["verify", "--follow", "--max-cycles", "1", "--json", "--no-record"]
    proc = subprocess.run(
        [sys.executable, "-m", "commands.cli", *command],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout.splitlines()[-1])
    assert doc["mode"] == "follow-full" and doc["checkpoints"]["status"] == "ok"
    assert [(a["code"], a["chain_id"], a["height"]) for a in doc["new_alerts"]] == [
        ("CHAIN_TRUNCATED", chain, HEAD)
    ]
    assert doc["new_alerts"][0]["details"]["known_height"] == HEAD + 1
