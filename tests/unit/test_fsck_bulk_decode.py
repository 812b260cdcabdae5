"""The whole-block decode of the fast path (``fsck.bulk.decode_block``) accepts exactly
what the row-by-row decode accepts.

It decodes a block's rows joined as one JSON array. Attack: rows whose *joined* text is
a valid, canonical array of events although the rows on their own are not events (an
event split at one of its commas, the first half glued to the row before), signed into a
block by the processor key's holder; rows that are not canonical (white space, member
order, ``null``, a duplicated member), invalid, empty, two events in one row, a bracket
that closes the array early. Each time the bulk decode must decline, the fast path must
decline, and the verifier's findings must be those of the row-by-row path.
"""

from __future__ import annotations

import msgspec
import pytest

from careledger.storage.kinds import ACCESS, REFERENCE
from careledger.storage.store import ChainedEvent
from careledger_core.errors import ValidationError
from careledger_core.event import AccessEvent, decode_and_canonicalize
from careledger_core.hashing import leaf_hash
from tests.batch_ledger import chain_of, payloads
from tests.ledger_builder import TRUSTED, FakeReader
from verifiers.integrity.fsck import events as events_mod
from verifiers.integrity.fsck import verify_chain
from verifiers.integrity.fsck.bulk import decode_block
from verifiers.integrity.fsck.headers import check_header

EVENTS = payloads(6, seed=11)


def _row_by_row(rows: list[bytes]) -> list[AccessEvent] | None:
    """What the row-by-row path accepts: every row valid and canonical on its own."""
    out = []
    for data in rows:
        try:
            event, canonical = decode_and_canonicalize(data)
        except (ValidationError, ValueError, TypeError, RecursionError):
            return None
        if canonical != data:
            return None
        out.append(event)
    return out


def _split(event: bytes) -> tuple[bytes, bytes]:
    """``event`` cut at one of its commas: (before, after), neither holding that comma."""
    cut = event.index(b',"event_id"')
    return event[:cut], event[cut + 1 :]


def _split_rows() -> list[bytes]:
    e0, e1, e2 = EVENTS[:3]
    head, tail = _split(e1)
    return [e0 + b"," + head, tail, e2]


def _variants() -> dict[str, list[bytes]]:
    e0, e1, e2 = EVENTS[:3]
    ev = msgspec.json.decode(e1)
    return {
        "clean": [e0, e1, e2],
        "an event split over two rows": _split_rows(),
        "two events in one row, one row fewer": [e0 + b"," + e1, e2],
        "two events in one row, then an empty row": [e0 + b"," + e1, b"", e2],
        "an empty row": [e0, b"", e2],
        "leading white space": [e0, b" " + e1, e2],
        "trailing white space": [e0, e1 + b"\n", e2],
        "members out of order": [e0, msgspec.json.encode(dict(reversed(ev.items()))), e2],
        "a null optional member": [e0, e1[:-1] + b',"zzz":null}', e2],
        "a duplicated member": [e0, e1[:-1] + b',"action":"' + ev["action"].encode() + b'"}', e2],
        "an invalid event id": [e0, e1.replace(ev["event_id"].encode(), b"not-a-uuid"), e2],
        "an array closed early": [e0 + b"],[" + e1, e2],
        "not JSON": [e0, b"{", e2],
        "a bare value": [e0, b"1", e2],
        "escaped but equal text": [e0, e1.replace(b'"action"', b'"\\u0061ction"'), e2],
    }


@pytest.mark.parametrize("name", list(_variants()))
def test_the_bulk_decode_accepts_exactly_what_row_by_row_accepts(name: str) -> None:
    rows = _variants()[name]
    expected = _row_by_row(rows)
    assert decode_block(ACCESS, rows) == expected
    assert (expected is not None) == (name == "clean")


def test_a_split_event_joins_into_a_valid_canonical_array() -> None:
    """The attack is real: the joined text alone decodes, and re-encodes, as three
    valid events, so the joined decode without the per-row comparison would accept it."""
    rows = _split_rows()
    joined = b"[" + b",".join(rows) + b"]"
    decoded = msgspec.json.decode(joined, type=list[AccessEvent])
    assert len(decoded) == len(rows)
    assert msgspec.json.Encoder(order="sorted").encode(decoded) == joined
    assert decode_block(ACCESS, rows) is None


def test_other_kinds_are_decoded_row_by_row() -> None:
    assert decode_block(REFERENCE, [b"{}"]) is None


def _signed_split_block() -> FakeReader:
    """A chain whose block 1 the processor key's holder signed over split rows (block 0
    holds three clean events)."""
    e = [decode_and_canonicalize(p)[0] for p in EVENTS[:6]]

    def record(events: list[AccessEvent], rows: list[bytes]) -> list[ChainedEvent]:
        return [ChainedEvent(0, ev, d, leaf_hash(d)) for ev, d in zip(events, rows, strict=True)]

    blocks = chain_of([[record(e[3:], list(EVENTS[3:6]))], [record(e[:3], _split_rows())]])
    return FakeReader.of(ACCESS, blocks)


def test_a_signed_block_of_split_rows_is_not_canonical_at_both_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = _signed_split_block()
    chain = reader.header_rows[0].chain_id
    [header] = [h for h in reader.header_rows if h.height == 1]
    chk = check_header(header, TRUSTED)
    rows = reader.events(chain, 1, 1)
    assert not events_mod._block_sound(chk, rows, ACCESS, {chk.hash_hex.encode()})
    fast = [f.to_dict() for f in verify_chain(reader, chain, TRUSTED, kind=ACCESS).findings]
    with monkeypatch.context() as m:
        m.setattr(events_mod, "_block_sound", lambda *a: False)
        slow = [f.to_dict() for f in verify_chain(reader, chain, TRUSTED, kind=ACCESS).findings]
    assert fast == slow
    at = {(f["code"], f["height"], f["event_index"]) for f in fast}
    assert {("EVENT_NOT_CANONICAL", 1, 0), ("EVENT_NOT_CANONICAL", 1, 1)} <= at


def test_a_stored_leaf_hash_is_read_as_the_pattern_says() -> None:
    """``row_values._leaf`` (no regex call) accepts exactly ``\\A[0-9a-f]{64}\\Z``."""
    import random
    import re

    from verifiers.integrity.row_values import _leaf

    pattern = re.compile(rb"\A[0-9a-f]{64}\Z")
    rng = random.Random(7)
    alphabet = b"0123456789abcdefABCDEFgz \n\x00\xff"
    cases: list[object] = [b"a" * 64, b"A" * 64, b"0" * 63, b"0" * 65, b"0" * 63 + b"\n"]
    cases += ["a" * 64, None, 7, bytearray(b"a" * 64), b"0" * 62 + b"fF"]
    cases += [bytes(rng.choice(alphabet) for _ in range(64)) for _ in range(5000)]
    for value in cases:
        expected = None
        if isinstance(value, bytes) and type(value) is bytes and pattern.match(value):
            expected = bytes.fromhex(value.decode())
        assert _leaf(value) == expected, value
