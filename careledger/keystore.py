"""Per-patient data keys, wrapped by a key-encryption key held in a PKCS#11 token
(ADR 0037).

* The **KEK** (AES-256) and two HMAC keys (``lookup``: patient -> key row; ``actor``:
  actor pseudonyms) are made inside the token, sensitive and not extractable: they never
  leave it. SoftHSM2 locally (:func:`local_token`), any PKCS#11 HSM in production.
* A **data key** (32 random bytes) is stored only wrapped: ``AES-256-GCM(KEK, iv,
  DEK, AAD = WRAP_CONTEXT || lookup)``, computed in the token. The lookup in the AAD
  ties a wrapped key to its patient: moved to another row, it does not unwrap.
* The rows (lookup, key id, wrapped key) live in the ledger's ClickHouse, replicated
  with it (:class:`careledger.keyrows.ClickHouseRows`), or in an owner-only SQLite file
  for one node and the tests (:class:`careledger.keyrows.FileRows`). A patient may have
  several keys (two processes making the first one at once, a rotation): each
  ciphertext names its key; the preferred key is the oldest.
* Every unwrap is counted per purpose (kept with the rows, so the counts survive a
  restart); re-identifications are ledgered by their callers with who and why.
* :meth:`KeyStore.destroy` is the crypto-shredding: every key row of the patient goes,
  on every server, and with them the only way to the patient's sealed parts.

Errors: :class:`KeyStoreError` (an ``InfrastructureError``), one line each.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, cast

import pkcs11
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism

from careledger.config import Settings
from careledger.credentials import read_secret_file, secret_from_env_or_file
from careledger.keyrows import (
    DESTROY_WAIT_S,
    ClickHouseRows,
    Destruction,
    FileRows,
    KeyRow,
    KeyRows,
    KeyRowsError,
)
from careledger.keys import KeyFileError
from careledger_core.errors import InfrastructureError

__all__ = [
    "DataKey",
    "Destruction",
    "KeyOf",
    "KeyStore",
    "KeyStoreError",
    "TokenConfig",
    "local_token",
    "open_keystore",
]

KEK_LABEL: Final = "careledger-kek"
LOOKUP_LABEL: Final = "careledger-lookup"
ACTOR_LABEL: Final = "careledger-actor"
WRAP_CONTEXT: Final = b"careledger.data-key-wrap/1\x00"
LOOKUP_CONTEXT: Final = b"careledger.patient-lookup/1\x00"
PIN_ENV: Final = "CARELEDGER_KEYSTORE_PIN"
SOFTHSM_MODULE: Final = "/usr/lib/softhsm/libsofthsm2.so"
_IV_BYTES: Final = 12
DATA_KEY_BYTES: Final = 32
KEY_ID_BYTES: Final = 16


class KeyStoreError(InfrastructureError):
    code = "KEYSTORE"


@functools.cache
def _err_clear_error() -> Callable[[], None]:
    """OpenSSL's ``ERR_clear_error`` of the libcrypto this process's ``ssl`` uses."""
    import ctypes
    import ssl  # loads libcrypto.so.3 (Debian's, as SoftHSM2 does)

    del ssl
    try:
        return cast(Callable[[], None], ctypes.CDLL("libcrypto.so.3").ERR_clear_error)
    except (OSError, AttributeError):
        return lambda: None


def _clear_openssl_errors() -> None:
    """SoftHSM2 leaves errors in this thread's OpenSSL error queue (it probes engines it
    does not have); Python's ``ssl`` would then report the stale error on the next TLS
    read of the same thread (``[ENGINE: NO_SUCH_ENGINE]`` from a ClickHouse query, seen
    in ``verify``). Cleared after every use of the token."""
    _err_clear_error()()


@dataclass(frozen=True)
class DataKey:
    """A patient's data key, unwrapped; ``key_id`` is what a ciphertext names."""

    key_id: bytes
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyOf:
    """A data key and the lookup of the patient it belongs to."""

    lookup: bytes
    data_key: DataKey


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
        """The configured token; with no PIN configured and SoftHSM2's library, the
        local stack's own token under ``run_dir`` (:func:`local_token`, made on first
        use)."""
        if (
            settings.keystore_pin_file is None
            and not os.environ.get(PIN_ENV)
            and settings.keystore_pkcs11_module == SOFTHSM_MODULE
        ):
            local = local_token(settings.run_dir, settings.keystore_token_label)
            if settings.keystore_file is not None:
                local = replace(local, key_file=settings.keystore_file)
            return local
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
    """One process's view of the token and the key rows (thread-safe)."""

    def __init__(
        self,
        config: TokenConfig,
        *,
        create: bool = False,
        rows: KeyRows | None = None,
        count_flush_s: float = 0.0,
    ) -> None:
        """``create``: make the token's keys when missing (first start); otherwise a
        token without them is an error (the wrong token, or one that was reset).
        ``rows``: where the wrapped keys live (default: the token's key file).
        ``count_flush_s``: unwrap counts are kept in memory and written at most this
        often (and on :meth:`flush` and :meth:`close`)."""
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
        except pkcs11.UserAlreadyLoggedIn:
            raise KeyStoreError(
                f"the token {config.label!r} is already open in this process: share its "
                "KeyStore (closing one logs every session of the process out)"
            ) from None
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
            raise KeyStoreError(
                f"cannot open the key store's token {config.label!r} through "
                f"{config.module}: {type(exc).__name__}"
            ) from None
        finally:
            _clear_openssl_errors()
        try:
            self._kek = self._secret(KEK_LABEL, KeyType.AES, create, encrypt=True)
            self._lookup = self._secret(LOOKUP_LABEL, KeyType.GENERIC_SECRET, create)
            self._actor = self._secret(ACTOR_LABEL, KeyType.GENERIC_SECRET, create)
            self._rows = rows if rows is not None else FileRows(config.key_file)
        except (KeyStoreError, KeyRowsError) as exc:
            self._session.close()
            raise KeyStoreError(str(exc)) from None
        finally:
            _clear_openssl_errors()
        self.where = self._rows.where
        self._pending: dict[str, int] = {}
        self._flush_s = count_flush_s
        self._flushed_at = time.monotonic()

    @property
    def rows(self) -> KeyRows:
        """Where the wrapped keys live."""
        return self._rows

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

    def close(self) -> None:
        with self._lock:
            try:
                self._write_counts()
            finally:
                self._rows.close()
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
            except KeyRowsError as exc:
                raise KeyStoreError(str(exc)) from None
            finally:
                _clear_openssl_errors()

    # ------------------------------------------------------------------ pseudonyms
    def lookup(self, system: str, patient_id: str) -> bytes:
        """The key rows' lookup for a patient: HMAC-SHA256 in the token."""
        message = LOOKUP_CONTEXT + system.encode() + b"\x00" + patient_id.encode()
        with self._token():
            return bytes(self._lookup.sign(message, mechanism=Mechanism.SHA256_HMAC))

    def actor_ref(self, actor_id: str) -> str:
        """An actor's pseudonym (hex): HMAC-SHA256 in the token."""
        with self._token():
            mac = self._actor.sign(actor_id.encode(), mechanism=Mechanism.SHA256_HMAC)
        return bytes(mac).hex()

    # ------------------------------------------------------------------ data keys
    def data_key(self, lookup: bytes, purpose: str, *, create: bool = False) -> DataKey | None:
        """The patient's preferred data key (the oldest; unwrapped in the token and
        counted under ``purpose``); None when there is none (never made, or destroyed)
        and ``create`` is false. A key made here is not counted as an unwrap; when
        another process made one at the same time, both rows stay and the oldest is the
        one returned (to both)."""
        with self._token():
            rows = self._rows.rows(lookup)
            made: DataKey | None = None
            if not rows:
                if not create:
                    return None
                made = DataKey(secrets.token_bytes(KEY_ID_BYTES), secrets.token_bytes(32))
                iv = secrets.token_bytes(_IV_BYTES)
                wrapped = iv + bytes(
                    self._kek.encrypt(
                        made.key,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(iv, self._aad(lookup, made.key_id), 128),
                    )
                )
                self._rows.add(KeyRow(lookup, made.key_id, wrapped, time.time_ns()))
                rows = self._rows.rows(lookup)  # another process's key may be older
            first = min(rows, key=lambda r: (r.created_ns, r.key_id))
            if made is not None and first.key_id == made.key_id:
                return made
            return self._unwrap(first, purpose)

    def data_keys_for(self, lookups: Sequence[bytes], purpose: str) -> dict[bytes, DataKey]:
        """The preferred data key of each patient, made for those who have none, in a
        few round trips for all of them (one read, one insert, one read again for the
        keys another process made at the same time): a batch's patients at once. Keys
        made here are not counted as unwraps."""
        wanted = list(dict.fromkeys(lookups))
        with self._token():
            found: dict[bytes, list[KeyRow]] = {}
            for row in self._rows.rows_many(wanted):
                found.setdefault(row.lookup, []).append(row)
            made: dict[bytes, DataKey] = {}
            new_rows = []
            now = time.time_ns()
            for lookup in wanted:
                if lookup in found:
                    continue
                key = DataKey(secrets.token_bytes(KEY_ID_BYTES), secrets.token_bytes(32))
                iv = secrets.token_bytes(_IV_BYTES)
                wrapped = iv + bytes(
                    self._kek.encrypt(
                        key.key,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(iv, self._aad(lookup, key.key_id), 128),
                    )
                )
                made[lookup] = key
                new_rows.append(KeyRow(lookup, key.key_id, wrapped, now))
            if new_rows:
                self._rows.add_many(new_rows)
                for row in new_rows:
                    found[row.lookup] = [row]
                for row in self._rows.rows_many(list(made)):  # another's may be older
                    if row.key_id != made[row.lookup].key_id:
                        found[row.lookup].append(row)
            out: dict[bytes, DataKey] = {}
            for lookup in wanted:
                first = min(found[lookup], key=lambda r: (r.created_ns, r.key_id))
                mine = made.get(lookup)
                out[lookup] = (
                    mine
                    if mine is not None and mine.key_id == first.key_id
                    else self._unwrap(first, purpose)
                )
            return out

    def lookups(self) -> list[bytes]:
        """Every subject's lookup that holds a key (no unwrap)."""
        with self._token():
            return self._rows.lookups()

    def data_keys(self, lookup: bytes, purpose: str) -> list[DataKey]:
        """Every data key of the patient, oldest first (each unwrap counted)."""
        with self._token():
            rows = sorted(self._rows.rows(lookup), key=lambda r: (r.created_ns, r.key_id))
            return [self._unwrap(r, purpose) for r in rows]

    def key(self, lookup: bytes, key_id: bytes, purpose: str) -> DataKey | None:
        """The patient's data key named ``key_id`` (a ciphertext's), or None."""
        with self._token():
            for row in self._rows.rows(lookup):
                if row.key_id == key_id:
                    return self._unwrap(row, purpose)
            return None

    def keys_by_id(self, key_ids: Sequence[bytes], purpose: str) -> dict[bytes, KeyOf]:
        """The data keys of these ids with the lookup each belongs to (for ``verify``,
        which reads sealed parts by key id); ids with no row are absent."""
        with self._token():
            return {
                row.key_id: KeyOf(row.lookup, self._unwrap(row, purpose))
                for row in self._rows.by_key_ids(key_ids)
            }

    @staticmethod
    def _aad(lookup: bytes, key_id: bytes) -> bytes:
        return WRAP_CONTEXT + lookup + key_id

    def _unwrap(self, row: KeyRow, purpose: str) -> DataKey:
        wrapped = row.wrapped
        try:
            key = bytes(
                self._kek.decrypt(
                    wrapped[_IV_BYTES:],
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(
                        wrapped[:_IV_BYTES], self._aad(row.lookup, row.key_id), 128
                    ),
                )
            )
        except pkcs11.PKCS11Error:
            raise KeyStoreError(
                "a wrapped data key does not unwrap for its patient (changed, or moved "
                "from another row)"
            ) from None
        if len(key) != DATA_KEY_BYTES:
            raise KeyStoreError("a wrapped data key has the wrong size")
        self._pending[purpose] = self._pending.get(purpose, 0) + 1
        if time.monotonic() - self._flushed_at >= self._flush_s:
            self._write_counts()
        return DataKey(row.key_id, key)

    def _write_counts(self) -> None:
        pending, self._pending = self._pending, {}
        self._flushed_at = time.monotonic()
        try:
            self._rows.add_unwraps(pending)
        except KeyRowsError:
            for purpose, n in pending.items():  # kept for the next write
                self._pending[purpose] = self._pending.get(purpose, 0) + n
            raise

    def flush(self) -> None:
        """Write the unwrap counts kept in memory."""
        with self._token():
            self._write_counts()

    def destroy(self, lookup: bytes) -> Destruction:
        """Crypto-shredding: every key row of the patient, on every server holding the
        rows; what it confirmed and where it could not."""
        with self._token():
            return self._rows.destroy(lookup)

    def unwrap_counts(self) -> dict[str, int]:
        with self._token():
            self._write_counts()
            return self._rows.unwrap_counts()

    def count(self) -> int:
        with self._token():
            return self._rows.count()


def open_keystore(
    settings: Settings, *, create: bool = False, destroy_wait_s: float = DESTROY_WAIT_S
) -> KeyStore:
    """The deployment's key store: its token (:meth:`TokenConfig.from_settings`) and
    its rows in the ledger's ClickHouse, every server of a replicated layout (or the
    ``keystore_file`` when one is set). Unwrap counts are written every 5 s; a
    destruction waits up to ``destroy_wait_s`` for every server to confirm it."""
    from careledger.storage.backend import StorageError, open_backend
    from careledger.storage.migrations import replica_settings

    config = TokenConfig.from_settings(settings)
    if settings.keystore_file is not None:
        return KeyStore(config, create=create)
    servers = []
    try:
        for server in replica_settings(settings):
            name = f"{server.clickhouse_host}:{server.clickhouse_port}"
            servers.append((name, open_backend(server)))
        primary = open_backend(settings)  # fails over between the servers
        rows = ClickHouseRows(
            settings.clickhouse_database, servers, primary=primary, wait_s=destroy_wait_s
        )
    except StorageError as exc:
        for _name, backend in servers:
            backend.close()
        raise KeyStoreError(f"the key store's ClickHouse cannot be reached: {exc}") from None
    try:
        return KeyStore(config, create=create, rows=rows, count_flush_s=5.0)
    except KeyStoreError:
        rows.close()
        raise
