"""Audit scenarios: reference data consistent with the simulated traffic, labelled
inappropriate accesses of every rule type, and the auditor measured against them."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from careledger_core.event import canonical_event_bytes
from careledger_core.reference import (
    CareRelationshipBody,
    ConsentBody,
    PatientBody,
    StaffBody,
    canonical_reference_bytes,
    decode_and_canonicalize_reference,
)
from commands.cli import main as cli_main
from producers.simulator import DEFAULT_START, HospitalModel, simulate
from producers.simulator.scenarios import Scenario, simulate_audit_scenario
from verifiers.auditor import AccessDecision, Auditor, ReferenceState, RuleCode
from verifiers.auditor.consent import parse_consent
from verifiers.auditor.rules import core_consent_evaluator

SEED = 7


@pytest.fixture(scope="module")
def model() -> HospitalModel:
    return HospitalModel(seed=SEED)


@pytest.fixture(scope="module")
def big(model: HospitalModel) -> Scenario:
    return simulate_audit_scenario(model, 50_000, SEED, DEFAULT_START, 0.01)


@pytest.fixture(scope="module")
def audited(model: HospitalModel) -> tuple[Scenario, list[AccessDecision]]:
    scenario = simulate_audit_scenario(model, 20_000, SEED, DEFAULT_START, 0.01)
    auditor = Auditor(
        ReferenceState(scenario.reference_records), consent_evaluator=core_consent_evaluator
    )
    for actor_id, at in scenario.confirmed_violations:
        auditor.history.record_confirmed_violation(actor_id, at)
    return scenario, auditor.run(scenario.events)


def _fingerprint(s: Scenario) -> tuple[list[bytes], list[bytes], list[str]]:
    return (
        [canonical_reference_bytes(r) for r in s.reference_records],
        [canonical_event_bytes(e) for e in s.events],
        [g.to_json() for g in s.ground_truth],
    )


def test_deterministic_from_seed_and_start(model: HospitalModel) -> None:
    a = simulate_audit_scenario(model, 4_000, 3, DEFAULT_START, 0.02)
    b = simulate_audit_scenario(HospitalModel(seed=SEED), 4_000, 3, DEFAULT_START, 0.02)
    assert _fingerprint(a) == _fingerprint(b)
    later = DEFAULT_START + dt.timedelta(days=7)
    c = simulate_audit_scenario(model, 4_000, 3, later, 0.02)
    assert _fingerprint(c)[1] != _fingerprint(a)[1]


def test_plain_simulate_is_unchanged_by_the_scenario_option(model: HospitalModel) -> None:
    plain = [canonical_event_bytes(e) for e in simulate(model, 2_000, 1)]
    again = [canonical_event_bytes(e) for e in simulate(model, 2_000, 1, exclusive_sessions=False)]
    assert plain == again


def test_every_reference_record_validates(big: Scenario) -> None:
    kinds: Counter[str] = Counter()
    for rec in big.reference_records:
        data = canonical_reference_bytes(rec)
        decoded, canonical = decode_and_canonicalize_reference(data)
        assert decoded == rec and canonical == data
        kinds[rec.kind] += 1
        if rec.kind == "consent":
            parse_consent(dict(rec.body))  # the evaluator understands every consent
    assert set(kinds) == {"staff", "patient", "care-relationship", "consent"}
    versions = {
        r.parsed.fhir_version for r in big.reference_records if isinstance(r.parsed, ConsentBody)
    }
    assert versions == {"R4", "R5"}


def test_reference_data_matches_the_model(model: HospitalModel, big: Scenario) -> None:
    staff: dict[str, StaffBody] = {}
    patients: dict[str, PatientBody] = {}
    for r in big.reference_records:
        if isinstance(r.parsed, StaffBody) and r.version == 1:
            staff[r.record_id] = r.parsed
        elif isinstance(r.parsed, PatientBody):
            patients[r.record_id] = r.parsed
    assert len(staff) == len(model.staff) and len(patients) == len(model.patients)
    for m in model.staff:
        body = staff[m.id]
        assert body.roles == (m.role,) and body.department == m.department
        assert body.status == "active" and body.shifts
        for weekday in range(7):
            for hour in range(24):
                covered = any(s.covers(weekday, hour) for s in body.shifts)
                assert covered == model.on_duty(m, weekday, hour)
    for p in model.patients:
        pbody = patients[p.mrn]
        if p.sensitivity is None:
            assert not pbody.sensitivity_labels
        else:
            assert pbody.confidentiality == p.sensitivity.confidentiality
            assert pbody.sensitivity_labels == p.sensitivity.labels
            assert pbody.vip == ("CEL" in p.sensitivity.labels)
    linked = [(b.employee_user_id, b.patient_id) for b in patients.values() if b.employee_user_id]
    assert linked and all(staff[uid].patient_id == pid for uid, pid in linked)
    # every care-team member has a relationship with the patient
    rels: dict[str, set[str]] = defaultdict(set)
    for r in big.reference_records:
        if isinstance(r.parsed, CareRelationshipBody) and r.parsed.practitioner_id:
            rels[r.parsed.patient_id].add(r.parsed.practitioner_id)
    for p in model.patients:
        assert {model.staff[i].id for i in p.care_team} <= rels[p.mrn]


def test_records_are_in_force_before_they_are_needed(big: Scenario) -> None:
    first = big.events[0].occurred_at
    for rec in big.reference_records:
        if rec.kind in ("staff", "patient") and rec.version == 1:
            assert rec.effective_at < first
    # a departure is a new version after the person's last legitimate access
    injected = {g.event_id for g in big.ground_truth}
    gone = {r.record_id: r.effective_at for r in big.reference_records if r.version == 2}
    assert gone and len(gone) == len(big.departures)
    for e in big.events:
        if e.actor.id in gone and e.event_id not in injected:
            assert e.occurred_at < gone[e.actor.id]


def test_events_are_ordered_and_the_truth_names_them(big: Scenario) -> None:
    times = [e.occurred_at for e in big.events]
    assert times == sorted(times)
    by_id = {e.event_id: e for e in big.events}
    assert len(by_id) == len(big.events)
    for g in big.ground_truth:
        e = by_id[g.event_id]
        assert (g.actor_id, g.patient_id) == (e.actor.id, e.patient.id)
        assert g.rules


def test_every_rule_type_is_injected_at_the_rate(big: Scenario) -> None:
    codes = Counter(r for g in big.ground_truth for r in g.rules)
    assert set(codes) == set(RuleCode), set(RuleCode) - set(codes)
    share = big.injected / len(big.events)
    assert 0.007 <= share <= 0.013, share
    bursts = Counter(g.group for g in big.ground_truth if RuleCode.VOLUME_SPIKE in g.rules)
    assert len(bursts) == 1 and next(iter(bursts.values())) >= 100  # one actor, one burst


def _covered(decisions: list[AccessDecision]) -> dict[RuleCode, set[str]]:
    """Event ids each rule caught: flagged events and the events a flag groups (bursts)."""
    out: dict[RuleCode, set[str]] = defaultdict(set)
    for d in decisions:
        for f in d.flags:
            out[f.code].add(d.event_id)
            out[f.code].update(f.evidence.get("related_event_ids", ()))
    return out


def test_the_auditor_explains_legitimate_traffic_and_finds_the_injected(
    audited: tuple[Scenario, list[AccessDecision]],
) -> None:
    scenario, decisions = audited
    # the injected accesses and the traffic's own curious looks (labelled too)
    truth = {g.event_id: g for g in scenario.all_truth()}
    own = [d for d in decisions if not d.amends]
    legit = [d for d in own if d.event_id not in truth and d.patient_id != "-"]
    explained = sum(d.explained for d in legit) / len(legit)
    print(f"\nlegitimate patient accesses explained: {explained:.4f} of {len(legit):,}")
    assert explained >= 0.95

    covered = _covered(decisions)
    flagged: dict[RuleCode, set[str]] = defaultdict(set)
    for d in decisions:
        for f in d.flags:
            flagged[f.code].add(d.event_id)
    hits = total = 0
    print(f"{'rule':32} {'n':>5} {'recall':>7} {'precision':>9}")
    for code in RuleCode:
        labelled = [g for g in truth.values() if code in g.rules]
        found = sum(1 for g in labelled if g.event_id in covered[code])
        tp = sum(1 for x in flagged[code] if x in truth and code in truth[x].rules)
        precision = tp / len(flagged[code]) if flagged[code] else float("nan")
        recall = found / len(labelled) if labelled else float("nan")
        print(f"{code:32} {len(labelled):5} {recall:7.3f} {precision:9.3f}")
        hits += found
        total += len(labelled)
    print(f"{'overall':32} {total:5} {hits / total:7.3f}")
    assert hits / total >= 0.8


def test_cli_writes_the_ground_truth_and_never_prints_patient_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth, out = tmp_path / "truth.jsonl", tmp_path / "events.jsonl"
    argv = ["simulate", "--count", "3000", "--seed", "5", "--with-reference"]
    argv += ["--ground-truth", str(truth), "--output", str(out), "--inappropriate-rate", "0.02"]
    assert cli_main(argv) == 0
    lines = [json.loads(x) for x in truth.read_text().splitlines()]
    assert lines and all({"event_id", "rules", "actor_id", "patient_id"} <= set(x) for x in lines)
    assert sum(1 for x in lines if x.get("injected", True)) >= 14
    rows = [json.loads(x) for x in out.read_bytes().splitlines()]
    schemas = Counter(r["schema"] for r in rows)
    assert schemas["careledger.reference/1"] > 0 and schemas["careledger.access-event/1"] > 3000
    err = capsys.readouterr().err
    assert "MRN" not in err


def test_the_traffic_own_curious_looks_are_labelled_apart(big: Scenario) -> None:
    injected = {g.event_id for g in big.ground_truth}
    assert big.background_truth
    for g in big.background_truth:
        assert not g.injected and g.event_id not in injected
        assert RuleCode.NO_EXPLANATION in g.rules
    assert all(g.injected for g in big.ground_truth)


def test_a_warm_up_period_holds_only_legitimate_traffic() -> None:
    model = HospitalModel(seed=SEED)
    scenario = simulate_audit_scenario(model, 6_000, SEED, DEFAULT_START, 0.02, warmup_events=4_000)
    assert scenario.scored_from is not None
    warm = [e for e in scenario.events if e.occurred_at < scenario.scored_from]
    assert len(warm) == 4_000
    injected = {g.event_id for g in scenario.ground_truth}
    assert injected and not injected & {e.event_id for e in warm}
    scored = len(scenario.events) - len(warm)
    assert abs(scored - 6_000) <= 10
