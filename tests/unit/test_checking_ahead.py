"""Batch records in clear checked ahead of the event loop in a worker process (ADR 0042),
with real worker processes: the gate chains and refuses exactly what it would have
checked itself, never uses an answer it cannot check, and checks records itself when
the worker is killed or answers something that does not fit."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from careledger.storage.kinds import ACCESS
from careledger_core.batch_record import (
    open_batch_record,
    read_checked_batch_record,
    read_opened_batch_record,
)
from careledger_core.errors import CareledgerError
from careledger_core.event import EVENT_SCHEMA, canonical_event_bytes, decode_and_canonicalize
from careledger_core.event_batch import AccessColumns, read_access_columns
from careledger_core.source import SourceEnvelopeError
from processors import sources
from processors.opening_ahead import CheckResult, OpenAhead, check_record, decode_check
from producers.simulator import HospitalModel, simulate
from tests.unit.test_batch_chaining import NOW, forged, gate_for, record
from tests.unit.test_sealed_gate import EVENTS, _sealed_record

MAX = 65536
PAYLOADS = [canonical_event_bytes(e) for e in simulate(HospitalModel(seed=4), count=60, seed=4)]


@pytest.fixture(scope="module")
def ahead() -> Iterator[OpenAhead]:
    pool = OpenAhead(None, MAX)
    assert pool.start()
    yield pool
    pool.close()


def _reindented(data: bytes) -> bytes:
    return json.dumps(json.loads(data), indent=1).encode()


def _bad_action(data: bytes) -> bytes:
    doc = json.loads(data)
    doc["action"] = "X"
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _bad_event_id(data: bytes) -> bytes:
    """Readable columns, but not a valid event: only a full validation refuses it."""
    doc = json.loads(data)
    doc["event_id"] = "not-a-uuid"
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _records() -> list[tuple[str, bytes]]:
    """Valid and hostile batch records in clear (each with its own sequence numbers),
    and records the gate refuses whole."""
    out = [("valid", record(PAYLOADS[:12], first_seq=1))]
    seq = 100
    for at in (0, 6, 11):
        for name, edit in (
            ("not canonical", _reindented),
            ("a bad action", _bad_action),
            ("a bad event id", _bad_event_id),
        ):
            events = list(PAYLOADS[:12])
            events[at] = edit(events[at])
            out.append((f"event {at}: {name}", record(events, first_seq=seq)))
            seq += 100
    swapped = json.loads(record(PAYLOADS[:6], first_seq=seq))
    swapped["events"][0], swapped["events"][1] = swapped["events"][1], swapped["events"][0]
    out.append(("not the signed batch", json.dumps(swapped, separators=(",", ":")).encode()))
    out.append(("sealed events", _sealed_record(EVENTS[:4])))
    out.append(("not a batch record", b'{"schema":"careledger.signed-batch/1"}'))
    return out


def _admit(gate: sources.SourceGate, value: bytes, max_event_bytes: int = MAX) -> Any:
    """What the gate admits of ``value``: each event as it is stored and the refused
    ones, or the error that refuses the record whole."""
    try:
        admitted = gate.admit_batch(value, NOW, ("events", 7), max_event_bytes=max_event_bytes)
    except CareledgerError as exc:
        return type(exc).__name__, getattr(exc, "code", "")
    stored = [
        (
            ACCESS.values(ev.event),
            ACCESS.record_id(ev.event),
            ACCESS.time_of(ev.event),
            ev.canonical,
            ev.leaf_hash,
            ev.attestation,
            ev.batch,
            ev.batch_index,
        )
        for ev in admitted.events
    ]
    refused = [(r.index, r.value, r.code, r.reason, r.field) for r in admitted.refused]
    return stored, refused


def _helped(ahead: Any) -> sources.SourceGate:
    gate = gate_for()
    gate.ahead = ahead
    return gate


def test_records_checked_ahead_are_chained_and_refused_exactly_as_the_loop_would(
    ahead: OpenAhead, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _records()
    expected = [_admit(gate_for(), value) for _, value in records]
    opened_in_loop: list[bytes] = []
    real = sources.open_batch_record

    def counting(value: bytes) -> Any:
        opened_in_loop.append(value)
        return real(value)

    monkeypatch.setattr(sources, "open_batch_record", counting)
    disagreements = ahead.disagreements  # the pool is the module's
    checked = 0
    for (what, value), want in zip(records, expected, strict=True):
        gate = _helped(ahead)
        gate.prefetch([value])
        assert _admit(gate, value) == want, what
        gate.forget_ahead()
        checked += gate.checked_ahead
    # the valid record's events were checked by the worker alone; records with a bad
    # event were opened by the worker and taken one by one in the loop, which names
    # each problem; the worker answers nothing for what it cannot open (the loop says why)
    assert checked == 12
    refused_whole = {"not the signed batch", "sealed events", "not a batch record"}
    assert sorted(opened_in_loop) == sorted(v for w, v in records if w in refused_whole)
    assert ahead.disagreements == disagreements and ahead.restarts == 0


def test_the_worker_refuses_what_it_cannot_check() -> None:
    assert check_record(b"not a batch record", MAX) is None
    assert check_record(_sealed_record(EVENTS[:3]), MAX) is None  # nothing in clear
    value = record(PAYLOADS[:3])
    digest = hashlib.sha256(value).digest()
    leaves = list(open_batch_record(value).leaf_hashes)
    assert decode_check(check_record(value, MAX) or b"") == (digest, leaves, True)
    # one event over the worker's limit: not valid
    small = max(map(len, PAYLOADS[:3])) - 1
    assert decode_check(check_record(value, small) or b"") == (digest, leaves, False)
    assert decode_check(b"\x93\x01\x02") is None and decode_check(b"") is None


class _Forger:
    """A worker's answer replaced (what a bug or a mix-up would send)."""

    def __init__(self, answer: CheckResult | None) -> None:
        self.answer = answer
        self.disagreements = 0

    def submit(self, records: object) -> None:
        pass

    def clear(self) -> None:
        pass

    def checked(self, record: bytes) -> CheckResult | None:
        return self.answer


def _answer(value: bytes) -> CheckResult:
    answer = decode_check(check_record(value, MAX) or b"")
    assert answer is not None
    return answer


FORGERIES = {
    "every leaf another record's": lambda a: (a[0], [bytes(32)] * len(a[1]), a[2]),
    "one leaf short": lambda a: (a[0], a[1][:-1], a[2]),
    "one leaf too many": lambda a: (a[0], [*a[1], a[1][0]], a[2]),
    "a leaf of 31 bytes": lambda a: (a[0], [a[1][0][:31], *a[1][1:]], a[2]),
    "about other bytes": lambda a: (bytes(32), a[1], a[2]),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_an_answer_that_does_not_fit_the_record_is_not_used(forgery: str) -> None:
    value = record(PAYLOADS[:8])
    forger = _Forger(FORGERIES[forgery](_answer(value)))
    assert _admit(_helped(forger), value) == _admit(gate_for(), value)
    assert forger.disagreements == 1


def test_wrong_leaves_are_refused_when_the_loops_spot_check_lands_on_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop recomputes one leaf, drawn at random: two leaves swapped by a worker are
    refused when the draw lands on either (here forced); otherwise they are what the
    loop takes on trust from the worker, as a sealed ledger's loop does (ADR 0039), and
    ``verify`` recomputes every leaf from the stored bytes (ADR 0042)."""
    value = record(PAYLOADS[:8])
    digest, leaves, valid = _answer(value)
    swapped = [leaves[1], leaves[0], *leaves[2:]]
    for spot in (0, 1):
        monkeypatch.setattr(sources.secrets, "randbelow", lambda n, spot=spot: spot)
        forger = _Forger((digest, swapped, valid))
        assert _admit(_helped(forger), value) == _admit(gate_for(), value)
        assert forger.disagreements == 1


def test_a_worker_that_calls_invalid_events_valid_is_caught_by_the_loops_spot_check() -> None:
    """Every event readable but invalid (an event id that is not a UUID): a worker that
    calls them valid would have them chained on its word; the event the loop validates
    itself, drawn at random, refuses the answer, and the loop names each problem."""
    value = record([_bad_event_id(p) for p in PAYLOADS[:5]])
    assert read_access_columns(open_batch_record(value).events) is not None  # readable
    digest, leaves, valid = _answer(value)
    assert valid is False
    forger = _Forger((digest, leaves, True))
    got = _admit(_helped(forger), value)
    assert got == _admit(gate_for(), value)
    stored, refused = got
    assert stored == [] and len(refused) == 5 and forger.disagreements == 1


def test_a_worker_answer_for_another_record_is_refused_as_the_loop_would() -> None:
    """A genuine answer given for a copy whose first two events were swapped: not the
    signed batch, quarantined BAD_PROOF as the loop alone would. The answer names the
    bytes it is about, so this never depends on which leaf the loop recomputes."""
    value = record(PAYLOADS[:6])
    opened = open_batch_record(value)
    swapped = forged(
        opened.statement,
        opened.signature,
        [opened.events[1], opened.events[0], *opened.events[2:]],
    )
    forger = _Forger(_answer(value))
    assert _admit(gate_for(), swapped) == ("SourceAuthError", "BAD_PROOF")
    assert _admit(_helped(forger), swapped) == ("SourceAuthError", "BAD_PROOF")
    assert forger.disagreements == 1


def test_events_over_the_loops_size_limit_are_never_taken_from_the_worker(
    ahead: OpenAhead,
) -> None:
    value = record(PAYLOADS[:4], first_seq=9000)
    small = max(map(len, PAYLOADS[:4])) - 1
    gate = _helped(ahead)
    gate.prefetch([value])
    got = _admit(gate, value, max_event_bytes=small)
    assert got == _admit(gate_for(), value, max_event_bytes=small)
    assert "EVENT_TOO_LARGE" in {r[2] for r in got[1]} and gate.checked_ahead == 0


def test_a_killed_worker_makes_the_loop_check_records_itself() -> None:
    pool = OpenAhead(None, MAX)
    try:
        assert pool.start()
        assert pool._pool is not None
        for process in pool._pool.processes:
            assert process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
        time.sleep(0.5)
        value = record(PAYLOADS[:7], first_seq=7000)
        gate = _helped(pool)
        gate.prefetch([value])
        assert _admit(gate, value) == _admit(gate_for(), value)
        gate.forget_ahead()
        assert pool.restarts == 1 and not pool.running and gate.checked_ahead == 0
    finally:
        pool.close()


# --------------------------------------------------------------------------- the core


def test_the_columns_read_are_the_events_stored_columns() -> None:
    columns = read_access_columns(PAYLOADS)
    assert columns is not None
    events = [decode_and_canonicalize(p)[0] for p in PAYLOADS]
    assert [ACCESS.values(c) for c in columns] == [ACCESS.values(e) for e in events]
    assert all(c.schema == EVENT_SCHEMA for c in columns)
    assert read_access_columns([]) == []
    for hostile in (b"", b"1", b"{}", b'{"schema":"careledger.sealed-event/1"}', b"[" * 5000):
        assert read_access_columns([PAYLOADS[0], hostile]) is None, hostile[:20]
    # two entries that join into one object are not two events
    half = len(PAYLOADS[0]) // 2
    assert read_access_columns([PAYLOADS[0][:half], PAYLOADS[0][half:]]) is None
    assert msgspec.structs.fields(AccessColumns)  # a Struct, as the rows read it


def test_a_record_read_again_must_be_in_clear_and_fit_the_leaves() -> None:
    value = record(PAYLOADS[:3])
    opened = open_batch_record(value)
    again = read_checked_batch_record(value, opened.leaf_hashes)
    assert again == opened
    with pytest.raises(SourceEnvelopeError):
        read_checked_batch_record(value, opened.leaf_hashes[:2])
    sealed = _sealed_record(EVENTS[:3])
    leaves = open_batch_record(sealed).leaf_hashes
    with pytest.raises(SourceEnvelopeError):  # sealed: not read as a record in clear
        read_checked_batch_record(sealed, leaves)
    with pytest.raises(SourceEnvelopeError):  # and one in clear not as a sealed one
        read_opened_batch_record(value, opened.leaf_hashes)
