"""The access auditor's reference state (versions, retractions, consents in force), its
time helpers, alert grouping and determinism (helpers: ``test_auditor_rules``)."""

from __future__ import annotations

import random

from careledger_core.event import AccessEvent
from careledger_core.reference import ReferenceRecord
from tests.unit.test_auditor_rules import (
    MONDAY_9AM,
    _patients,
    at,
    btg_start,
    btg_stop,
    consent,
    event,
    hospital,
    login,
    patient,
    ref,
    run,
    staff,
)
from verifiers.auditor import (
    AlertSeverity,
    Auditor,
    ReferenceState,
    RuleCode,
    evaluate,
    group_alerts,
    patient_pseudonym,
)
from verifiers.auditor._time import ts_to_us, us_to_ts, weekday_hour

# --------------------------------------------------------------------------- reference state


def test_versions_supersede_from_their_effective_time_and_retractions_end_a_record() -> None:
    v1 = staff("N2", "Kowalski", "nurse", "CARD")
    v2 = staff("N2", "Kowalski", "nurse", "MED", version=2, effective_at=at(60))
    v3 = ref("staff", "N2", dict(v2.body), version=3, effective_at=at(120), retracted=True)
    state = ReferenceState([v3, v1, v2])  # any application order
    dept = [state.as_of(at(m)).staff("N2") for m in (0, 60, 119, 120)]
    assert [s.department if s else None for s in dept] == ["CARD", "MED", "MED", None]
    # bitemporal: what was known at 00:30 about 01:30
    state2 = ReferenceState([v1, v2])
    assert state2.as_of(at(90), known_at=at(30)).staff("N2").department == "CARD"  # type: ignore[union-attr]


def test_the_same_version_twice_is_a_duplicate_and_a_different_one_a_conflict() -> None:
    v1 = staff("N2", "Kowalski", "nurse", "CARD")
    other = staff("N2", "Kowalski", "nurse", "MED")
    state = ReferenceState([v1, v1, other])
    assert state.stats()["duplicates"] == 1 and len(state.conflicts) == 1
    assert state.as_of(MONDAY_9AM).staff("N2").department == "CARD"  # type: ignore[union-attr]


def test_only_active_consents_in_force_are_returned() -> None:
    state = ReferenceState(
        [consent("C1", "P1"), consent("C2", "P1", status="inactive"), consent("C3", "P2")]
    )
    view = state.as_of(MONDAY_9AM)
    assert [c["id"] for c in view.consents("P1")] == ["C1"]
    assert view.consents("P9") == []


def test_time_helpers_round_trip() -> None:
    for ts in (MONDAY_9AM, "2024-02-29T23:59:59.999999Z", "1999-12-31T00:00:00.000001Z"):
        assert us_to_ts(ts_to_us(ts)) == ts
    assert weekday_hour(ts_to_us(MONDAY_9AM)) == (0, 9)


# --------------------------------------------------------------------------- alerts


def test_a_burst_of_unexplained_accesses_is_one_alert_with_its_events() -> None:
    records = [*hospital(), *_patients(25)]
    events = [event("M1", f"Q{i}", at(i)) for i in range(25)]
    alerts = group_alerts(run(records, events), salt=b"s3cret")
    [alert] = [a for a in alerts if a.rule == RuleCode.NO_EXPLANATION]
    assert alert.event_ids == tuple(e.event_id for e in events)
    assert alert.actor_id == "M1" and alert.patient_ref is None
    assert len(alert.patient_refs) == 25
    assert alert.severity == AlertSeverity.HIGH  # medium, raised: 25 patients
    assert alert.evidence["flagged_events"] == 25 and len(alert.evidence["samples"]) == 20
    assert "relationship" in alert.explanations_searched
    assert all("Q" not in r for r in alert.patient_refs)


def test_flags_an_hour_apart_or_by_different_actors_are_separate_alerts() -> None:
    events = [event("M1", "P2", at(0)), event("M1", "P2", at(90)), event("N2", "P2", at(1))]
    alerts = [
        a
        for a in group_alerts(run(hospital(), events), salt="x")
        if a.rule == RuleCode.NO_EXPLANATION
    ]
    assert [(a.actor_id, len(a.event_ids)) for a in alerts] == [("M1", 1), ("N2", 1), ("M1", 1)]
    assert alerts[0].patient_ref == patient_pseudonym("P2", "x")


def test_a_reasoned_override_is_a_routine_alert_and_one_without_reason_is_not() -> None:
    reasoned = [
        btg_start("M1", "P2", at(0), purpose=("ETREAT",)),
        event("M1", "P2", at(1), purpose=("ETREAT",)),
        btg_stop("M1", "P2", at(5)),
    ]
    [alert] = [
        a
        for a in group_alerts(run(hospital(), reasoned), salt="x")
        if a.rule == RuleCode.BREAK_THE_GLASS
    ]
    assert alert.evidence["routine"] is True and alert.severity == AlertSeverity.LOW
    bare = [
        btg_start("M1", "P2", at(0), purpose=()),
        event("M1", "P2", at(1), purpose=("ETREAT",)),
        btg_stop("M1", "P2", at(5)),
    ]
    [alert] = [
        a
        for a in group_alerts(run(hospital(), bare), salt="x")
        if a.rule == RuleCode.BREAK_THE_GLASS
    ]
    assert alert.evidence["routine"] is False and alert.severity == AlertSeverity.HIGH


def test_alert_evidence_does_not_name_the_patient() -> None:
    records = [*hospital(), patient("P2", version=2, family="Kowalski", employee_user_id="N2")]
    [alert] = [
        a
        for a in group_alerts(run(records, [event("N1", "P2")]), salt="x")
        if a.rule == RuleCode.CO_WORKER
    ]
    assert "N2" not in repr(alert.to_dict()) and "P2" not in repr(alert.to_dict())


def test_pseudonyms_are_stable_salted_and_truncated() -> None:
    a = patient_pseudonym("MRN1", b"salt")
    assert a == patient_pseudonym("MRN1", "salt") and len(a) == 32
    assert a != patient_pseudonym("MRN1", b"other") and a != patient_pseudonym("MRN2", b"salt")


# --------------------------------------------------------------------------- determinism


def _mixed_scenario() -> tuple[list[ReferenceRecord], list[AccessEvent]]:
    rng = random.Random(7)
    records = [*hospital(), *_patients(50), patient("P4", "Okafor", employee_user_id="N2")]
    actors = ["N1", "N2", "M1", "D1", "B1", "X9"]
    events: list[AccessEvent] = []
    minute = 0.0
    for _ in range(400):
        minute += rng.random() * 0.5
        actor = rng.choice(actors)
        pid = rng.choice(["P1", "P2", "P3", *["P4"] * 5, *(f"Q{i}" for i in range(50))])
        kind = rng.random()
        if kind < 0.03:
            events.append(btg_start(actor, pid, at(minute), purpose=("ETREAT",)))
        elif kind < 0.06:
            events.append(login(actor, at(minute), outcome=rng.choice((0, 4))))
        else:
            events.append(
                event(
                    actor,
                    pid,
                    at(minute),
                    outcome=rng.choice((0, 0, 0, 0, 4, 8)),
                    address=rng.choice(("10.0.0.1", "10.0.0.2")),
                    purpose=rng.choice((("TREAT",), ("ETREAT",), ("HMARKT",))),
                )
            )
    return records, events


def test_the_same_inputs_give_the_same_decisions_and_alerts() -> None:
    records, events = _mixed_scenario()
    first = run(records, events)
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    second = run(shuffled, events)  # ledger order across kinds does not matter
    assert [d.to_dict() for d in first] == [d.to_dict() for d in second]
    assert len({d.event_id for d in first}) > 300
    assert {c for d in first for c in d.codes()} >= {
        RuleCode.NO_EXPLANATION,
        RuleCode.BREAK_THE_GLASS,
        RuleCode.INACTIVE_USER,
        RuleCode.SHARED_CREDENTIALS,
        RuleCode.DENIED_BURST,
        RuleCode.CO_WORKER,
    }
    a1 = [a.to_dict() for a in group_alerts(first, salt=b"k")]
    a2 = [a.to_dict() for a in group_alerts(reversed(second), salt=b"k")]
    assert a1 == a2


def test_evaluate_does_not_change_the_history() -> None:
    records, events = _mixed_scenario()
    auditor = Auditor(ReferenceState(records))
    for ev in events[:200]:
        auditor.process(ev)
    before = auditor.history.stats()
    view = auditor.state.as_of(events[200].occurred_at)
    once = evaluate(events[200], view, auditor.history)
    twice = evaluate(events[200], view, auditor.history)
    assert once == twice and auditor.history.stats() == before
