"""The access auditor's rules on hand-built scenarios, one positive and one negative test
per rule: break the glass, self access, family, co-worker, VIP/sensitive, inactive user,
volume spike, after hours, shared credentials, denied bursts, disclosures and repeat
offenders (helpers: ``test_auditor_rules``)."""

from __future__ import annotations

from collections.abc import Sequence

from careledger_core.event import AccessEvent
from tests.unit.test_auditor_rules import (
    DCM,
    MONDAY_9AM,
    _patients,
    at,
    btg_start,
    btg_stop,
    codes,
    decide,
    event,
    hospital,
    login,
    patient,
    ref,
    relationship,
    run,
    staff,
)
from verifiers.auditor import AccessHistory, AlertSeverity, AuditConfig, RuleCode

# --------------------------------------------------------------------------- break the glass


def test_break_the_glass_with_a_reason_and_a_stop_is_a_routine_review_at_low() -> None:
    events = [
        btg_start("M1", "P2", at(0), purpose=("ETREAT",)),
        event("M1", "P2", at(1), purpose=("ETREAT",)),
        btg_stop("M1", "P2", at(5)),
        event("N1", "P1", at(6 * 60)),  # hours later: the window has passed
    ]
    decisions = run(hospital(), events)
    assert [d.event_id for d in decisions] == [e.event_id for e in events]  # no late flag
    start, access, stop, _ = decisions
    assert start.flag(RuleCode.BREAK_THE_GLASS).severity == AlertSeverity.LOW  # type: ignore[union-attr]
    f = access.flag(RuleCode.BREAK_THE_GLASS)
    assert f is not None and f.severity == AlertSeverity.LOW
    assert f.evidence["override_event_id"] == events[0].event_id
    assert f.evidence["override_reason_given"] is True
    assert RuleCode.NO_EXPLANATION not in codes(access)  # reviewed as break-the-glass
    assert stop.flags == ()


def test_break_the_glass_without_a_stop_is_flagged_late_and_high() -> None:
    events = [
        btg_start("M1", "P2", at(0), purpose=("ETREAT",)),
        event("M1", "P2", at(1), purpose=("ETREAT",)),
        event("N1", "P1", at(5 * 60)),
    ]
    decisions = run(hospital(), events)
    late = [d for d in decisions if d.amends]
    assert len(late) == 1 and late[0].event_id == events[0].event_id
    f = late[0].flag(RuleCode.BREAK_THE_GLASS)
    assert f is not None and f.severity == AlertSeverity.HIGH
    assert f.evidence["phase"] == "no-stop"
    # the accesses under the override that never stopped belong to the late alert
    assert f.evidence["related_event_ids"] == [events[1].event_id]
    # emitted when it became due, before the decision of the event that revealed it
    assert decisions.index(late[0]) == 2


def test_accesses_under_an_override_without_a_reason_are_high() -> None:
    events = [
        btg_start("M1", "P2", at(0), purpose=()),
        event("M1", "P2", at(1), purpose=("ETREAT",)),
        btg_stop("M1", "P2", at(5)),
    ]
    _start, access, _stop = run(hospital(), events)
    f = access.flag(RuleCode.BREAK_THE_GLASS)
    assert f is not None and f.severity == AlertSeverity.HIGH
    assert f.evidence["override_reason_given"] is False


def test_an_override_of_another_patient_does_not_cover_an_emergency_access() -> None:
    events = [
        btg_start("M1", "P2", at(0), purpose=("ETREAT",)),
        event("M1", "P1", at(1), purpose=("ETREAT",)),
    ]
    _start, access = run(hospital(), events)[:2]
    f = access.flag(RuleCode.BREAK_THE_GLASS)
    assert f is not None and f.severity == AlertSeverity.HIGH
    assert f.evidence["override_started"] is False


def test_break_the_glass_still_open_at_the_end_of_the_input_is_reported_by_finish() -> None:
    decisions = run(hospital(), [btg_start("M1", "P2", at(0), purpose=("ETREAT",))])
    assert [d.amends for d in decisions] == [False, True]


def test_break_the_glass_start_without_any_reason_is_high() -> None:
    d = decide(hospital(), btg_start("M1", "P2", at(0), purpose=()))
    f = d.flag(RuleCode.BREAK_THE_GLASS)
    assert f is not None and f.severity == AlertSeverity.HIGH and not f.evidence["reason_given"]


def test_emergency_purpose_without_an_override_start_is_high() -> None:
    d = decide(hospital(), event("M1", "P2", purpose=("ETREAT",)))
    f = d.flag(RuleCode.BREAK_THE_GLASS)
    assert f is not None and f.severity == AlertSeverity.HIGH
    assert f.evidence["override_started"] is False


def test_ordinary_treatment_access_is_not_break_the_glass() -> None:
    assert RuleCode.BREAK_THE_GLASS not in codes(decide(hospital(), event("N1", "P1")))


# --------------------------------------------------------------------------- self access


def test_employee_opening_their_own_record_is_flagged() -> None:
    records = [*hospital(), staff("N2", "Kowalski", "nurse", "CARD", version=2, patient_id="P2")]
    d = decide(records, event("N2", "P2"))
    f = d.flag(RuleCode.SELF_ACCESS)
    assert f is not None and f.severity == AlertSeverity.MEDIUM
    changed = decide(records, event("N2", "P2", action="U"))
    assert changed.flag(RuleCode.SELF_ACCESS).severity == AlertSeverity.HIGH  # type: ignore[union-attr]


def test_self_access_is_also_found_from_the_patient_side() -> None:
    records = [*hospital(), patient("P2", version=2, family="Nguyen", employee_user_id="N2")]
    assert RuleCode.SELF_ACCESS in codes(decide(records, event("N2", "P2")))


def test_opening_someone_elses_record_is_not_self_access() -> None:
    records = [*hospital(), staff("N2", "Kowalski", "nurse", "CARD", version=2, patient_id="P2")]
    assert RuleCode.SELF_ACCESS not in codes(decide(records, event("N2", "P1")))


# --------------------------------------------------------------------------- family


def test_reading_the_record_of_someone_at_the_same_address_is_flagged_even_if_explained() -> None:
    records = [
        *hospital(),
        patient(
            "P1",
            version=2,
            family="Silva",
            address={"line": "1  mill lane", "city": "N", "postcode": "nb11aa"},
        ),
    ]
    d = decide(records, event("N1", "P1"))
    f = d.flag(RuleCode.FAMILY)
    assert d.explained and f is not None
    assert f.evidence["matched"] == ["address"] and f.severity == AlertSeverity.MEDIUM


def test_unexplained_access_to_a_relative_with_the_same_surname_is_flagged() -> None:
    records = [*hospital(), patient("P2", version=2, family="OKAFOR")]
    f = decide(records, event("N1", "P2")).flag(RuleCode.FAMILY)
    assert f is not None and f.evidence["matched"] == ["surname"]


def test_being_the_patients_emergency_contact_is_family_with_high_severity() -> None:
    records = [
        *hospital(),
        patient(
            "P2",
            version=2,
            family="Nguyen",
            emergency_contacts=[{"family_name": "X", "phone": "020 7946 0001"}],
        ),
    ]
    f = decide(records, event("N1", "P2")).flag(RuleCode.FAMILY)
    assert f is not None and f.evidence["matched"] == ["emergency-contact"]
    assert f.severity == AlertSeverity.HIGH


def test_a_shared_common_surname_on_an_explained_access_is_not_family() -> None:
    records = [*hospital(), patient("P1", version=2, family="Okafor")]
    assert RuleCode.FAMILY not in codes(decide(records, event("N1", "P1")))


# --------------------------------------------------------------------------- co-worker


def test_reading_a_colleagues_record_in_the_same_department_is_flagged() -> None:
    records = [*hospital(), patient("P2", version=2, family="Kowalski", employee_user_id="N2")]
    d = decide(records, event("N1", "P2"))
    f = d.flag(RuleCode.CO_WORKER)
    assert f is not None and f.severity == AlertSeverity.HIGH
    assert f.evidence["colleagues"] == [{"employee_user_id": "N2", "relation": ["same-department"]}]


def test_reading_the_managers_record_is_co_worker_even_from_the_employee_side_link() -> None:
    records = [*hospital(), staff("D1", "Haddad", "physician", "CARD", version=2, patient_id="P2")]
    f = decide(records, event("N1", "P2")).flag(RuleCode.CO_WORKER)
    assert f is not None and f.evidence["colleagues"][0]["relation"] == [
        "same-department",
        "manager",
    ]


def test_an_employee_patient_from_another_department_is_not_a_co_worker() -> None:
    records = [*hospital(), patient("P2", version=2, family="Tanaka", employee_user_id="M1")]
    assert RuleCode.CO_WORKER not in codes(decide(records, event("N1", "P2")))


# --------------------------------------------------------------------------- VIP/sensitive


def test_unexplained_access_to_a_vip_is_flagged() -> None:
    d = decide(hospital(), event("M1", "P3"))
    f = d.flag(RuleCode.VIP_OR_SENSITIVE_UNEXPLAINED)
    assert f is not None and f.severity == AlertSeverity.HIGH and f.evidence["why"] == ["vip"]


def test_unexplained_access_to_restricted_data_labelled_in_the_event_is_flagged() -> None:
    ev = event("M1", "P2", sensitivity={"confidentiality": "R", "labels": ["HIV"]})
    f = decide(hospital(), ev).flag(RuleCode.VIP_OR_SENSITIVE_UNEXPLAINED)
    assert f is not None and f.evidence["why"] == ["confidentiality:R", "label:HIV"]


def test_explained_access_to_a_vip_is_not_flagged() -> None:
    records = [*hospital(), relationship("CT-P3", "P3", practitioner_id="M1")]
    assert decide(records, event("M1", "P3")).flags == ()


# --------------------------------------------------------------------------- inactive user


def test_terminated_user_is_flagged_critical() -> None:
    fired = staff(
        "N2", "Kowalski", "nurse", "CARD", version=2, effective_at="2026-10-31T17:00:00.000000Z"
    )
    body = dict(fired.body, status="terminated", end_date="2026-10-31")
    records = [*hospital(), ref("staff", "N2", body, version=2, effective_at=fired.effective_at)]
    d = decide(records, event("N2", "P1"))
    f = d.flag(RuleCode.INACTIVE_USER)
    assert f is not None and f.severity == AlertSeverity.CRITICAL
    assert f.evidence["status"] == "terminated"
    # a failed login of the terminated account is high
    failed = decide(records, login("N2", MONDAY_9AM, outcome=4)).flag(RuleCode.INACTIVE_USER)
    assert failed is not None and failed.severity == AlertSeverity.HIGH


def test_user_past_the_end_date_is_inactive_even_if_status_still_says_active() -> None:
    records = [
        *hospital(),
        staff("N2", "Kowalski", "nurse", "CARD", version=2, end_date="2026-11-01"),
    ]
    f = decide(records, event("N2", "P1")).flag(RuleCode.INACTIVE_USER)
    assert f is not None and f.evidence["status"] == "terminated"


def test_a_user_not_in_the_directory_is_flagged_as_inactive() -> None:
    f = decide(hospital(), event("X9", "P1")).flag(RuleCode.INACTIVE_USER)
    assert f is not None and f.evidence["status"] == "not-in-directory"


def test_accesses_before_the_termination_took_effect_are_not_inactive() -> None:
    body = dict(staff("N2", "Kowalski", "nurse", "CARD").body, status="terminated")
    records = [*hospital(), ref("staff", "N2", body, version=2, effective_at=at(60))]
    assert RuleCode.INACTIVE_USER not in codes(decide(records, event("N2", "P1")))
    assert RuleCode.INACTIVE_USER in codes(decide(records, event("N2", "P1", at(61))))


# --------------------------------------------------------------------------- volume spike


def test_an_actor_opening_forty_charts_in_half_an_hour_is_a_volume_spike() -> None:
    records = [*hospital(), *_patients(40)]
    events = [event("N2", f"Q{i}", at(i * 0.75)) for i in range(40)]
    decisions = run(records, events)
    spikes = [d for d in decisions if RuleCode.VOLUME_SPIKE in codes(d)]
    assert [d.event_id for d in spikes] == [e.event_id for e in events[30:]]
    first = spikes[0].flag(RuleCode.VOLUME_SPIKE)
    assert first is not None and first.evidence["distinct_patients"] == 31
    assert len(first.evidence["related_event_ids"]) == 30  # the window before the crossing


def test_twenty_charts_in_an_hour_or_forty_over_four_hours_is_not_a_spike() -> None:
    records = [*hospital(), *_patients(40)]
    slow = [event("N2", f"Q{i}", at(i * 6)) for i in range(40)]
    assert not any(RuleCode.VOLUME_SPIKE in codes(d) for d in run(records, slow))


def test_an_actor_whose_own_baseline_is_high_is_judged_against_it() -> None:
    cfg = AuditConfig(volume_min_baseline_hours=3)
    records = [*hospital(), *_patients(50)]
    # three earlier hours of 20 distinct patients each: own and peer p95 = 20 -> 60
    usual = [event("N2", f"Q{i}", at(h * 60 + i * 2)) for h in range(3) for i in range(20)]
    burst = [event("N2", f"Q{i}", at(180 + i * 0.5)) for i in range(50)]
    decisions = run(records, usual + burst, config=cfg)
    assert not any(RuleCode.VOLUME_SPIKE in codes(d) for d in decisions)
    # the same fifty charts opened by a physician with no history: threshold 30
    other = [event("D1", f"Q{i}", at(180 + i * 0.5), roles=("physician",)) for i in range(50)]
    decisions = run(records, usual + other, config=cfg)
    spiking = [d for d in decisions if RuleCode.VOLUME_SPIKE in codes(d)]
    assert {d.actor_id for d in spiking} == {"D1"} and len(spiking) == 20
    first = spiking[0].flag(RuleCode.VOLUME_SPIKE)
    assert first is not None
    assert (first.evidence["own_p95"], first.evidence["peer_p95"]) == (None, None)
    # no baseline of its own or of its peers: only the floor, so less certain
    assert first.severity == AlertSeverity.MEDIUM


def test_a_spike_far_above_an_established_baseline_is_high() -> None:
    cfg = AuditConfig(volume_min_baseline_hours=3)
    records = [*hospital(), *_patients(60)]
    # three earlier hours of 5 distinct patients: threshold max(30, 3 * 5) = 30
    usual = [event("N2", f"Q{i}", at(h * 60 + i * 10)) for h in range(3) for i in range(5)]
    burst = [event("N2", f"Q{i}", at(180 + i * 0.5)) for i in range(60)]
    spiking = [
        d for d in run(records, usual + burst, config=cfg) if RuleCode.VOLUME_SPIKE in codes(d)
    ]
    first = spiking[0].flag(RuleCode.VOLUME_SPIKE)
    assert first is not None and first.evidence["own_p95"] == 5
    assert first.severity == AlertSeverity.HIGH


# --------------------------------------------------------------------------- after hours


def test_day_shift_nurse_reading_charts_at_two_in_the_morning_is_after_hours() -> None:
    d = decide(hospital(), event("N1", "P1", "2026-11-03T02:00:00.000000Z"))
    f = d.flag(RuleCode.AFTER_HOURS)
    assert f is not None and f.evidence == {"weekday": 1, "hour_utc": 2, "explained": True}
    assert f.severity == AlertSeverity.LOW  # explained: low
    unexplained = decide(hospital(), event("N1", "P2", "2026-11-03T02:00:00.000000Z"))
    assert unexplained.flag(RuleCode.AFTER_HOURS).severity == AlertSeverity.MEDIUM  # type: ignore[union-attr]


def test_access_on_shift_or_within_the_overtime_grace_is_not_after_hours() -> None:
    for when in ("2026-11-02T14:59:00.000000Z", "2026-11-02T16:30:00.000000Z", at(-130)):
        assert RuleCode.AFTER_HOURS not in codes(decide(hospital(), event("N1", "P1", when)))
    saturday = "2026-11-07T10:00:00.000000Z"
    assert RuleCode.AFTER_HOURS in codes(decide(hospital(), event("N1", "P1", saturday)))


def test_an_overnight_shift_covers_the_small_hours() -> None:
    night = [{"days": [0], "start_hour": 23, "end_hour": 7}]
    records = [*hospital(), staff("N2", "Kowalski", "nurse", "CARD", version=2, shifts=night)]
    ev = event("N2", "P1", "2026-11-03T03:00:00.000000Z")  # Tuesday 03:00, Monday's night
    assert RuleCode.AFTER_HOURS not in codes(decide(records, ev))


# --------------------------------------------------------------------------- shared credentials


def test_one_account_active_from_two_workstations_at_once_is_flagged() -> None:
    events = [
        event("N1", "P1", at(0), address="10.20.13.5"),
        event("N1", "P1", at(0.5), address="10.30.41.9"),
    ]
    second = run(hospital(), events)[1]
    f = second.flag(RuleCode.SHARED_CREDENTIALS)
    assert f is not None and f.severity == AlertSeverity.HIGH
    assert f.evidence["other_address"] == "10.20.13.5" and f.evidence["seconds_apart"] == 30.0


def test_same_workstation_or_moving_after_ten_minutes_is_not_shared_credentials() -> None:
    same = [event("N1", "P1", at(0)), event("N1", "P1", at(0.5))]
    moved = [
        event("N1", "P1", at(0), address="10.20.13.5"),
        event("N1", "P1", at(10), address="10.20.13.6"),
    ]
    for events in (same, moved):
        assert not any(RuleCode.SHARED_CREDENTIALS in codes(d) for d in run(hospital(), events))


# --------------------------------------------------------------------------- denied bursts


def test_five_denied_accesses_in_five_minutes_are_a_burst() -> None:
    events = [event("M1", f"P{1 + i % 3}", at(i), outcome=8) for i in range(5)]
    decisions = run(hospital(), events)
    assert [RuleCode.DENIED_BURST in codes(d) for d in decisions] == [False] * 4 + [True]
    f = decisions[-1].flag(RuleCode.DENIED_BURST)
    assert f is not None and f.evidence["denied_in_window"] == 5
    assert f.evidence["related_event_ids"] == [e.event_id for e in events[:4]]


def test_failed_logins_count_towards_a_denied_burst() -> None:
    events = [login("M1", at(i), outcome=4) for i in range(5)]
    assert RuleCode.DENIED_BURST in codes(run(hospital(), events)[-1])


def test_four_denials_or_five_spread_over_an_hour_are_not_a_burst() -> None:
    few = [event("M1", "P1", at(i), outcome=4) for i in range(4)]
    spread = [event("M1", "P1", at(i * 15), outcome=4) for i in range(5)]
    for events in (few, spread):
        assert not any(RuleCode.DENIED_BURST in codes(d) for d in run(hospital(), events))


# --------------------------------------------------------------------------- disclosures

EXPORT = {"system": DCM, "code": "110106", "display": "Export"}
DISCLOSE = {
    "system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle",
    "code": "disclose",
}


def _disclosure(purpose: Sequence[str], action: str = "E") -> AccessEvent:
    return event("N1", "P1", action=action, purpose=purpose, event_type=EXPORT, subtypes=[DISCLOSE])


def test_disclosure_for_marketing_is_flagged() -> None:
    f = decide(hospital(), _disclosure(("HMARKT",))).flag(RuleCode.DISCLOSURE_WITHOUT_PURPOSE)
    assert f is not None and f.evidence == {"purpose": ["HMARKT"], "not_permitted": ["HMARKT"]}


def test_disclosure_without_any_purpose_is_flagged() -> None:
    assert RuleCode.DISCLOSURE_WITHOUT_PURPOSE in codes(decide(hospital(), _disclosure(())))


def test_disclosure_at_the_patients_request_or_a_print_is_not_flagged() -> None:
    assert decide(hospital(), _disclosure(("PATRQT",))).flags == ()
    printed = _disclosure((), action="R")  # a print is an export of a read, not a disclosure
    assert RuleCode.DISCLOSURE_WITHOUT_PURPOSE not in codes(decide(hospital(), printed))


# --------------------------------------------------------------------------- repeat offender


def test_a_repeat_offender_gets_a_raised_and_weighted_flag() -> None:
    history = AccessHistory()
    history.record_confirmed_violation("M1", "2026-06-01T00:00:00.000000Z")
    d = decide(hospital(), event("M1", "P1"), history=history)
    f = d.flag(RuleCode.REPEAT_OFFENDER)
    assert f is not None and f.severity == AlertSeverity.HIGH  # NO_EXPLANATION medium, raised
    assert d.multiplier == 1.5 and d.score == (3 + 6) * 1.5


def test_a_past_violation_does_not_flag_an_explained_access_or_one_over_a_year_ago() -> None:
    history = AccessHistory()
    history.record_confirmed_violation("N1", "2026-06-01T00:00:00.000000Z")
    assert decide(hospital(), event("N1", "P1"), history=history).flags == ()
    old = AccessHistory()
    old.record_confirmed_violation("M1", "2025-06-01T00:00:00.000000Z")
    d = decide(hospital(), event("M1", "P1"), history=old)
    assert RuleCode.REPEAT_OFFENDER not in codes(d) and d.multiplier == 1.0
