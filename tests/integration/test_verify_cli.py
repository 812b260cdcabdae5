"""``careledger verify`` as an operator runs it: a subprocess against the real stack.

Chains are built with the real chainer and written with ``ChainStore.write_blocks``
into the test's own database; the verifier gets its trusted key and settings from
the environment only (``Settings.as_env()`` + ``CARELEDGER_TRUSTED_KEYS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from careledger.config import PROJECT_ROOT, Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import ChainHead, ChainStore, SealedBlock
from careledger_core.event import canonical_event_bytes
from careledger_core.signing import SigningKey, format_public_key
from processors.chainer import PartitionChain
from producers.simulator import HospitalModel, simulate

pytestmark = pytest.mark.integration

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger cli test key").digest())
ATTACKER_KEY = SigningKey.from_seed(hashlib.sha256(b"cli attacker key").digest())
CHAINS, BLOCKS, PER_BLOCK = 2, 4, 30


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

    def env(self, *, trusted: bool = True, **overrides: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
        env.update(self.settings.replace(**overrides).as_env())
        env["CARELEDGER_TRUSTED_KEYS"] = str(self.key_file) if trusted else ""
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def verify(
        self, *args: str, trusted: bool = True, timeout: float = 120, **overrides: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "commands.cli", "verify", *args],
            cwd=PROJECT_ROOT,
            env=self.env(trusted=trusted, **overrides),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

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

    def tamper_patient(self, chain: str, height: int, idx: int) -> None:
        self.mutate(
            f"ALTER TABLE {self.db}.access_events UPDATE patient_id = 'P-FORGED' "
            "WHERE chain_id = %(c)s AND height = %(h)s AND idx = %(i)s",
            {"c": chain, "h": height, "i": idx},
        )

    def runs(self) -> list[dict[str, Any]]:
        cols = ("run_id", "mode", "chains", "blocks", "events", "findings", "result", "summary")
        rows = self.store.backend.execute(
            f"SELECT {', '.join(cols)} FROM {self.db}.verification_runs ORDER BY started_at"
        )
        return [
            {c: v.decode() if isinstance(v, bytes) else v for c, v in zip(cols, r, strict=True)}
            for r in rows
        ]

    def append_block(self, chain: str, key: SigningKey, payloads: list[bytes]) -> SealedBlock:
        head = self.store.head(chain)
        assert head is not None
        resumed = PartitionChain.resume(
            chain,
            ChainHead(chain, head.height, head.block_hash, head.last_offset),
            max_event_bytes=65536,
        )
        for i, value in enumerate(payloads):
            resumed.add(head.last_offset + 1 + i, value, None, 0.0, 0.0)
        block = resumed.seal(key, now=time.time())
        assert block is not None
        self.store.write_blocks([block])
        return block


def build_chain(chain_id: str, payloads: list[bytes]) -> list[SealedBlock]:
    chain = PartitionChain(chain_id, max_event_bytes=65536)
    it = iter(payloads)
    sealed = []
    offset = 0
    for b in range(BLOCKS):
        for _ in range(PER_BLOCK):
            chain.add(offset, next(it), b"k", 0.0, 0.0)
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
    model = HospitalModel(seed=5, staff=60, patients=300)
    n = BLOCKS * PER_BLOCK
    events = [canonical_event_bytes(e) for e in simulate(model, count=CHAINS * n + 200, seed=5)]
    store = ChainStore(ClickHouseBackend.from_settings(isolated), isolated.clickhouse_database)
    chains = [isolated.chain_id(isolated.topic_events, p) for p in range(CHAINS)]
    blocks = {}
    for i, chain in enumerate(chains):
        blocks[chain] = build_chain(chain, events[i * n : (i + 1) * n])
        store.write_blocks(blocks[chain])
    key_file = tmp_path / "trusted" / "signing.pub"
    key_file.parent.mkdir()
    key_file.write_text(format_public_key(KEY.public_key) + "\n")
    try:
        yield Setup(isolated, store, chains, blocks, events[CHAINS * n :], key_file)
    finally:
        store.backend.close()


# --------------------------------------------------------------------------- one-shot runs


def test_intact_chains_exit_0_with_a_summary_and_a_recorded_run(setup: Setup) -> None:
    result = setup.verify()
    assert result.returncode == 0, result.stdout + result.stderr
    for chain in setup.chains:
        assert (
            f"  {chain}: {BLOCKS} blocks, {BLOCKS * PER_BLOCK} events, head height 3: intact"
            in (result.stdout)
        )
    assert "result: INTACT" in result.stdout
    runs = setup.runs()
    assert len(runs) == 1
    run = runs[0]
    assert (run["mode"], run["result"], run["chains"], run["blocks"], run["events"]) == (
        "full",
        "intact",
        CHAINS,
        CHAINS * BLOCKS,
        CHAINS * BLOCKS * PER_BLOCK,
    )
    assert json.loads(run["summary"])["chains"][0]["head_height"] == BLOCKS - 1
    # The state remembers the heads that verified clean.
    state = json.loads((setup.settings.verifier_state / f"heads-{setup.db}.json").read_text())
    assert {c: h["height"] for c, h in state["chains"].items()} == dict.fromkeys(
        setup.chains, BLOCKS - 1
    )


def test_tampered_chain_exits_1_and_names_the_finding(setup: Setup) -> None:
    chain = setup.chains[1]
    setup.tamper_patient(chain, 2, 7)
    event_id = setup.blocks[chain][2].events[7].event.event_id
    result = setup.verify()
    assert result.returncode == 1, result.stdout + result.stderr
    line = f"EVENT_FIELD_MISMATCH chain={chain} height=2 index=7 event_id={event_id} "
    assert line in result.stdout
    assert f"  {chain}: {BLOCKS} blocks" in result.stdout and ": tampered" in result.stdout
    assert "result: TAMPERED" in result.stdout
    assert setup.runs()[-1]["result"] == "tampered"


def test_json_output_carries_the_codes(setup: Setup) -> None:
    chain = setup.chains[0]
    setup.mutate(
        f"ALTER TABLE {setup.db}.access_events DELETE "
        "WHERE chain_id = %(c)s AND height = 1 AND idx = 3",
        {"c": chain},
    )
    result = setup.verify("--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["result"] == "tampered"
    assert doc["totals"]["chains"] == CHAINS
    assert doc["totals"]["findings_by_code"] == {"EVENT_COUNT_MISMATCH": 1, "EVENT_MISSING": 1}
    missing = next(f for f in doc["findings"] if f["code"] == "EVENT_MISSING")
    assert (missing["chain_id"], missing["height"], missing["event_index"]) == (chain, 1, 3)
    assert missing["severity"] == "critical"
    by_chain = {c["chain_id"]: c for c in doc["chains"]}
    assert by_chain[chain]["result"] == "tampered"
    assert by_chain[setup.chains[1]]["result"] == "intact"
    assert doc["run_id"] == setup.runs()[-1]["run_id"]


def test_one_chain_from_a_height_without_recording(setup: Setup) -> None:
    chain = setup.chains[0]
    setup.tamper_patient(chain, 0, 0)  # below the range asked for
    result = setup.verify("--chain", chain, "--from-height", "2", "--no-record", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert [c["chain_id"] for c in doc["chains"]] == [chain]
    assert (doc["totals"]["blocks"], doc["totals"]["events"]) == (
        BLOCKS - 2,
        (BLOCKS - 2) * PER_BLOCK,
    )
    assert setup.runs() == []


def test_truncation_is_detected_on_the_next_run(setup: Setup) -> None:
    assert setup.verify().returncode == 0
    chain = setup.chains[1]
    for table in ("blocks", "access_events"):
        setup.mutate(
            f"ALTER TABLE {setup.db}.{table} DELETE WHERE chain_id = %(c)s AND height >= 2",
            {"c": chain},
        )
    result = setup.verify()
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"CHAIN_TRUNCATED chain={chain} height=2 index=- event_id=- " in result.stdout
    # Still reported on later runs: a tampered chain does not move the remembered head.
    assert setup.verify().returncode == 1


def test_trusted_key_option_and_an_untrusted_signer(setup: Setup) -> None:
    other = format_public_key(ATTACKER_KEY.public_key)
    result = setup.verify("--trusted-key", other, "--no-record", trusted=False)
    assert result.returncode == 1
    assert f"KEY_UNKNOWN chain={setup.chains[0]} height=0 " in result.stdout
    mine = format_public_key(KEY.public_key)
    assert setup.verify("--trusted-key", mine, "--no-record", trusted=False).returncode == 0


def test_no_trusted_key_is_a_configuration_error(setup: Setup) -> None:
    result = setup.verify(trusted=False)
    assert result.returncode == 2
    assert "trusted" in result.stderr and "CARELEDGER_TRUSTED_KEYS" in result.stderr
    assert setup.runs() == []


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_clickhouse_unreachable_exits_2(setup: Setup) -> None:
    result = setup.verify(clickhouse_port=_unused_port(), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ClickHouse" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_database_exits_2(setup: Setup) -> None:
    result = setup.verify("--database", f"careledger_absent_{uuid.uuid4().hex[:8]}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- follow mode


def _follow(setup: Setup, *args: str, **overrides: Any) -> subprocess.Popen[str]:
    overrides.setdefault("follow_interval_s", 0.3)
    overrides.setdefault("full_reverify_every_s", 2.0)
    return subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "verify", "--follow", *args],
        cwd=PROJECT_ROOT,
        env=setup.env(**overrides),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _alerts(settings: Settings, want: int, timeout: float) -> list[tuple[bytes, dict[str, Any]]]:
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"careledger-test-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([settings.topic_alerts])
    got: list[tuple[bytes, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(got) < want:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            got.append((msg.key(), json.loads(msg.value())))
        # anything else already there (duplicates would show up here)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append((msg.key(), json.loads(msg.value())))
    finally:
        consumer.close()
    return got


def test_follow_verifies_new_blocks_alerts_once_and_stops_on_its_own(setup: Setup) -> None:
    proc = _follow(setup, "--stop-after", "25")
    try:
        _wait(lambda: len(setup.runs()) >= 1, 30, "the first cycle")
        # A genuine new block is verified incrementally.
        chain0, chain1 = setup.chains
        setup.append_block(chain0, KEY, setup.spare[:20])
        _wait(
            lambda: any(
                r["mode"] == "follow-incremental" and r["blocks"] == 1 for r in setup.runs()
            ),
            30,
            "an incremental cycle over the new block",
        )
        # A forged block (found by the next incremental cycle) and an edit of an old
        # event (found by the next full re-verification).
        setup.append_block(chain1, ATTACKER_KEY, setup.spare[20:40])
        setup.tamper_patient(chain0, 1, 4)
        alerts = _alerts(setup.settings, want=2, timeout=40)
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err  # stopped by itself (--stop-after), found tampering
    codes = sorted((a["code"], a["chain_id"], a["height"], a["event_index"]) for _, a in alerts)
    assert codes == [
        ("EVENT_FIELD_MISMATCH", chain0, 1, 4),
        ("KEY_UNKNOWN", chain1, BLOCKS, None),
    ], "each finding alerted exactly once"
    for key, alert in alerts:
        assert key == alert["chain_id"].encode()
        assert alert["run_id"] and alert["detected_at"].endswith("Z") and alert["alert_id"]
        assert (
            alert["severity"]
            == {"KEY_UNKNOWN": "critical", "EVENT_FIELD_MISMATCH": "error"}[alert["code"]]
        )
    by_id = {r["run_id"] for r in setup.runs()}
    assert {a["run_id"] for _, a in alerts} <= by_id
    modes = {r["mode"] for r in setup.runs()}
    assert {"follow-full", "follow-incremental"} <= modes
    assert "EVENT_FIELD_MISMATCH chain=" in out


def test_follow_stops_cleanly_on_sigterm(setup: Setup) -> None:
    proc = _follow(setup, "--no-record")
    try:
        _wait(
            lambda: (setup.settings.verifier_state / f"heads-{setup.db}.json").exists(),
            30,
            "a cycle",
        )
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert "cycle 1 (follow-full)" in out
    assert "Traceback" not in err
    assert setup.runs() == []
