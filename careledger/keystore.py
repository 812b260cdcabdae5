"""Per-patient data keys, wrapped by a key-encryption key held in a PKCS#11 token
(ADR 0037).

* The **KEK** (AES-256) and two HMAC keys (``lookup``: patient -> key row; ``actor``:
  actor pseudonyms) are made inside the token, sensitive and not extractable: they never
  leave it. SoftHSM2 locally (:func:`local_token`), any PKCS#11 HSM in production.
* A **data key** (32 random bytes) is stored only wrapped: ``AES-256-GCM(KEK, iv,
  DEK, AAD = WRAP_CONTEXT || lookup)``, computed in the token. The lookup in the AAD
  ties a wrapped key to its patient: moved to another row, it does not unwrap.
* The rows (lookup, wrapped key) live in a key file (SQLite, mode 0600, secure delete:
  a destroyed row's bytes are overwritten, not left in free pages). Replicating them
  with the ledger's tables is the next step of ADR 0037.
* Every unwrap is counted per purpose (kept in the key file, so the counts survive a
  restart); re-identifications are ledgered by their callers with who and why.
* :meth:`KeyStore.destroy` is the crypto-shredding: the row goes, and with it the only
  way to the patient's sealed parts.

Errors: :class:`KeyStoreError` (an ``InfrastructureError``), one line each.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pkcs11
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism

from careledger.config import Settings
from careledger.credentials import read_secret_file, secret_from_env_or_file
from careledger.keys import KeyFileError
from careledger_core.errors import InfrastructureError

__all__ = ["KeyStore", "KeyStoreError", "TokenConfig", "local_token"]

KEK_LABEL: Final = "careledger-kek"
LOOKUP_LABEL: Final = "careledger-lookup"
ACTOR_LABEL: Final = "careledger-actor"
WRAP_CONTEXT: Final = b"careledger.data-key-wrap/1\x00"
LOOKUP_CONTEXT: Final = b"careledger.patient-lookup/1\x00"
PIN_ENV: Final = "CARELEDGER_KEYSTORE_PIN"
SOFTHSM_MODULE: Final = "/usr/lib/softhsm/libsofthsm2.so"
_IV_BYTES: Final = 12
DATA_KEY_BYTES: Final = 32


class KeyStoreError(InfrastructureError):
    code = "KEYSTORE"


@dataclass(frozen=True)
class TokenConfig:
    module: str
    label: str
    pin: str = field(repr=False)
    key_file: Path
    #: SoftHSM2's configuration file, when the token is a local SoftHSM one
    softhsm_conf: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenConfig:
        try:
            pin = secret_from_env_or_file(
                PIN_ENV, settings.keystore_pin_file, "the key store PIN file"
            )
        except KeyFileError as exc:
            raise KeyStoreError(str(exc)) from None
        if not pin:
            raise KeyStoreError(
                f"the key store needs its token's PIN: set keystore_pin_file or {PIN_ENV}"
            )
        return cls(
            module=settings.keystore_pkcs11_module,
            label=settings.keystore_token_label,
            pin=pin,
            key_file=settings.keystore_file or settings.run_dir / "keystore" / "keys.db",
        )


def local_token(run_dir: Path, label: str = "careledger") -> TokenConfig:
    """A SoftHSM2 token labelled ``label`` under ``<run_dir>/softhsm`` (made on first
    use: its PIN and SO PIN random, the PIN kept mode 0600), its key file
    ``<run_dir>/keystore/<label>.db``; for the local stack and the tests. SoftHSM reads
    its configuration once per process: one ``run_dir`` per process (tokens of several
    labels may share it)."""
    home = run_dir / "softhsm"
    tokens = home / "tokens"
    conf = home / "softhsm2.conf"
    pin_file = home / f"{label}.pin"
    if not conf.exists():
        tokens.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        conf.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
            encoding="utf-8",
        )
    if not pin_file.exists():
        pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
        try:
            done = subprocess.run(
                [
                    "softhsm2-util",
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--pin",
                    pin,
                    "--so-pin",
                    so_pin,
                ],
                env={**os.environ, "SOFTHSM2_CONF": str(conf)},
                capture_output=True,
                text=True,
                timeout=60,
            )
        except FileNotFoundError:
            raise KeyStoreError(
                "softhsm2-util not found: install Debian's softhsm2 (deploy/bootstrap.sh does)"
            ) from None
        if done.returncode != 0:
            raise KeyStoreError(f"softhsm2-util could not make the token: {done.stderr.strip()}")
        fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(pin + "\n")
    return TokenConfig(
        module=SOFTHSM_MODULE,
        label=label,
        pin=read_secret_file(pin_file, "the SoftHSM PIN file"),
        key_file=run_dir / "keystore" / f"{label}.db",
        softhsm_conf=conf,
    )


class KeyStore:
    """One process's view of the token and the key file (thread-safe)."""

    def __init__(self, config: TokenConfig, *, create: bool = False) -> None:
        """``create``: make the token's keys when missing (first start); otherwise a
        token without them is an error (the wrong token, or one that was reset)."""
        self.config = config
        self._lock = threading.Lock()
        if config.softhsm_conf is not None:
            os.environ["SOFTHSM2_CONF"] = str(config.softhsm_conf)  # read when loaded
        try:
            lib = pkcs11.lib(config.module)
            try:
                token = lib.get_token(token_label=config.label)
            except pkcs11.NoSuchToken:
                # made after the library was loaded (SoftHSM lists its tokens when it is
                # initialised): initialise again, which ends this process's other sessions
                lib.reinitialize()
                token = lib.get_token(token_label=config.label)
            self._session = token.open(user_pin=config.pin, rw=True)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
            raise KeyStoreError(
                f"cannot open the key store's token {config.label!r} through "
                f"{config.module}: {type(exc).__name__}"
            ) from None
        try:
            self._kek = self._secret(KEK_LABEL, KeyType.AES, create, encrypt=True)
            self._lookup = self._secret(LOOKUP_LABEL, KeyType.GENERIC_SECRET, create)
            self._actor = self._secret(ACTOR_LABEL, KeyType.GENERIC_SECRET, create)
        except KeyStoreError:
            self._session.close()
            raise
        self._db = self._open_file(config.key_file)

    def _secret(self, label: str, kind: KeyType, create: bool, *, encrypt: bool = False) -> Any:
        found = list(self._session.get_objects({Attribute.LABEL: label, Attribute.TOKEN: True}))
        if len(found) == 1:
            return found[0]
        if found:
            raise KeyStoreError(f"the token holds {len(found)} keys labelled {label!r}")
        if not create:
            raise KeyStoreError(
                f"the token {self.config.label!r} has no key {label!r}: the wrong token, or "
                "the key store was never initialised on it"
            )
        template = {
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.PRIVATE: True,
            Attribute.MODIFIABLE: False,
        }
        if encrypt:
            template |= {Attribute.ENCRYPT: True, Attribute.DECRYPT: True}
        else:
            template |= {Attribute.SIGN: True, Attribute.VERIFY: True}
        return self._session.generate_key(kind, 256, label=label, store=True, template=template)

    @staticmethod
    def _open_file(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyStoreError(f"{path} is readable by group or others: chmod 600 {path}")
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA secure_delete = ON")  # deleted rows overwritten with zeros
        db.execute("PRAGMA journal_mode = DELETE")  # no WAL copy of a destroyed row
        db.execute(
            "CREATE TABLE IF NOT EXISTS data_keys (lookup BLOB PRIMARY KEY, wrapped BLOB NOT "
            "NULL, created_at REAL NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS unwraps (purpose TEXT PRIMARY KEY, count INTEGER NOT NULL)"
        )
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._session.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _token(self) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"the token refused: {type(exc).__name__}") from None

    # ------------------------------------------------------------------ pseudonyms
    def lookup(self, system: str, patient_id: str) -> bytes:
        """The key row's lookup for a patient: HMAC-SHA256 in the token."""
        message = LOOKUP_CONTEXT + system.encode() + b"\x00" + patient_id.encode()
        with self._token():
            return bytes(self._lookup.sign(message, mechanism=Mechanism.SHA256_HMAC))

    def actor_ref(self, actor_id: str) -> str:
        """An actor's pseudonym (hex): HMAC-SHA256 in the token."""
        with self._token():
            mac = self._actor.sign(actor_id.encode(), mechanism=Mechanism.SHA256_HMAC)
        return bytes(mac).hex()

    # ------------------------------------------------------------------ data keys
    def data_key(self, lookup: bytes, purpose: str, *, create: bool = False) -> bytes | None:
        """The patient's data key (unwrapped in the token, counted under ``purpose``);
        None when there is none (never made, or destroyed) and ``create`` is false."""
        with self._token():
            row = self._db.execute(
                "SELECT wrapped FROM data_keys WHERE lookup = ?", (lookup,)
            ).fetchone()
            if row is None:
                if not create:
                    return None
                key = secrets.token_bytes(DATA_KEY_BYTES)
                iv = secrets.token_bytes(_IV_BYTES)
                wrapped = iv + bytes(
                    self._kek.encrypt(
                        key,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(iv, WRAP_CONTEXT + lookup, 128),
                    )
                )
                self._db.execute(
                    "INSERT INTO data_keys VALUES (?, ?, ?)", (lookup, wrapped, time.time())
                )
                return key
            wrapped = bytes(row[0])
            try:
                key = bytes(
                    self._kek.decrypt(
                        wrapped[_IV_BYTES:],
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(wrapped[:_IV_BYTES], WRAP_CONTEXT + lookup, 128),
                    )
                )
            except pkcs11.PKCS11Error:
                raise KeyStoreError(
                    "a wrapped data key does not unwrap for its patient (changed, or moved "
                    "from another row)"
                ) from None
            if len(key) != DATA_KEY_BYTES:
                raise KeyStoreError("a wrapped data key has the wrong size")
            self._db.execute(
                "INSERT INTO unwraps VALUES (?, 1) ON CONFLICT(purpose) DO UPDATE SET "
                "count = count + 1",
                (purpose,),
            )
            return key

    def destroy(self, lookup: bytes) -> bool:
        """Crypto-shredding: forget the patient's wrapped data key; whether there was one."""
        with self._token():
            gone = self._db.execute("DELETE FROM data_keys WHERE lookup = ?", (lookup,)).rowcount
            self._db.execute("VACUUM")  # and no free page keeps the old bytes
        return bool(gone)

    def unwrap_counts(self) -> dict[str, int]:
        with self._token():
            return {p: int(c) for p, c in self._db.execute("SELECT purpose, count FROM unwraps")}

    def count(self) -> int:
        with self._token():
            return int(self._db.execute("SELECT count(*) FROM data_keys").fetchone()[0])
