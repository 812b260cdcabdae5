"""``FollowPipeline`` over an in-memory store: reading, deciding and storing on three
threads decides each event once and stores every cycle, in order, through storage
failures at any step (the crash cases run against the real stack:
tests/integration/test_audit_follow_crash.py)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from careledger.storage.backend import StorageError
from tests.unit.test_audit_runner import SALT, MemoryStore, Published
from tests.unit.test_auditor_rules import at, event, hospital
from verifiers.auditor.runner import DECISION_COLUMNS, Follower
from verifiers.auditor.runner.pipeline import FollowPipeline

CHAIN = "o/careledger.access-events/0"


class Flaky(MemoryStore):
    """Fails the first call of ``failing`` after ``arm()``."""

    def __init__(self, failing: str) -> None:
        super().__init__(hospital())
        self.failing = failing
        self.armed = False

    def _maybe(self, name: str) -> None:
        if self.armed and name == self.failing:
            self.armed = False
            raise StorageError(f"{name}: ClickHouse is down")

    def status_changes(self) -> int:
        self._maybe("status_changes")
        return super().status_changes()

    def insert_alerts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._maybe("insert_alerts")
        super().insert_alerts(rows)

    def insert_decisions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._maybe("insert_decisions")
        super().insert_decisions(rows)


@pytest.mark.parametrize("failing", ["status_changes", "insert_alerts", "insert_decisions"])
def test_the_pipeline_stores_every_cycle_once_through_a_storage_failure(failing: str) -> None:
    store = Flaky(failing)
    out = Published()
    follower = Follower(store, salt=SALT, publisher=out)  # type: ignore[arg-type]
    pipeline = FollowPipeline(follower, interval_s=0.01)
    pipeline.start()
    expected: list[str] = []
    try:
        for i in range(6):
            batch = [event("M1", "P2", at(10 * i + j)) for j in range(3)]
            batch.append(event("N1", "P1", at(10 * i + 5)))
            expected.extend(e.event_id for e in batch)
            store.add_block(CHAIN, batch)
            if i == 2:
                store.armed = True
            for _ in range(50):
                try:
                    pipeline.step(0.5)
                except StorageError:
                    continue
                if follower.decided >= len(expected):
                    break
    finally:
        assert pipeline.close(10.0)
    assert not store.armed, f"{failing} failed once"
    eid = DECISION_COLUMNS.index("event_id")
    assert Counter(r[eid] for r in store.decisions) == Counter(expected), "each event once"
    assert follower.auditor.history.observed == len(expected), "each event evaluated once"
    alerted = {e for r in store.alerts for e in json.loads(r[7])}
    flagged = {r[eid] for r in store.decisions if r[DECISION_COLUMNS.index("flags")] != "[]"}
    assert flagged and flagged <= alerted, "every flag stored in an alert"
    assert {a for a, _doc in out.sent} == {r[0] for r in store.alerts}, "every alert published"
