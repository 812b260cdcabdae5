"""The access auditor on hand-built scenarios: the explanations, consent denials and
unexplained accesses, and the scenario helpers the other auditor tests share
(``test_auditor_flags``: the other rules; ``test_auditor_state_alerts``: the reference
state's versioning, alert grouping and determinism)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from typing import Any

from careledger_core.event import AccessEvent, event_from_dict
from careledger_core.reference import ReferenceRecord, StaffBody, reference_from_dict
from verifiers.auditor import (
    AccessDecision,
    AccessHistory,
    AlertSeverity,
    AuditConfig,
    Auditor,
    ConsentVerdict,
    ExplanationKind,
    ReferenceState,
    RuleCode,
    evaluate,
)
from verifiers.auditor._time import US_PER_MINUTE, ts_to_us, us_to_ts
from verifiers.auditor.rules import core_consent_evaluator

# Monday 2 November 2026
MONDAY_9AM = "2026-11-02T09:00:00.000000Z"
T_DIRECTORY = "2026-01-01T00:00:00.000000Z"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}
DAY_SHIFT = [{"days": [0, 1, 2, 3, 4], "start_hour": 7, "end_hour": 15}]

_ids = itertools.count(1)


def at(minutes: float, base: str = MONDAY_9AM) -> str:
    return us_to_ts(ts_to_us(base) + int(minutes * US_PER_MINUTE))


def ref(
    kind: str,
    record_id: str,
    body: dict[str, Any],
    *,
    version: int = 1,
    effective_at: str = T_DIRECTORY,
    retracted: bool = False,
) -> ReferenceRecord:
    doc: dict[str, Any] = {
        "schema": "careledger.reference/1",
        "kind": kind,
        "record_id": record_id,
        "version": version,
        "recorded_at": effective_at,
        "effective_at": effective_at,
        "body": body,
    }
    if retracted:
        doc["retracted"] = True
    return reference_from_dict(doc)


def staff(
    user_id: str,
    family: str,
    role: str,
    department: str,
    *,
    given: str = "Alex",
    version: int = 1,
    effective_at: str = T_DIRECTORY,
    **extra: Any,
) -> ReferenceRecord:
    body = {
        "user_id": user_id,
        "family_name": family,
        "given_name": given,
        "roles": [role],
        "department": department,
        "status": "active",
        "start_date": "2020-01-01",
        "shifts": DAY_SHIFT,
        **extra,
    }
    return ref("staff", user_id, body, version=version, effective_at=effective_at)


def patient(
    patient_id: str, family: str, *, given: str = "Sam", version: int = 1, **extra: Any
) -> ReferenceRecord:
    body = {"patient_id": patient_id, "family_name": family, "given_name": given, "vip": False}
    body.update(extra)
    return ref("patient", patient_id, body, version=version)


def relationship(
    record_id: str,
    patient_id: str,
    *,
    kind: str = "care-team",
    start: str = "2026-11-01T08:00:00.000000Z",
    end: str | None = "2026-11-04T08:00:00.000000Z",
    effective_at: str | None = None,
    version: int = 1,
    retracted: bool = False,
    **who: str,
) -> ReferenceRecord:
    body: dict[str, Any] = {"patient_id": patient_id, "kind": kind, "start": start, **who}
    if end is not None:
        body["end"] = end
    return ref(
        "care-relationship",
        record_id,
        body,
        version=version,
        effective_at=effective_at or start,
        retracted=retracted,
    )


def consent(record_id: str, patient_id: str, *, status: str = "active") -> ReferenceRecord:
    body = {
        "resourceType": "Consent",
        "id": record_id,
        "status": status,
        "subject": {"reference": f"Patient/{patient_id}"},
        "decision": "deny",
    }
    return ref("consent", record_id, body)


def event(
    actor: str,
    patient_id: str,
    when: str = MONDAY_9AM,
    *,
    action: str = "R",
    outcome: int = 0,
    purpose: Sequence[str] = ("TREAT",),
    event_type: dict[str, str] | None = None,
    subtypes: Sequence[dict[str, str]] = (),
    address: str = "10.20.13.5",
    client: bool = True,
    outcome_desc: str | None = None,
    sensitivity: dict[str, Any] | None = None,
    roles: Sequence[str] = ("nurse",),
) -> AccessEvent:
    doc: dict[str, Any] = {
        "schema": "careledger.access-event/1",
        "event_id": str(uuid.UUID(int=next(_ids), version=4)),
        "occurred_at": when,
        "recorded_at": when,
        "event_type": event_type or REST,
        "action": action,
        "outcome": outcome,
        "actor": {"id": actor, "roles": list(roles), "is_requestor": True},
        "source": {"system": "ehr", "type": 4},
        "patient": {"id": patient_id},
    }
    if subtypes:
        doc["event_subtype"] = list(subtypes)
    if purpose:
        doc["purpose_of_use"] = list(purpose)
    if client:
        doc["client"] = {"address": address, "address_type": "ip"}
    if outcome_desc is not None:
        doc["outcome_desc"] = outcome_desc
    if sensitivity is not None:
        doc["sensitivity"] = sensitivity
    return event_from_dict(doc)


def btg_start(actor: str, patient_id: str, when: str, **kw: Any) -> AccessEvent:
    return event(
        actor,
        patient_id,
        when,
        action="E",
        event_type={"system": DCM, "code": "110113"},
        subtypes=[{"system": DCM, "code": "110127"}],
        **kw,
    )


def btg_stop(actor: str, patient_id: str, when: str) -> AccessEvent:
    return event(
        actor,
        patient_id,
        when,
        action="E",
        purpose=("ETREAT",),
        event_type={"system": DCM, "code": "110113"},
        subtypes=[{"system": DCM, "code": "110138"}],
    )


def login(actor: str, when: str, *, outcome: int = 0, address: str = "10.20.13.5") -> AccessEvent:
    return event(
        actor,
        "-",
        when,
        action="E",
        outcome=outcome,
        purpose=(),
        event_type={"system": DCM, "code": "110114"},
        subtypes=[{"system": DCM, "code": "110122"}],
        address=address,
    )


def hospital() -> list[ReferenceRecord]:
    """Cardiology: nurse N1 (team CARD-A), physician D1 (N1's manager), nurse N2; medicine:
    nurse M1; billing clerk B1; patients P1 (on N1's team), P2 (nobody's), P3 (VIP)."""
    return [
        staff(
            "N1",
            "Okafor",
            "nurse",
            "CARD",
            given="Ada",
            manager_id="D1",
            teams=["CARD-A"],
            address={"line": "1 Mill Lane", "city": "Northbridge", "postcode": "NB1 1AA"},
            phone="+44 20 7946 0001",
        ),
        staff("D1", "Haddad", "physician", "CARD"),
        staff("N2", "Kowalski", "nurse", "CARD"),
        staff("M1", "Tanaka", "nurse", "MED", teams=["MED-B"]),
        staff("B1", "Larsen", "billing-specialist", "BILL"),
        patient("P1", "Silva"),
        patient("P2", "Nguyen"),
        patient("P3", "Rossi", vip=True),
        relationship("CT-P1-N1", "P1", practitioner_id="N1"),
    ]


def decide(
    records: Sequence[ReferenceRecord],
    ev: AccessEvent,
    *,
    history: AccessHistory | None = None,
    config: AuditConfig | None = None,
    consent_evaluator: Any = None,
) -> AccessDecision:
    state = ReferenceState(records)
    cfg = config or AuditConfig()
    return evaluate(
        ev,
        state.as_of(ev.occurred_at),
        history or AccessHistory(cfg),
        config=cfg,
        consent_evaluator=consent_evaluator,
    )


def run(
    records: Sequence[ReferenceRecord], events: Sequence[AccessEvent], **kw: Any
) -> list[AccessDecision]:
    return Auditor(ReferenceState(records), **kw).run(events)


def codes(d: AccessDecision) -> set[RuleCode]:
    return set(d.codes())


def _patients(n: int) -> list[ReferenceRecord]:
    return [patient(f"Q{i}", f"Family{i}") for i in range(n)]


# --------------------------------------------------------------------------- explanations


def test_nurse_on_the_care_team_is_explained() -> None:
    d = decide(hospital(), event("N1", "P1"))
    assert d.explanation is not None
    assert d.explanation.kind == ExplanationKind.RELATIONSHIP
    assert (d.explanation.record_id, d.explanation.relationship_kind) == ("CT-P1-N1", "care-team")
    assert d.flags == ()
    assert d.searched == ("relationship",)


def test_a_relationship_naming_the_actors_team_explains_the_access() -> None:
    records = [*hospital(), relationship("ENC-P2", "P2", kind="encounter", team_id="CARD-A")]
    d = decide(records, event("N1", "P2"))
    assert d.explanation is not None and d.explanation.kind == ExplanationKind.TEAM
    assert d.explanation.via == "CARD-A" and d.flags == ()


def test_a_relationship_naming_the_actors_department_explains_the_access() -> None:
    records = [*hospital(), relationship("ENC-P2", "P2", kind="encounter", department="CARD")]
    d = decide(records, event("N2", "P2"))
    assert d.explanation is not None and d.explanation.kind == ExplanationKind.DEPARTMENT


def test_a_colleague_in_the_same_department_with_a_relationship_is_a_group_explanation() -> None:
    records = [*hospital(), relationship("APPT-P2", "P2", kind="appointment", practitioner_id="D1")]
    d = decide(records, event("N2", "P2"))
    assert d.explanation is not None and d.explanation.kind == ExplanationKind.GROUP
    assert d.explanation.via == "D1" and d.explanation.relationship_kind == "appointment"
    assert d.searched == ("relationship", "department", "group")


def test_a_relationship_of_a_colleague_in_another_department_explains_nothing() -> None:
    records = [*hospital(), relationship("APPT-P2", "P2", kind="appointment", practitioner_id="M1")]
    d = decide(records, event("N2", "P2"))
    assert d.explanation is None
    assert RuleCode.NO_EXPLANATION in codes(d)


def test_billing_after_discharge_is_explained_by_the_role_window() -> None:
    records = [
        *hospital(),
        relationship(
            "ENC-P2",
            "P2",
            kind="encounter",
            department="MED",
            start="2026-09-01T08:00:00.000000Z",
            end="2026-09-05T08:00:00.000000Z",
        ),
    ]
    d = decide(records, event("B1", "P2", roles=("billing-specialist",), purpose=("HPAYMT",)))
    assert d.explanation is not None and d.explanation.kind == ExplanationKind.ROLE
    assert d.explanation.via == "billing-specialist"
    # the same access by a nurse is not explained: the encounter ended two months ago
    assert decide(records, event("M1", "P2")).explanation is None


def test_access_a_few_hours_before_an_appointment_is_explained_and_weeks_after_is_not() -> None:
    appt = relationship(
        "APPT-P2",
        "P2",
        kind="appointment",
        practitioner_id="N2",
        start=at(6 * 60),
        end=at(7 * 60),
        effective_at=T_DIRECTORY,
    )
    assert decide([*hospital(), appt], event("N2", "P2")).explained
    late = event("N2", "P2", at(30 * 24 * 60))
    assert not decide([*hospital(), appt], late).explained


def test_an_encounter_registered_just_after_the_first_access_still_explains_it() -> None:
    enc = relationship(
        "ENC-P2", "P2", kind="encounter", practitioner_id="N2", start=at(-5), effective_at=at(20)
    )
    assert decide([*hospital(), enc], event("N2", "P2")).explained


def test_a_retracted_relationship_explains_nothing() -> None:
    records = [
        *hospital(),
        relationship("ENC-P2", "P2", practitioner_id="N2"),
        relationship(
            "ENC-P2",
            "P2",
            practitioner_id="N2",
            version=2,
            retracted=True,
            effective_at="2026-11-01T12:00:00.000000Z",
        ),
    ]
    assert not decide(records, event("N2", "P2")).explained


def test_a_consent_permit_explains_the_access() -> None:
    def permit(consents: list[dict[str, Any]], ev: AccessEvent, actor: StaffBody | None) -> Any:
        assert [c["id"] for c in consents] == ["C-P2"]
        assert actor is not None and actor.user_id == "N2"
        return ConsentVerdict("permit", consent_id="C-P2", detail="provision 0")

    d = decide([*hospital(), consent("C-P2", "P2")], event("N2", "P2"), consent_evaluator=permit)
    assert d.explanation is not None and d.explanation.kind == ExplanationKind.CONSENT
    assert d.explanation.record_id == "C-P2" and d.flags == ()


def test_login_events_about_no_patient_search_no_explanation() -> None:
    d = decide(hospital(), login("N1", MONDAY_9AM))
    assert d.searched == () and d.explanation is None and d.flags == ()


# --------------------------------------------------------------------------- consent denied


def _deny(consents: list[dict[str, Any]], ev: AccessEvent, actor: StaffBody | None) -> Any:
    return ConsentVerdict("deny", consent_id=consents[0]["id"], detail="deny N2")


def test_access_that_went_through_a_consent_denial_is_flagged_critical() -> None:
    records = [*hospital(), consent("C-P1", "P1")]
    d = decide(records, event("N1", "P1"), consent_evaluator=_deny)
    f = d.flag(RuleCode.CONSENT_DENIED)
    assert f is not None and f.severity == AlertSeverity.CRITICAL
    assert f.evidence["consent_id"] == "C-P1" and f.evidence["enforced"] is False
    assert d.explained  # the care team explains it, the consent still forbids it


def test_a_refused_access_honouring_a_consent_denial_is_only_low() -> None:
    records = [*hospital(), consent("C-P1", "P1")]
    d = decide(records, event("N1", "P1", outcome=8), consent_evaluator=_deny)
    f = d.flag(RuleCode.CONSENT_DENIED)
    assert f is not None and f.severity == AlertSeverity.LOW and f.evidence["enforced"]


def test_no_consent_flag_without_an_active_consent() -> None:
    records = [*hospital(), consent("C-P1", "P1", status="inactive")]
    d = decide(records, event("N1", "P1"), consent_evaluator=_deny)
    assert d.flags == () and d.searched[0] == "consent"


def test_the_core_consent_evaluator_adapter_denies_an_emergency_only_consent() -> None:
    emergency_only = {
        "resourceType": "Consent",
        "id": "C-P2",
        "status": "active",
        "subject": {"reference": "Patient/P2"},
        "decision": "deny",
        "provision": [{"purpose": [{"code": "ETREAT"}]}],
    }
    records = [
        *hospital(),
        ref("consent", "C-P2", emergency_only),
        relationship("ENC-P2", "P2", practitioner_id="N2"),
    ]
    denied = decide(records, event("N2", "P2"), consent_evaluator=core_consent_evaluator)
    assert RuleCode.CONSENT_DENIED in codes(denied)
    emergency = decide(
        records, event("N2", "P2", purpose=("ETREAT",)), consent_evaluator=core_consent_evaluator
    )
    assert RuleCode.CONSENT_DENIED not in codes(emergency)


# --------------------------------------------------------------------------- no explanation


def test_nurse_from_another_department_without_a_relationship_is_flagged() -> None:
    d = decide(hospital(), event("M1", "P1"))
    f = d.flag(RuleCode.NO_EXPLANATION)
    assert f is not None and f.severity == AlertSeverity.MEDIUM
    assert f.evidence["searched"] == ["relationship", "team", "department", "group"]
    assert f.evidence["relationships_in_window"] == 1


def test_a_failed_unexplained_access_is_flagged_low() -> None:
    d = decide(hospital(), event("M1", "P1", outcome=8))
    f = d.flag(RuleCode.NO_EXPLANATION)
    assert f is not None and f.severity == AlertSeverity.LOW
