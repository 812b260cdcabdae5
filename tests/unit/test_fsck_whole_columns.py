"""The side columns compared as whole columns (``fsck.bulk.columns_equal``) agree with
the row-by-row comparison (``kind.read_values`` per event) on every change to one value,
and step aside (None) when a value holds the separator, so that a NUL cannot make two
different columns join alike."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from careledger.storage.kinds import ACCESS, REFERENCE
from careledger_core.event import decode_and_canonicalize
from tests.batch_ledger import payloads
from verifiers.integrity.fsck.bulk import columns_equal


def _block(n: int = 6) -> tuple[list[Any], list[list[Any]]]:
    events = [decode_and_canonicalize(p)[0] for p in payloads(n)]
    rows = [ACCESS.read_values(e) for e in events]
    return events, [list(c) for c in zip(*rows, strict=True)]


def _row_by_row(by_column: list[list[Any]], events: list[Any]) -> bool:
    return list(zip(*by_column, strict=True)) == list(map(ACCESS.read_values, events))


def test_the_stored_columns_of_a_block_are_equal() -> None:
    events, cols = _block()
    assert columns_equal(ACCESS, cols, events) is True


@pytest.mark.parametrize("column", range(len(ACCESS.read_columns)))
@pytest.mark.parametrize("row", [0, 3, 5])
def test_one_value_changed_is_unequal_as_row_by_row(column: int, row: int) -> None:
    events, cols = _block()
    value = cols[column][row]
    if isinstance(value, bytes):
        cols[column][row] = value + b"x"
    elif isinstance(value, dt.date):
        cols[column][row] = value + dt.timedelta(days=1)
    else:
        cols[column][row] = value + 1
    assert _row_by_row(cols, events) is False
    assert columns_equal(ACCESS, cols, events) is False


@pytest.mark.parametrize("column", [0, 2, 3, 6])
def test_text_moved_across_a_row_boundary_is_unequal(column: int) -> None:
    events, cols = _block()
    a, b = cols[column][1], cols[column][2]
    cols[column][1], cols[column][2] = a + b[:1], b[1:]  # the joined text is unchanged
    assert _row_by_row(cols, events) is False
    assert columns_equal(ACCESS, cols, events) is False


def test_a_separator_in_a_stored_value_is_left_to_the_row_by_row_comparison() -> None:
    events, cols = _block()
    a, b = cols[2][1], cols[2][2]
    # joined with NUL, these two look like the right two values: do not decide this way
    cols[2][1], cols[2][2] = a + b"\x00" + b, b""
    assert columns_equal(ACCESS, cols, events) is None
    assert _row_by_row(cols, events) is False


def test_other_kinds_are_compared_row_by_row() -> None:
    assert columns_equal(REFERENCE, [], []) is None
