"""The local ClickHouse server's users file keeps no password (issue 12, ADR 0032): only
each user's SHA-256, in a file only its owner reads; no default user, no empty password."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.credentials import local_password_file
from careledger.stack.clickhouse_server import _write_clickhouse_config
from careledger.stack.model import StackError
from careledger.stack.paths import _paths


def _users(tmp_path: Path, password: str) -> tuple[str, int]:
    settings = Settings(run_dir=tmp_path, clickhouse_password=password)
    p = _paths(settings)
    p.clickhouse_users.parent.mkdir(parents=True, exist_ok=True)
    p.clickhouse_users.write_text("an older file, world-readable")
    os.chmod(p.clickhouse_users, 0o644)
    _write_clickhouse_config(settings)
    return p.clickhouse_users.read_text(), os.stat(p.clickhouse_users).st_mode & 0o777


def test_users_xml_holds_the_password_s_sha256_not_the_password(tmp_path: Path) -> None:
    text, mode = _users(tmp_path, "s3cret-&<pass>")
    assert "s3cret" not in text
    assert "<password>" not in text
    digest = hashlib.sha256(b"s3cret-&<pass>").hexdigest()
    assert f"<password_sha256_hex>{digest}</password_sha256_hex>" in text
    assert mode == 0o600  # even over an older world-readable file


def test_no_password_set_means_a_generated_one_never_an_empty_one(tmp_path: Path) -> None:
    text, _mode = _users(tmp_path, "")
    assert hashlib.sha256(b"").hexdigest() not in text
    settings = Settings(run_dir=tmp_path)
    for role in ("writer", "reader"):
        password = local_password_file(settings, role).read_text().strip()
        assert hashlib.sha256(password.encode()).hexdigest() in text
    users = text[text.index("<users>") : text.index("</users>")]
    assert "<default>" not in users  # no default user
    assert "<careledger_reader>" in text and "<profile>readonly</profile>" in text


def test_the_writer_and_reader_must_differ_and_be_xml_names(tmp_path: Path) -> None:
    for bad in (
        Settings(run_dir=tmp_path, clickhouse_reader_user="careledger"),
        Settings(run_dir=tmp_path, clickhouse_reader_user="r><admin"),
        Settings(run_dir=tmp_path, clickhouse_user="1abc"),
    ):
        with pytest.raises(StackError):
            _write_clickhouse_config(bad)
