"""Where careledger's ClickHouse logins come from (ADR 0032), attacked: no default or
empty password, a password file others can read is refused, a password never shows in a
repr, the local stack's generated passwords are owner-only and random, and a backend
whose password file is bad fails every statement like an unreachable server."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.credentials import (
    ClickHouseLogin,
    clickhouse_login,
    local_password,
    local_password_file,
    pin_login,
    tls_dir,
)
from careledger.keys import KeyFileError
from careledger.storage.backend import ClickHouseBackend, StorageError


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_set_password_wins_over_its_file_and_the_local_one(tmp_path: Path) -> None:
    s = Settings(run_dir=tmp_path)
    (tmp_path / "secrets").mkdir()
    _secret(local_password_file(s, "writer"), "local")
    file = _secret(tmp_path / "pw", "from-file\n")
    assert clickhouse_login(s).password == "local"
    assert clickhouse_login(s.replace(clickhouse_password_file=file)).password == "from-file"
    both = s.replace(clickhouse_password_file=file, clickhouse_password="set")
    assert clickhouse_login(both).password == "set"


def test_the_reader_has_its_own_user_and_password(tmp_path: Path) -> None:
    s = Settings(run_dir=tmp_path)
    (tmp_path / "secrets").mkdir()
    _secret(local_password_file(s, "writer"), "w")
    _secret(local_password_file(s, "reader"), "r")
    writer, reader = clickhouse_login(s, "writer"), clickhouse_login(s, "reader")
    assert (writer.user, writer.password) == ("careledger", "w")
    assert (reader.user, reader.password) == ("careledger_reader", "r")


def test_the_replica_logs_in_as_the_writer_unless_given_its_own_user(tmp_path: Path) -> None:
    s = Settings(run_dir=tmp_path, clickhouse_password="w")
    assert clickhouse_login(s, "replica") == clickhouse_login(s, "writer")
    own = s.replace(replica_clickhouse_user="rep", replica_clickhouse_password="rp")
    assert (clickhouse_login(own, "replica").user, clickhouse_login(own, "replica").password) == (
        "rep",
        "rp",
    )


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_password_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    file = _secret(tmp_path / "pw", "hunter2", mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        clickhouse_login(Settings(run_dir=tmp_path, clickhouse_password_file=file))


@pytest.mark.parametrize("text", ["", "\n", "   \n"])
def test_an_empty_password_file_is_refused_not_taken_as_no_password(
    tmp_path: Path, text: str
) -> None:
    file = _secret(tmp_path / "pw", text)
    with pytest.raises(KeyFileError, match="empty"):
        clickhouse_login(Settings(run_dir=tmp_path, clickhouse_reader_password_file=file), "reader")


def test_a_missing_password_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        clickhouse_login(Settings(run_dir=tmp_path, clickhouse_password_file=tmp_path / "nope"))


def test_the_local_password_is_random_owner_only_and_kept(tmp_path: Path) -> None:
    os.umask(0o022)
    path = tmp_path / "secrets" / "clickhouse-writer.password"
    first = local_password(path, "pw")
    assert len(first) >= 40  # 32 random bytes, base64url
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert local_password(path, "pw") == first
    other = local_password(tmp_path / "secrets" / "clickhouse-reader.password", "pw")
    assert other != first


def test_a_repr_never_shows_the_password() -> None:
    login = ClickHouseLogin("careledger", "s3cret-value", True, None)
    assert "s3cret" not in repr(login) and "s3cret" not in str(login)
    assert "***" in repr(login)


def test_tls_trusts_the_local_ca_when_the_stack_made_one(tmp_path: Path) -> None:
    s = Settings(run_dir=tmp_path, clickhouse_password="w")
    assert clickhouse_login(s).ca_file is None  # the system's trust store
    tls_dir(s).mkdir()
    (tls_dir(s) / "ca.pem").write_text("x")
    assert clickhouse_login(s).ca_file == tls_dir(s) / "ca.pem"
    own = tmp_path / "hospital-ca.pem"
    assert clickhouse_login(s.replace(clickhouse_ca_file=own)).ca_file == own
    assert clickhouse_login(s).secure is True
    assert clickhouse_login(s.replace(clickhouse_secure=False)).secure is False


def test_a_backend_with_a_bad_password_file_fails_every_statement(tmp_path: Path) -> None:
    file = _secret(tmp_path / "pw", "x", 0o644)
    backend = ClickHouseBackend.from_settings(
        Settings(run_dir=tmp_path, clickhouse_password_file=file)
    )
    for attempt in (
        lambda: backend.execute("SELECT 1"),
        lambda: backend.execute_columns("SELECT 1"),
        lambda: backend.insert("t", ("a",), [(1,)]),
    ):
        with pytest.raises(StorageError, match=r"cannot log in to ClickHouse: .*chmod 600"):
            attempt()


def test_a_copy_with_another_run_dir_keeps_the_pinned_login(tmp_path: Path) -> None:
    """A benchmark or test that gives its copy of the settings a scratch run_dir must
    still log in to the stack's server (found by the fresh-clone CI: benchmark-alerts
    moved its run_dir and lost the stack's generated passwords)."""
    s = Settings(run_dir=tmp_path / "stack")
    local_password(local_password_file(s, "writer"), "pw")
    local_password(local_password_file(s, "reader"), "pw")
    tls_dir(s).mkdir()
    (tls_dir(s) / "ca.pem").write_text("ca")
    moved = s.replace(run_dir=tmp_path / "scratch")
    assert clickhouse_login(moved).password == ""  # the failure: nothing found there
    pinned = pin_login(s).replace(run_dir=tmp_path / "scratch")
    for role in ("writer", "reader"):
        assert clickhouse_login(pinned, role) == clickhouse_login(s, role)  # type: ignore[arg-type]
    explicit = s.replace(clickhouse_password="set")
    assert pin_login(explicit).clickhouse_password_file is None  # a set password stays
    assert pin_login(Settings(run_dir=tmp_path / "empty")) == Settings(run_dir=tmp_path / "empty")
