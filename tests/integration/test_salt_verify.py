"""``careledger verify`` refuses a weak pseudonym salt as the auditor does (ADR 0026).

Attack: an empty ``keys/audit-salt`` (or a world-readable one) was used as it was, so
the pseudonyms verify recomputed were unkeyed hashes of MRNs. Now verify says it cannot
check the auditor's rows (exit 2) and names the problem in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from careledger.config import Settings
from tests.integration.test_tamper_audit_rows import verify_cli

pytestmark = pytest.mark.integration

GOOD = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def _salt_file(run_dir: Path, text: str, mode: int) -> None:
    path = run_dir / "keys" / "audit-salt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


@pytest.mark.parametrize(
    ("text", "mode", "says"),
    [
        ("", 0o600, "is empty"),
        ("short-salt", 0o600, "at least 16"),
        (GOOD, 0o644, "chmod 600"),
    ],
)
def test_verify_refuses_a_weak_or_readable_salt_file(
    isolated: Settings, tmp_path: Path, text: str, mode: int, says: str
) -> None:
    settings = isolated.replace(run_dir=tmp_path)
    _salt_file(tmp_path, text, mode)
    cli = verify_cli(settings, salt="")
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "Traceback" not in cli.stderr
    lines = [line for line in cli.stderr.splitlines() if "salt" in line]
    assert len(lines) == 1 and says in lines[0], cli.stderr


def test_verify_refuses_a_short_configured_salt_and_uses_a_good_file(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = isolated.replace(run_dir=tmp_path)
    cli = verify_cli(settings, salt="e2e-salt")
    assert cli.returncode == 2 and "CARELEDGER_AUDIT_SALT" in cli.stderr, cli.stderr
    assert "e2e-salt" not in cli.stderr.replace("CARELEDGER_AUDIT_SALT", "")
    _salt_file(tmp_path, GOOD, 0o600)
    good = verify_cli(settings, salt="")
    assert "salt" not in good.stderr, good.stdout + good.stderr
