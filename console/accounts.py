"""The console's users: local accounts with argon2id password hashes and TOTP (RFC 6238),
each with one role (ADR 0035).

The account file is JSON, written with mode 0600 and refused when group or others can
read it (it holds the TOTP secrets). A sign-in needs the password and a current code;
a code is accepted once (a replayed code is refused) and an account is locked for a
while after repeated failures. Unknown names cost the same argon2 work as known ones,
so timing does not tell which accounts exist.

An account may instead be bound to one identity at an OpenID Provider (issuer and
subject, ADR 0036): it has no password and no TOTP secret, and signs in only through
that provider. The provider says who someone is; this file says what they may do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "Account",
    "AccountError",
    "AccountStore",
    "totp",
]

ROLES: Final = ("analyst", "privacy-officer", "auditor", "operator")
#: what each role may do
PERMISSIONS: Final[Mapping[str, frozenset[str]]] = {
    "analyst": frozenset({"alerts", "work", "patients", "history", "health"}),
    "privacy-officer": frozenset({"alerts", "work", "patients", "history", "health", "reidentify"}),
    "auditor": frozenset({"alerts", "patients", "history", "health"}),  # read-only
    "operator": frozenset({"health"}),
}
TOTP_STEP_S: Final = 30
TOTP_DIGITS: Final = 6
#: steps either side of now a code is accepted for (clock drift)
TOTP_WINDOW: Final = 1
MAX_FAILURES: Final = 5
LOCKOUT_S: Final = 300.0
_NAME_MAX: Final = 64
_PASSWORD_MIN: Final = 12


class AccountError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def totp(secret: bytes, at: float, *, digits: int = TOTP_DIGITS, algorithm: str = "sha1") -> str:
    """The RFC 6238 code of ``secret`` at Unix time ``at`` (30-second steps)."""
    counter = int(at // TOTP_STEP_S)
    return _hotp(secret, counter, digits, algorithm)


def _hotp(secret: bytes, counter: int, digits: int, algorithm: str) -> str:
    mac = hmac.new(secret, struct.pack(">Q", counter), getattr(hashlib, algorithm)).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    role: str
    password_hash: str  # "" for an account that signs in through an OpenID Provider
    totp_secret: str  # base32, as authenticator apps take it ("" likewise)
    oidc_issuer: str = ""
    oidc_subject: str = ""

    @property
    def single_sign_on(self) -> bool:
        return bool(self.oidc_issuer)

    def can(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]

    def secret_bytes(self) -> bytes:
        return base64.b32decode(self.totp_secret)


def provisioning_uri(account: Account, issuer: str = "careledger") -> str:
    """The ``otpauth://`` URI an authenticator app takes (as a QR code or typed)."""
    return (
        f"otpauth://totp/{issuer}:{account.name}?secret={account.totp_secret}"
        f"&issuer={issuer}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_S}"
    )


class AccountStore:
    """The account file and the sign-in checks (thread-safe: the console's handlers run
    on a thread pool)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._hasher = PasswordHasher()  # argon2id, the library's current parameters
        self._lock = threading.Lock()
        self._accounts = self._load()
        self._last_step: dict[str, int] = {}
        self._failures: dict[str, tuple[int, float]] = {}
        self._dummy = self._hasher.hash(secrets.token_hex(16))

    def _load(self) -> dict[str, Account]:
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return {}
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AccountError(
                f"{self.path} is readable by group or others (it holds TOTP secrets): "
                f"chmod 600 {self.path}"
            )
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return {
                a["name"]: Account(
                    a["name"],
                    a["role"],
                    a["password_hash"],
                    a["totp_secret"],
                    str(a.get("oidc_issuer", "")),
                    str(a.get("oidc_subject", "")),
                )
                for a in doc["accounts"]
                if a["role"] in ROLES
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AccountError(f"cannot read the account file {self.path}: {exc}") from None

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "accounts": [
                {
                    "name": a.name,
                    "role": a.role,
                    "password_hash": a.password_hash,
                    "totp_secret": a.totp_secret,
                }
                | (
                    {"oidc_issuer": a.oidc_issuer, "oidc_subject": a.oidc_subject}
                    if a.oidc_issuer
                    else {}
                )
                for a in sorted(self._accounts.values(), key=lambda a: a.name)
            ]
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, self.path)

    def names(self) -> list[str]:
        return sorted(self._accounts)

    def get(self, name: str) -> Account | None:
        return self._accounts.get(name)

    def by_oidc(self, issuer: str, subject: str) -> Account | None:
        """The account bound to this identity at this provider, or None."""
        for account in self._accounts.values():
            if (
                account.oidc_issuer
                and hmac.compare_digest(account.oidc_issuer, issuer)
                and hmac.compare_digest(account.oidc_subject.encode(), subject.encode())
            ):
                return account
        return None

    @staticmethod
    def _check(name: str, role: str) -> None:
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        if not name or len(name) > _NAME_MAX or not all(c.isalnum() or c in "._-@" for c in name):
            raise AccountError(
                f"a user name is 1-{_NAME_MAX} letters, digits or . _ - @ (no spaces)"
            )

    def add_oidc(self, name: str, role: str, issuer: str, subject: str) -> Account:
        """An account that signs in only through ``issuer`` as ``subject`` (no password,
        no TOTP: the provider authenticates). One account per identity."""
        self._check(name, role)
        if not issuer.startswith("https://"):
            raise AccountError("the issuer is an https:// URL, exactly as the provider names it")
        if not subject or len(subject) > 255 or not subject.isprintable():
            raise AccountError(
                "the subject is the provider's `sub` for the person, 1-255 characters"
            )
        bound = self.by_oidc(issuer, subject)
        if bound is not None and bound.name != name:
            raise AccountError(f"that identity is already bound to the account {bound.name}")
        account = Account(name, role, "", "", issuer, subject)
        with self._lock:
            self._accounts[name] = account
            self._save()
        return account

    def add(self, name: str, role: str, password: str) -> Account:
        """A new account (or a new password, role and TOTP secret for an existing one)."""
        self._check(name, role)
        if len(password) < _PASSWORD_MIN:
            raise AccountError(f"a password has at least {_PASSWORD_MIN} characters")
        secret = base64.b32encode(secrets.token_bytes(20)).decode()
        account = Account(name, role, self._hasher.hash(password), secret)
        with self._lock:
            self._accounts[name] = account
            self._save()
        return account

    def sign_in(self, name: str, password: str, code: str) -> Account | None:
        """The account if the password and a current, unused code are right, else None
        (the same for every reason, and after ``MAX_FAILURES`` for ``LOCKOUT_S``)."""
        now = self._clock()
        account = self._accounts.get(name)
        with self._lock:
            count, locked_at = self._failures.get(name, (0, 0.0))
            if count >= MAX_FAILURES and now - locked_at >= LOCKOUT_S:
                count, locked_at = 0, 0.0  # the lock has run out
            locked = count >= MAX_FAILURES
        password_ok = self._password_ok(account, password)
        step = (
            self._step_of(account, code, now)
            if password_ok and account and not account.single_sign_on
            else None
        )
        with self._lock:
            if account is None or step is None or locked:
                count += 1
                if count == MAX_FAILURES:
                    locked_at = now
                self._failures[name] = (count, locked_at)
                return None
            if step <= self._last_step.get(name, -1):
                return None  # a code already used (replayed)
            self._last_step[name] = step
            self._failures.pop(name, None)
        if self._hasher.check_needs_rehash(account.password_hash):
            self.add(account.name, account.role, password)
        return account

    def _password_ok(self, account: Account | None, password: str) -> bool:
        usable = account is not None and bool(account.password_hash)
        try:
            return (
                self._hasher.verify(
                    account.password_hash if account and usable else self._dummy, password
                )
                and usable
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _step_of(self, account: Account, code: str, now: float) -> int | None:
        code = code.strip().replace(" ", "")
        if len(code) != TOTP_DIGITS or not code.isdigit():
            return None
        secret = account.secret_bytes()
        current = int(now // TOTP_STEP_S)
        for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
            if hmac.compare_digest(_hotp(secret, step, TOTP_DIGITS, "sha1"), code):
                return step
        return None
