"""Flags that reach a follower out of time order, on the real ClickHouse: one actor's
accesses on two chains whose blocks land in later cycles than accesses that occurred
after them (a late partition), before, inside and between alerts already written. Each
flag ends in exactly one alert of its rule, across a restart too (the second run reads
back which alerts the first run's flags went into), and ``verify`` replays both runs
intact (ADR 0048). Both ways a follower runs: ``Follower.cycle`` and
``FollowPipeline``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from careledger.config import Settings
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import ChainStore
from careledger_core.event import canonical_event_bytes
from careledger_core.reference import canonical_reference_bytes
from tests.integration.test_audit_follow_crash import DIRECTORY, _chain
from tests.unit.test_auditor_rules import at, event, hospital
from verifiers.auditor.runner import AuditStore, Follower
from verifiers.auditor.runner.pipeline import FollowPipeline
from verifiers.auditor.verify import verify_audit

pytestmark = pytest.mark.integration

SALT = "follow-out-of-order-test-salt"
LATE = "o/careledger.access-events/1"
EARLY = "o/careledger.access-events/0"
#: what each poll finds: (chain, minutes of M1's accesses, one block each); M1 opens
#: records of patients nobody's team treats (every access flagged)
LANDINGS = [
    (EARLY, [30, 40, 50]),
    (LATE, [20]),  # before the written alert, within the window
    (EARLY, [70]),  # it grows
    (LATE, [45]),  # inside it
    (EARLY, [200, 210]),  # a second alert (over an hour later)
    (LATE, [130, 5]),  # bridging the two; then before everything
]


def _flagged_alerts(store: AuditStore) -> dict[str, tuple[str, list[str]]]:
    """alert id -> (rule, flagged event ids), each alert as stored."""
    rows = store.backend.execute(
        f"SELECT alert_id, rule, event_ids, evidence FROM {store.db}.alerts FINAL"
    )
    out = {}
    for aid, rule, ids, evidence in rows:
        related = json.loads(evidence)["related_events"]
        out[aid.decode()] = (rule.decode(), json.loads(ids)[related:])
    return out


@pytest.mark.parametrize("threads", [False, True], ids=["cycle", "pipeline"])
def test_flags_landing_out_of_order_are_each_in_one_alert_and_verify_intact(
    isolated: Settings, threads: bool
) -> None:
    backend = ClickHouseBackend.from_settings(isolated)
    topics = frozenset({"careledger.workforce"})
    store = AuditStore(backend, isolated.clickhouse_database, topics)
    chains = ChainStore(backend, isolated.clickhouse_database, topics)
    try:
        refs = [canonical_reference_bytes(r) for r in hospital()]
        chains.write_blocks(_chain(DIRECTORY, refs, len(refs), reference=True))
        events: dict[str, list[Any]] = {EARLY: [], LATE: []}
        decided = 0
        runs: list[Follower] = []
        # two runs: the second starts (a restart) after the third landing
        for part in (LANDINGS[:3], LANDINGS[3:]):
            follower = Follower(store, salt=SALT)
            runs.append(follower)
            pipeline = FollowPipeline(follower, interval_s=0.05) if threads else None
            if pipeline is not None:
                pipeline.start()
            try:
                for chain_id, minutes in part:
                    done = {c: len(e) for c, e in events.items()}
                    new = [event("M1", f"P{2 + i % 2}", at(m)) for i, m in enumerate(minutes)]
                    events[chain_id].extend(new)
                    blocks = _chain(
                        chain_id, [canonical_event_bytes(e) for e in events[chain_id]], 1, False
                    )
                    chains.write_blocks(blocks[done[chain_id] :])
                    landed = sum(map(len, events.values())) - decided
                    if pipeline is None:
                        follower.cycle()
                    for _ in range(50):  # the pipeline decides a landing in its own cycle
                        if follower.decided >= landed:
                            break
                        assert pipeline is not None, "a cycle left part of a landing"
                        pipeline.step(5.0)
            finally:
                if pipeline is not None:
                    pipeline.close(5.0)
            decided += follower.decided
        every = [e for es in events.values() for e in es]
        assert decided == len(every)
        assert all(";group=3" in r.run_id for r in runs)
        alerts = _flagged_alerts(store)
        pairs = Counter((rule, e) for rule, ids in alerts.values() for e in ids)
        assert [p for p, n in pairs.items() if n > 1] == [], "a flag in two alerts"
        assert {e for _rule, e in pairs} == {e.event_id for e in every}, "every flag alerted"
        result = verify_audit(
            backend,
            isolated.clickhouse_database,
            reference_topics=topics,
            salt=SALT,
            settle_us=0,
        )
        assert result.findings == [], [(str(f.code), f.message) for f in result.findings]
        assert result.summary["runs"]["follow"] == 2
    finally:
        backend.close()
