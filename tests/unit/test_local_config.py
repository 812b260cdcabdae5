"""The demo's trust settings are read by the commands after it (issue 13).

Before: `careledger demo` kept its trust anchors (the processor's public key, the
registrar's) and its source key in its own process; every later command needed them
again as environment variables, `alerts ack` could not ledger a change (no source key),
and the README's troubleshooting line alone made `verify` report an untouched ledger
as TAMPERED. Now the demo writes `.run/careledger.toml` and commands read it unless
another file is named; child processes get their parent's settings whole and no file.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from careledger.config import (
    ENV_PREFIX,
    LOCAL_CONFIG_NAME,
    Settings,
    load_settings,
    local_config_path,
    write_local_config,
)
from careledger.keys import write_keypair

ROOT = Path(__file__).resolve().parents[2]


def _trusting(tmp_path: Path) -> Settings:
    key = tmp_path / "keys" / "signing.key"
    write_keypair(key)
    return Settings(
        run_dir=tmp_path / "run",
        signing_key=key,
        trusted_keys=(f"{key}.pub",),
        trusted_registrar_keys=(str(tmp_path / "keys" / "registrar 'é\".key.pub"),),
        source_id="ehr-main",
        source_key=tmp_path / "keys" / "source.key",
    )


def test_the_file_round_trips_and_is_private(tmp_path: Path) -> None:
    settings = _trusting(tmp_path)
    path = write_local_config(settings)
    assert path == settings.run_dir / LOCAL_CONFIG_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_settings(path, env={})
    for key in ("signing_key", "trusted_keys", "trusted_registrar_keys", "source_id"):
        assert getattr(loaded, key) == getattr(settings, key), key
    assert loaded.source_key == settings.source_key
    # only trust and the local source: nothing else is pinned by the demo
    assert loaded.clickhouse_database == Settings().clickhouse_database


def test_which_file_applies(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {ENV_PREFIX + "RUN_DIR": str(run)}
    assert local_config_path(env) is None  # none written
    write_local_config(Settings(run_dir=run, source_id="x"))
    assert local_config_path(env) == run / LOCAL_CONFIG_NAME
    assert local_config_path(env | {ENV_PREFIX + "CONFIG": "/elsewhere.toml"}) is None
    assert local_config_path(env | {ENV_PREFIX + "CONFIG": ""}) is None  # none at all
    # the environment still overrides the file
    loaded = load_settings(local_config_path(env), env={ENV_PREFIX + "SOURCE_ID": "y"})
    assert loaded.source_id == "y"


def test_children_get_the_whole_settings_and_read_no_file(tmp_path: Path) -> None:
    env = Settings(run_dir=tmp_path).as_env()
    assert env[ENV_PREFIX + "CONFIG"] == ""
    assert load_settings(env=env).run_dir == tmp_path  # an empty CONFIG reads nothing


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_command_after_the_demo_trusts_what_the_demo_trusted(tmp_path: Path) -> None:
    settings = _trusting(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | {
        ENV_PREFIX + "RUN_DIR": str(settings.run_dir),
        ENV_PREFIX + "CLICKHOUSE_PORT": str(_closed_port()),
        ENV_PREFIX + "CLICKHOUSE_HTTP_PORT": str(_closed_port()),
    }

    def verify() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "commands.cli", "verify", "--no-sources"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        return done.stderr

    assert "no usable trusted key" in verify()  # nothing trusted yet
    write_local_config(settings)
    said = verify()  # now it trusts the demo's key and goes on to the store (down here)
    assert "no usable trusted key" not in said and "ClickHouse" in said, said
