"""A follower catching up a backlog reads it a bounded cycle at a time
(``max_cycle_events``, ``careledger audit --follow --max-cycle-events``): the oldest
blocks first by their signed time, every chain a gapless part, and ``verify`` replays the
cycles from the run's rows, intact (ADR 0045)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.audit_ledger import SALT, AuditedLedger, chdb_audited
from tests.unit.test_auditor_rules import at, event
from tests.unit.test_cli_honesty import _one_line_exit_2, _run
from verifiers.auditor.runner import Follower
from verifiers.auditor.runner.follow import ReadBatch, _capped
from verifiers.auditor.runner.pipeline import FollowPipeline


class Blocks:
    """A source that says its blocks' sizes and times (``AuditStore.blocks_above``)."""

    def __init__(self, blocks: list[tuple[str, int, int, str]]) -> None:
        self.blocks = blocks

    def blocks_above(
        self, ranges: Mapping[str, tuple[int, int]]
    ) -> list[tuple[str, int, int, str]]:
        return [
            b for b in self.blocks if b[0] in ranges and ranges[b[0]][0] < b[1] <= ranges[b[0]][1]
        ]


BLOCKS = [  # two chains, their blocks' times interleaved
    ("a", 0, 10, "t01"),
    ("a", 1, 10, "t03"),
    ("a", 2, 10, "t05"),
    ("b", 0, 10, "t02"),
    ("b", 1, 10, "t04"),
    ("b", 2, 10, "t06"),
]


def test_a_poll_is_cut_to_the_oldest_blocks_of_all_chains_together() -> None:
    ranges = {"a": (-1, 2), "b": (-1, 2)}
    store = Blocks(BLOCKS)
    assert _capped(store, ranges, 60) == ranges  # it all fits
    assert _capped(store, ranges, 30) == {"a": (-1, 1), "b": (-1, 0)}  # t01, t02, t03
    assert _capped(store, ranges, 25) == {"a": (-1, 1), "b": (-1, 0)}  # a block is whole
    assert _capped(store, ranges, 1) == {"a": (-1, 0)}  # at least one block
    assert _capped(store, {"a": (0, 2), "b": (1, 2)}, 10) == {"a": (0, 1)}
    assert _capped(object(), ranges, 1) == ranges  # (no sizes known: read whole)  # type: ignore[arg-type]


def test_a_cut_never_leaves_a_gap_nor_stalls() -> None:
    ranges = {"a": (-1, 2), "b": (-1, 2)}
    # chain a's block 1 is missing from the list: a stops before it
    store = Blocks([b for b in BLOCKS if b[:2] != ("a", 1)])
    assert _capped(store, ranges, 40) == {"a": (-1, 0), "b": (-1, 1)}
    # a signed time out of order on a chain: still a gapless part of it
    store = Blocks([("a", 0, 10, "t09"), ("a", 1, 10, "t01")])
    assert _capped(store, {"a": (-1, 1)}, 10) == {"a": (-1, 1)}  # the gap: read whole


@pytest.fixture
def ledger() -> Iterator[AuditedLedger]:
    with chdb_audited("fb") as ledger:
        yield ledger


def test_a_follower_catching_up_reads_its_backlog_a_bounded_cycle_at_a_time_and_replays_intact(
    ledger: AuditedLedger,
) -> None:
    for minute in range(600, 660, 6):  # ten blocks of two accesses
        ledger.commit(event("N1", "P1", at(minute)), event("M1", "P2", at(minute + 1)))
    [(backlog,)] = ledger.sql(
        "SELECT count() FROM {db}.access_events WHERE event_id NOT IN "
        "(SELECT event_id FROM {db}.access_decisions)"
    )
    assert backlog >= 20
    follower = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts, max_cycle_events=5)
    made = []
    while (n := follower.cycle()) or not made:
        made.append(n)
    assert sum(made) == backlog
    assert len(made) >= 4 and max(made) <= 6, made  # 5 events, a block being whole
    [(times,)] = ledger.sql(
        "SELECT uniqExact(decided_at) FROM {db}.access_decisions WHERE audit_run = %(r)s",
        {"r": follower.run_id},
    )
    assert times == len(made)
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]
    assert result.summary["runs"]["follow"] == 1


def test_a_negative_cycle_size_is_refused_in_one_line(tmp_path: Path) -> None:
    result = _run(tmp_path, "audit", "--follow", "--max-cycle-events", "-1")
    line = _one_line_exit_2(result, "audit")
    assert "--max-cycle-events" in line


def test_the_follow_pipeline_merges_polls_into_cycles_no_larger_than_the_cap(
    ledger: AuditedLedger,
) -> None:
    """``audit --follow`` runs the follower in three threads (``FollowPipeline``), whose
    reader polls ahead while a cycle is decided: the polls read since are merged into
    one cycle only up to ``max_cycle_events``, the rest left for the next cycle."""
    for minute in range(600, 660, 6):
        ledger.commit(event("N1", "P1", at(minute)), event("M1", "P2", at(minute + 1)))
    [(backlog,)] = ledger.sql(
        "SELECT count() FROM {db}.access_events WHERE event_id NOT IN "
        "(SELECT event_id FROM {db}.access_decisions)"
    )
    follower = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts, max_cycle_events=5)
    pipeline = FollowPipeline(follower, interval_s=0.001)
    pipeline.start()
    made: list[int] = []
    try:
        time.sleep(0.5)  # the reader is ahead: polls are queued
        deadline = time.monotonic() + 60
        while sum(made) < backlog and time.monotonic() < deadline:
            if n := pipeline.step(1.0):
                made.append(n)
    finally:
        assert pipeline.close()
    assert sum(made) == backlog and len(made) >= 4 and max(made) <= 6, made
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]


class Deciding:
    """What ``FollowPipeline.step`` asks of a follower: each cycle's size is recorded."""

    def __init__(self, cap: int | None) -> None:
        self.max_cycle_events = cap
        self.store = None
        self.cycles: list[int] = []

    def decide(self, batch: ReadBatch) -> int:
        self.cycles.append(len(batch.events))
        return len(batch.events)

    def take_writes(self) -> list[object]:
        return []


def polls(*sizes: int) -> list[ReadBatch]:
    return [ReadBatch({"c": i}, [], [object()] * n) for i, n in enumerate(sizes)]  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("cap", "queued", "cycles"),
    [
        (5, (2, 2, 2), [4, 2]),  # the third poll would pass the cap: the next cycle's
        (5, (7, 1), [7, 1]),  # one poll larger than the cap is a cycle of its own
        (None, (2, 2, 2), [6]),  # no cap: everything read since, at once
    ],
)
def test_a_cycle_merges_the_polls_read_since_up_to_the_cap(
    cap: int | None, queued: tuple[int, ...], cycles: list[int]
) -> None:
    follower = Deciding(cap)
    pipeline = FollowPipeline(follower, interval_s=1.0)  # type: ignore[arg-type]
    pipeline._read = polls(*queued)
    pipeline._polls = 1  # read, not started: the steps decide what is queued
    while pipeline.step(0.01):
        pass
    assert follower.cycles == cycles


def test_the_reader_waits_while_a_cycles_worth_is_queued() -> None:
    pipeline = FollowPipeline(Deciding(5), interval_s=1.0)  # type: ignore[arg-type]
    pipeline._read = polls(2, 2)
    assert not pipeline._queued_full()
    pipeline._read = polls(2, 3)
    assert pipeline._queued_full()
    assert not FollowPipeline(Deciding(None), interval_s=1.0)._queued_full()  # type: ignore[arg-type]
