"""The whole-block fast path of ``check_events`` (``_block_sound``) never hides a finding.

It may only say "sound" when the row-by-row checks would report nothing. Attack: every
column of every row of a block of batch records (ADR 0020) replaced by another value
(another row's, a value of another type, a near miss), rows deleted, duplicated and
swapped; each time the fast path must decline, and the findings of the verifier with the
fast path must equal those with the fast path switched off.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from careledger.storage.kinds import ACCESS
from careledger.storage.store import EventColumns, StoredEvent
from careledger_core.findings import Finding
from tests.batch_ledger import batch_ledger
from tests.ledger_builder import TRUSTED, FakeReader, headers_as_read, rows_as_read
from verifiers.integrity.fsck import events as events_mod
from verifiers.integrity.fsck import verify_chain
from verifiers.integrity.fsck.headers import check_header

BLOCKS = batch_ledger()
CHAIN = BLOCKS[0].header.chain_id


class ColumnReader(FakeReader):
    """The same rows, read column by column as ``ChainStore.event_columns`` reads them."""

    def event_columns(self, chain_id: str, from_height: int, to_height: int) -> EventColumns:
        rows = self.events(chain_id, from_height, to_height)
        names = tuple(f.name for f in dataclasses.fields(StoredEvent))
        columns = [[getattr(r, n) for r in rows] for n in names]
        return EventColumns(ACCESS, names, columns)


def _findings(reader: FakeReader) -> list[dict[str, object]]:
    report = verify_chain(reader, CHAIN, TRUSTED, kind=ACCESS)
    found = [f.to_dict() for f in report.findings]
    bulk = ColumnReader()
    bulk.header_rows, bulk.rows = reader.header_rows, reader.rows
    by_columns = verify_chain(bulk, CHAIN, TRUSTED, kind=ACCESS)
    assert [f.to_dict() for f in by_columns.findings] == found
    assert (by_columns.events, by_columns.blocks) == (report.events, report.blocks)
    return found


def _slow(reader: FakeReader, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    with monkeypatch.context() as m:
        m.setattr(events_mod, "_block_sound", lambda *a: False)
        return _findings(reader)


def _sound(reader: FakeReader, height: int) -> bool:
    [header] = [h for h in reader.header_rows if h.height == height]
    chk = check_header(header, TRUSTED)
    rows = [r for r in reader.events(CHAIN, height, height)]
    ours = {chk.hash_hex.encode()}
    return events_mod._block_sound(chk, rows, ACCESS, ours)


def test_the_clean_blocks_are_sound_and_verify_clean() -> None:
    reader = FakeReader.of(ACCESS, BLOCKS)
    assert all(_sound(reader, b.header.height) for b in BLOCKS)
    assert _findings(reader) == []


def _variants(value: Any, other: Any) -> list[Any]:
    out: list[Any] = [other, None, b"", 0, -1, 2**70, "text", dt.date(2000, 1, 1), True, 1.0]
    if isinstance(value, bytes):
        out += [value + b" ", value[:-1], bytearray(value), value.decode("latin-1")]
    if type(value) is int:
        out += [value + 1, value - 1, str(value).encode(), bool(value)]
    return [v for v in out if not (type(v) is type(value) and v == value)]


FIELDS = [
    f.name for f in dataclasses.fields(rows_as_read(ACCESS, BLOCKS)[0]) if f.name != "chain_id"
]


@pytest.mark.parametrize("field", FIELDS)
def test_any_column_of_any_row_changed_is_declined_and_found_alike(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = BLOCKS[1]
    clean = rows_as_read(ACCESS, [block])
    for idx, row in enumerate(clean):
        other = getattr(clean[(idx + 1) % len(clean)], field)
        for value in _variants(getattr(row, field), other):
            reader = FakeReader.of(ACCESS, BLOCKS)
            reader.update_row(CHAIN, 1, idx, **{field: value})
            tampered = [r for r in reader.rows if r.height == 1 and r.chain_id == CHAIN]
            # (a row moved to another height is grouped there by the chain walk, never
            # seen by this block's checks: only the findings are compared)
            if field != "height" and (
                tampered != clean
                or any(
                    type(getattr(a, field)) is not type(getattr(b, field))
                    for a, b in zip(tampered, clean, strict=True)
                )
            ):
                assert not _sound(reader, 1), (field, idx, value)
            assert _findings(reader) == _slow(reader, monkeypatch), (field, idx, value)


Tamper = Callable[[FakeReader], None]


def _delete(reader: FakeReader) -> None:
    del reader.rows[reader.find(CHAIN, 1, 2)]


def _duplicate(reader: FakeReader) -> None:
    # a copy: the store never serves one object twice
    reader.rows.append(dataclasses.replace(reader.rows[reader.find(CHAIN, 1, 2)]))


def _swap(reader: FakeReader) -> None:
    a, b = reader.find(CHAIN, 1, 0), reader.find(CHAIN, 1, 5)
    ra, rb = reader.rows[a], reader.rows[b]
    reader.rows[a] = dataclasses.replace(rb, idx=ra.idx)
    reader.rows[b] = dataclasses.replace(ra, idx=rb.idx)


def _extra_index(reader: FakeReader) -> None:
    row = reader.rows[reader.find(CHAIN, 1, 2)]
    reader.rows.append(dataclasses.replace(row, idx=row.idx + 100))


def _another_block(reader: FakeReader) -> None:
    row = reader.rows[reader.find(CHAIN, 1, 2)]
    reader.rows[reader.find(CHAIN, 1, 2)] = dataclasses.replace(
        row, block_hash=headers_as_read([BLOCKS[0]])[0].block_hash
    )


@pytest.mark.parametrize("tamper", [_delete, _duplicate, _swap, _extra_index, _another_block])
def test_rows_deleted_duplicated_swapped_or_moved_are_declined_and_found_alike(
    tamper: Tamper, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = FakeReader.of(ACCESS, BLOCKS)
    tamper(reader)
    assert not _sound(reader, 1)
    found = _findings(reader)
    assert found and found == _slow(reader, monkeypatch)


def test_findings_are_what_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path changes nothing for a clean chain either (no findings, same counts)."""
    reader = FakeReader.of(ACCESS, BLOCKS)
    fast = verify_chain(reader, CHAIN, TRUSTED, kind=ACCESS)
    with monkeypatch.context() as m:
        m.setattr(events_mod, "_block_sound", lambda *a: False)
        slow = verify_chain(reader, CHAIN, TRUSTED, kind=ACCESS)
    assert (fast.events, fast.blocks, fast.counts) == (slow.events, slow.blocks, slow.counts)
    _ = Finding  # the findings compared above are Finding.to_dict()s
