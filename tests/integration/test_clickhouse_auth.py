"""The running local ClickHouse server (issue 12): its users file holds no password,
only the SHA-256 ClickHouse compares, readable by its owner only; the configured
password is accepted and any other refused; a command given a wrong password says it
cannot reach the store (exit 2), never an all-clear."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from careledger.config import PROJECT_ROOT, Settings
from careledger.keys import write_keypair
from careledger.processes import child_env
from careledger.stack.paths import _paths
from careledger.stack.readiness import _clickhouse_version

pytestmark = pytest.mark.integration


def test_the_server_keeps_a_hash_and_refuses_another_password(stack: Settings) -> None:
    users = _paths(stack).clickhouse_users
    text = users.read_text()
    assert "<password>" not in text and "<password_sha256_hex>" in text
    assert os.stat(users).st_mode & 0o777 == 0o600
    assert _clickhouse_version(stack) is not None
    assert _clickhouse_version(stack.replace(clickhouse_password="guessed")) is None


def test_verify_with_a_wrong_password_cannot_tell(isolated: Settings, tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    write_keypair(key)  # trust configured: what stops verify must be ClickHouse
    wrong = isolated.replace(
        run_dir=tmp_path / "run",  # no verifier memory of another ledger
        clickhouse_password="guessed",
        trusted_keys=(str(key) + ".pub",),
        trusted_registrar_keys=(str(key) + ".pub",),
    )
    done = subprocess.run(
        [sys.executable, "-m", "commands.cli", "verify", "--no-audit"],
        cwd=PROJECT_ROOT,
        env=child_env(wrong),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    said = (done.stdout + done.stderr).strip()
    assert "cannot read the chains from ClickHouse" in said, said
    assert len(said.splitlines()) == 1, said
    assert "guessed" not in done.stdout + done.stderr  # the password is never printed
    assert "Traceback" not in done.stderr
