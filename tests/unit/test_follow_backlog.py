"""A follower catching up a backlog reads it a bounded cycle at a time
(``max_cycle_events``, ``careledger audit --follow --max-cycle-events``): the oldest
blocks first by their signed time, every chain a gapless part, and ``verify`` replays the
cycles from the run's rows, intact (ADR 0045)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.audit_ledger import SALT, AuditedLedger, chdb_audited
from tests.unit.test_auditor_rules import at, event
from tests.unit.test_cli_honesty import _one_line_exit_2, _run
from verifiers.auditor.runner import Follower
from verifiers.auditor.runner.follow import _capped


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
