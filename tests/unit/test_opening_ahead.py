"""Sealed batch records opened ahead of the event loop in a worker process (ADR 0039),
with real worker processes and a real SoftHSM2 token: the loop chains and refuses exactly
what it would have opened itself, never uses a result it cannot check, and opens records
itself when the worker is killed, hangs or sends results that do not fit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from careledger.keystore import KeyStore, local_token
from careledger.storage.kinds import SEALED
from careledger.storage.store import BatchInfo
from careledger_core.batch_record import open_batch_record
from careledger_core.event import canonical_event_bytes
from careledger_core.source import SourceAuthError
from processors import sources
from processors.opening_ahead import AheadResult, OpenAhead, decode_result, open_record
from processors.sealing import EventOpener
from tests.softhsm import softhsm_dir
from tests.unit.test_batch_chaining import NOW, gate_for, record
from tests.unit.test_sealed_gate import EVENTS, KEY, _sealed_record

MAX = 65536


@pytest.fixture
def keystore() -> Iterator[KeyStore]:
    store = KeyStore(local_token(softhsm_dir(), f"a{uuid.uuid4().hex[:12]}"), create=True)
    yield store
    store.close()


@pytest.fixture(scope="module")
def ahead() -> Iterator[OpenAhead]:
    pool = OpenAhead(KEY.private, MAX)
    assert pool.start()
    yield pool
    pool.close()


def _reindent(at: int) -> Callable[[list[bytes]], None]:
    def edit(documents: list[bytes]) -> None:
        documents[at] = json.dumps(json.loads(documents[at]), indent=1).encode()

    return edit


def _named(at: int) -> Callable[[list[bytes]], None]:
    def edit(documents: list[bytes]) -> None:
        doc = json.loads(documents[at])
        doc["actor"]["id"] = "dr.house"
        documents[at] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    return edit


def _records() -> list[tuple[str, bytes]]:
    """Valid and hostile sealed batch records, the hostile entry at several positions."""
    out = [("valid", _sealed_record(EVENTS[:12]))]
    for i, j in ((0, 1), (3, 11), (5, 6)):
        out.append((f"boxes {i} and {j} swapped", _sealed_record(EVENTS[:12], swap=(i, j))))
    for at in (0, 6, 11):
        reindented = _sealed_record(EVENTS[:12], edit=_reindent(at))
        named = _sealed_record(EVENTS[:12], edit=_named(at))
        out += [(f"document {at} not canonical", reindented), (f"{at} names its actor", named)]
    return out


def _open(opener: EventOpener, value: bytes, max_event_bytes: int = MAX) -> tuple[Any, Any]:
    """What ``opener`` chains of a sealed record, as it is stored (each event's row
    values, bytes, leaf and batch), and what it refuses. An event opened ahead carries
    its document's columns, one opened in the loop the decoded document: the rows must
    be the same."""
    opened = open_batch_record(value)
    info = BatchInfo(opened.statement, opened.signature)
    chained, refused = opener.open_batch(
        info,
        7,
        opened.events,
        opened.leaf_hashes,
        opened.sealed,
        opened.sealed_key,
        max_event_bytes,
        record=value,
    )
    stored = [
        (
            ev.offset,
            SEALED.values(ev.event),
            SEALED.record_id(ev.event),
            SEALED.time_of(ev.event),
            ev.canonical,
            ev.leaf_hash,
            ev.attestation,
            ev.batch,
            ev.batch_index,
        )
        for ev in chained
    ]
    return stored, refused


def test_records_opened_ahead_are_chained_and_refused_exactly_as_the_loop_would(
    keystore: KeyStore, ahead: OpenAhead
) -> None:
    records = _records()
    alone = EventOpener(KEY, keystore)
    helped = EventOpener(KEY, keystore, ahead=ahead)
    helped.prefetch([v for _, v in records])
    for what, value in records:
        expected = _open(alone, value)
        assert _open(helped, value) == expected, what
    helped.forget_ahead()
    # the worker did the opening of every event it could open; the loop none
    assert helped.opened_ahead == alone.opened > 0
    assert alone.refused == helped.refused > 0
    assert ahead.disagreements == 0 and ahead.restarts == 0


def test_a_record_not_handed_over_is_opened_in_the_loop(
    keystore: KeyStore, ahead: OpenAhead
) -> None:
    value = _sealed_record(EVENTS[:5])
    helped = EventOpener(KEY, keystore, ahead=ahead)
    helped.prefetch([_sealed_record(EVENTS[5:9])])
    helped.forget_ahead()  # the take is over: nothing is kept
    assert ahead.result(value) is None
    assert _open(helped, value) == _open(EventOpener(KEY, keystore), value)
    assert helped.opened_ahead == 0 and helped.opened == 5


class _Forger:
    """A worker's answer replaced (what a bug or a mix-up would send)."""

    def __init__(self, result: AheadResult | None) -> None:
        self.result_ = result
        self.disagreements = 0

    def submit(self, records: object) -> None:
        pass

    def clear(self) -> None:
        pass

    def result(self, record: bytes) -> AheadResult | None:
        return self.result_


def _forged(value: bytes, change: str) -> AheadResult:
    data = open_record(value, KEY.private, MAX, {})
    assert data is not None
    result = decode_result(data)
    assert result is not None
    opened, refused, leaves = result
    first: list[Any] = list(opened[0])
    if change == "salt":
        first[1] = bytes(len(first[1]))
    elif change == "body":
        first[2] = opened[1][2]  # another event's sensitive part
    elif change == "missing":
        return (opened[1:], refused, leaves)
    elif change == "twice":
        return ([*opened, opened[0]], refused, leaves)
    elif change == "index":
        first[0] = 99
    elif change == "leaves":  # every leaf hash another record's
        return (opened, refused, [bytes(32)] * len(leaves))
    elif change == "leaf short":
        return (opened, refused, leaves[:-1])
    return ([tuple(first), *opened[1:]], refused, leaves)


CHANGES = ["salt", "body", "missing", "twice", "index", "leaves", "leaf short"]


@pytest.mark.parametrize("through", ["opener", "gate"])
@pytest.mark.parametrize("change", CHANGES)
def test_an_answer_that_does_not_open_the_signed_commitment_or_fit_the_record_is_not_used(
    keystore: KeyStore, change: str, through: str
) -> None:
    """Asked by the opener (the record opened in the loop) or by the gate (the record
    read with the worker's leaves): the loop opens the record itself, alike."""
    use = _open if through == "opener" else _admit
    value = _sealed_record(EVENTS[:6])
    forger = _Forger(_forged(value, change))
    helped = EventOpener(KEY, keystore, ahead=forger)  # type: ignore[arg-type]
    assert use(helped, value) == use(EventOpener(KEY, keystore), value)
    assert forger.disagreements == 1 and helped.opened_ahead == 0


def test_a_worker_answer_that_is_not_a_result_is_not_used() -> None:
    assert decode_result(b"\x93\x01\x02") is None
    assert decode_result(b"") is None
    assert open_record(b"not a batch record", KEY.private, MAX, {}) is None
    # a record in clear has nothing to open ahead
    assert open_record(_clear_record(), KEY.private, MAX, {}) is None


def _clear_record() -> bytes:
    return record([canonical_event_bytes(e) for e in EVENTS[:3]])


def _worker_pids(pool: OpenAhead) -> list[int]:
    executor = pool._pool
    assert executor is not None
    return [p.pid for p in executor.processes if p.pid is not None]


def test_a_killed_worker_makes_the_loop_open_and_the_pool_start_again(
    keystore: KeyStore,
) -> None:
    now = [1000.0]
    pool = OpenAhead(KEY.private, MAX, clock=lambda: now[0])
    try:
        assert pool.start()
        helped = EventOpener(KEY, keystore, ahead=pool)
        alone = EventOpener(KEY, keystore)
        first = _sealed_record(EVENTS[:8])
        for pid in _worker_pids(pool):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        helped.prefetch([first])
        assert _open(helped, first) == _open(alone, first)
        helped.forget_ahead()
        assert pool.restarts == 1 and not pool.running and helped.opened_ahead == 0
        # within the back-off the loop keeps opening records itself
        second = _sealed_record(EVENTS[8:14])
        helped.prefetch([second])
        assert not pool.running
        assert _open(helped, second) == _open(alone, second)
        helped.forget_ahead()
        now[0] += 6.0  # after it, the workers are started again, without the loop
        helped.prefetch([second])  # waiting for the new interpreter: it opens this take
        assert pool.running is False
        assert _open(helped, second) == _open(alone, second)
        helped.forget_ahead()
        assert helped.opened_ahead == 0
        deadline = time.monotonic() + 60
        while not pool.start(wait=False) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bool(pool.running) and pool.restarts == 1
        helped.prefetch([second])  # and the next takes are opened ahead again
        assert _open(helped, second) == _open(alone, second)
        assert helped.opened_ahead == 6
    finally:
        pool.close()


def test_a_worker_that_hangs_is_given_up_after_its_wait(keystore: KeyStore) -> None:
    pool = OpenAhead(KEY.private, MAX, wait_s=1.0)
    try:
        assert pool.start()
        pids = _worker_pids(pool)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        value = _sealed_record(EVENTS[:4])
        helped = EventOpener(KEY, keystore, ahead=pool)
        helped.prefetch([value])
        started = time.monotonic()
        assert _open(helped, value) == _open(EventOpener(KEY, keystore), value)
        assert time.monotonic() - started < 10
        assert pool.restarts == 1 and not pool.running
        # the hung worker is killed, not left holding the ingest key
        deadline = time.monotonic() + 10
        while any(map(_running, pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_running, pids))
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pool.close()


def test_the_workers_exit_when_the_processor_is_killed() -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from processors.opening_ahead import OpenAhead
        pool = OpenAhead(bytes(range(7, 39)), 65536, workers=2)
        assert pool.start()
        print(" ".join(str(p.pid) for p in pool._pool.processes), flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, 0)  # running
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _running(pid)]
    assert alive == [], "workers outlived the killed processor"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped yet: its parent is gone, init reaps it) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_events_over_the_loops_size_limit_are_never_taken_from_the_worker(
    keystore: KeyStore, ahead: OpenAhead
) -> None:
    # the worker opened them under its own limit; the loop's is what counts
    value = _sealed_record(EVENTS[:4])
    small = max(map(len, open_batch_record(value).events)) - 1
    helped = EventOpener(KEY, keystore, ahead=ahead)
    helped.prefetch([value])
    before = ahead.disagreements
    got = _open(helped, value, max_event_bytes=small)
    assert got == _open(EventOpener(KEY, keystore), value, max_event_bytes=small)
    _, refused = got
    assert "EVENT_TOO_LARGE" in {r[2] for r in refused}
    assert ahead.disagreements == before + 1 and helped.opened_ahead == 0


# --------------------------------------------------------------------------- the gate


def _admit(opener: EventOpener, value: bytes) -> tuple[Any, Any]:
    """What a sealed ledger's gate admits of ``value`` with ``opener``: each event as it
    is stored, and the refused ones."""
    gate = gate_for()
    gate.opener = opener
    admitted = gate.admit_batch(value, NOW, ("events", 7), max_event_bytes=MAX)
    stored = [
        (
            SEALED.values(ev.event),
            ev.canonical,
            ev.leaf_hash,
            ev.batch,
            ev.batch_index,
        )
        for ev in admitted.events
    ]
    refused = [(r.index, r.value, r.code, r.reason, r.field) for r in admitted.refused]
    return stored, refused


def test_the_gate_takes_the_worker_leaves_and_admits_exactly_as_the_loop_would(
    keystore: KeyStore, ahead: OpenAhead, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _records()
    alone = EventOpener(KEY, keystore)
    expected = [_admit(alone, value) for _, value in records]
    opened_in_loop: list[bytes] = []
    real = sources.open_batch_record

    def counting(value: bytes) -> Any:
        opened_in_loop.append(value)
        return real(value)

    monkeypatch.setattr(sources, "open_batch_record", counting)
    helped = EventOpener(KEY, keystore, ahead=ahead)
    disagreements = ahead.disagreements  # the pool is the module's
    helped.prefetch([v for _, v in records])
    for (what, value), want in zip(records, expected, strict=True):
        assert _admit(helped, value) == want, what
    helped.forget_ahead()
    # no record was opened (parsed, hashed, root-checked) in the loop: the worker did it
    assert opened_in_loop == []
    assert helped.opened_ahead == alone.opened > 0 and ahead.disagreements == disagreements


def test_a_mixed_up_answer_for_a_record_that_is_not_the_signed_batch_is_refused_bad_proof(
    keystore: KeyStore,
) -> None:
    """The worker's answer for a genuine record, given for a copy whose first two events
    were swapped (not what the statement signs): the loop must not take the worker's
    leaves for these bytes, and refuses the record as it would alone."""
    value = _sealed_record(EVENTS[:6])
    doc = json.loads(value)
    for field in ("events", "sealed"):
        doc[field][0], doc[field][1] = doc[field][1], doc[field][0]
    swapped = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    with pytest.raises(SourceAuthError) as alone:
        _admit(EventOpener(KEY, keystore), swapped)
    assert alone.value.code == "BAD_PROOF"
    data = open_record(value, KEY.private, MAX, {})
    assert data is not None
    forger = _Forger(decode_result(data))
    with pytest.raises(SourceAuthError) as helped:
        _admit(EventOpener(KEY, keystore, ahead=forger), swapped)  # type: ignore[arg-type]
    assert helped.value.code == "BAD_PROOF" and forger.disagreements == 1
