"""The auditor's SQL on both engines: ClickHouse 18.16 (the real server) and current
ClickHouse (chDB). Chains are written with the real chainer and ``ChainStore``; the
range audit, its replay, the follow loop and the alert status book then run on them."""

from __future__ import annotations

import hashlib
import signal
import uuid
from collections.abc import Iterator

import pytest

from careledger.config import Settings
from careledger.storage.backend import ChdbBackend, ClickHouseBackend, SqlBackend
from careledger.storage.kinds import ACCESS, REFERENCE
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import ChainStore, SealedBlock, event_rows, row_columns
from careledger_core.event import canonical_event_bytes
from careledger_core.reference import canonical_reference_bytes
from careledger_core.signing import SigningKey
from processors.chainer import PartitionChain
from tests.unit.test_auditor_rules import at, event, hospital, relationship
from verifiers.auditor.alerts_cli import AlertBook, verify_history
from verifiers.auditor.runner import DECISION_COLUMNS, AuditStore, Follower, audit_range

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger audit storage test").digest())
EVENTS = "o/careledger.access-events/0"
DIRECTORY = "o/careledger.workforce/0"
SALT = "storage-test-salt"


@pytest.fixture(params=["clickhouse-18.16", "chdb-current"])
def backend(request: pytest.FixtureRequest) -> Iterator[SqlBackend]:
    if request.param.startswith("clickhouse"):
        settings: Settings = request.getfixturevalue("stack")
        b: SqlBackend = ClickHouseBackend.from_settings(settings)
    else:
        b = ChdbBackend()
    yield b
    b.close()


@pytest.fixture
def stores(backend: SqlBackend) -> Iterator[tuple[ChainStore, AuditStore]]:
    db = f"careledger_au_{uuid.uuid4().hex[:10]}"
    migrate_backend(backend, db)
    topics = frozenset({"careledger.workforce"})
    yield ChainStore(backend, db, topics), AuditStore(backend, db, topics)
    backend.execute(f"DROP DATABASE IF EXISTS {db}")


def _chain(chain_id: str, payloads: list[bytes], per_block: int, reference: bool) -> list:
    chain = PartitionChain.resume(
        chain_id, None, 65536, earliest_offset=0, kind=REFERENCE if reference else ACCESS
    )
    blocks: list[SealedBlock] = []
    for offset, value in enumerate(payloads):
        chain.add(offset, value, None, 0.0, 0.0)
        if len(chain.pending) == per_block:
            block = chain.seal(KEY, now=1_800_000_000.0 + offset)
            assert block is not None
            blocks.append(block)
    return blocks


def test_range_audit_replay_follow_and_status_on_both_engines(
    stores: tuple[ChainStore, AuditStore],
) -> None:
    chains, audit = stores
    refs = [canonical_reference_bytes(r) for r in hospital()]
    chains.write_blocks(_chain(DIRECTORY, refs, len(refs), reference=True))
    events = [event("N1", "P1", at(0))] + [
        event("M1", f"P{2 + i % 2}", at(1 + i)) for i in range(6)
    ]
    blocks = _chain(EVENTS, [canonical_event_bytes(e) for e in events], 1, reference=False)
    chains.write_blocks(blocks[:4])

    # follow: what is committed now, then the rest when it lands
    follower = Follower(audit, salt=SALT)
    assert follower.cycle() == 4
    chains.write_blocks(blocks[4:])
    assert follower.cycle() == 3
    assert follower.cycle() == 0
    assert audit.decided_heights() == {EVENTS: len(events) - 1}

    # a range audit replaces the follow run's rows with its own, twice the same way
    results = [audit_range(audit, at(-60), at(60), salt=SALT) for _ in range(2)]
    assert results[0].decisions == len(events) and results[0].alerts >= 1
    db = audit.db
    rows = audit.backend.execute(
        f"SELECT event_id, chain_id, height, idx, explanation_kind, flags, audit_run "
        f"FROM {db}.access_decisions ORDER BY occurred_at, event_id"
    )
    assert len(rows) == len(events)
    assert rows[0][0].decode() == events[0].event_id and rows[0][4] == b"relationship"
    assert {r[6] for r in rows} == {results[0].audit_run.encode()}
    book = AlertBook(audit.backend, db)
    alerts = book.alerts()
    burst = [a for a in alerts if a["rule"] == "NO_EXPLANATION" and a["actor_id"] == "M1"]
    assert len(burst) == 1 and len(burst[0]["event_ids"]) == 6
    assert audit.alert_fingerprints(at(-60), at(60)).keys() == {a["alert_id"] for a in alerts}
    assert audit.horizon() == events[-1].occurred_at

    # a follower resuming after the range warms its windows up and decides nothing twice
    resumed = Follower(audit, salt=SALT)
    assert resumed.cycle() == 0 and resumed.warmed == len(events)
    assert audit.last_decided_time() == events[-1].occurred_at

    # status changes, hash-linked; a resolved alert is a confirmed violation
    aid = burst[0]["alert_id"]
    book.change(aid, "acknowledged", "privacy-officer", "")
    book.change(aid, "resolved", "privacy-officer", "confirmed snooping")
    history = book.history([aid])[aid]
    assert [h["status"] for h in history] == ["acknowledged", "resolved"]
    assert verify_history(history)
    assert audit.confirmed_violations() == [("M1", "2026-11-02T09:06:00.000001Z")]

    # an insider edits the note of the first change: the hash links no longer hold
    audit.backend.execute(
        f"ALTER TABLE {db}.alert_status UPDATE note = 'nothing to see' "
        "WHERE alert_id = %(id)s AND seq = 0",
        {"id": aid},
    )
    audit.wait_mutations()
    tampered = book.history([aid])[aid]
    assert tampered[0]["note"] == "nothing to see"
    assert not verify_history(tampered)


def test_replay_keeps_each_decisions_reference_knowledge_on_both_engines(
    stores: tuple[ChainStore, AuditStore],
) -> None:
    """A care relationship ledgered after the range was audited, but effective (and
    claiming to be recorded) before the access: the replay decides as before, the
    reconsidered run with it."""
    chains, audit = stores
    directory = hospital()
    chain = PartitionChain.resume(DIRECTORY, None, 65536, earliest_offset=0, kind=REFERENCE)
    for offset, rec in enumerate(directory):
        chain.add(offset, canonical_reference_bytes(rec), None, 0.0, 0.0)
    directory_block = chain.seal(KEY, now=1_800_000_000.0)
    assert directory_block is not None
    chains.write_blocks([directory_block])
    snoop, treated = event("M1", "P2", at(0)), event("N1", "P1", at(1))
    chains.write_blocks(
        _chain(EVENTS, [canonical_event_bytes(e) for e in (snoop, treated)], 2, reference=False)
    )
    known_then = directory_block.header.created_at
    columns = [c for c in DECISION_COLUMNS if c != "decided_at"]

    def decisions() -> list[dict[str, object]]:
        rows = audit.backend.execute(
            f"SELECT {', '.join(columns)} FROM {audit.db}.access_decisions "
            "ORDER BY occurred_at, event_id, amends"
        )
        return [dict(zip(columns, r, strict=True)) for r in rows]

    first = audit_range(audit, at(-60), at(60), salt=SALT)
    assert first.reference_known_at == known_then
    rows = decisions()
    assert [r["reference_known_at"] for r in rows] == [known_then.encode()] * 2
    assert rows[0]["event_id"] == snoop.event_id.encode()
    assert b"NO_EXPLANATION" in rows[0]["flags"]  # type: ignore[operator]

    # a day later: M1 treats P2, effective (and, the envelope claims, recorded) long before
    late = relationship("CT-P2-M1", "P2", practitioner_id="M1")
    assert late.recorded_at < snoop.occurred_at
    chain.add(len(directory), canonical_reference_bytes(late), None, 0.0, 0.0)
    late_block = chain.seal(KEY, now=1_800_086_400.0)
    assert late_block is not None
    chains.write_blocks([late_block])

    replay = audit_range(audit, at(-60), at(60), salt=SALT)
    assert decisions() == rows, "the replay decides with what each decision knew"
    assert replay.kept_knowledge == 2 and replay.reference_known_at == late_block.header.created_at

    again = audit_range(audit, at(-60), at(60), salt=SALT, reconsider=True)
    assert again.kept_knowledge == 0 and again.alerts < first.alerts
    reconsidered = decisions()
    assert reconsidered[0]["event_id"] == snoop.event_id.encode()
    assert reconsidered[0]["explanation_kind"] == b"relationship"
    assert reconsidered[0]["reference_known_at"] == late_block.header.created_at.encode()
    # and a later replay keeps the reconsidered decisions
    audit_range(audit, at(-60), at(60), salt=SALT)
    assert decisions() == reconsidered

    # migration 5 adds its column once, even if it must run again (a crash before it was
    # recorded, or two migrators at once)
    audit.backend.execute(f"ALTER TABLE {audit.db}.schema_migrations DELETE WHERE version = 5")
    audit.wait_mutations()
    assert migrate_backend(audit.backend, audit.db) == [5]


def test_a_restarted_follower_grows_the_open_alert_on_both_engines(
    stores: tuple[ChainStore, AuditStore],
) -> None:
    # the flags read back at a restart (``flagged_decisions``: the latest version per
    # event, flagged only) make the next flag join the open alert, not open a second
    chains, audit = stores
    refs = [canonical_reference_bytes(r) for r in hospital()]
    chains.write_blocks(_chain(DIRECTORY, refs, len(refs), reference=True))
    events = [event("N1", "P1", at(0))] + [event("M1", "P2", at(1 + i)) for i in range(4)]
    blocks = _chain(EVENTS, [canonical_event_bytes(e) for e in events], 1, reference=False)
    chains.write_blocks(blocks[:4])
    assert Follower(audit, salt=SALT).cycle() == 4
    restored = audit.flagged_decisions(["M1", "N1"], at(-60), at(60), "9999-01-01")
    assert sorted(r[0].decode() for r in restored) == sorted(e.event_id for e in events[1:4])
    assert not audit.flagged_decisions(["M1"], at(-60), at(60), "2000-01-01"), "before"
    assert not audit.flagged_decisions(["N2"], at(-60), at(60), "9999-01-01"), "actors"
    chains.write_blocks(blocks[4:])
    assert Follower(audit, salt=SALT).cycle() == 1
    burst = [
        a
        for a in AlertBook(audit.backend, audit.db).alerts()
        if a["rule"] == "NO_EXPLANATION" and a["actor_id"] == "M1"
    ]
    assert len(burst) == 1 and len(burst[0]["event_ids"]) == 4


def test_events_between_pages_through_ties_and_bounds_on_both_engines(
    stores: tuple[ChainStore, AuditStore],
) -> None:
    """The page reads of a range audit and its replay (a bound on the page's last time,
    then the page under it) give every committed event once, in order, whatever the page
    size: runs of equal times across page ends, two chains interleaved, and an event
    whose block has no header (not committed) left out."""
    chains, audit = stores
    times = [at(0)] * 5 + [at(1)] + [at(2)] * 4 + [at(3 + i) for i in range(6)]
    first = [event("M1", f"P{i % 3}", t) for i, t in enumerate(times)]
    second = [event("N1", f"P{i % 2}", t) for i, t in enumerate(times[::2])]
    blocks = _chain(EVENTS, [canonical_event_bytes(e) for e in first], 2, reference=False)
    other = "o/careledger.access-events/1"
    more = _chain(other, [canonical_event_bytes(e) for e in second], 3, reference=False)
    chains.write_blocks(blocks + more[:-1])
    # the last block of the second chain: its rows without its header (an interrupted write)
    audit.backend.insert(
        f"{audit.db}.access_events", row_columns(ACCESS), event_rows([more[-1]], ACCESS)
    )
    committed = [ev for b in blocks + more[:-1] for ev in b.events]
    expected = sorted(
        (ev.event.occurred_at, b.header.chain_id, b.header.height, i)
        for b in blocks + more[:-1]
        for i, ev in enumerate(b.events)
    )
    assert len(expected) == len(committed)
    for page_size in (1, 2, 3, 4, 5, 7, 100):
        got = [
            (le.event.occurred_at, le.position.chain_id, le.position.height, le.position.idx)
            for le in audit.events_between(at(-60), at(60), page_size=page_size)
        ]
        assert got == expected, page_size
    # a window inside the times: bounded at both ends
    inner = [k for k in expected if at(1) <= k[0] < at(5)]
    got = [le.event.occurred_at for le in audit.events_between(at(1), at(5), page_size=2)]
    assert got == [k[0] for k in inner]


def test_a_time_column_tampered_to_bytes_that_are_not_utf8_does_not_hang_the_pages(
    stores: tuple[ChainStore, AuditStore],
) -> None:
    """An attacker with write access to ClickHouse rewrites one event's ``occurred_at``
    with a byte that is not UTF-8: the time read back no longer equals the stored one, so
    a page bound on it comes back short. The pages are then read as they always were:
    the read ends, and every page size gives what one large page gives (verify reports
    the column itself: its side-column checks)."""
    chains, audit = stores
    events = [event("M1", f"P{i % 3}", at(i // 3)) for i in range(15)]
    chains.write_blocks(_chain(EVENTS, [canonical_event_bytes(e) for e in events], 3, False))
    audit.backend.execute(
        f"ALTER TABLE {audit.db}.access_events UPDATE "
        "occurred_at = concat(substring(occurred_at, 1, 10), unhex('FF'), "
        "substring(occurred_at, 12)) WHERE height = 2 AND idx = 1"
    )
    audit.wait_mutations()
    tampered = audit.backend.execute(
        f"SELECT occurred_at FROM {audit.db}.access_events WHERE height = 2 AND idx = 1"
    )
    assert b"\xff" in tampered[0][0]
    # the rewritten time sorts after the day's others ("2026-11-02\xff..."): a range to
    # the next day holds it, last, and a page bound on it comes back short
    lo, hi = at(-60), "2026-11-03T00:00:00.000000Z"
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the page reads hung"))
    signal.alarm(60)
    try:
        whole = [le.position for le in audit.events_between(lo, hi, page_size=1000)]
        for page_size in (1, 2, 3, 4, 5):
            got = [le.position for le in audit.events_between(lo, hi, page_size)]
            assert got == whole, page_size
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert len(whole) == len(events) and whole[-1].height == 2 and whole[-1].idx == 1
