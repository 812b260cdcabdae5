"""A restarted ``audit --follow`` groups flags into alerts as if it had never stopped.

Found by the fresh-clone CI (``test_audit_follow_killed_mid_stream_...``): the follower
kept the flags it groups (the last 25 hours of each actor's flagged decisions) in memory
only. After a restart, an actor's next flag started a new alert next to the open one;
killed between storing a cycle's alerts and its decisions (ADR 0029's commit order), the
cycle decided again put the same (rule, event) into two alerts. A restarted follower now
reads the flagged decisions of the regrouping span back from the store.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tests.unit.test_audit_runner import SALT, MemoryStore, Published
from tests.unit.test_auditor_rules import at, event, hospital
from verifiers.auditor.runner import ALERT_COLUMNS, Follower

CHAIN = "o/careledger.access-events/4"
_A = {name: i for i, name in enumerate(ALERT_COLUMNS)}


class Crash(BaseException):
    """The process dies here."""


class DiesStoringDecisions(MemoryStore):
    """Dies before storing the decisions of its ``n``-th cycle (after its alerts)."""

    def __init__(self, base: MemoryStore, n: int) -> None:
        self.__dict__.update(base.__dict__)
        self.n = n
        self.calls = 0

    def insert_decisions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise Crash
        super().insert_decisions(rows)


def _stored_alerts(store: MemoryStore) -> dict[str, tuple[str, list[str]]]:
    """alert id -> (rule, event ids), the latest version of each (FINAL)."""
    latest: dict[str, tuple[Any, ...]] = {}
    for row in sorted(store.alerts, key=lambda r: r[_A["version"]]):
        latest[row[_A["alert_id"]]] = row
    return {aid: (row[_A["rule"]], json.loads(row[_A["event_ids"]])) for aid, row in latest.items()}


def _flagged_twice(store: MemoryStore) -> list[tuple[str, str]]:
    per_rule = Counter((rule, eid) for rule, ids in _stored_alerts(store).values() for eid in ids)
    return [key for key, n in per_rule.items() if n > 1]


def test_a_restarted_follower_keeps_growing_the_open_alert() -> None:
    store = MemoryStore(hospital())
    first_out, second_out = Published(), Published()
    first = Follower(store, salt=SALT, publisher=first_out)  # type: ignore[arg-type]
    store.add_block(CHAIN, [event("M1", "P2", at(1 + i)) for i in range(3)])
    first.cycle()
    (opened,) = {a for a, doc in first_out.sent if doc["rule"] == "NO_EXPLANATION"}
    # restart; M1's next unexplained access is 10 minutes later: the same alert
    store.add_block(CHAIN, [event("M1", "P2", at(13))])
    second = Follower(store, salt=SALT, publisher=second_out)  # type: ignore[arg-type]
    assert second.cycle() == 1
    grown = [doc for _a, doc in second_out.sent if doc["rule"] == "NO_EXPLANATION"]
    assert [d["alert_id"] for d in grown] == [opened], "a second alert was opened"
    assert len(grown[0]["event_ids"]) == 4
    assert not _flagged_twice(store)


def test_a_follower_killed_between_its_alerts_and_its_decisions_flags_no_event_twice() -> None:
    base = MemoryStore(hospital())
    dying = DiesStoringDecisions(base, n=2)
    first = Follower(dying, salt=SALT, publisher=Published())  # type: ignore[arg-type]
    dying.add_block(CHAIN, [event("M1", "P2", at(1 + i)) for i in range(3)])
    first.cycle()
    dying.add_block(CHAIN, [event("M1", "P2", at(5 + i)) for i in range(3)])
    try:
        first.cycle()
        raise AssertionError("the second cycle's decisions were stored")
    except Crash:
        pass
    assert len(dying.decisions) == 3  # the second cycle's alerts are stored, not its decisions
    second = Follower(dying, salt=SALT, publisher=Published())  # type: ignore[arg-type]
    assert second.cycle() == 3, "the undecided cycle is decided again"
    assert not _flagged_twice(dying), "an event is in two alerts of one rule"
    alerts = [ids for rule, ids in _stored_alerts(dying).values() if rule == "NO_EXPLANATION"]
    assert alerts == [alerts[0]] and len(alerts[0]) == 6


def test_an_actor_quiet_for_longer_than_the_window_opens_a_new_alert_after_a_restart() -> None:
    store = MemoryStore(hospital())
    first = Follower(store, salt=SALT, publisher=Published())  # type: ignore[arg-type]
    store.add_block(CHAIN, [event("M1", "P2", at(1 + i)) for i in range(3)])
    first.cycle()
    store.add_block(CHAIN, [event("M1", "P2", at(200))])  # over an hour later
    out = Published()
    Follower(store, salt=SALT, publisher=out).cycle()  # type: ignore[arg-type]
    (doc,) = [d for _a, d in out.sent if d["rule"] == "NO_EXPLANATION"]
    assert len(doc["event_ids"]) == 1
    kept = [ids for rule, ids in _stored_alerts(store).values() if rule == "NO_EXPLANATION"]
    assert sorted(map(len, kept)) == [1, 3], "the quiet actor's old alert took the new flag"
