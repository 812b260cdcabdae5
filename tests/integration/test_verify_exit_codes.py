"""``careledger verify`` exit codes as an operator meets them: a configuration problem is
exit 2 with one line naming the setting to fix, never TAMPERED; an unknown ``--chain``
is exit 2, never "intact"; hostile rows are exit 1 with their place, never a traceback.

A subprocess against the real stack, settings from the environment only, on a small
signed ledger (``tests/ledger_builder.py``) written into the test's own database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from careledger.config import PROJECT_ROOT, Settings
from careledger.keys import write_keypair
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.kinds import ACCESS
from careledger.storage.store import ChainStore
from careledger_core.signing import format_public_key
from tests.ledger_builder import (
    PROCESSOR,
    REGISTRAR,
    StoreLedger,
    access_payloads,
    mixed_ledger,
    plain_chain,
)

pytestmark = pytest.mark.integration

TRUSTED_KEY = format_public_key(PROCESSOR.public_key)
REGISTRAR_KEY = format_public_key(REGISTRAR.public_key)
#: what the registrar settings are called, in the config file and in the environment
REGISTRAR_NAMES = ("trusted_registrar_keys", "CARELEDGER_TRUSTED_REGISTRAR_KEYS", "--no-sources")


@dataclass
class Cli:
    settings: Settings
    ledger: StoreLedger

    @property
    def access(self) -> str:
        return self.settings.chain_id(self.settings.topic_events, 0)

    def run(
        self, *args: str, registrar: str | None = REGISTRAR_KEY, **overrides: object
    ) -> subprocess.CompletedProcess[str]:
        """``careledger verify ARGS`` with the settings in the environment; the registrar
        setting is left out entirely when ``registrar`` is None (the README's
        troubleshooting line sets CARELEDGER_TRUSTED_KEYS only)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
        s = self.settings.replace(**overrides)  # type: ignore[arg-type]
        env.update(s.as_env())
        for name in ("TRUSTED_REGISTRAR_KEYS", "REGISTRAR_KEY", "SOURCE_KEY"):
            env.pop(f"CARELEDGER_{name}", None)
        env["CARELEDGER_TRUSTED_KEYS"] = TRUSTED_KEY
        if registrar is not None:
            env["CARELEDGER_TRUSTED_REGISTRAR_KEYS"] = registrar
        return subprocess.run(
            [sys.executable, "-m", "commands.cli", "verify", *args],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )


def _cli(settings: Settings, blocks: dict[str, list[object]]) -> Cli:
    store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
    for chain_blocks in blocks.values():
        store.write_blocks(chain_blocks)  # type: ignore[arg-type]
    return Cli(settings, StoreLedger(store, sync_mutations=False))


@pytest.fixture
def cli(isolated: Settings) -> Iterator[Cli]:
    c = _cli(isolated, mixed_ledger(isolated))  # type: ignore[arg-type]
    try:
        yield c
    finally:
        c.ledger.backend.close()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("careledger verify: ")
    assert "TAMPERED" not in result.stdout and "tampered" not in result.stdout
    return lines[0]


# --------------------------------------------------------------------------- registrar


def test_the_readme_troubleshooting_settings_are_a_configuration_error_not_tampered(
    cli: Cli,
) -> None:
    line = one_error_line(cli.run(registrar=None))
    for name in REGISTRAR_NAMES:
        assert name in line
    assert cli.ledger.sql("SELECT count() FROM {db}.verification_runs") == [(0,)]


def test_with_the_registrar_key_the_untouched_ledger_is_intact(cli: Cli) -> None:
    result = cli.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: INTACT" in result.stdout
    assert "12 signed events" in result.stdout


def test_no_sources_skips_the_source_checks_without_a_registrar_key(cli: Cli) -> None:
    result = cli.run("--no-sources", registrar=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: INTACT" in result.stdout


def test_a_registrar_key_that_signed_no_registration_is_a_configuration_error(
    cli: Cli, tmp_path: Path
) -> None:
    other = format_public_key(write_keypair(tmp_path / "other-registrar.key").public_key)
    line = one_error_line(cli.run(registrar=other))
    assert REGISTRAR.key_id in line  # the registrar the ledger's registrations name
    for name in REGISTRAR_NAMES:
        assert name in line


def test_an_unreadable_registrar_key_file_is_a_configuration_error(
    cli: Cli, tmp_path: Path
) -> None:
    line = one_error_line(cli.run(registrar=str(tmp_path / "no-such-registrar.pub")))
    assert "trusted_registrar_keys" in line and "no-such-registrar.pub" in line


def test_signed_events_in_legacy_mode_without_a_registrar_key_are_a_configuration_error(
    cli: Cli,
) -> None:
    line = one_error_line(cli.run(registrar=None, require_source_signatures=False))
    for name in REGISTRAR_NAMES:
        assert name in line


def test_an_unsigned_legacy_ledger_needs_no_registrar_key(isolated: Settings) -> None:
    chain = isolated.chain_id(isolated.topic_events, 0)
    cli = _cli(
        isolated, {chain: plain_chain(ACCESS, chain, access_payloads(8), blocks=2, per_block=4)}
    )
    try:
        result = cli.run(registrar=None, require_source_signatures=False)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        cli.ledger.backend.close()


def test_tampering_is_reported_whatever_the_registrar_configuration(
    cli: Cli, tmp_path: Path
) -> None:
    cli.ledger.update("access_events", "patient_id = 'P-FORGED'", cli.access, 1, 1)
    other = format_public_key(write_keypair(tmp_path / "other-registrar.key").public_key)
    result = cli.run(registrar=other)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"EVENT_FIELD_MISMATCH chain={cli.access} height=1 index=1 " in result.stdout
    assert "source checks not run" in result.stderr and "trusted_registrar_keys" in result.stderr


# --------------------------------------------------------------------------- --chain


def test_an_unknown_chain_is_exit_2_naming_it(cli: Cli) -> None:
    typo = cli.access[:-1] + "9"
    line = one_error_line(cli.run("--chain", typo))
    assert f"unknown chain {typo!r}" in line
    assert f"did you mean {cli.access!r}" in line


def test_an_unknown_chain_in_follow_mode_is_exit_2(cli: Cli) -> None:
    line = one_error_line(cli.run("--follow", "--max-cycles", "1", "--chain", "no/such/chain"))
    assert "unknown chain 'no/such/chain'" in line


def test_a_known_chain_verifies(cli: Cli) -> None:
    result = cli.run("--chain", cli.access, "--no-record")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{cli.access}: 3 blocks, 12 events" in result.stdout


def test_a_chain_known_only_to_the_verifier_state_is_a_truncation_not_unknown(cli: Cli) -> None:
    assert cli.run("--no-sources").returncode == 0  # the state remembers the heads
    cli.ledger.mutate("ALTER TABLE {db}.blocks DELETE WHERE chain_id = %(c)s", {"c": cli.access})
    cli.ledger.mutate(
        "ALTER TABLE {db}.access_events DELETE WHERE chain_id = %(c)s", {"c": cli.access}
    )
    result = cli.run("--chain", cli.access)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"CHAIN_TRUNCATED chain={cli.access} height=0 " in result.stdout


# --------------------------------------------------------------------------- hostile rows


@pytest.mark.parametrize(
    ("sets", "codes"),
    [
        ("leaf_hash = ''", ("EVENT_HASH_MISMATCH", "SOURCE_PROOF_INVALID")),
        ("leaf_hash = 'zz'", ("EVENT_HASH_MISMATCH", "SOURCE_PROOF_INVALID")),
        ("canonical = ''", ("EVENT_HASH_MISMATCH", "EVENT_NOT_CANONICAL")),
    ],
)
def test_a_malformed_row_is_exit_1_with_its_place_never_a_traceback(
    cli: Cli, sets: str, codes: tuple[str, ...]
) -> None:
    cli.ledger.update("access_events", sets, cli.access, 2, 2)
    result = cli.run()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for code in codes:
        assert f"{code} chain={cli.access} height=2 index=2 " in result.stdout
    doc = json.loads(cli.run("--json", "--no-record").stdout)
    assert doc["result"] == "tampered"
    assert {(f["code"], f["height"], f["event_index"]) for f in doc["findings"]} >= {
        (code, 2, 2) for code in codes
    }
