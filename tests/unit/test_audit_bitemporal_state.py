"""Bitemporal reference knowledge: a decision is made, and replayed, with the reference
versions known at its cutoff (their ledger time), whatever arrived later (ADR 0008)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careledger_core.reference import ReferenceRecord
from tests.unit.test_audit_runner import SALT, MemoryStore, ledgered
from tests.unit.test_auditor_rules import at, event, hospital, patient, relationship, staff
from verifiers.auditor import AccessHistory, AuditConfig, ReferenceState, RuleCode, evaluate
from verifiers.auditor.rules import AccessDecision, core_consent_evaluator
from verifiers.auditor.runner import (
    DECISION_COLUMNS,
    NOTHING_KNOWN,
    Follower,
    Knowledge,
    LedgeredReference,
    PlacedDecision,
    StoredCutoffs,
    decision_row,
    ledger_times,
    plan_knowledge,
    sort_decisions,
)
from verifiers.auditor.runner import (
    decide_range as iter_decisions,
)
from verifiers.auditor.runner.decide import first_cutoffs

#: ledger times (signed block created_at): the directory, then a back-dated record
L0 = "2026-11-02T08:00:00.000000Z"
L1 = "2026-11-03T12:00:00.000000Z"
REFERENCE_CHAIN = "o/careledger.workforce/0"


def decide_range(*args: Any, **kwargs: Any) -> list[PlacedDecision]:
    """The decisions of a range, as a list (``decide_range`` yields them)."""
    return list(iter_decisions(*args, **kwargs))


def late_relationship() -> ReferenceRecord:
    """M1 treats P2 from before the access: recorded a day later, but its envelope
    claims it was recorded (and effective) at the start."""
    return relationship("CT-P2-M1", "P2", practitioner_id="M1")


def known_then() -> ReferenceState:
    state = ReferenceState()
    state.apply_ledgered((r, L0) for r in hospital())
    return state


def decide_with(state: ReferenceState, known_at: str | None) -> AccessDecision:
    ev = SNOOP
    cfg = AuditConfig()
    return evaluate(
        ev,
        state.as_of(ev.occurred_at, known_at=known_at),
        AccessHistory(cfg),
        config=cfg,
        consent_evaluator=core_consent_evaluator,
    )


SNOOP = event("M1", "P2", at(0))


def patient_record() -> ReferenceRecord:
    return patient("P9", "Moreau")


def test_a_view_with_a_cutoff_ignores_a_version_ledgered_later() -> None:
    state = known_then()
    moved = staff("M1", "Tanaka", "nurse", "CARD", version=2, effective_at=at(-60))
    state.apply(late_relationship(), L1)
    state.apply(moved, L1)
    # the envelopes claim early times; the ledger time is what counts
    assert late_relationship().recorded_at < at(0) and moved.recorded_at < at(0)
    then = state.as_of(at(0), known_at=L0)
    assert then.known_at == L0
    assert then.relationships("P2") == ()
    assert then.all_relationships("P2") == 0
    assert then.staff("M1").department == "MED"  # type: ignore[union-attr]
    now = state.as_of(at(0), known_at=L1)
    assert [r.record_id for r in now.relationships("P2")] == ["CT-P2-M1"]
    assert now.all_relationships("P2") == 1
    assert now.staff("M1").department == "CARD"  # type: ignore[union-attr]
    # no cutoff: every version applied
    assert state.as_of(at(0)).all_relationships("P2") == 1
    assert state.latest_known_at == L1
    assert state.known_since("care-relationship", "CT-P2-M1", 1) == L1


def test_the_state_cutoff_is_what_as_of_applies_by_default() -> None:
    state = known_then()
    state.apply(late_relationship(), L1)
    state.known_at = L0
    assert state.as_of(at(0)).relationships("P2") == ()
    assert state.as_of(at(0), known_at=L1).relationships("P2") != ()
    state.known_at = None
    assert state.as_of(at(0)).relationships("P2") != ()


def test_without_a_ledger_time_the_envelope_recorded_at_stands_in() -> None:
    v1 = staff("N2", "Kowalski", "nurse", "CARD")
    v2 = staff("N2", "Kowalski", "nurse", "MED", version=2, effective_at=at(60))
    state = ReferenceState([v1, v2])
    assert state.as_of(at(90), known_at=at(30)).staff("N2").department == "CARD"  # type: ignore[union-attr]
    assert state.latest_known_at == at(60)


def test_same_inputs_give_the_same_decision_and_the_cutoff_keeps_it_after_a_back_dated_record() -> (
    None
):
    state = known_then()
    first = decide_with(state, L0)
    assert first == decide_with(state, L0) == decide_with(known_then(), L0)
    assert not first.explained and RuleCode.NO_EXPLANATION in first.codes()
    state.apply(late_relationship(), L1)
    # the same cutoff: the same decision, evidence included (no relationship known then)
    assert decide_with(state, L0) == first
    flag = first.flag(RuleCode.NO_EXPLANATION)
    assert flag is not None and flag.evidence["relationships_ever"] == 0
    # what is known now explains the access
    now = decide_with(state, L1)
    assert now.explanation is not None and now.explanation.record_id == "CT-P2-M1"
    assert now.flags == ()


def test_an_identical_version_ledgered_twice_is_known_from_the_earlier_time() -> None:
    rec = late_relationship()
    state = ReferenceState()
    state.apply(rec, L1)
    state.apply(rec, L0)
    assert state.known_since("care-relationship", "CT-P2-M1", 1) == L0
    assert state.duplicates == 1


def test_ledger_times_never_go_back_along_a_chain() -> None:
    recs = [staff(f"U{i}", "K", "nurse", "CARD") for i in range(5)]
    refs = [
        LedgeredReference(recs[0], "o/a/0", 0, "2026-11-02T10:00:00.000000Z"),
        # the processor's clock stepped back: known just after the block before
        LedgeredReference(recs[1], "o/a/0", 1, "2026-11-02T09:59:00.000000Z"),
        LedgeredReference(recs[2], "o/a/0", 1, "2026-11-02T09:59:00.000000Z"),
        LedgeredReference(recs[3], "o/b/0", 0, "2026-11-02T09:00:00.000000Z"),
        LedgeredReference(recs[4], "o/a/0", 2, "2026-11-02T10:05:00.000000Z"),
    ]
    latest: dict[str, tuple[int, str]] = {}
    times = [t for _r, t in ledger_times(refs, latest)]
    assert times == [
        "2026-11-02T10:00:00.000000Z",
        "2026-11-02T10:00:00.000001Z",
        "2026-11-02T10:00:00.000001Z",  # one block, one time
        "2026-11-02T09:00:00.000000Z",  # chains are independent
        "2026-11-02T10:05:00.000000Z",
    ]
    assert latest == {
        "o/a/0": (2, "2026-11-02T10:05:00.000000Z"),
        "o/b/0": (0, "2026-11-02T09:00:00.000000Z"),
    }


def rows(placed: list[PlacedDecision]) -> list[tuple[Any, ...]]:
    return [
        decision_row(p, salt=SALT, decided_at="x", audit_run="r") for p in sort_decisions(placed)
    ]


def test_a_range_replay_reuses_each_stored_cutoff_and_reconsider_uses_current_knowledge() -> None:
    events = [event("N1", "P1", at(1)), SNOOP, event("M1", "P2", at(120))]
    state = known_then()
    first = rows(decide_range(state, ledgered(events), at(0), at(60)))
    col = DECISION_COLUMNS.index("reference_known_at")
    assert [r[col] for r in first] == [L0, L0]
    stored = [(r[0], r[4], r[col]) for r in first]

    state.apply(late_relationship(), L1)  # back-dated, ledgered later
    replay = plan_knowledge(state.latest_known_at, lambda: stored, at(0), at(60))
    assert rows(decide_range(state, ledgered(events), at(0), at(60), knowledge=replay)) == first
    # without the stored cutoffs the same range decides differently
    fresh = rows(decide_range(state, ledgered(events), at(0), at(60)))
    assert fresh != first

    again = plan_knowledge(state.latest_known_at, lambda: stored, at(0), at(60), reconsider=True)
    reconsidered = rows(decide_range(state, ledgered(events), at(0), at(60), knowledge=again))
    assert reconsidered == fresh
    (snoop,) = (
        d
        for r in reconsidered
        if (d := dict(zip(DECISION_COLUMNS, r, strict=True)))["event_id"] == SNOOP.event_id
    )
    assert snoop["explanation_kind"] == "relationship"
    assert snoop["flags"] == "[]" and snoop["reference_known_at"] == L1


OLD = "2026-11-01T00:00:00.000000Z"


def test_plan_knowledge_feeds_undecided_warm_up_events_what_the_range_used() -> None:
    stored = [("w1", at(-10), OLD), ("e1", at(10), L0)]  # in occurred_at order

    def plan(**kw: Any) -> Knowledge:
        return plan_knowledge(L1, lambda: stored, at(0), at(60), **kw)

    k = plan()
    assert k.cutoff("w1", at(-10), decided=False) == (OLD, True)  # stored
    assert k.cutoff("w2", at(-5), decided=False) == (L0, False)  # the range's stored knowledge
    assert k.cutoff("e1", at(10), decided=True) == (L0, True)  # stored
    assert k.cutoff("new", at(20), decided=True) == (L1, False)  # never decided: known now
    assert plan(undecided=1).cutoff("w2", at(-5), False) == (L1, False)
    reconsider = plan(reconsider=True)
    assert reconsider.cutoff("w1", at(-10), decided=False) == (OLD, True)
    assert reconsider.cutoff("e1", at(10), decided=True) == (L1, False)
    assert plan_knowledge(None, lambda: [], at(0), at(60)).current == NOTHING_KNOWN
    assert Knowledge(L1).cutoff("x", at(0), decided=False) == (L1, False)


def test_a_stored_cutoff_is_one_accesss_not_every_event_with_its_id() -> None:
    # the same event id ledgered again an hour later, with no decision of its own
    k = plan_knowledge(L1, lambda: [("e1", at(10), L0)], at(0), at(120))
    assert k.cutoff("e1", at(10), decided=True) == (L0, True)
    assert k.cutoff("e1", at(70), decided=True) == (L1, False)


def test_of_two_cutoffs_stored_for_one_access_the_first_is_taken() -> None:
    rows = [("e1", at(10), L0), ("e2", at(10), OLD), ("e1", at(10), L1), ("e1", at(11), L1)]
    assert list(first_cutoffs(rows)) == [rows[0], rows[1], rows[3]]
    stored = StoredCutoffs(rows)
    assert [stored.at(at(10), "e2"), stored.at(at(10), "e1")] == [OLD, L0]
    assert stored.at(at(11), "e1") == L1
    # the newest stored cutoff of the range is of the accesses' first cutoffs
    assert plan_knowledge(NOTHING_KNOWN, lambda: rows[:3], at(0), at(60)).others == L0


def test_stored_cutoffs_are_read_in_step_with_the_events_not_ahead() -> None:
    read: list[str] = []

    def rows() -> Iterator[tuple[str, str, str]]:
        for s in range(0, 600, 2):
            read.append(at(s))
            yield (f"e{s}", at(s), L0)

    stored = StoredCutoffs(rows())
    for s in range(0, 600, 3):
        expected = L0 if s % 2 == 0 else None
        assert stored.at(at(s), f"e{s}") == expected
        # what was read: the times asked so far and the first one after them
        assert read[-1] > at(s) and (len(read) < 2 or read[-2] <= at(s))
    # a time asked again after a later one is gone: no cutoff is held behind the events
    assert stored.at(at(0), "e0") is None


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 5), st.sampled_from((L0, L1, OLD))),
        max_size=30,
    ),
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 6)), max_size=30),
)
def test_stored_cutoffs_find_what_a_whole_index_of_first_cutoffs_finds(
    stored: list[tuple[str, int, str]], asked: list[tuple[str, int]]
) -> None:
    rows = sorted(((e, at(t), k) for e, t, k in stored), key=lambda r: r[1])
    index: dict[tuple[str, str], str] = {}
    for e, t, k in rows:
        index.setdefault((t, e), k)
    cutoffs = StoredCutoffs(rows)
    for e, t in sorted(asked, key=lambda a: a[1]):
        assert cutoffs.at(at(t), e) == index.get((at(t), e))


class LedgerStore(MemoryStore):
    """A store whose reference chains grow block by block, each with its ledger time."""

    def __init__(self) -> None:
        super().__init__([])
        self.reference_blocks: dict[str, list[tuple[str, list[ReferenceRecord]]]] = {}

    def add_reference_block(
        self, block_time: str, records: list[ReferenceRecord], chain: str = REFERENCE_CHAIN
    ) -> None:
        self.reference_blocks.setdefault(chain, []).append((block_time, records))

    def is_reference(self, chain: str) -> bool:
        return chain in self.reference_blocks

    def heads(self) -> dict[str, int]:
        heads = {c: len(b) - 1 for c, b in self.blocks.items()}
        heads.update({c: len(b) - 1 for c, b in self.reference_blocks.items()})
        return heads

    def reference_records_of_chain(
        self, chain: str, above: int, upto: int
    ) -> list[LedgeredReference]:
        blocks = self.reference_blocks[chain]
        return [
            LedgeredReference(r, chain, h, blocks[h][0])
            for h in range(above + 1, upto + 1)
            for r in blocks[h][1]
        ]


def column(row: tuple[Any, ...], name: str) -> Any:
    return row[DECISION_COLUMNS.index(name)]


def test_follow_decides_with_the_newest_ledger_time_applied_and_counts_late_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = LedgerStore()
    store.add_reference_block(L0, hospital())
    follower = Follower(store, salt=SALT)  # type: ignore[arg-type]
    chain = "o/careledger.access-events/0"
    store.add_block(chain, [SNOOP])
    assert follower.cycle() == 1
    assert column(store.decisions[0], "reference_known_at") == L0
    assert "NO_EXPLANATION" in column(store.decisions[0], "flags")
    # a block ledgered later explains the next access at once
    store.add_reference_block(L1, [late_relationship()])
    store.add_block(chain, [event("M1", "P2", at(30))])
    assert follower.cycle() == 1
    assert column(store.decisions[1], "reference_known_at") == L1
    assert column(store.decisions[1], "explanation_kind") == "relationship"
    assert follower.late_records == 0
    # another chain's block sealed before the cutoff already used was committed late
    sealed_before = "2026-11-03T11:00:00.000000Z"
    store.add_reference_block(sealed_before, [patient_record()], chain="o/careledger.patients/0")
    store.add_block(chain, [event("M1", "P2", at(40))])
    with caplog.at_level("WARNING", logger="careledger.auditor"):
        assert follower.cycle() == 1
    assert follower.late_records == 1 and "replay" in caplog.text
    assert "P9" not in caplog.text and "P2" not in caplog.text
    assert column(store.decisions[2], "reference_known_at") == L1


def test_a_restarted_follower_warms_up_with_the_stored_cutoffs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = LedgerStore()
    store.add_reference_block(L0, hospital())
    chain = "o/careledger.access-events/0"
    store.add_block(chain, [SNOOP])
    Follower(store, salt=SALT).cycle()  # type: ignore[arg-type]
    store.add_reference_block(L1, [late_relationship()])
    resumed = Follower(store, salt=SALT)  # type: ignore[arg-type]
    seen: list[str | None] = []
    real = resumed.auditor.process

    def spy(ev: Any) -> list[AccessDecision]:
        seen.append(resumed.state.known_at)
        return real(ev)

    monkeypatch.setattr(resumed.auditor, "process", spy)
    assert resumed.cycle() == 0 and resumed.warmed == 1
    assert seen == [L0], "the warm-up replays the event with the knowledge it was decided with"
    assert json.loads(column(store.decisions[0], "searched"))
