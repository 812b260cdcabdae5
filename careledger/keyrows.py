"""Where the key store keeps its rows (ADR 0037): the wrapped data keys and the unwrap
counts. Two stores behind one small interface:

* :class:`FileRows`: an owner-only SQLite file (secure delete), for one node and the
  tests;
* :class:`ClickHouseRows`: the ledger's own ClickHouse (``data_keys`` and
  ``key_unwraps``, migration 13), ``Replicated`` on a cluster like every other table,
  so the keys are kept and replicated with the ledger. A destruction is a mutation on
  the primary, checked on **every** server until none of them holds the rows
  (:class:`Destruction` says where it could not be confirmed).

Rows are ``(lookup, key_id, wrapped, created_ns)``; a patient (lookup) may have several
keys (two processors making the first key of one patient at once, or a rotation):
ciphertexts name their key, and a destruction takes every key of the lookup.
Binary values are stored as lowercase hex in ClickHouse (the readers return bytes and
treat stored data as untrusted: a value that is not hex is skipped as unreadable).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from careledger.storage.backend import SqlBackend, StorageError
from careledger_core.errors import InfrastructureError

__all__ = [
    "ClickHouseRows",
    "Destruction",
    "FileRows",
    "KeyRow",
    "KeyRows",
    "KeyRowsError",
]

#: how long a destruction waits for every server to drop the rows
DESTROY_WAIT_S: Final = 60.0


class KeyRowsError(InfrastructureError):
    code = "KEYSTORE"


@dataclass(frozen=True)
class KeyRow:
    lookup: bytes
    key_id: bytes
    wrapped: bytes = field(repr=False)
    created_ns: int


@dataclass(frozen=True)
class Destruction:
    """What a destruction did: how many key rows it removed, and on which servers the
    rows are confirmed gone or still present when it stopped waiting."""

    rows: int
    confirmed: tuple[str, ...]
    still_held: tuple[str, ...] = ()
    #: superseded data parts still on a server's disk (removed by the server after the
    #: table's ``old_parts_lifetime``); the wrapped keys in them need the token to open
    old_parts: int = 0

    @property
    def complete(self) -> bool:
        return not self.still_held


class KeyRows(Protocol):
    where: str

    def rows(self, lookup: bytes) -> list[KeyRow]: ...

    def by_key_ids(self, key_ids: Sequence[bytes]) -> list[KeyRow]: ...

    def rows_many(self, lookups: Sequence[bytes]) -> list[KeyRow]: ...

    def lookups(self) -> list[bytes]: ...

    def add(self, row: KeyRow) -> None: ...

    def add_many(self, rows: Sequence[KeyRow]) -> None: ...

    def destroy(self, lookup: bytes) -> Destruction: ...

    def count(self) -> int: ...

    def add_unwraps(self, counts: dict[str, int]) -> None: ...

    def unwrap_counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class FileRows:
    """The rows in an owner-only SQLite file; deleted rows are overwritten, not left in
    free pages (``secure_delete``, no WAL, ``VACUUM`` after a destruction)."""

    def __init__(self, path: Path) -> None:
        self.where = f"file {path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyRowsError(f"{path} is readable by group or others: chmod 600 {path}")
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.execute("PRAGMA journal_mode = DELETE")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS data_keys (lookup BLOB NOT NULL, key_id BLOB NOT NULL, "
            "wrapped BLOB NOT NULL, created_ns INTEGER NOT NULL, PRIMARY KEY (lookup, key_id))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS unwraps (purpose TEXT PRIMARY KEY, count INTEGER NOT NULL)"
        )

    def rows(self, lookup: bytes) -> list[KeyRow]:
        found = self._db.execute(
            "SELECT key_id, wrapped, created_ns FROM data_keys WHERE lookup = ?", (lookup,)
        )
        return [KeyRow(lookup, bytes(k), bytes(w), int(c)) for k, w, c in found]

    def by_key_ids(self, key_ids: Sequence[bytes]) -> list[KeyRow]:
        out: list[KeyRow] = []
        for key_id in dict.fromkeys(key_ids):
            found = self._db.execute(
                "SELECT lookup, wrapped, created_ns FROM data_keys WHERE key_id = ?", (key_id,)
            )
            out += [KeyRow(bytes(lk), key_id, bytes(w), int(c)) for lk, w, c in found]
        return out

    def rows_many(self, lookups: Sequence[bytes]) -> list[KeyRow]:
        return [row for lookup in dict.fromkeys(lookups) for row in self.rows(lookup)]

    def lookups(self) -> list[bytes]:
        """Every subject's lookup that holds a key (the expiry job walks them)."""
        return [bytes(r[0]) for r in self._db.execute("SELECT DISTINCT lookup FROM data_keys")]

    def add(self, row: KeyRow) -> None:
        self.add_many([row])

    def add_many(self, rows: Sequence[KeyRow]) -> None:
        self._db.executemany(
            "INSERT INTO data_keys VALUES (?, ?, ?, ?)",
            [(r.lookup, r.key_id, r.wrapped, r.created_ns) for r in rows],
        )

    def destroy(self, lookup: bytes) -> Destruction:
        gone = self._db.execute("DELETE FROM data_keys WHERE lookup = ?", (lookup,)).rowcount
        self._db.execute("VACUUM")
        return Destruction(rows=gone, confirmed=(self.where,))

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM data_keys").fetchone()[0])

    def add_unwraps(self, counts: dict[str, int]) -> None:
        for purpose, n in counts.items():
            self._db.execute(
                "INSERT INTO unwraps VALUES (?, ?) ON CONFLICT(purpose) DO UPDATE SET "
                "count = count + excluded.count",
                (purpose, n),
            )

    def unwrap_counts(self) -> dict[str, int]:
        return {p: int(c) for p, c in self._db.execute("SELECT purpose, count FROM unwraps")}

    def close(self) -> None:
        self._db.close()


def _hex(value: Any) -> bytes | None:
    raw = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    try:
        return bytes.fromhex(raw)
    except ValueError:
        return None


class ClickHouseRows:
    """The rows in the ledger's ClickHouse: ``data_keys`` and ``key_unwraps``.

    ``servers`` are connections to every server holding the table (the primary first;
    :func:`careledger.storage.migrations.replica_settings` names them); reads and writes
    go to the primary, a destruction is confirmed on each of them."""

    def __init__(
        self,
        database: str,
        servers: Sequence[tuple[str, SqlBackend]],
        *,
        primary: SqlBackend | None = None,
        process: str = "",
        wait_s: float = DESTROY_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not servers:
            raise KeyRowsError("the key store needs at least one ClickHouse server")
        self._db = database
        self._servers = list(servers)
        #: reads and writes (a connection that fails over between the servers, or the
        #: first server); ``servers`` are each asked on their own after a destruction
        self._primary = primary if primary is not None else servers[0][1]
        self._owned = [b for _n, b in servers] + ([primary] if primary is not None else [])
        self._process = process or f"pid-{os.getpid()}"
        self._wait_s = wait_s
        self._clock = clock
        self.where = "ClickHouse " + ", ".join(name for name, _ in servers)

    def _run(self, backend: SqlBackend, sql: str, params: dict[str, Any]) -> list[Any]:
        try:
            return backend.execute(sql, params)
        except StorageError as exc:
            raise KeyRowsError(f"the key store's table cannot be used: {exc}") from None

    def rows(self, lookup: bytes) -> list[KeyRow]:
        return self._rows_where("lookup", [lookup])

    def _rows_where(self, column: str, values: Sequence[bytes]) -> list[KeyRow]:
        """The rows whose ``column`` (``lookup`` or ``key_id``) is one of ``values``, in
        one query per thousand."""
        wanted = sorted({v.hex() for v in values})
        out: list[KeyRow] = []
        for start in range(0, len(wanted), 1000):
            found = self._run(
                self._primary,
                f"SELECT lookup, key_id, wrapped, created_ns FROM {self._db}.data_keys "
                f"WHERE {column} IN %(v)s",
                {"v": tuple(wanted[start : start + 1000])},
            )
            for lookup, key_id, wrapped, created in found:
                lk, k, w = _hex(lookup), _hex(key_id), _hex(wrapped)
                if lk is not None and k is not None and w is not None:
                    out.append(KeyRow(lk, k, w, int(created)))
        return out

    def by_key_ids(self, key_ids: Sequence[bytes]) -> list[KeyRow]:
        """The rows of these key ids (a sealed part names its key, not its patient)."""
        return self._rows_where("key_id", key_ids)

    def rows_many(self, lookups: Sequence[bytes]) -> list[KeyRow]:
        """The rows of several patients at once (a batch's patients)."""
        return self._rows_where("lookup", lookups)

    def lookups(self) -> list[bytes]:
        """Every subject's lookup that holds a key (the expiry job walks them)."""
        found = self._run(self._primary, f"SELECT DISTINCT lookup FROM {self._db}.data_keys", {})
        return [lk for (v,) in found if (lk := _hex(v)) is not None]

    def add(self, row: KeyRow) -> None:
        self.add_many([row])

    def add_many(self, rows: Sequence[KeyRow]) -> None:
        """One insert for all of them (one part, not one per patient)."""
        if not rows:
            return
        try:
            self._primary.insert(
                f"{self._db}.data_keys",
                ("lookup", "key_id", "wrapped", "created_ns"),
                [(r.lookup.hex(), r.key_id.hex(), r.wrapped.hex(), r.created_ns) for r in rows],
            )
        except StorageError as exc:
            raise KeyRowsError(f"the key store's table cannot be written: {exc}") from None

    def _held(self, backend: SqlBackend, lookup: bytes) -> int:
        found = self._run(
            backend,
            f"SELECT count() FROM {self._db}.data_keys WHERE lookup = %(l)s",
            {"l": lookup.hex()},
        )
        return int(found[0][0])

    def _old_parts(self, backend: SqlBackend) -> int:
        found = self._run(
            backend,
            "SELECT count() FROM system.parts WHERE database = %(d)s AND table = 'data_keys' "
            "AND active = 0",
            {"d": self._db},
        )
        return int(found[0][0])

    def destroy(self, lookup: bytes) -> Destruction:
        """``ALTER TABLE ... DELETE`` on the primary (a replicated mutation reaches every
        replica through ZooKeeper), then each server is asked until it holds none of the
        lookup's rows, or the wait ends. On a layout of independent servers (no
        replication), the mutation is issued on each of them."""
        rows = self._held(self._primary, lookup)
        replicated = self._is_replicated()
        targets = [self._primary] if replicated else [b for _n, b in self._servers]
        for backend in targets:
            self._run(
                backend,
                f"ALTER TABLE {self._db}.data_keys DELETE WHERE lookup = %(l)s",
                {"l": lookup.hex()},
            )
        deadline = self._clock() + self._wait_s
        pending = dict(self._servers)
        confirmed: list[str] = []
        while True:
            for name, backend in list(pending.items()):
                try:
                    held = self._held(backend, lookup)
                except KeyRowsError:
                    continue  # unreachable now: still pending
                if held == 0:
                    confirmed.append(name)
                    del pending[name]
            if not pending or self._clock() >= deadline:
                break
            time.sleep(0.2)
        old = 0
        for _name, backend in self._servers:
            try:
                old += self._old_parts(backend)
            except KeyRowsError:
                continue
        return Destruction(
            rows=rows, confirmed=tuple(confirmed), still_held=tuple(pending), old_parts=old
        )

    def _is_replicated(self) -> bool:
        found = self._run(
            self._primary,
            "SELECT engine FROM system.tables WHERE database = %(d)s AND name = 'data_keys'",
            {"d": self._db},
        )
        if not found:
            raise KeyRowsError(
                f"no table {self._db}.data_keys: run `careledger migrate` (or keystore init)"
            )
        engine = found[0][0]
        return (engine.decode() if isinstance(engine, bytes) else str(engine)).startswith(
            "Replicated"
        )

    def held_by_server(self) -> dict[str, int | None]:
        """Key rows per server (None: unreachable), for ``keystore status``."""
        out: dict[str, int | None] = {}
        for name, backend in self._servers:
            try:
                found = self._run(backend, f"SELECT count() FROM {self._db}.data_keys", {})
                out[name] = int(found[0][0])
            except KeyRowsError:
                out[name] = None
        return out

    def count(self) -> int:
        found = self._run(self._primary, f"SELECT count() FROM {self._db}.data_keys", {})
        return int(found[0][0])

    def add_unwraps(self, counts: dict[str, int]) -> None:
        if not counts:
            return
        now = int(time.time())
        try:
            self._primary.insert(
                f"{self._db}.key_unwraps",
                ("at", "process", "purpose", "unwraps"),
                [(now, self._process, p, n) for p, n in sorted(counts.items())],
            )
        except StorageError as exc:
            raise KeyRowsError(f"the unwrap counts cannot be written: {exc}") from None

    def unwrap_counts(self) -> dict[str, int]:
        found = self._run(
            self._primary,
            f"SELECT purpose, sum(unwraps) FROM {self._db}.key_unwraps GROUP BY purpose",
            {},
        )
        return {
            (p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p)): int(n)
            for p, n in found
        }

    def close(self) -> None:
        for backend in self._owned:
            backend.close()
