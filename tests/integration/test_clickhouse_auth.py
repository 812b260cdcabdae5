"""The running local ClickHouse server's logins and TLS (issue 12, ADR 0032), attacked.

Its users file holds only SHA-256 hashes, readable by its owner only; there is no
``default`` user and no empty password; the reader (what ``verify`` and the reports log
in as) cannot change a row; the native port speaks TLS only and a client that does not
trust the stack's CA is refused; a command given a wrong password or a password file
others can read says it cannot reach the store (exit 2), never an all-clear.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from careledger.config import PROJECT_ROOT, Settings
from careledger.credentials import clickhouse_login, local_password_file, tls_dir
from careledger.keys import write_keypair
from careledger.processes import child_env
from careledger.stack.paths import _paths
from careledger.stack.readiness import _clickhouse_version
from careledger.storage.backend import ClickHouseBackend, StorageError

pytestmark = pytest.mark.integration


def _client(s: Settings, user: str, password: str, **tls: object) -> Client:
    return Client(
        s.clickhouse_host,
        port=s.clickhouse_port,
        user=user,
        password=password,
        connect_timeout=5,
        send_receive_timeout=5,
        **tls,
    )


def _trusted(s: Settings) -> dict[str, object]:
    return {"secure": True, "verify": True, "ca_certs": str(tls_dir(s) / "ca.pem")}


def test_the_server_keeps_hashes_owner_only_and_refuses_other_passwords(stack: Settings) -> None:
    users = _paths(stack).clickhouse_users
    text = users.read_text()
    assert "<password>" not in text and text.count("<password_sha256_hex>") == 2
    for role in ("writer", "reader"):
        assert clickhouse_login(stack, role).password not in text
        secret = local_password_file(stack, role)
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert stat.S_IMODE((tls_dir(stack) / "ca.key").stat().st_mode) == 0o600
    assert _clickhouse_version(stack) is not None
    assert _clickhouse_version(stack.replace(clickhouse_password="guessed")) is None


@pytest.mark.parametrize(
    ("user", "password"),
    [("default", ""), ("careledger", ""), ("careledger_reader", ""), ("careledger", "careledger")],
)
def test_no_default_user_and_no_empty_or_guessable_password(
    stack: Settings, user: str, password: str
) -> None:
    with pytest.raises(ch_errors.ServerException) as refused:
        _client(stack, user, password, **_trusted(stack)).execute("SELECT 1")
    # unknown user, wrong password, password required (18.16 says 194 for an empty one)
    assert refused.value.code in (192, 193, 194, 516), refused.value


def test_the_native_port_speaks_tls_only_and_checks_the_ca(stack: Settings) -> None:
    login = clickhouse_login(stack)
    with pytest.raises((ch_errors.Error, OSError, EOFError)):
        _client(stack, login.user, login.password).execute("SELECT 1")  # plaintext
    with pytest.raises((ch_errors.Error, OSError)) as untrusted:
        # the system's trust store does not know the stack's CA
        _client(stack, login.user, login.password, secure=True, verify=True).execute("SELECT 1")
    assert "CERTIFICATE_VERIFY_FAILED" in str(untrusted.value)
    rows = _client(stack, login.user, login.password, **_trusted(stack)).execute("SELECT 1")
    assert rows == [(1,)]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO {db}.blocks (chain_id, height) SELECT 'forged', 999",
        "ALTER TABLE {db}.access_events UPDATE actor_id = 'nobody' WHERE 1",
        "ALTER TABLE {db}.blocks DELETE WHERE 1",
        "DROP TABLE {db}.blocks",
        "TRUNCATE TABLE {db}.access_events",
        "CREATE TABLE {db}.shadow (x UInt8) ENGINE = Memory",
        "RENAME TABLE {db}.blocks TO {db}.blocks_old",
        "SET readonly = 0",
    ],
)
def test_the_reader_cannot_change_the_ledger(isolated: Settings, statement: str) -> None:
    db = isolated.clickhouse_database
    reader = ClickHouseBackend.from_settings(isolated, "reader")
    writer = ClickHouseBackend.from_settings(isolated)
    try:
        before = writer.execute(f"SELECT count() FROM {db}.blocks")
        with pytest.raises(StorageError) as refused:
            reader.execute(statement.format(db=db))
        assert "Code: 164" in str(refused.value), refused.value  # READONLY
        with pytest.raises(StorageError):
            reader.insert(f"{db}.blocks", ["chain_id", "height"], [("forged", 999)])
        assert writer.execute(f"SELECT count() FROM {db}.blocks") == before
        assert reader.execute(f"SELECT count() FROM {db}.blocks") == before  # it reads
        assert [t for (t,) in writer.execute(f"SHOW TABLES FROM {db}")].count(b"blocks") <= 1
    finally:
        reader.close()
        writer.close()


def _verify(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", "verify", "--no-audit"],
        cwd=PROJECT_ROOT,
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _trusting(isolated: Settings, tmp_path: Path) -> Settings:
    key = tmp_path / "signing.key"
    write_keypair(key)  # trust configured: what stops verify must be ClickHouse
    return isolated.replace(
        verifier_state_dir=tmp_path / "verifier",  # no memory of another ledger
        trusted_keys=(str(key) + ".pub",),
        trusted_registrar_keys=(str(key) + ".pub",),
    )


def test_verify_with_a_wrong_password_cannot_tell(isolated: Settings, tmp_path: Path) -> None:
    done = _verify(_trusting(isolated, tmp_path).replace(clickhouse_reader_password="guessed"))
    assert done.returncode == 2, done.stdout + done.stderr
    said = (done.stdout + done.stderr).strip()
    assert "cannot read the chains from ClickHouse" in said, said
    assert "password" in said.lower() or "Code: 193" in said, said
    assert len(said.splitlines()) == 1, said
    assert "guessed" not in done.stdout + done.stderr  # the password is never printed
    assert "Traceback" not in done.stderr


def test_verify_refuses_a_password_file_others_can_read(isolated: Settings, tmp_path: Path) -> None:
    exposed = tmp_path / "reader.password"
    exposed.write_text(clickhouse_login(isolated, "reader").password + "\n")
    os.chmod(exposed, 0o644)
    done = _verify(_trusting(isolated, tmp_path).replace(clickhouse_reader_password_file=exposed))
    assert done.returncode == 2, done.stdout + done.stderr
    said = (done.stdout + done.stderr).strip()
    assert "accessible by group or others" in said and "chmod 600" in said, said
    assert len(said.splitlines()) == 1, said
    assert "Traceback" not in done.stderr
