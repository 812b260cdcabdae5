"""The key store's rows in the ledger's ClickHouse 18.16 (ADR 0037): a key made by one
process is the key another process reads; a destruction leaves no row and no wrapped
key in what the server answers; a wrapped key edited or moved with ``ALTER TABLE ...
UPDATE`` does not unwrap; unwraps are counted across processes; the commands say in
one line when the token or ClickHouse cannot be used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from careledger.config import Settings
from careledger.keyrows import ClickHouseRows
from careledger.keystore import KeyStore, KeyStoreError, open_keystore
from careledger.storage.backend import ClickHouseBackend
from tests.softhsm import with_token

pytestmark = pytest.mark.integration


def _env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
    env.update(s.as_env())
    return env


def _cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(s),
    )


def _raw(s: Settings, sql: str) -> list[tuple[object, ...]]:
    backend = ClickHouseBackend.from_settings(s)
    try:
        return backend.execute(sql.format(db=s.clickhouse_database))
    finally:
        backend.close()


def test_a_key_made_by_one_process_is_the_key_another_reads_and_unwraps_are_counted(
    isolated: Settings,
) -> None:
    s, _token = with_token(isolated)
    with open_keystore(s, create=True) as store:
        assert isinstance(store.rows, ClickHouseRows)
        lookup = store.lookup("urn:oid:1.2.3", "MRN-000042")
        made = store.data_key(lookup, "ingest", create=True)
        assert made is not None
    script = (
        "from careledger.config import load_settings\n"
        "from careledger.keystore import open_keystore\n"
        "with open_keystore(load_settings(None)) as k:\n"
        "    d = k.data_key(k.lookup('urn:oid:1.2.3', 'MRN-000042'), 'report')\n"
        "    print(d.key_id.hex(), d.key.hex())\n"
    )
    again = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=_env(s)
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == [made.key_id.hex(), made.key.hex()]
    status = _cli(s, "keystore", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    figures = json.loads(status.stdout)
    assert figures["data_keys"] == 1 and figures["unwraps"] == {"report": 1}
    assert made.key.hex() not in status.stdout + status.stderr


def test_a_destroyed_key_is_gone_from_every_answer_of_the_server(isolated: Settings) -> None:
    s, _token = with_token(isolated)
    with open_keystore(s, create=True) as store:
        erased, kept = store.lookup("s", "MRN-1"), store.lookup("s", "MRN-2")
        store.data_key(erased, "ingest", create=True)
        store.data_key(kept, "ingest", create=True)
        (wrapped,) = _raw(
            s, f"SELECT wrapped FROM {{db}}.data_keys WHERE lookup = '{erased.hex()}'"
        )
        gone = store.destroy(erased)
        assert gone.rows == 1 and gone.complete
        assert gone.confirmed == (f"{s.clickhouse_host}:{s.clickhouse_port}",)
        assert store.data_key(erased, "report") is None
        assert store.data_keys(erased, "report") == []
        assert store.data_key(kept, "report") is not None  # the others are untouched
    everything = _raw(s, "SELECT * FROM {db}.data_keys")
    assert len(everything) == 1 and wrapped[0] not in {v for row in everything for v in row}


@pytest.mark.parametrize("attack", ["another patient's wrapped key", "one hex digit changed"])
def test_a_wrapped_key_edited_with_alter_update_does_not_unwrap(
    isolated: Settings, attack: str
) -> None:
    s, _token = with_token(isolated)
    with open_keystore(s, create=True) as store:
        mallory, alice = store.lookup("s", "MRN-M"), store.lookup("s", "MRN-A")
        store.data_key(mallory, "ingest", create=True)
        store.data_key(alice, "ingest", create=True)
    ((stolen,),) = _raw(s, f"SELECT wrapped FROM {{db}}.data_keys WHERE lookup = '{mallory.hex()}'")
    value = stolen.decode()
    if attack != "another patient's wrapped key":
        ((value,),) = _raw(
            s, f"SELECT wrapped FROM {{db}}.data_keys WHERE lookup = '{alice.hex()}'"
        )
        value = value.decode()
        value = value[:30] + ("0" if value[30] != "0" else "1") + value[31:]
    _raw(
        s,
        f"ALTER TABLE {{db}}.data_keys UPDATE wrapped = '{value}' WHERE lookup = '{alice.hex()}'",
    )
    for _ in range(100):  # mutations are asynchronous on 18.16
        ((now,),) = _raw(s, f"SELECT wrapped FROM {{db}}.data_keys WHERE lookup = '{alice.hex()}'")
        if now.decode() == value:
            break
        time.sleep(0.05)
    with open_keystore(s) as store, pytest.raises(KeyStoreError, match="does not unwrap"):
        store.data_key(alice, "report")


def test_the_commands_say_in_one_line_when_the_token_or_clickhouse_cannot_be_used(
    isolated: Settings,
) -> None:
    s, token = with_token(isolated)
    init = _cli(s, "keystore", "init")
    assert init.returncode == 0, init.stdout + init.stderr
    assert "key store ready" in init.stdout and token.pin not in init.stdout
    assert _cli(s, "keystore", "init").returncode == 0  # idempotent
    wrong = s.replace(keystore_token_label="no-such-token")
    # the one line goes to stderr: stdout is the command's answer (JSON with --json)
    out = _cli(wrong, "keystore", "status")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "cannot open the key store's token" in out.stderr and out.stdout == ""
    down = s.replace(clickhouse_port=1)
    out = _cli(down, "keystore", "status")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "key store" in out.stderr and out.stdout == ""


def test_a_second_key_store_on_the_token_in_one_process_is_refused_clearly(
    isolated: Settings,
) -> None:
    _s, token = with_token(isolated)
    with KeyStore(token, create=True), pytest.raises(KeyStoreError, match="already open"):
        KeyStore(token)
