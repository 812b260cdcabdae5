"""Anchored grouping (``group_alerts(..., anchors=)``, ADR 0048), as a follower uses it:
the flags of one actor arrive in batches in any order; after each batch every flag known
is regrouped with the alerts written so far as anchors, and the alerts a new flag is in
are written (upserted). Whatever the order: no flag is in two written alerts, every flag
is in one, and a written alert never loses a flag it was written with."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_auditor_rules import at
from verifiers.auditor.alerts import alert_id, group_alerts
from verifiers.auditor.decisions import AccessDecision, AlertSeverity, Flag, RuleCode

SALT = "anchors"
RULES = (RuleCode.NO_EXPLANATION, RuleCode.AFTER_HOURS)


def decision(i: int, minute: int, rules: tuple[RuleCode, ...]) -> AccessDecision:
    return AccessDecision(
        event_id=f"e{i:03d}",
        occurred_at=at(minute),
        actor_id="N1",
        patient_id=f"P{i}",
        explanation=None,
        searched=(),
        flags=tuple(Flag(r, AlertSeverity.MEDIUM) for r in rules),
    )


def follow(
    batches: list[list[AccessDecision]], *, anchored: bool = True
) -> list[dict[str, frozenset[str]]]:
    """The written alerts (id -> flagged events) after each batch. Checks, as it goes,
    that each new flag's alert (``assigned``, what its decision row names) is written
    and holds it, and stays so: a flag's alert never changes once it is grouped."""
    known: list[AccessDecision] = []
    written: dict[str, frozenset[str]] = {}
    named: dict[tuple[str, str], str] = {}  # (event, rule) -> alert, when first grouped
    history = []
    for batch in batches:
        known.extend(batch)
        touched = {d.event_id for d in batch}
        anchors = written.keys() if anchored else ()
        assigned: dict[tuple[str, bool, str], str] = {}
        for a in group_alerts(known, salt=SALT, anchors=anchors, assigned=assigned):
            if not touched.isdisjoint(a.event_ids):
                written[a.alert_id] = frozenset(a.event_ids)
        for d in batch:
            for f in d.flags:
                named[(d.event_id, f.code)] = assigned[(d.event_id, d.amends, f.code)]
        if anchored:
            for (event_id, _rule), aid in named.items():
                assert event_id in written[aid], "a flag left the alert its row names"
        history.append(dict(written))
    return history


flags = st.lists(
    st.tuples(
        st.integers(0, 48 * 60),  # minute: gaps over and under the hour, spans over a day
        st.sets(st.sampled_from(RULES), min_size=1).map(lambda s: tuple(sorted(s))),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(flags=flags, order=st.randoms(use_true_random=False), cuts=st.integers(1, 8))
def test_batches_in_any_order_put_each_flag_in_exactly_one_alert_that_only_grows(
    flags: list[tuple[int, tuple[RuleCode, ...]]], order: object, cuts: int
) -> None:
    decisions = [decision(i, m, rules) for i, (m, rules) in enumerate(flags)]
    order.shuffle(decisions)  # type: ignore[attr-defined]
    size = max(1, len(decisions) // cuts)
    batches = [decisions[i : i + size] for i in range(0, len(decisions), size)]
    history = follow(batches)
    for before, after in itertools.pairwise(history):
        for aid, events in before.items():
            assert events <= after[aid], "a written alert lost a flag"
    final = history[-1]
    rule_of = {aid: _rule(aid, decisions, events) for aid, events in final.items()}
    pairs = [(rule_of[aid], e) for aid, events in final.items() for e in events]
    assert len(pairs) == len(set(pairs)), "a flag in two alerts"
    assert set(pairs) == {(f.code, d.event_id) for d in decisions for f in d.flags}


def _rule(aid: str, decisions: list[AccessDecision], events: frozenset[str]) -> RuleCode:
    """The rule of a written alert (the one whose id its first flag gives)."""
    for d in decisions:
        for f in d.flags:
            if d.event_id in events and alert_id(f.code, d.actor_id, d.event_id) == aid:
                return f.code
    raise AssertionError(f"no flag starts alert {aid}")


def test_without_anchors_a_flag_before_a_written_alert_takes_its_flags_again() -> None:
    """The defect anchors mend (and what makes the property above fail without them)."""
    x = [decision(1, 600, RULES[:1]), decision(2, 610, RULES[:1])]
    early = [decision(3, 590, RULES[:1])]
    without = follow([x, early], anchored=False)[-1]
    assert sorted(map(len, without.values())) == [2, 3]  # e001, e002 twice
    anchored = follow([x, early])[-1]
    assert sorted(map(len, anchored.values())) == [1, 2]
