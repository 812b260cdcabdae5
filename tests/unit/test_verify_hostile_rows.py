"""Rows an attacker (or a broken schema change) leaves in the store: every one a finding
with its place, never a traceback; and every column a product reads is checked.

Over an in-memory reader that serves hostile values as they are (the real store:
test_verify_hostile_store.py with chDB, tests/integration/test_tamper_columns.py with
ClickHouse 18.16). The ledger is built by the real chainer and source gate
(``tests/ledger_builder.py``): signed access events with a dead-lettered record in the
first block, a registered source key on the sources chain.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from careledger.storage.kinds import ACCESS
from careledger.storage.store import SealedBlock
from careledger_core.block import BlockHeader, block_hash, header_bytes
from careledger_core.findings import Finding
from tests.ledger_builder import (
    ACCESS_CHAIN,
    PROCESSOR,
    RAW_CHAIN,
    REFERENCE_CHAIN,
    SOURCES_CHAIN,
    TRUSTED,
    FakeReader,
    kind_of,
    mixed_ledger,
)
from verifiers.integrity.fsck import ChainReport, VerifiedHead, verify_chain

Where = tuple[str, int | None, int | None]


@dataclasses.dataclass
class Ledger:
    blocks: dict[str, list[SealedBlock]]

    def reader(self) -> FakeReader:
        reader = FakeReader()
        for chain, blocks in self.blocks.items():
            reader.add(kind_of(chain), blocks)
        return reader


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger(mixed_ledger())


def verify_all(
    reader: FakeReader, known: dict[str, VerifiedHead] | None = None
) -> dict[str, ChainReport]:
    """What ``careledger verify`` does: every chain the store (or the state) knows."""
    known = known or {}
    chains = sorted(set(reader.chain_ids()) | set(known))
    return {
        chain: verify_chain(
            reader, chain, TRUSTED, known_head=known.get(chain), kind=kind_of(chain)
        )
        for chain in chains
    }


def findings(reports: dict[str, ChainReport]) -> list[Finding]:
    return [f for r in reports.values() for f in r.findings]


def where(reports: dict[str, ChainReport], chain: str) -> set[Where]:
    return {(str(f.code), f.height, f.event_index) for f in reports[chain].findings}


def failures(reports: dict[str, ChainReport]) -> int:
    return sum(r.failures for r in reports.values())


def only_in(reports: dict[str, ChainReport], chain: str) -> set[Where]:
    for other, report in reports.items():
        if other != chain:
            assert report.findings == [], (other, report.findings)
    return where(reports, chain)


# --------------------------------------------------------------------------- the clean ledger


def test_the_ledger_verifies_clean(ledger: Ledger) -> None:
    reports = verify_all(ledger.reader())
    assert findings(reports) == []
    assert set(reports) == {ACCESS_CHAIN, SOURCES_CHAIN, REFERENCE_CHAIN, RAW_CHAIN}
    first = ledger.blocks[ACCESS_CHAIN][0].header
    assert first.dead_lettered == 1  # a free offset inside the block's range


# --------------------------------------------------------------------------- derived columns


def test_moved_occurred_date_is_a_field_mismatch(ledger: Ledger) -> None:
    # Moving the date hides the access from a date-bounded access report
    # (``WHERE occurred_date >= ... AND occurred_date <= ...``).
    reader = ledger.reader()
    row = reader.rows[reader.find(ACCESS_CHAIN, 1, 2)]
    moved = row.occurred_date - dt.timedelta(days=40)  # type: ignore[union-attr]
    reader.update_row(ACCESS_CHAIN, 1, 2, occurred_date=moved)
    reports = verify_all(reader)
    assert only_in(reports, ACCESS_CHAIN) == {("EVENT_FIELD_MISMATCH", 1, 2)}
    [f] = reports[ACCESS_CHAIN].findings
    assert "occurred_date" in f.message
    assert f.details["columns"]["occurred_date"] == {
        "column": moved.isoformat(),
        "event": row.occurred_date.isoformat(),  # type: ignore[union-attr]
    }


def test_moved_effective_date_of_a_reference_record(ledger: Ledger) -> None:
    reader = ledger.reader()
    reader.update_row(REFERENCE_CHAIN, 1, 0, effective_date=dt.date(1999, 1, 1))
    reports = verify_all(reader)
    assert only_in(reports, REFERENCE_CHAIN) == {("EVENT_FIELD_MISMATCH", 1, 0)}
    assert "effective_date" in reports[REFERENCE_CHAIN].findings[0].message


def test_moved_received_date_of_a_raw_record(ledger: Ledger) -> None:
    reader = ledger.reader()
    reader.update_row(RAW_CHAIN, 0, 1, received_date=dt.date(2030, 1, 1))
    assert only_in(verify_all(reader), RAW_CHAIN) == {("EVENT_FIELD_MISMATCH", 0, 1)}


def test_kafka_offset_moved_into_a_dead_lettered_slot(ledger: Ledger) -> None:
    # Block 0 covers offsets 0..4; offset 2 was dead-lettered. Event 2 came from offset
    # 3; claiming it came from offset 2 keeps the offsets in order and in range.
    reader = ledger.reader()
    assert [r.kafka_offset for r in reader.events(ACCESS_CHAIN, 0, 0)] == [0, 1, 3, 4]
    reader.update_row(ACCESS_CHAIN, 0, 2, kafka_offset=2)
    reports = verify_all(reader)
    assert only_in(reports, ACCESS_CHAIN) == {("EVENT_OFFSETS_MISMATCH", 0, None)}
    [f] = reports[ACCESS_CHAIN].findings
    assert f.details["stored_free_offsets"] == [3]


def test_blocks_signed_before_offsets_were_committed_still_verify(ledger: Ledger) -> None:
    # A header of the format before event_offsets existed (no such field), re-signed by
    # the processor key: old blocks stay verifiable; their offsets are not covered.
    old = []
    prev = None
    for block in ledger.blocks[ACCESS_CHAIN]:
        fields = msgspec.structs.asdict(block.header)
        fields.pop("event_offsets", None)
        if prev is not None:
            fields["prev_hash"] = prev
        header = BlockHeader(**fields)
        assert b"event_offsets" not in header_bytes(header)
        prev = block_hash(header).hex()
        old.append(
            SealedBlock(
                header,
                header_bytes(header),
                block_hash(header),
                PROCESSOR.sign_header(header),
                block.events,
            )
        )
    reader = FakeReader.of(ACCESS, old)
    assert findings(verify_all(reader)) == []
    reader.update_row(ACCESS_CHAIN, 0, 2, kafka_offset=2)
    assert findings(verify_all(reader)) == []  # what the new header field is for


def test_new_blocks_commit_to_their_event_offsets(ledger: Ledger) -> None:
    for chain, blocks in ledger.blocks.items():
        for block in blocks:
            assert block.header.event_offsets is not None, chain
            assert b'"event_offsets":"' in block.header_bytes


# --------------------------------------------------------------------------- malformed rows


def test_empty_leaf_hash_and_empty_canonical_bytes_are_findings(ledger: Ledger) -> None:
    reader = ledger.reader()
    reader.update_row(ACCESS_CHAIN, 1, 0, leaf_hash=b"")
    reader.update_row(ACCESS_CHAIN, 1, 1, leaf_hash=b"zz" * 32)
    reader.update_row(ACCESS_CHAIN, 1, 3, canonical=b"")
    found = where(verify_all(reader), ACCESS_CHAIN)
    assert {("EVENT_HASH_MISMATCH", 1, i) for i in (0, 1, 3)} <= found
    assert ("EVENT_NOT_CANONICAL", 1, 3) in found


@pytest.mark.parametrize(
    ("column", "value", "code"),
    [
        ("canonical", None, "EVENT_NOT_CANONICAL"),
        ("canonical", "text, not bytes", "EVENT_NOT_CANONICAL"),
        ("leaf_hash", None, "EVENT_HASH_MISMATCH"),
        ("kafka_offset", None, "EVENT_FIELD_MISMATCH"),
        ("kafka_offset", -5, "EVENT_OFFSET_OUT_OF_RANGE"),
        ("kafka_offset", 2**70, "EVENT_OFFSET_OUT_OF_RANGE"),
        ("idx", None, "EVENT_UNEXPECTED"),
        ("idx", 2**70, "EVENT_UNEXPECTED"),
        ("block_hash", bytearray(b"unhashable"), "EVENT_UNEXPECTED"),
        ("block_hash", None, "EVENT_UNEXPECTED"),
        ("outcome", None, "EVENT_FIELD_MISMATCH"),
        ("outcome", False, "EVENT_FIELD_MISMATCH"),  # honest 0: equal, but not an int
        ("occurred_date", None, "EVENT_FIELD_MISMATCH"),
        ("occurred_date", "2026-11-02", "EVENT_FIELD_MISMATCH"),
        ("patient_id", b"\xff\xfe not utf-8", "EVENT_FIELD_MISMATCH"),
    ],
)
def test_a_column_of_the_wrong_type_is_a_finding_at_its_row(
    ledger: Ledger, column: str, value: object, code: str
) -> None:
    reader = ledger.reader()
    honest = reader.rows[reader.find(ACCESS_CHAIN, 0, 0)]
    if column == "outcome":
        assert honest.outcome == 0  # type: ignore[union-attr]
    reader.update_row(ACCESS_CHAIN, 0, 0, **{column: value})
    reports = verify_all(reader)
    found = where(reports, ACCESS_CHAIN)
    assert any(c == code and h == 0 for c, h, _ in found), found
    if column not in ("idx", "block_hash"):
        assert (code, 0, 0) in found
    assert all(r.findings == [] for c, r in reports.items() if c != ACCESS_CHAIN)


@pytest.mark.parametrize("value", [None, 1.5, "3", 2**64 - 1, 2**70, -1])
def test_an_event_row_with_an_unreadable_height(ledger: Ledger, value: object) -> None:
    reader = ledger.reader()
    reader.update_row(ACCESS_CHAIN, 2, 1, height=value)
    found = where(verify_all(reader), ACCESS_CHAIN)
    assert ("EVENT_MISSING", 2, 1) in found
    assert any(c in ("EVENT_UNEXPECTED", "UNCOMMITTED_EVENTS") for c, _h, _i in found)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("header", None),
        ("header", "a str"),
        ("header", b""),
        ("signature", None),
        ("signature", "ab" * 64),
        ("event_count", None),
        ("event_count", 4.0),
        ("first_offset", True),
        ("created_at", None),
        ("block_hash", bytearray(b"x")),
        ("key_id", 12),
        ("height", None),
        ("height", "1"),
    ],
)
def test_a_header_column_of_the_wrong_type_is_a_finding(
    ledger: Ledger, column: str, value: object
) -> None:
    reader = ledger.reader()
    k = next(
        i for i, h in enumerate(reader.header_rows) if h.chain_id == ACCESS_CHAIN and h.height == 1
    )
    reader.header_rows[k] = dataclasses.replace(reader.header_rows[k], **{column: value})
    reports = verify_all(reader)
    assert reports[ACCESS_CHAIN].failures > 0
    assert any(f.height == 1 for f in reports[ACCESS_CHAIN].findings)


def test_a_huge_event_count_in_a_broken_header_does_not_stall_the_verifier(
    ledger: Ledger,
) -> None:
    reader = ledger.reader()
    k = next(
        i for i, h in enumerate(reader.header_rows) if h.chain_id == ACCESS_CHAIN and h.height == 2
    )
    reader.header_rows[k] = dataclasses.replace(
        reader.header_rows[k], header=b"\x00junk", event_count=2**32 - 1
    )
    started = time.monotonic()
    reports = verify_all(reader)
    assert time.monotonic() - started < 10
    report = reports[ACCESS_CHAIN]
    assert ("BLOCK_HEADER_INVALID", 2, None) in where(reports, ACCESS_CHAIN)
    assert report.counts["EVENT_MISSING"] < 2000  # the rest summed up in one finding
    assert any(
        f.code == "EVENT_MISSING" and f.event_index is None and f.details.get("count", 0) > 10**9
        for f in report.findings
    )


def test_findings_about_hostile_values_serialise_as_json(ledger: Ledger) -> None:
    import json

    reader = ledger.reader()
    reader.update_row(ACCESS_CHAIN, 0, 0, occurred_date=dt.date(2000, 1, 1))
    reader.update_row(ACCESS_CHAIN, 0, 1, outcome=10**5000)
    reader.update_row(ACCESS_CHAIN, 0, 3, event_id=[1, 2], actor_id=b"\xff" * 5000)
    for f in findings(verify_all(reader)):
        text = json.dumps(f.to_dict())
        assert len(text) < 20_000


# --------------------------------------------------------------------------- property


def _near(honest: Any) -> st.SearchStrategy[Any]:
    """Values close to the honest one: what a careful attacker writes."""
    if type(honest) is int:
        return st.integers(honest - 3, honest + 3)
    if isinstance(honest, bytes):
        return st.one_of(
            st.just(honest[:-1]),
            st.just(honest + b"0"),
            st.just(honest.upper()),
            st.integers(0, max(0, len(honest) - 1)).map(
                lambda i: honest[:i] + bytes([honest[i] ^ 1]) + honest[i + 1 :] if honest else b"x"
            ),
        )
    if isinstance(honest, dt.date):
        return st.integers(-400, 400).map(lambda d: honest + dt.timedelta(days=d))
    if isinstance(honest, str):
        return st.sampled_from([honest + "x", honest[:-1], honest.upper(), ""])
    return st.nothing()


_HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.binary(max_size=70),
    st.text(max_size=30),
    st.sampled_from(
        [b"", b"\xff\xfe\x00", b"0" * 64, b"z" * 64, b"[" * 3000, 0, -1, 2**63, 2**64, 10**30]
    ),
    st.dates(),
    st.datetimes(),
    st.lists(st.integers(), max_size=2),
    st.binary(max_size=8).map(bytearray),
)


def _differs(new: Any, old: Any) -> bool:
    return type(new) is not type(old) or bool(new != old)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_corrupted_column_of_any_row_is_found_and_never_crashes(
    ledger: Ledger, data: st.DataObject
) -> None:
    reader = ledger.reader()
    known = {c: r.head for c, r in verify_all(reader).items() if r.head is not None}
    table = data.draw(st.sampled_from(["headers", "rows"]), label="table")
    rows: list[Any] = reader.header_rows if table == "headers" else reader.rows
    k = data.draw(st.integers(0, len(rows) - 1), label="row")
    honest = rows[k]
    column = data.draw(
        st.sampled_from([f.name for f in dataclasses.fields(honest)]), label="column"
    )
    old = getattr(honest, column)
    if column == "chain_id":  # the reader always decodes chain ids to str
        values: st.SearchStrategy[Any] = st.one_of(st.text(max_size=80), _near(old))
    else:
        values = st.one_of(_HOSTILE, _near(old))
    new = data.draw(values, label="value")
    assume(_differs(new, old))
    rows[k] = dataclasses.replace(honest, **{column: new})
    reports = verify_all(reader, known)  # must not raise
    assert failures(reports) >= 1, (table, column, old, new)
    for f in findings(reports):
        assert isinstance(f.chain_id, str)
        f.to_dict()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_several_rows_corrupted_at_once_never_crash(ledger: Ledger, data: st.DataObject) -> None:
    reader = ledger.reader()
    for _ in range(data.draw(st.integers(2, 6))):
        rows: list[Any] = data.draw(st.sampled_from([reader.header_rows, reader.rows]))
        k = data.draw(st.integers(0, len(rows) - 1))
        column = data.draw(st.sampled_from([f.name for f in dataclasses.fields(rows[k])]))
        if column == "chain_id":
            continue
        rows[k] = dataclasses.replace(rows[k], **{column: data.draw(_HOSTILE)})
    verify_all(reader)


def test_terminal_escapes_in_stored_values_never_reach_the_output(ledger: Ledger) -> None:
    reader = ledger.reader()
    escape = b"\x1b]0;owned\x07\x1b[2J\n"
    reader.update_row(ACCESS_CHAIN, 1, 1, canonical=escape, event_id=escape)
    k = next(
        i for i, h in enumerate(reader.header_rows) if h.chain_id == ACCESS_CHAIN and h.height == 2
    )
    reader.header_rows[k] = dataclasses.replace(reader.header_rows[k], signature=escape)
    found = findings(verify_all(reader))
    assert {f.height for f in found} >= {1, 2}
    for f in found:
        text = f.message + (f.event_id or "") + str(f.details)
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text), f
