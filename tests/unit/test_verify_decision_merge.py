"""``verify`` compares a run's stored decisions with its replay as both go (ADR 0045):
the merge must find exactly what a comparison of the whole run at once finds, whatever
was tampered and in whatever order the two sides come, and hold only a window.

The oracle below is the whole-run comparison ``verify`` used before the merge (stored
rows grouped by key, the first compared column for column, the others a second row;
a key on one side only is unexpected or missing), kept here to hold the merge to it.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.findings import Finding, FindingCode
from verifiers.auditor._time import ts_to_us, us_to_ts
from verifiers.auditor.runner.rows import DECISION_COLUMNS
from verifiers.auditor.verify.merge import DecisionMerge, missing_findings
from verifiers.auditor.verify.stored import StoredDecision, normalise_decision

RUN = "range:2026-12-01T00:00:00.000000Z..2026-12-02T00:00:00.000000Z"
AT = "2026-12-02T01:00:00.000000Z"
T0 = ts_to_us("2026-12-01T00:00:00.000000Z")
WINDOW_US = 15 * 60 * 1_000_000  # a break-the-glass stop window
_C = {c: i for i, c in enumerate(DECISION_COLUMNS)}
#: (code, event id, amends) of the findings, counted
Found = Counter[tuple[FindingCode, str, int]]


def row(event: int, amends: int, t_us: int, **changed: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "event_id": f"e{event:05d}",
        "chain_id": "careledger.access.v1/0",
        "height": event // 10,
        "idx": event % 10,
        "occurred_at": us_to_ts(t_us),
        "occurred_date": dt.date(2026, 12, 1),
        "actor_id": f"a{event % 7}",
        "patient_ref": f"p{event % 11}",
        "amends": amends,
        "explanation_kind": "",
        "explanation": "",
        "searched": "[]",
        "flags": '["BTG_NO_STOP"]' if amends else "[]",
        "severity": "",
        "score": 0.0,
        "decided_at": AT,
        "audit_run": RUN,
        "reference_known_at": "2026-12-01T00:00:00.000000Z",
        "alert_ids": "",
    }
    values.update(changed)
    return tuple(values[c] for c in DECISION_COLUMNS)


def oracle(replayed: Sequence[tuple[Any, ...]], stored: Sequence[StoredDecision]) -> Found:
    """The whole-run comparison: (code, event id, amends) of every finding."""
    expected: dict[tuple[str, int], tuple[Any, ...]] = {}
    for r in replayed:
        expected.setdefault((r[_C["event_id"]], r[_C["amends"]]), r)
    by_key: dict[tuple[str, int], list[StoredDecision]] = {}
    for s in stored:
        by_key.setdefault(s.key, []).append(s)
    out: Found = Counter()
    for key, found in by_key.items():
        first, *extra = found
        out[(FindingCode.DECISION_UNEXPECTED, *key)] += len(extra)
        want = expected.get(key)
        if want is None:
            out[(FindingCode.DECISION_UNEXPECTED, *key)] += 1
        elif first.values != normalise_decision(want):
            out[(FindingCode.DECISION_MISMATCH, *key)] += 1
    for key in expected:
        if key not in by_key:
            out[(FindingCode.DECISION_MISSING, *key)] += 1
    return +out


def merged(
    replayed: Sequence[tuple[Any, ...]], stored: Sequence[StoredDecision]
) -> tuple[Found, DecisionMerge, int]:
    """The merge fed as ``verify`` feeds it: the stored rows in ClickHouse's order, the
    replayed ones as the auditor makes them. Returns the findings, the merge, and the
    most it held at once."""
    ordered = sorted(stored, key=lambda s: (s.occurred_at, s.key[0], s.key[1]))
    merge = DecisionMerge(RUN, iter(ordered), margin_us=2 * WINDOW_US)
    most = 0
    for r in replayed:
        merge.replayed((r[_C["event_id"]], r[_C["amends"]]), r)
        most = max(most, merge.held)
    left = merge.finish()
    findings: list[Finding] = [*merge.findings, *missing_findings(RUN, left, {})]
    out: Found = Counter()
    for f in findings:
        amends = f.details["amends"]
        assert type(amends) is int
        out[(f.code, f.event_id or "", amends)] += 1
    return +out, merge, most


def scenario(seed: int, n: int) -> tuple[list[tuple[Any, ...]], list[StoredDecision]]:
    """A run of ``n`` accesses (a few late flags), replayed in the order the auditor
    makes decisions, and its stored rows with random tampering."""
    rnd = random.Random(seed)
    replayed: list[tuple[float, tuple[Any, ...]]] = []
    t = T0
    for e in range(n):
        t += rnd.choice((0, 0, 1, 1_000, 60_000_000))  # ties happen
        replayed.append((t, row(e, 0, t)))
        if rnd.random() < 0.05:  # a late flag, made up to the stop window later
            replayed.append((t + rnd.randint(1, WINDOW_US), row(e, 1, t)))
        if rnd.random() < 0.01:  # the same access read twice: its first decision counts
            replayed.append((t, row(e, 0, t, explanation="second")))
    replayed.sort(key=lambda x: x[0])
    made = [r for _t, r in replayed]
    stored: list[StoredDecision] = []
    for r in made:
        if r[_C["explanation"]] == "second":
            continue
        attack = rnd.random()
        occurred = ts_to_us(r[_C["occurred_at"]])
        if attack < 0.03:
            continue  # deleted
        if attack < 0.06:
            stored.append(StoredDecision(normalise_decision((*r[:10], "why", *r[11:]))))
            continue  # rewritten
        if attack < 0.08:  # moved in time, far either way
            moved = us_to_ts(occurred + rnd.choice((-1, 1)) * rnd.randint(1, 10) * 3_600_000_000)
            stored.append(StoredDecision(normalise_decision(row_with(r, occurred_at=moved))))
            continue
        stored.append(StoredDecision(normalise_decision(r)))
        if attack < 0.10:  # a second row: the same, altered, or a little later
            again = rnd.choice(
                (
                    r,
                    row_with(r, severity="LOW"),
                    row_with(r, occurred_at=us_to_ts(occurred + rnd.randint(1, 2 * WINDOW_US))),
                )
            )
            stored.append(StoredDecision(normalise_decision(again)))
    for k in range(rnd.randint(0, 3)):  # forged rows of accesses the run never decided
        stored.append(StoredDecision(normalise_decision(row(n + k, 0, T0 + k))))
    return made, stored


def row_with(r: tuple[Any, ...], **changed: Any) -> tuple[Any, ...]:
    values = list(r)
    for c, v in changed.items():
        values[_C[c]] = v
    return tuple(values)


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(0, 400))
def test_the_merge_finds_what_the_whole_run_comparison_finds(seed: int, n: int) -> None:
    replayed, stored = scenario(seed, n)
    found, _merge, _most = merged(replayed, stored)
    assert found == oracle(replayed, stored)


def test_an_untampered_run_is_intact_and_the_merge_holds_a_window_not_the_run() -> None:
    made: list[tuple[Any, ...]] = []
    for e in range(20_000):
        made.append(row(e, 0, T0 + e * 1_000_000))  # one access a second
    stored = [StoredDecision(normalise_decision(r)) for r in made]
    found, merge, most = merged(made, stored)
    assert found == Counter()
    assert merge.rows == 20_000
    # the keys of the last margin (2 stop windows = 1,800 s of accesses, looked at
    # every 1,024 keys), not 20,000
    assert most <= 2 * WINDOW_US // 1_000_000 + 1024 + 10


def test_a_deleted_run_is_every_decision_missing_and_a_forged_one_every_row_unexpected() -> None:
    made = [row(e, 0, T0 + e) for e in range(50)]
    found, _m, _h = merged(made, [])
    assert found == Counter({(FindingCode.DECISION_MISSING, f"e{e:05d}", 0): 1 for e in range(50)})
    forged = [StoredDecision(normalise_decision(r)) for r in made]
    found, _m, _h = merged([], forged)
    assert found == Counter(
        {(FindingCode.DECISION_UNEXPECTED, f"e{e:05d}", 0): 1 for e in range(50)}
    )


def test_a_row_decided_again_by_a_later_run_is_not_missing() -> None:
    made = [row(1, 0, T0), row(2, 0, T0)]
    merge = DecisionMerge(RUN, iter(()), margin_us=WINDOW_US)
    for r in made:
        merge.replayed((r[0], r[_C["amends"]]), r)
    left = merge.finish()
    later = {("e00001", 0): "2026-12-03T00:00:00.000000Z", ("e00002", 0): "2026-12-01T00:00:00Z"}
    missing = missing_findings(RUN, left, later)
    assert [(f.code, f.event_id) for f in missing] == [(FindingCode.DECISION_MISSING, "e00002")]
