"""The two SQL backends careledger runs on, behind one small interface.

* ``ClickHouseBackend``: a real ClickHouse server over the native protocol
  (clickhouse-driver). This is production, and 18.16 is the oldest version we
  support.
* ``ChdbBackend``: the current ClickHouse engine in-process (chDB). It exists so
  that every statement the project issues is also checked against the newest
  engine: the storage tests run once per backend.

Both return rows as tuples with integers as ``int``, dates as ``datetime.date``
and **strings as ``bytes``**: stored data is untrusted (the verifier reads what
an attacker may have written), so nothing is decoded implicitly and invalid
UTF-8 can never crash a reader.

Parameters are rendered into SQL literals by ``render`` for both backends, so
the exact same statement text reaches both engines.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from careledger.credentials import Role, clickhouse_login
from careledger.keys import KeyFileError
from careledger_core.errors import InfrastructureError


class StorageError(InfrastructureError):
    """The database could not be reached or rejected a statement."""

    code = "STORAGE_UNAVAILABLE"


Row = tuple[Any, ...]


class SqlBackend(Protocol):
    """Minimal interface over a ClickHouse engine."""

    name: str

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]: ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...

    def close(self) -> None: ...


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_INLINE_VALUES = re.compile(r"\s*INSERT\b.*\bVALUES\b", re.IGNORECASE | re.DOTALL)


def quote(value: Any) -> str:
    """Render one Python value as a ClickHouse SQL literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return "'" + value.strftime("%Y-%m-%d %H:%M:%S") + "'"
    if isinstance(value, dt.date):
        return "'" + value.isoformat() + "'"
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="surrogateescape")
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return "'" + escaped + "'"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(quote(v) for v in value) + ")"
    raise TypeError(f"cannot render {type(value).__name__} as SQL")


def render(sql: str, params: Mapping[str, Any] | None) -> str:
    if not params:
        return sql
    return _PLACEHOLDER.sub(lambda m: quote(params[m.group(1)]), sql)


class ClickHouseBackend:
    """A real ClickHouse server over the native protocol."""

    name = "clickhouse"

    def __init__(
        self,
        host: str,
        port: int,
        user: str = "default",
        password: str = "",
        *,
        connect_timeout: float = 5.0,
        send_receive_timeout: float = 120.0,
        alt_hosts: Sequence[str] = (),
        tls: Mapping[str, Any] | None = None,
    ) -> None:
        from clickhouse_driver import Client

        common: dict[str, Any] = {
            "host": host,
            "port": port,
            "user": user,
            "password": password,
            "connect_timeout": connect_timeout,
            "send_receive_timeout": send_receive_timeout,
        }
        common.update(tls or {})  # ClickHouseLogin.tls_options() (ADR 0032)
        if alt_hosts:  # the other replicas (ADR 0030): a failed connect tries the next
            common["alt_hosts"] = ",".join(alt_hosts)
        # Reads return strings as bytes (stored data is untrusted); writes take
        # str or bytes as produced by our own code.
        self._client = Client(**common, settings={"strings_as_bytes": True})
        self._writer = Client(**common)
        # clickhouse-driver's Client is not thread-safe; the processor writes
        # from an executor thread while other code may read.
        self._lock = threading.Lock()
        #: a login that could not be made (a bad password file): every statement fails
        #: with it, as an unreachable server does (commands say so and exit 2)
        self.login_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, role: Role = "writer") -> ClickHouseBackend:
        """A backend logged in as ``role`` (ADR 0032): the writer, the read-only reader,
        or the replica database's login (``replica_clickhouse_*``)."""
        try:
            login = clickhouse_login(settings, role)
        except KeyFileError as exc:
            failed = cls(settings.clickhouse_host, settings.clickhouse_port, "-")
            failed.login_error = exc.message
            return failed
        if role == "replica":
            host, port = settings.replica_clickhouse_host, settings.replica_clickhouse_port
            alt: tuple[str, ...] = ()
        else:
            host, port = settings.clickhouse_host, settings.clickhouse_port
            alt = tuple(getattr(settings, "clickhouse_replicas", ()))
        return cls(
            host,
            port,
            login.user,
            login.password,
            alt_hosts=alt,
            tls=login.tls_options(),
        )

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        from clickhouse_driver import errors as ch_errors

        if _INLINE_VALUES.match(sql):
            # clickhouse-driver would send the statement and wait for data blocks
            # that never come (a hang until the receive timeout).
            raise ValueError("INSERT ... VALUES goes through insert(); use INSERT ... SELECT here")
        self._check_login()
        try:
            with self._lock:
                return list(self._client.execute(render(sql, params)))
        except (ch_errors.Error, OSError, EOFError) as exc:
            raise StorageError(f"ClickHouse statement failed: {_first_line(exc)}") from exc

    def execute_columns(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        """A SELECT's result column by column (one list per column, none if no rows),
        without a tuple per row: the verifier's bulk reads."""
        from clickhouse_driver import errors as ch_errors

        self._check_login()
        try:
            with self._lock:
                result = self._client.execute(render(sql, params), columnar=True)
        except (ch_errors.Error, OSError, EOFError) as exc:
            raise StorageError(f"ClickHouse statement failed: {_first_line(exc)}") from exc
        return [list(column) for column in result]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from clickhouse_driver import errors as ch_errors

        if not rows:
            return
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
        self._check_login()
        try:
            with self._lock:
                self._writer.execute(sql, list(rows))
        except (ch_errors.Error, OSError, EOFError) as exc:
            raise StorageError(
                f"ClickHouse insert into {table} failed: {_first_line(exc)}"
            ) from exc

    def _check_login(self) -> None:
        if self.login_error is not None:
            raise StorageError(f"cannot log in to ClickHouse: {self.login_error}")

    def close(self) -> None:
        with self._lock:
            self._client.disconnect()
            self._writer.disconnect()


class ChdbBackend:
    """The current ClickHouse engine in-process (chDB), for compatibility checks."""

    name = "chdb"

    def __init__(self, path: str | None = None) -> None:
        from chdb import session

        self._session = session.Session(path) if path else session.Session()  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        text = render(sql, params)
        try:
            with self._lock:
                result = self._session.query(text, "TSVWithNamesAndTypes")  # type: ignore[no-untyped-call]
        except RuntimeError as exc:  # chdb's ChdbError is a RuntimeError
            raise StorageError(f"chDB statement failed: {_first_line(exc)}") from exc
        return _parse_tsv_with_types(result.bytes())

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        values = ",".join("(" + ", ".join(quote(v) for v in row) + ")" for row in rows)
        self.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}")

    def close(self) -> None:
        with self._lock:
            self._session.close()  # type: ignore[no-untyped-call]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_TSV_UNESCAPE = {
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("r"): b"\r",
    ord("n"): b"\n",
    ord("t"): b"\t",
    ord("0"): b"\x00",
    ord("'"): b"'",
    ord("\\"): b"\\",
}


def _tsv_unescape(field: bytes) -> bytes:
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    n = len(field)
    while i < n:
        c = field[i]
        if c == 0x5C and i + 1 < n:
            nxt = field[i + 1]
            out += _TSV_UNESCAPE.get(nxt, bytes([nxt]))
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _convert(type_name: str, raw: bytes) -> Any:
    if type_name.startswith("Nullable("):
        if raw == b"\\N":
            return None
        type_name = type_name[len("Nullable(") : -1]
    if type_name.startswith(("UInt", "Int")):
        return int(raw)
    if type_name.startswith("Float"):
        return float(raw)
    if type_name == "Date":
        return dt.date.fromisoformat(raw.decode())
    if type_name.startswith("DateTime"):
        return dt.datetime.fromisoformat(raw.decode())
    return _tsv_unescape(raw)


def _parse_tsv_with_types(data: bytes) -> list[Row]:
    if not data:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) < 2:
        return []
    types = [t.decode() for t in lines[1].split(b"\t")]
    rows: list[Row] = []
    for line in lines[2:]:
        fields = line.split(b"\t")
        rows.append(tuple(_convert(t, f) for t, f in zip(types, fields, strict=True)))
    return rows


def open_backend(settings: Any, kind: str = "clickhouse", role: Role = "writer") -> SqlBackend:
    if kind == "clickhouse":
        return ClickHouseBackend.from_settings(settings, role)
    if kind == "chdb":
        return ChdbBackend()
    raise ValueError(f"unknown storage backend {kind!r}")
