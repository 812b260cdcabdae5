"""Key files: generated safely, refused when readable by others, never from the store."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from careledger.config import load_settings
from careledger.keys import (
    KEY_TEXT_ENV,
    KeyFileError,
    load_public_keys,
    load_signing_key,
    load_trusted_keys,
    write_keypair,
)
from careledger_core.signing import format_private_key, format_public_key
from commands.cli import main


def test_keygen_writes_a_private_key_only_its_owner_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k" / "signing.key"
    assert main(["keygen", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    printed = capsys.readouterr().out
    key = load_signing_key(out, env={})
    assert format_public_key(key.public_key) in printed
    assert f"key id: {key.key_id}" in printed
    assert load_public_keys([str(out) + ".pub"]) == [key.public_key]
    # The private key never appears in the output.
    assert format_private_key(key).splitlines()[1] not in printed


def test_keygen_refuses_to_overwrite_an_existing_key(tmp_path: Path) -> None:
    out = tmp_path / "signing.key"
    write_keypair(out)
    before = out.read_bytes()
    assert main(["keygen", "--out", str(out)]) == 2
    assert out.read_bytes() == before


def test_a_group_or_world_readable_private_key_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "signing.key"
    write_keypair(out)
    os.chmod(out, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signing_key(out, env={})


def test_the_private_key_can_come_from_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "signing.key"
    key = write_keypair(out)
    loaded = load_signing_key(None, env={KEY_TEXT_ENV: out.read_text()})
    assert loaded.key_id == key.key_id


def test_missing_key_configuration_is_explained(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="careledger keygen"):
        load_signing_key(None, env={})
    settings = load_settings(env={}, run_dir=tmp_path)
    with pytest.raises(KeyFileError, match="never read keys from the store"):
        load_trusted_keys(settings)


def test_trusted_keys_accept_files_and_literals(tmp_path: Path) -> None:
    a = write_keypair(tmp_path / "a.key")
    b = write_keypair(tmp_path / "b.key")
    settings = load_settings(
        env={
            "CARELEDGER_TRUSTED_KEYS": f"{tmp_path / 'a.key.pub'},{format_public_key(b.public_key)}"
        },
        run_dir=tmp_path,
    )
    trusted = load_trusted_keys(settings)
    assert set(trusted) == {a.key_id, b.key_id}
