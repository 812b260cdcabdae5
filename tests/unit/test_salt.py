"""The auditor's pseudonym salt (issue 12, point 4; ADR 0026).

Attack: an empty ``audit-salt`` file was accepted silently, alert pseudonyms became
unkeyed hashes of the MRN and were reversed by trying MRNs. Now an empty or short salt
(fewer than 16 bytes, 128 bits) or one of fewer than 8 distinct characters is refused
with a one-line error (exit 2), and the salt file is refused when group or others can
read it, as key files are; the auditor creates it with mode 0600.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from careledger.config import Settings
from verifiers.auditor.runner.store import MIN_SALT_BYTES, SALT_FILE, SaltError, load_salt
from verifiers.auditor.verify import read_salt

REPO = Path(__file__).resolve().parents[2]
GOOD = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def _salt_file(tmp_path: Path, text: str, mode: int = 0o600) -> Settings:
    path = tmp_path / "keys" / SALT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return Settings(run_dir=tmp_path)


BAD = ["", "\n", "   \n", "short-salt\n", "a" * 40, "0123456789abcde"]


@pytest.mark.parametrize("text", BAD, ids=repr)
def test_the_auditor_refuses_an_empty_or_weak_salt_file(tmp_path: Path, text: str) -> None:
    settings = _salt_file(tmp_path, text)
    with pytest.raises(SaltError) as info:
        load_salt(settings)
    assert "\n" not in str(info.value) and "audit-salt" in str(info.value)
    with pytest.raises(SaltError):
        read_salt(settings)


@pytest.mark.parametrize("value", ["x", "e2e-salt", "0123456789abcde", "ab" * 20])
def test_the_auditor_refuses_a_weak_configured_salt(tmp_path: Path, value: str) -> None:
    settings = Settings(run_dir=tmp_path, audit_salt=value)
    with pytest.raises(SaltError) as info:
        load_salt(settings)
    assert "CARELEDGER_AUDIT_SALT" in str(info.value)
    assert len(value) < 4 or value not in str(info.value)  # the secret is never echoed
    with pytest.raises(SaltError):
        read_salt(settings)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_salt_file_readable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    settings = _salt_file(tmp_path, GOOD, mode)
    with pytest.raises(SaltError, match="chmod 600"):
        load_salt(settings)
    with pytest.raises(SaltError, match="chmod 600"):
        read_salt(settings)


def test_a_strong_private_salt_is_used(tmp_path: Path) -> None:
    settings = _salt_file(tmp_path, GOOD + "\n")
    assert load_salt(settings) == GOOD == read_salt(settings)
    assert len(GOOD.encode()) >= MIN_SALT_BYTES == 16
    configured = "integration-test-salt"
    assert load_salt(settings.replace(audit_salt=configured)) == configured


def test_the_created_salt_is_private_and_strong(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    assert read_salt(settings) is None  # verify never creates it
    salt = load_salt(settings)
    path = tmp_path / "keys" / SALT_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(salt) == 64 and load_salt(settings) == salt == read_salt(settings)


def test_the_salt_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_salt(Settings(run_dir=tmp_path))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keys" / SALT_FILE).stat().st_mode) == 0o600


def test_the_audit_command_stops_with_one_line_and_exit_2(tmp_path: Path) -> None:
    """Before any broker or database is touched: the salt is read first."""
    _salt_file(tmp_path, "")
    env = dict(os.environ, CARELEDGER_RUN_DIR=str(tmp_path), CARELEDGER_AUDIT_SALT="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "commands.cli",
            "audit",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "salt" in lines[0] and "Traceback" not in proc.stderr, lines
