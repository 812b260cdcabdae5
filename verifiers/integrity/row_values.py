"""Column values of the source checks' bulk reads, as the checks use them.

Values come from the store and are untrusted: whatever a column holds (another type, a
NULL, garbage), these never raise. Split from ``sources`` (the I/O helpers of
``read_source_rows``).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping
from typing import Any


def _str(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _as_str(v: Any) -> Any:
    """A String column's bytes as text; anything else (a changed schema) as it is."""
    return v.decode("utf-8", "replace") if type(v) is bytes else v


def _leaf(v: Any) -> bytes | None:
    """A stored leaf hash as 32 bytes, or None if it is not 64 lowercase hex digits."""
    # ``\A[0-9a-f]{64}\Z`` without a regex call: 64 characters, none upper case, all hex
    if type(v) is not bytes or len(v) != 64 or v != v.lower():
        return None
    try:
        return binascii.unhexlify(v)
    except binascii.Error:
        return None


def _key(v: Any) -> Any:
    """A column value usable in a dict key whatever its type."""
    t = type(v)
    if t is bytes or t is int:  # what the columns hold
        return v
    return v if v is None or isinstance(v, bytes | str | int) else repr(v)


def _rows(backend: Any, sql: str, params: Mapping[str, Any]) -> Iterable[tuple[Any, ...]]:
    """The rows of a bulk read, read column by column where the backend can (no list of
    row tuples in memory; each row's tuple made as it is used)."""
    by_column = getattr(backend, "execute_columns", None)
    if by_column is None:
        rows: list[tuple[Any, ...]] = backend.execute(sql, params)
        return rows
    columns: list[list[Any]] = by_column(sql, params)
    return zip(*columns, strict=True) if columns else ()
