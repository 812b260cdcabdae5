"""The witnessed ledger end to end (issue 9, ADR 0018): real Kafka, real ClickHouse, three
real witness processes (two ``careledger witness``, one unmodified litewitness v0.6.1),
quorum 2.

Chains as in ``test_checkpoints.py`` (two chains of five blocks, one checkpoint per block
published exactly as the processor does). ``careledger cosign --once`` asks the witnesses
and republishes the cosigned checkpoints; ``careledger verify`` runs with the witnesses
file and a verifier state directory that has never been used. The attacker writes to
ClickHouse, administers Kafka and, in the key-holder tests, holds the processor's key.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from careledger.config import PROJECT_ROOT, Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.stack.acls import ensure_acls
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.migrations import migrate
from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.checkpoint import (
    SIGNATURE_DASH,
    checkpoint_for,
    format_checkpoint,
    sign_note,
)
from careledger_core.cosignature import WitnessKey, attach_cosignatures, cosign
from careledger_core.signing import SigningKey
from tests.integration.test_checkpoints import BLOCKS, HEAD, KEY, PER_BLOCK, Result, Setup, setup
from tests.witness_support import (
    LiteWitness,
    TestLog,
    WitnessProcess,
    careledger_witness,
    litewitness,
    litewitness_missing,
    seeded_key,
)

pytestmark = pytest.mark.integration

__all__ = ["setup"]

A, B, L = "hospital-a.example/witness", "hospital-b.example/witness", "regulator.example/lw"


@dataclass
class Trio:
    setup: Setup
    a: WitnessProcess
    b: WitnessProcess
    lite: LiteWitness
    keys: dict[str, SigningKey]
    directory: Path

    def url(self, name: str) -> str:
        port = {A: self.a.port, B: self.b.port, L: self.lite.port}[name]
        return f"http://127.0.0.1:{port}"

    def witnesses_file(
        self, *, quorum: int = 2, max_age_s: int = 300, urls: bool = True, name: str = "w"
    ) -> Path:
        lines = [f"quorum = {quorum}", f"max_age_s = {max_age_s}", ""]
        for witness, key in self.keys.items():
            lines += [
                "[[witness]]",
                f"name = {json.dumps(witness)}",
                f"key = {json.dumps(WitnessKey(witness, key.public_key).vkey)}",
            ]
            if urls:
                lines.append(f"url = {json.dumps(self.url(witness))}")
            lines.append("")
        path = self.directory / f"{name}.toml"
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    def cli(
        self, settings: Settings, *args: str, **env_extra: str
    ) -> subprocess.CompletedProcess[str]:
        return careledger(self.setup, settings, *args, **env_extra)

    def cosign(
        self, settings: Settings | None = None, **file_args: Any
    ) -> subprocess.CompletedProcess[str]:
        s = (settings or self.setup.settings).replace(
            witnesses_file=self.witnesses_file(**file_args)
        )
        return self.cli(s, "cosign", "--once")

    def verify(self, settings: Settings | None = None, *args: str, **file_args: Any) -> Result:
        s = (settings or self.setup.settings).replace(
            witnesses_file=self.witnesses_file(**file_args)
        )
        return Result(self.cli(s, "verify", "--json", "--no-record", *args))


def careledger(
    setup: Setup, settings: Settings, *args: str, **env_extra: str
) -> subprocess.CompletedProcess[str]:
    """``careledger ARGS`` configured only by its environment (and the trusted key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
    env.update(settings.as_env())
    env["CARELEDGER_TRUSTED_KEYS"] = str(setup.key_file)
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def trio(setup: Setup, tmp_path: Path) -> Iterator[Trio]:
    missing = litewitness_missing()
    assert missing is None, missing  # a missing tool is a failure, not a skip
    logs = [TestLog(chain, key=KEY) for chain in setup.chains]
    keys = {A: seeded_key("witness a"), B: seeded_key("witness b"), L: seeded_key("witness lite")}
    with (
        careledger_witness(tmp_path / "a", A, keys[A], logs) as a,
        careledger_witness(tmp_path / "b", B, keys[B], logs) as b,
        litewitness(tmp_path / "lite", L, keys[L], logs) as lite,
    ):
        yield Trio(setup, a, b, lite, keys, tmp_path)


def witnessing(result: Result) -> dict[str, Any]:
    doc = result.doc["witnessing"]
    assert isinstance(doc, dict)
    return doc


def by_chain(result: Result) -> dict[str, dict[str, Any]]:
    return {c["chain"]: c for c in witnessing(result)["chains"]}


def recreate_topic(settings: Settings, topic: str) -> None:
    """Delete the topic and create it empty again (an attacker who administers Kafka)."""
    admin = AdminClient(kafka_config(settings, ADMIN))
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(timeout=60)
    deadline = time.monotonic() + 60
    while True:
        try:
            for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
                future.result(timeout=60)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def rewrite_from(setup: Setup, chain: str, height: int) -> list[SealedBlock]:
    """The key holder's rewrite: blocks ``height``.. of ``chain`` replaced by blocks with
    other events, correctly linked and re-signed with the processor's key, stored in
    place of the genuine ones, with a checkpoint for each (one history, consistent in
    itself)."""
    genuine = setup.blocks[chain]
    forged: list[SealedBlock] = list(genuine[:height])
    for h in range(height, BLOCKS):
        # other events (taken from the spare ones) than the genuine block had
        payloads = setup.spare[h * 3 : h * 3 + PER_BLOCK - 5]
        forged.append(setup.next_block(chain, forged[-1], KEY, payloads))
    setup.delete_from(chain, height)
    setup.store.write_blocks(forged[height:])
    setup.publish(forged[height:], KEY, below=forged)
    return forged


# --------------------------------------------------------------------------- happy path


def test_three_witnesses_cosign_and_verify_vouches_for_every_block(trio: Trio) -> None:
    cosigned = trio.cosign()
    assert cosigned.returncode == 0, cosigned.stderr
    assert "2 checkpoint(s), 2 with quorum 2 of 3" in cosigned.stdout
    result = trio.verify()
    assert result.code == 0, result
    assert result.doc["result"] == "intact" and result.doc["findings"] == []
    w = witnessing(result)
    assert w["status"] == "witnessed" and (w["quorum"], w["of"]) == (2, 3)
    for chain in trio.setup.chains:
        entry = by_chain(result)[chain]
        assert (entry["stored_size"], entry["witnessed_size"]) == (BLOCKS, BLOCKS)
        assert set(entry["cosigned_by"]) == {A, B, L}  # litewitness's cosignature counts
    # a verifier that only knows the witnesses' keys (no URLs) finds the cosigned
    # checkpoints in the topic
    assert trio.verify(urls=False, name="keys-only").code == 0


def test_without_cosignatures_the_ledger_is_not_yet_witnessed_exit_3(trio: Trio) -> None:
    # The blocks are dated in 2027 (the fixture's fixed clock): no signer can keep a
    # block "young" by dating it ahead, so they are due at once.
    result = trio.verify()
    assert result.code == 3, result
    assert result.doc["result"] == "not_witnessed" and result.doc["findings"] == []
    assert witnessing(result)["status"] == "not_witnessed"
    assert {c["witnessed_size"] for c in witnessing(result)["chains"]} == {0}


def test_one_witness_down_quorum_still_met(trio: Trio) -> None:
    trio.b.stop()
    cosigned = trio.cosign()
    assert cosigned.returncode == 0, cosigned.stderr
    assert "refused" not in cosigned.stdout
    result = trio.verify()
    assert result.code == 0, result
    assert set(witnessing(result)["unreachable"]) == {B}
    for entry in witnessing(result)["chains"]:
        assert set(entry["cosigned_by"]) == {A, L}


def test_two_witnesses_down_is_not_yet_witnessed_never_tampered(trio: Trio) -> None:
    trio.a.stop()
    trio.lite.stop()
    cosigned = trio.cosign()
    assert cosigned.returncode == 3, cosigned.stderr  # only B cosigned: no quorum
    assert "2 checkpoint(s), 0 with quorum 2 of 3" in cosigned.stdout
    result = trio.verify()
    assert result.code == 3, result
    assert result.doc["findings"] == []
    assert witnessing(result)["status"] == "not_witnessed"
    assert set(witnessing(result)["unreachable"]) == {A, L}


def test_no_cosignature_readable_at_all_is_cannot_tell_exit_2(trio: Trio) -> None:
    # Kafka unreachable for the verifier and every witness down: it cannot vouch.
    trio.cosign()
    for w in (trio.a, trio.b, trio.lite):
        w.stop()
    s = trio.setup.settings.replace(kafka_port=1)
    result = trio.verify(s)
    assert result.code == 2, result
    assert result.doc["result"] == "cannot_tell"
    assert witnessing(result)["status"] == "cannot_tell"


# --------------------------------------------------------------------------- attacks


def test_key_holder_rewrites_a_middle_block_detected_through_the_witnesses(trio: Trio) -> None:
    setup = trio.setup
    assert trio.cosign().returncode == 0  # the genuine history, size 5, is witnessed
    chain = setup.chains[0]
    # The attacker holds the processor key: rewrites block 2, re-signs 2..4, replaces the
    # rows, and replaces the checkpoints topic by one holding only the new history.
    recreate_topic(setup.settings, setup.settings.topic_checkpoints)
    rewrite_from(setup, chain, 2)
    other = setup.chains[1]
    setup.publish(setup.blocks[other])  # the untouched chain's checkpoints, republished
    # The witnesses refuse to cosign the rewritten history...
    cosigned = trio.cosign()
    assert cosigned.returncode == 3, cosigned.stdout + cosigned.stderr
    assert "refused checkpoint 5 of " + chain in cosigned.stderr
    # ...and a verifier with no state sees the witnessed checkpoint against the store.
    result = trio.verify()
    assert result.code == 1, result
    mine = [f for f in result.doc["findings"] if f["chain_id"] == chain]
    assert mine and all(f["chain_id"] != other for f in result.doc["findings"])
    forks = [f for f in mine if f["code"] == "HEIGHT_FORK"]
    assert forks, mine
    located = json.dumps(forks[0]["details"])
    assert A in located or B in located  # the evidence names the witness that served it
    assert {f["code"] for f in mine} & {"CHECKPOINT_ROOT_MISMATCH", "CHAIN_REWRITTEN"}
    # our witnesses kept the evidence: both signed checkpoints
    evidence = [
        json.loads(line)
        for line in trio.a.cli("--evidence").stdout.splitlines()
        if line.startswith("{")
    ]
    assert any(e["origin"] == chain for e in evidence), evidence


def test_split_view_a_second_verifier_shown_another_history_detects_it(trio: Trio) -> None:
    setup = trio.setup
    assert trio.cosign().returncode == 0  # verifier 1's history is witnessed
    # The key holder shows verifier 2 another database and another checkpoints topic:
    # same chains, a different history from height 3 on, all signed with the key.
    s2 = setup.settings.replace(
        clickhouse_database=setup.settings.clickhouse_database + "_fork",
        topic_checkpoints=setup.settings.topic_checkpoints + "-fork",
    )
    migrate(s2)
    admin = AdminClient(kafka_config(s2, ADMIN))
    for f in admin.create_topics([NewTopic(s2.topic_checkpoints, 1, 1)]).values():
        f.result(timeout=60)
    ensure_acls(s2)  # the forked checkpoints topic's ACLs (on a SASL_SSL broker)
    store2 = ChainStore(ClickHouseBackend.from_settings(s2), s2.clickhouse_database)
    view = Setup(s2, store2, setup.chains, {}, setup.spare, setup.key_file)
    try:
        for chain in setup.chains:
            view.blocks[chain] = list(setup.blocks[chain][:3])
            store2.write_blocks(view.blocks[chain])
            view.publish(view.blocks[chain])
            forked = view.blocks[chain]
            for h in range(3, BLOCKS):
                forked.append(setup.next_block(chain, forked[-1], KEY, setup.spare[h : h + 7]))
            store2.write_blocks(forked[3:])
            view.publish(forked[3:], KEY, below=forked)
        # On its own, the second view is consistent: signatures, links, checkpoints.
        plain = Result(trio.cli(s2, "verify", "--json", "--no-record"))
        assert plain.code == 0, plain
        # With the witnesses it is not: they cosigned the other history.
        result = trio.verify(s2)
        assert result.code == 1, result
        assert {f["chain_id"] for f in result.doc["findings"]} == set(setup.chains)
        assert "HEIGHT_FORK" in {f["code"] for f in result.doc["findings"]}
        # Asking the witnesses to cosign the second view is refused and leaves evidence.
        refused = trio.cosign(s2)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        kinds = {
            json.loads(line)["kind"]
            for line in trio.b.cli("--evidence").stdout.splitlines()
            if line.startswith("{")
        }
        assert kinds & {"fork", "inconsistent"}, kinds
    finally:
        store2.backend.execute(f"DROP DATABASE IF EXISTS {s2.clickhouse_database}")
        store2.backend.close()
        admin.delete_topics([s2.topic_checkpoints])


def test_global_rollback_with_the_checkpoints_topic_recreated_seen_by_an_empty_state(
    trio: Trio,
) -> None:
    setup = trio.setup
    assert trio.cosign().returncode == 0
    for chain in setup.chains:
        setup.delete_from(chain, 2)  # every chain rolled back to 2 blocks
    recreate_topic(setup.settings, setup.settings.topic_checkpoints)
    # Without witnesses a fresh verifier has nothing to compare with: intact.
    plain = Result(trio.cli(setup.settings, "verify", "--json", "--no-record"))
    assert plain.code == 0, plain
    result = trio.verify()
    assert result.code == 1, result
    assert result.where == {("CHAIN_TRUNCATED", chain, 2) for chain in setup.chains}
    for f in result.doc["findings"]:
        assert f["details"]["known_height"] == HEAD


def test_a_forged_cosignature_is_a_finding(trio: Trio) -> None:
    setup = trio.setup
    assert trio.cosign().returncode == 0
    # Someone appends a line with witness A's name and key id, signed by another key.
    chain = setup.chains[0]
    block = setup.blocks[chain][HEAD]
    body = format_checkpoint(checkpoint_for(block.header, setup.update(block).tree))
    forged = cosign(body, A, seeded_key("not witness a"), int(time.time()))
    real_id = WitnessKey(A, trio.keys[A].public_key).key_hash
    line = f"{SIGNATURE_DASH} {A} " + base64.b64encode(
        real_id + forged.timestamp.to_bytes(8, "big") + forged.signature
    ).decode("ascii")
    note = attach_cosignatures(sign_note(body, chain, KEY), [line])
    setup.publish_raw(chain, note)
    result = trio.verify()
    assert result.code == 1, result
    assert ("COSIGNATURE_INVALID", chain, HEAD) in result.where


def test_follow_mode_applies_the_policy_each_cycle(trio: Trio) -> None:
    s = trio.setup.settings.replace(witnesses_file=trio.witnesses_file())
    before = trio.cli(s, "verify", "--follow", "--max-cycles", "1", "--json", "--no-record")
    assert before.returncode == 3, before.stdout + before.stderr  # nothing cosigned yet
    cycle = json.loads(before.stdout.splitlines()[-1])
    assert cycle["witnessing"]["status"] == "not_witnessed"
    assert "NOT YET WITNESSED" in before.stderr
    assert trio.cosign().returncode == 0
    after = trio.cli(s, "verify", "--follow", "--max-cycles", "1", "--json", "--no-record")
    assert after.returncode == 0, after.stdout + after.stderr
    assert json.loads(after.stdout.splitlines()[-1])["witnessing"]["status"] == "witnessed"


def test_a_missing_or_broken_witnesses_file_is_exit_2_naming_the_setting(
    setup: Setup, tmp_path: Path
) -> None:
    s = setup.settings.replace(witnesses_file=tmp_path / "missing.toml")
    for command in (["verify", "--json", "--no-record"], ["cosign", "--once"]):
        proc = careledger(setup, s, *command)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "CARELEDGER_WITNESSES_FILE" in proc.stderr
        assert "TAMPERED" not in proc.stdout.upper()
    broken = tmp_path / "broken.toml"
    broken.write_text('quorum = 3\n[[witness]]\nname = "a"\nkey = "ed25519:AAAA"\n')
    proc = careledger(setup, setup.settings.replace(witnesses_file=broken), "verify", "--no-record")
    assert proc.returncode == 2 and str(broken) in proc.stderr, proc.stderr
    unset = careledger(setup, setup.settings, "cosign", "--once")
    assert unset.returncode == 2 and "witnesses_file (CARELEDGER_WITNESSES_FILE)" in unset.stderr
