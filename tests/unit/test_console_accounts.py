"""The console's accounts (ADR 0035): TOTP against RFC 6238's own test vectors, argon2id
hashes, and the attacks on a sign-in: a wrong password or code, a replayed code, an
unknown name, guessing until locked, a world-readable account file."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from console.accounts import (
    LOCKOUT_S,
    MAX_FAILURES,
    PERMISSIONS,
    ROLES,
    AccountError,
    AccountStore,
    provisioning_uri,
    totp,
)

# RFC 6238, Appendix B: the seeds and (time, code) pairs, 8 digits
SEED_SHA1 = b"12345678901234567890"
SEED_SHA256 = b"12345678901234567890123456789012"
SEED_SHA512 = b"1234567890123456789012345678901234567890123456789012345678901234"
RFC6238 = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]
PASSWORD = "correct horse battery staple"


@pytest.mark.parametrize(("at", "sha1", "sha256", "sha512"), RFC6238)
def test_totp_gives_the_rfc_6238_vectors(at: int, sha1: str, sha256: str, sha512: str) -> None:
    assert totp(SEED_SHA1, at, digits=8) == sha1
    assert totp(SEED_SHA256, at, digits=8, algorithm="sha256") == sha256
    assert totp(SEED_SHA512, at, digits=8, algorithm="sha512") == sha512


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _store(tmp_path: Path, clock: Clock) -> AccountStore:
    return AccountStore(tmp_path / "accounts.json", clock=clock)


def _code(store: AccountStore, name: str, at: float) -> str:
    account = store.get(name)
    assert account is not None
    return totp(base64.b32decode(account.totp_secret), at)


def test_the_file_holds_an_argon2id_hash_never_the_password_and_is_private(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    store.add("dana", "privacy-officer", PASSWORD)
    text = (tmp_path / "accounts.json").read_text()
    assert PASSWORD not in text
    doc = json.loads(text)
    assert doc["accounts"][0]["password_hash"].startswith("$argon2id$")
    assert (tmp_path / "accounts.json").stat().st_mode & 0o777 == 0o600
    assert _store(tmp_path, clock).get("dana") is not None  # read back


def test_a_world_readable_account_file_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, Clock())
    store.add("dana", "analyst", PASSWORD)
    os.chmod(tmp_path / "accounts.json", 0o644)
    with pytest.raises(AccountError, match="readable by group or others"):
        _store(tmp_path, Clock())


def test_sign_in_needs_the_password_and_a_current_code(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    store.add("dana", "analyst", PASSWORD)
    assert store.sign_in("dana", "wrong password!!", _code(store, "dana", clock.now)) is None
    valid = {_code(store, "dana", clock.now + d) for d in (-30, 0, 30)}  # the window
    wrong = next(c for c in (f"{n:06d}" for n in range(10)) if c not in valid)
    assert store.sign_in("dana", PASSWORD, wrong) is None
    stale = _code(store, "dana", clock.now - 120)  # four steps ago: outside the window
    if stale not in valid:  # (one chance in ~300,000 that it coincides)
        assert store.sign_in("dana", PASSWORD, stale) is None
    assert store.sign_in("dana", PASSWORD, "12345") is None  # not six digits
    account = store.sign_in("dana", PASSWORD, _code(store, "dana", clock.now))
    assert account is not None and account.role == "analyst"


def test_a_replayed_code_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    store.add("dana", "analyst", PASSWORD)
    code = _code(store, "dana", clock.now)
    assert store.sign_in("dana", PASSWORD, code) is not None
    clock.now += 5  # same step: the captured code again
    assert store.sign_in("dana", PASSWORD, code) is None
    clock.now += 30  # the next step's code works
    assert store.sign_in("dana", PASSWORD, _code(store, "dana", clock.now)) is not None


def test_an_unknown_name_is_refused_like_a_wrong_password(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    store.add("dana", "analyst", PASSWORD)
    assert store.sign_in("nobody", PASSWORD, _code(store, "dana", clock.now)) is None


def test_guessing_locks_the_account_even_for_the_right_credentials_then_it_unlocks(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    store.add("dana", "analyst", PASSWORD)
    for _ in range(MAX_FAILURES):
        assert store.sign_in("dana", "a wrong guess!!", "123456") is None
    clock.now += 30
    assert store.sign_in("dana", PASSWORD, _code(store, "dana", clock.now)) is None  # locked
    clock.now += LOCKOUT_S
    assert store.sign_in("dana", PASSWORD, _code(store, "dana", clock.now)) is not None


@pytest.mark.parametrize(
    ("name", "role", "password", "why"),
    [
        ("dana", "admin", PASSWORD, "role must be one of"),
        ("da na", "analyst", PASSWORD, "user name"),
        ("", "analyst", PASSWORD, "user name"),
        ("dana\n", "analyst", PASSWORD, "user name"),
        ("dana", "analyst", "short", "at least 12"),
    ],
)
def test_bad_accounts_are_refused(
    tmp_path: Path, name: str, role: str, password: str, why: str
) -> None:
    with pytest.raises(AccountError, match=why):
        _store(tmp_path, Clock()).add(name, role, password)


def test_roles_grant_what_adr_0035_says() -> None:
    assert set(PERMISSIONS) == set(ROLES)
    assert "reidentify" in PERMISSIONS["privacy-officer"]
    assert "reidentify" not in PERMISSIONS["analyst"]
    assert "work" not in PERMISSIONS["auditor"]  # read-only
    assert PERMISSIONS["operator"] == frozenset({"health"})


def test_the_provisioning_uri_carries_the_secret_and_parameters(tmp_path: Path) -> None:
    store = _store(tmp_path, Clock())
    account = store.add("dana", "analyst", PASSWORD)
    uri = provisioning_uri(account)
    assert uri.startswith("otpauth://totp/careledger:dana?secret=" + account.totp_secret)
    assert "digits=6" in uri and "period=30" in uri
