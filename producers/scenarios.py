"""Audit scenarios: the simulator's reference data and labelled inappropriate accesses.

``build_reference_records(model, start)`` (also ``HospitalModel.reference_records``) is
the reference data the simulated traffic relies on, as ``careledger.reference/1``
records:

* a ``staff`` record per workforce member: roles, department, teams (the department's
  shift team, e.g. ``CARD-day``), manager (the department's first physician, or its
  first member), status, start date, address, phone, shifts in UTC exactly as the
  simulator schedules them, and ``patient_id`` for employees who are also patients;
* a ``patient`` record per patient: names (surnames collide with staff surnames as in
  life), addresses, phones, VIP flag (label ``CEL``), confidentiality and labels equal
  to the sensitivity the simulator puts on the patient's events, employee links (the
  ``EMP``-labelled patients are employees) and emergency contacts; a few patients are
  relatives of a clinician (same household, phone or emergency contact);
* ``care-relationship`` records for every care-team assignment the traffic relies on:
  the encounter (attending physician, responsible department), care-team assignments of
  the nurses (with their shift team), medication and lab orders (pharmacist, lab
  technician), imaging referrals (radiologist), consults, and follow-up appointments;
* FHIR ``Consent`` resources (R4 and R5) for a share of patients: research permits
  (purpose HRESCH, role researcher) for the researchers' cohort, opt-outs with
  exceptions (care team, emergency treatment, operations), emergency-only consents and
  consents that deny one named practitioner.

Staff departures (terminated or suspended) are new versions of staff records, effective
during the simulated period; :func:`simulate_audit_scenario` picks them from the traffic
(after the person's last legitimate access) so legitimate traffic never comes from an
inactive account.

``simulate_audit_scenario(model, count, seed, start, inappropriate_rate)`` returns a
:class:`Scenario`: reference records, ``count`` access events in ``occurred_at`` order
(legitimate traffic from ``simulate`` plus injected inappropriate accesses of every rule
type) and the ground truth of the injected events: their expected
:class:`verifiers.auditor.rules.RuleCode` s (that module is pure: only the codes are
used). Everything is deterministic from ``(model, count, seed, start, rate)``.

Timing choices mirror the auditor's defaults where a rule depends on time (shift grace
1 h before / 2 h after, shared-credentials window 2 min, denied-burst window 10 min):
injected events are placed so that only the intended rules apply.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Sequence
from random import Random
from typing import Any, Final, Literal

from careledger_core.event import (
    EVENT_SCHEMA,
    AccessEvent,
    Action,
    Client,
    Coding,
    ObjectRef,
    Outcome,
)
from careledger_core.reference import REFERENCE_SCHEMA, ReferenceRecord, reference_from_dict
from careledger_core.rule_codes import RuleCode

from .simulator import (
    DCM_EMERGENCY_OVERRIDE_STARTED,
    DCM_EMERGENCY_OVERRIDE_STOPPED,
    DCM_EXPORT,
    DCM_LOGIN,
    DCM_SECURITY_ALERT,
    DCM_USER_AUTHENTICATION,
    DEFAULT_START,
    FIRST_NAMES,
    LIFECYCLE_DISCLOSE,
    NO_PATIENT,
    REST_READ,
    ROLE_DOMAIN_RESOURCE,
    ROLE_PATIENT,
    ROLE_REPORT,
    SHIFT_HOURS,
    TYPE_REST,
    HospitalModel,
    SimPatient,
    StaffMember,
    _Clock,
    _uuid4,
    simulate,
    to_epoch_us,
)

__all__ = [
    "Departure",
    "GroundTruth",
    "Scenario",
    "build_reference_records",
    "reference_topic_setting",
    "simulate_audit_scenario",
]

_US_MIN: Final = 60_000_000
_US_HOUR: Final = 60 * _US_MIN
_US_DAY: Final = 24 * _US_HOUR
# Mirrors of the auditor's defaults (verifiers.auditor.config.AuditConfig)
_GRACE_BEFORE_US: Final = 1 * _US_HOUR
_GRACE_AFTER_US: Final = 2 * _US_HOUR
_SHARED_WINDOW_US: Final = 2 * _US_MIN
_DENIED_WINDOW_US: Final = 10 * _US_MIN

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://loinc.org"
WORKFORCE_ROLE = "urn:careledger:code-system:workforce-role"
CITY = "Northbridge"
STREETS = (
    "High Street", "Station Road", "Church Lane", "Mill Road", "Park Avenue", "Victoria Road",
    "Queens Road", "Green Lane", "Manor Way", "Orchard Close", "Riverside", "Kings Road",
    "Chapel Street", "Elm Grove", "Oak Drive", "Ash Court", "Willow Walk", "Harbour View",
    "Bridge Street", "School Lane", "North Street", "Market Place", "Hill Rise", "Cedar Road",
    "Meadow Way", "Castle Street", "West End", "Beech Avenue", "Forge Lane", "Granary Row",
)  # fmt: skip
#: purposes of the operational roles (registration, billing, records, IT)
_OPS_PURPOSES: Final = ("HOPERAT", "HPAYMT", "PATRQT", "HSYSADMIN")
_CLINICAL: Final = frozenset({"physician", "nurse"})
_ANY_PATIENT_DEPTS: Final = frozenset({"PHARM", "LAB", "RAD", "REG", "BILL", "HIM", "IT", "RES"})


def _fmt(us: int) -> str:
    return _Clock().format(us)


def _date(us: int) -> str:
    return _fmt(us)[:10]


def _surname(name: str) -> str:
    return name.split(" ", 1)[1]


def _given(name: str) -> str:
    return name.split(" ", 1)[0]


def _us(ts: str) -> int:
    return to_epoch_us(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")))


def _weekday_hour(us: int) -> tuple[int, int]:
    days, rest = divmod(us, _US_DAY)
    return (days + 3) % 7, rest // _US_HOUR


# --------------------------------------------------------------------------- reference plan
@dataclasses.dataclass(frozen=True)
class Departure:
    """A staff member leaves (``terminated``) or is ``suspended`` at ``at_us``."""

    staff_index: int
    status: Literal["terminated", "suspended"]
    at_us: int


@dataclasses.dataclass
class _Plan:
    """Facts about the model's people that the reference data and injections share."""

    staff_address: list[tuple[str, str]]  # (line, postcode)
    staff_phone: list[str]
    patient_address: list[tuple[str, str]]
    patient_phone: list[str]
    patient_name: list[tuple[str, str]]  # (given, family) as in the patient record
    employee_of_patient: dict[int, int]  # patient index -> staff index
    patient_of_employee: dict[int, int]  # staff index -> patient index
    family: dict[int, tuple[int, str]]  # patient index -> (staff index, link kind)
    family_of_staff: dict[int, int]  # staff index -> patient index
    contacts: dict[int, tuple[str, str, str, str | None]]  # patient -> (family, given, phone, uid)
    deny_practitioner: dict[int, int]  # patient -> staff index denied by a consent
    opt_out: dict[int, str]  # patient -> "opt-out-r5" | "emergency-only-r4"
    research: frozenset[int]  # patients with a research permit
    manager: dict[str, int]  # department -> staff index of its manager


def _unrelated(model: HospitalModel, m: StaffMember, p: SimPatient) -> bool:
    """No care relationship links ``m`` (or their department or team) to ``p``."""
    if m.index in p.care_team or m.department == p.department:
        return False
    staff = model.staff
    return all(staff[i].department != m.department for i in p.care_team)


def _plan(model: HospitalModel) -> _Plan:
    cached: _Plan | None = getattr(model, "_careledger_plan", None)
    if cached is not None:
        return cached
    rng = Random(f"careledger-reference/{model.seed}/{len(model.staff)}/{len(model.patients)}")
    staff, patients = model.staff, model.patients
    n_staff, n_pat = len(staff), len(patients)
    slots = rng.sample(range(len(STREETS) * 500), n_staff + n_pat)

    def address(slot: int) -> tuple[str, str]:
        street, number = divmod(slot, 500)
        return (
            f"{number + 1} {STREETS[street]}",
            f"NB{street % 9 + 1} {number // 50 + 1}{'ABDEFGHJLN'[number % 10]}"
            f"{'PQRSTUWXYZ'[street % 10]}",
        )

    def phone(k: int) -> str:
        return f"+44 7{700000000 + k}"

    staff_address = [address(slots[i]) for i in range(n_staff)]
    patient_address = [address(slots[n_staff + i]) for i in range(n_pat)]
    staff_phone = [phone(i) for i in range(n_staff)]
    patient_phone = [phone(100_000 + i) for i in range(n_pat)]
    patient_name = [(_given(p.name), _surname(p.name)) for p in patients]
    staff_names = {(_given(m.name), _surname(m.name)) for m in staff}

    def clean(p: SimPatient) -> bool:
        return p.sensitivity is None

    # employees who are also patients: the EMP-labelled records (at least 3)
    employee_of_patient: dict[int, int] = {}
    emp = [p for p in patients if p.sensitivity is not None and "EMP" in p.sensitivity.labels]
    extra = [p for p in patients if clean(p)]
    rng.shuffle(extra)
    candidates = emp + extra[: max(0, 3 - len(emp))]
    used_staff: set[int] = set()
    for p in candidates:
        pool = [
            m
            for m in staff
            if m.role in _CLINICAL
            and m.index not in used_staff
            and not m.panel.count(p.index)
            and _unrelated(model, m, p)
        ]
        if not pool:
            continue
        m = rng.choice(pool)
        used_staff.add(m.index)
        employee_of_patient[p.index] = m.index
        patient_name[p.index] = (_given(m.name), _surname(m.name))
        patient_address[p.index] = staff_address[m.index]
        patient_phone[p.index] = staff_phone[m.index]
    patient_of_employee = {s: p for p, s in employee_of_patient.items()}

    # relatives of clinicians: same surname (a natural collision when there is one)
    family: dict[int, tuple[int, str]] = {}
    family_of_staff: dict[int, int] = {}
    clinicians = [m for m in staff if m.role in _CLINICAL and m.index not in used_staff]
    rng.shuffle(clinicians)
    kinds = ("household", "address", "contact", "phone")
    want = max(6, n_staff // 40)
    free = [p for p in patients if clean(p) and p.index not in employee_of_patient]
    for m in clinicians:
        if len(family) >= want:
            break
        surname = _surname(m.name)
        relatives = [q for q in free if q.index not in family and _unrelated(model, m, q)]
        same = [q for q in relatives if patient_name[q.index][1] == surname]
        if not relatives:
            continue
        p = rng.choice(same or relatives)
        kind = kinds[len(family) % len(kinds)]
        family[p.index] = (m.index, kind)
        family_of_staff[m.index] = p.index
        patient_name[p.index] = (patient_name[p.index][0], surname)
        if kind in ("household", "address"):
            patient_address[p.index] = staff_address[m.index]
        if kind in ("household", "phone"):
            patient_phone[p.index] = staff_phone[m.index]
        used_staff.add(m.index)

    # emergency contacts (never a clinician's name or phone, except the relatives above)
    contacts: dict[int, tuple[str, str, str, str | None]] = {}
    for p in patients:
        link = family.get(p.index)
        if link is not None and link[1] == "contact":
            m = staff[link[0]]
            contacts[p.index] = (_surname(m.name), _given(m.name), staff_phone[m.index], m.id)
        elif rng.random() < 0.4:
            fam = patient_name[p.index][1]
            given = rng.choice(FIRST_NAMES)
            while (given, fam) in staff_names:
                given = rng.choice(FIRST_NAMES)
            contacts[p.index] = (fam, given, phone(300_000 + p.index), None)

    # consents
    cohort = frozenset(model.research_cohort)
    special = set(employee_of_patient) | set(family)
    others = [p for p in patients if clean(p) and p.index not in special]
    outside = [p for p in others if p.index not in cohort]
    opt_out: dict[int, str] = {}
    for p in outside:
        r = rng.random()
        if r < 0.05:
            opt_out[p.index] = "opt-out-r5"
        elif r < 0.08:
            opt_out[p.index] = "emergency-only-r4"
    deny_practitioner: dict[int, int] = {}
    clin_all = [m for m in staff if m.role in _CLINICAL and m.index not in used_staff]
    for p in outside:
        # not in the research cohort: the evaluator reports one permit among several
        # (the lowest id), and a base permit does not explain a researcher's access
        if p.index in opt_out or rng.random() >= 0.08:
            continue
        pool = [
            m
            for m in rng.sample(clin_all, min(40, len(clin_all)))
            if _unrelated(model, m, p) and _surname(m.name) != patient_name[p.index][1]
        ]
        if pool:
            deny_practitioner[p.index] = pool[0].index
    research = frozenset(p for p in cohort if p not in opt_out)

    manager: dict[str, int] = {}
    for m in staff:
        if m.role == "physician":
            manager.setdefault(m.department, m.index)
    for m in staff:
        manager.setdefault(m.department, m.index)

    plan = _Plan(
        staff_address=staff_address,
        staff_phone=staff_phone,
        patient_address=patient_address,
        patient_phone=patient_phone,
        patient_name=patient_name,
        employee_of_patient=employee_of_patient,
        patient_of_employee=patient_of_employee,
        family=family,
        family_of_staff=family_of_staff,
        contacts=contacts,
        deny_practitioner=deny_practitioner,
        opt_out=opt_out,
        research=research,
        manager=manager,
    )
    model._careledger_plan = plan  # type: ignore[attr-defined]
    return plan


# --------------------------------------------------------------------------- reference records
def _record(
    kind: str, record_id: str, body: dict[str, Any], at_us: int, version: int = 1
) -> ReferenceRecord:
    ts = _fmt(at_us)
    return reference_from_dict(
        {
            "schema": REFERENCE_SCHEMA,
            "kind": kind,
            "record_id": record_id,
            "version": version,
            "recorded_at": ts,
            "effective_at": ts,
            "body": body,
        }
    )


def _shifts(m: StaffMember) -> list[dict[str, Any]]:
    start, end = SHIFT_HOURS[m.shift]
    return [{"days": sorted(m.workdays), "start_hour": start, "end_hour": end}]


def _team(m: StaffMember) -> str | None:
    if m.role in ("physician", "nurse", "pharmacist", "lab-technician", "radiologist"):
        return f"{m.department}-{m.shift}"
    return None


def _staff_body(model: HospitalModel, plan: _Plan, m: StaffMember, hired: str) -> dict[str, Any]:
    line, postcode = plan.staff_address[m.index]
    body: dict[str, Any] = {
        "user_id": m.id,
        "family_name": _surname(m.name),
        "given_name": _given(m.name),
        "roles": [m.role],
        "department": m.department,
        "status": "active",
        "start_date": hired,
        "address": {"line": line, "city": CITY, "postcode": postcode},
        "phone": plan.staff_phone[m.index],
        "shifts": _shifts(m),
    }
    mgr = plan.manager.get(m.department)
    if mgr is not None and mgr != m.index:
        body["manager_id"] = model.staff[mgr].id
    team = _team(m)
    if team is not None:
        body["teams"] = [team]
    p = plan.patient_of_employee.get(m.index)
    if p is not None:
        body["patient_id"] = model.patients[p].mrn
    return body


def _coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def _concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [_coding(system, code)]}


def _practitioners(model: HospitalModel, p: SimPatient) -> list[dict[str, Any]]:
    return [
        {
            "role": _concept(PARTICIPATION, "PRCP"),
            "reference": {"reference": f"Practitioner/{model.staff[i].id}"},
        }
        for i in p.care_team
    ]


def _consents(
    model: HospitalModel, plan: _Plan, p: SimPatient, rng: Random, t0: int
) -> list[tuple[str, dict[str, Any], int]]:
    """(consent id, FHIR Consent resource, effective microseconds) of one patient."""
    out: list[tuple[str, dict[str, Any], int]] = []
    signed = t0 - (30 + rng.randrange(700)) * _US_DAY
    date = _date(signed)
    ref = {"reference": f"Patient/{p.mrn}"}
    category = [_concept(CONSENT_CATEGORY, "59284-0")]
    org = [{"reference": "Organization/northbridge-general"}]
    ops = [_coding(ACT_REASON, c) for c in _OPS_PURPOSES]
    if p.index in plan.research:
        cid = f"consent-research-{p.mrn}"
        out.append(
            (
                cid,
                {
                    "resourceType": "Consent",
                    "id": cid,
                    "status": "active",
                    "scope": _concept(CONSENT_SCOPE, "research"),
                    "category": category,
                    "patient": ref,
                    "dateTime": date,
                    "organization": org,
                    "policyRule": _concept(ACT_CODE, "OPTIN"),
                    "provision": {
                        "type": "permit",
                        "period": {"start": date},
                        "actor": [{"role": _concept(WORKFORCE_ROLE, "researcher")}],
                        "purpose": [_coding(ACT_REASON, "HRESCH")],
                    },
                },
                signed,
            )
        )
    kind = plan.opt_out.get(p.index)
    if kind == "opt-out-r5":
        cid = f"consent-optout-{p.mrn}"
        out.append(
            (
                cid,
                {
                    "resourceType": "Consent",
                    "id": cid,
                    "status": "active",
                    "category": category,
                    "subject": ref,
                    "date": date,
                    "controller": org,
                    "period": {"start": date},
                    "decision": "deny",
                    "provision": [
                        {
                            "actor": _practitioners(model, p),
                            "purpose": [_coding(ACT_REASON, "TREAT")],
                        },
                        {"purpose": [_coding(ACT_REASON, "ETREAT"), *ops]},
                    ],
                },
                signed,
            )
        )
    elif kind == "emergency-only-r4":
        cid = f"consent-emergency-{p.mrn}"
        out.append(
            (
                cid,
                {
                    "resourceType": "Consent",
                    "id": cid,
                    "status": "active",
                    "scope": _concept(CONSENT_SCOPE, "patient-privacy"),
                    "category": category,
                    "patient": ref,
                    "dateTime": date,
                    "organization": org,
                    "policyRule": _concept(ACT_CODE, "OPTOUT"),
                    "provision": {
                        "period": {"start": date},
                        "provision": [
                            {"type": "permit", "purpose": [_coding(ACT_REASON, "ETREAT")]},
                            {
                                "type": "permit",
                                "actor": _practitioners(model, p),
                                "purpose": [_coding(ACT_REASON, "TREAT")],
                            },
                            {"type": "permit", "purpose": ops},
                        ],
                    },
                },
                signed,
            )
        )
    denied = plan.deny_practitioner.get(p.index)
    if denied is not None:
        actor = {
            "role": _concept(PARTICIPATION, "PRCP"),
            "reference": {"reference": f"Practitioner/{model.staff[denied].id}"},
        }
        cid = f"consent-deny-{p.mrn}"
        if p.index % 2:
            resource: dict[str, Any] = {
                "resourceType": "Consent",
                "id": cid,
                "status": "active",
                "category": category,
                "subject": ref,
                "date": date,
                "controller": org,
                "decision": "permit",
                "provision": [{"actor": [actor]}],
            }
        else:
            resource = {
                "resourceType": "Consent",
                "id": cid,
                "status": "active",
                "scope": _concept(CONSENT_SCOPE, "patient-privacy"),
                "category": category,
                "patient": ref,
                "dateTime": date,
                "organization": org,
                "policyRule": _concept(ACT_CODE, "OPTIN"),
                "provision": {"type": "deny", "actor": [actor]},
            }
        out.append((cid, resource, signed))
    return out


def build_reference_records(
    model: HospitalModel,
    start: dt.datetime = DEFAULT_START,
    *,
    departures: Sequence[Departure] = (),
) -> list[ReferenceRecord]:
    """The reference data behind ``simulate(model, ..., start)``, by effective time."""
    plan = _plan(model)
    rng = Random(f"careledger-reference-records/{model.seed}/{_fmt(to_epoch_us(start))}")
    t0 = to_epoch_us(start)
    staff, patients = model.staff, model.patients
    out: list[ReferenceRecord] = []
    directory_at = t0 - 30 * _US_DAY
    hired: list[str] = []
    for m in staff:
        hired.append(_date(t0 - (90 + rng.randrange(4000)) * _US_DAY))
        out.append(_record("staff", m.id, _staff_body(model, plan, m, hired[-1]), directory_at))
    for d in departures:
        m = staff[d.staff_index]
        body = _staff_body(model, plan, m, hired[m.index])
        body["status"] = d.status
        if d.status == "terminated":
            body["end_date"] = max(_date(d.at_us), hired[m.index])
        out.append(_record("staff", m.id, body, d.at_us, version=2))
    for p in patients:
        given, family = plan.patient_name[p.index]
        line, postcode = plan.patient_address[p.index]
        body = {
            "patient_id": p.mrn,
            "family_name": family,
            "given_name": given,
            "vip": p.sensitivity is not None and "CEL" in p.sensitivity.labels,
            "address": {"line": line, "city": CITY, "postcode": postcode},
            "phone": plan.patient_phone[p.index],
        }
        emp = plan.employee_of_patient.get(p.index)
        if emp is not None:
            body["employee_user_id"] = staff[emp].id
        contact = plan.contacts.get(p.index)
        if contact is not None:
            c: dict[str, Any] = {
                "family_name": contact[0],
                "given_name": contact[1],
                "phone": contact[2],
            }
            if contact[3] is not None:
                c["user_id"] = contact[3]
            body["emergency_contacts"] = [c]
        if p.sensitivity is not None:
            body["confidentiality"] = p.sensitivity.confidentiality
            body["sensitivity_labels"] = list(p.sensitivity.labels)
        out.append(_record("patient", p.mrn, body, directory_at))
        out.extend(_relationships(model, p, rng, t0))
        for cid, resource, at in _consents(model, plan, p, rng, t0):
            out.append(_record("consent", cid, resource, at))
    out.sort(key=lambda r: (r.effective_at, r.kind, r.record_id, r.version))
    return out


def _relationships(
    model: HospitalModel, p: SimPatient, rng: Random, t0: int
) -> list[ReferenceRecord]:
    staff = model.staff
    admitted = t0 - _US_HOUR - rng.randrange(10 * _US_DAY)
    enc = p.encounter_id
    team = [staff[i] for i in p.care_team]
    physicians = [m for m in team if m.role == "physician"]
    out: list[ReferenceRecord] = []
    body: dict[str, Any] = {
        "patient_id": p.mrn,
        "kind": "encounter",
        "department": p.department,
        "start": _fmt(admitted),
    }
    if physicians:
        body["practitioner_id"] = physicians[0].id
    out.append(_record("care-relationship", enc, body, admitted))
    for m in team:
        if physicians and m is physicians[0]:
            continue
        assigned = admitted + rng.randrange(4 * _US_HOUR)
        kind = {
            "physician": "referral",  # a consultant asked to see the patient
            "nurse": "care-team",
            "pharmacist": "order",
            "lab-technician": "order",
            "radiologist": "referral",
        }.get(m.role, "care-team")
        rel: dict[str, Any] = {
            "patient_id": p.mrn,
            "kind": kind,
            "practitioner_id": m.id,
            "department": m.department,
            "start": _fmt(assigned),
        }
        team_id = _team(m)
        if kind == "care-team" and team_id is not None:
            rel["team_id"] = team_id
        out.append(_record("care-relationship", f"{kind}-{enc}-{m.id}", rel, admitted))
    if physicians and rng.random() < 0.3:
        booked = admitted + rng.randrange(2 * _US_DAY)
        at = t0 + (1 + rng.randrange(20)) * _US_DAY + rng.randrange(9, 17) * _US_HOUR
        out.append(
            _record(
                "care-relationship",
                f"appointment-{enc}",
                {
                    "patient_id": p.mrn,
                    "kind": "appointment",
                    "practitioner_id": physicians[0].id,
                    "department": p.department,
                    "start": _fmt(at),
                    "end": _fmt(at + 30 * _US_MIN),
                },
                min(booked, t0),
            )
        )
    return out


#: Settings attribute of the topic of each reference kind.
_TOPIC_SETTING: Final = {
    "consent": "topic_consents",
    "care-relationship": "topic_care_relationships",
    "staff": "topic_workforce",
    "patient": "topic_patients",
}


def reference_topic_setting(kind: str) -> str:
    """Name of the ``Settings`` attribute holding the topic of reference ``kind``."""
    return _TOPIC_SETTING[kind]


# --------------------------------------------------------------------------- scenario
@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """One injected inappropriate access and the rules expected to flag it."""

    event_id: str
    rules: tuple[RuleCode, ...]
    actor_id: str
    patient_id: str
    group: str | None = None  # events of one burst share a group
    #: False: an inappropriate access the simulator's own traffic contains (a curious
    #: look outside the care team), not one injected by the scenario
    injected: bool = True

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "rules": [str(r) for r in self.rules],
            "actor_id": self.actor_id,
            "patient_id": self.patient_id,
        }
        if self.group is not None:
            d["group"] = self.group
        if not self.injected:
            d["injected"] = False
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class Scenario:
    reference_records: list[ReferenceRecord]
    events: list[AccessEvent]  # occurred_at order
    ground_truth: list[GroundTruth]
    #: (actor id, when): violations confirmed before the simulated period (case history),
    #: what makes a later flag on that actor a REPEAT_OFFENDER
    confirmed_violations: list[tuple[str, str]]
    departures: list[Departure]
    #: inappropriate accesses already in the legitimate traffic (``simulate``'s rare
    #: curious looks outside the care team that nothing explains), labelled the same way
    background_truth: list[GroundTruth] = dataclasses.field(default_factory=list)
    #: first event time of the measured period (None: no warm-up, all of it)
    scored_from: str | None = None

    @property
    def injected(self) -> int:
        return len(self.ground_truth)

    def all_truth(self) -> list[GroundTruth]:
        return sorted([*self.ground_truth, *self.background_truth], key=lambda g: g.event_id)


def _background_truth(
    model: HospitalModel, legit: Sequence[AccessEvent], offenders: frozenset[str] = frozenset()
) -> list[GroundTruth]:
    """The simulator's curious accesses: a member with a care-team panel opening a chart
    outside it (not in a break-the-glass episode) that no relationship explains.
    ``offenders``: actors with confirmed past violations (REPEAT_OFFENDER)."""
    plan = _plan(model)
    by_id = {m.id: m for m in model.staff}
    by_mrn = {p.mrn: p for p in model.patients}
    panels = {m.id: frozenset(m.panel) for m in model.staff}
    out: list[GroundTruth] = []
    for e in legit:
        m = by_id.get(e.actor.id)
        p = by_mrn.get(e.patient.id)
        if m is None or p is None or not m.panel or p.index in panels[m.id]:
            continue
        if "ETREAT" in e.purpose_of_use or e.event_type.code == DCM_SECURITY_ALERT.code:
            continue
        if not _unrelated(model, m, p):
            continue  # explained by the department or a colleague: not detectable
        rules = [_R.NO_EXPLANATION]
        if p.sensitivity is not None:
            rules.append(_R.VIP_OR_SENSITIVE_UNEXPLAINED)
        if p.index in plan.opt_out or plan.deny_practitioner.get(p.index) == m.index:
            rules.append(_R.CONSENT_DENIED)
        if plan.employee_of_patient.get(p.index) == m.index:
            rules.append(_R.SELF_ACCESS)
        elif plan.patient_name[p.index][1] == _surname(m.name):
            rules.append(_R.FAMILY)
        if m.id in offenders and (e.outcome == 0 or len(rules) > 1):
            rules.append(_R.REPEAT_OFFENDER)  # a flag of medium severity or more, weighted
        out.append(GroundTruth(e.event_id, tuple(rules), m.id, p.mrn, injected=False))
    out.extend(_unstopped_overrides(legit))
    out.sort(key=lambda g: g.event_id)
    return out


def _unstopped_overrides(legit: Iterable[AccessEvent]) -> list[GroundTruth]:
    """Break-the-glass starts of the traffic that no stop follows (about 4 % of the
    simulator's overrides): BREAK_THE_GLASS at its worse severity."""
    starts: dict[tuple[str, str], AccessEvent] = {}
    out: list[GroundTruth] = []
    window = 4 * _US_HOUR  # the auditor's default btg_stop_window
    for e in legit:
        if e.event_type.code != DCM_SECURITY_ALERT.code:
            continue
        key = (e.actor.id, e.patient.id)
        codes = {c.code for c in e.event_subtype}
        if DCM_EMERGENCY_OVERRIDE_STARTED.code in codes:
            old = starts.pop(key, None)
            if old is not None:
                out.append(_unstopped(old))
            starts[key] = e
        elif DCM_EMERGENCY_OVERRIDE_STOPPED.code in codes:
            old = starts.pop(key, None)
            if old is not None and _us(e.occurred_at) - _us(old.occurred_at) > window:
                out.append(_unstopped(old))
    out.extend(_unstopped(e) for e in starts.values())
    return out


def _unstopped(e: AccessEvent) -> GroundTruth:
    rules = (_R.BREAK_THE_GLASS,)
    return GroundTruth(e.event_id, rules, e.actor.id, e.patient.id, injected=False)


_R = RuleCode
_Unit = list[tuple[AccessEvent, tuple[RuleCode, ...] | None, str | None]]


class _Injector:
    def __init__(
        self,
        model: HospitalModel,
        legit: list[AccessEvent],
        rng: Random,
        t_lo: int,
        t_hi: int,
    ) -> None:
        self.model = model
        self.plan = _plan(model)
        self.rng = rng
        self.t_lo, self.t_hi = t_lo, t_hi
        self.by_id = {m.id: m for m in model.staff}
        self.times: dict[str, list[int]] = {}
        self.last_event: dict[str, AccessEvent] = {}
        for e in legit:
            self.times.setdefault(e.actor.id, []).append(_us(e.occurred_at))
        self.legit = legit
        self.used: set[int] = set()
        self.departures: list[Departure] = []
        self.confirmed: list[tuple[str, str]] = []
        self.offenders: list[StaffMember] = []
        self.touched: set[str] = set()  # actors of injected events
        #: actors who break the glass in the legitimate traffic (always reviewed: as
        #: repeat offenders those reviews would be weighted too)
        self.overriders = {e.actor.id for e in legit if "ETREAT" in e.purpose_of_use}
        self.groups = 0
        p = self.plan
        self.clean_patients = [
            q
            for q in model.patients
            if q.sensitivity is None
            and q.index not in p.employee_of_patient
            and q.index not in p.family
            and q.index not in p.opt_out
            and q.index not in p.deny_practitioner
        ]
        self.sensitive_patients = [
            q
            for q in model.patients
            if q.sensitivity is not None
            and q.index not in p.employee_of_patient
            and q.index not in p.opt_out
            and q.index not in p.deny_practitioner
        ]
        # reserve the people the reference data links, so their other injections do not mix
        self.used.update(p.employee_of_patient.values())
        self.used.update(s for s, _ in p.family.values())

    def observe(self, events: Iterable[AccessEvent]) -> None:
        """Count injected events as activity, so later injections keep clear of them."""
        for e in events:
            insort(self.times.setdefault(e.actor.id, []), _us(e.occurred_at))
            self.touched.add(e.actor.id)

    # -- time and people ---------------------------------------------------------------
    def on_duty(self, m: StaffMember, us: int) -> bool:
        return self.model.on_duty(m, *_weekday_hour(us))

    def on_shift_with_grace(self, m: StaffMember, us: int) -> bool:
        return any(self.on_duty(m, t) for t in (us, us - _GRACE_AFTER_US, us + _GRACE_BEFORE_US))

    def idle(self, m: StaffMember, a: int, b: int) -> bool:
        ts = self.times.get(m.id, [])
        return bisect_left(ts, a) == bisect_right(ts, b)

    def slot(
        self,
        pool: Sequence[StaffMember],
        before: int = 3 * _US_MIN,
        after: int = 3 * _US_MIN,
        span: int = 0,
        tries: int = 400,
        reserved: bool = False,
    ) -> tuple[StaffMember, int] | None:
        """A member of ``pool`` on duty and idle around a random instant (``reserved``:
        the pool names people the reference data links to a patient on purpose)."""
        rng = self.rng
        if not reserved:
            pool = [m for m in pool if m.index not in self.used]
        if not pool:
            return None
        for _ in range(tries):
            t = self.t_lo + rng.randrange(max(1, self.t_hi - self.t_lo - span))
            m = pool[rng.randrange(len(pool))]
            if (
                self.on_duty(m, t)
                and self.on_duty(m, t + span)
                and self.idle(m, t - before, t + span + after)
            ):
                return m, t
        return None

    def clinicians(self) -> list[StaffMember]:
        return [m for m in self.model.staff if m.role in _CLINICAL]

    def stranger(self, m: StaffMember, pool: Sequence[SimPatient]) -> SimPatient | None:
        """A patient of ``pool`` nothing links to ``m`` (no relationship, no family,
        different surname)."""
        rng = self.rng
        surname = _surname(m.name)
        for _ in range(200):
            p = pool[rng.randrange(len(pool))]
            if _unrelated(self.model, m, p) and self.plan.patient_name[p.index][1] != surname:
                return p
        return None

    def unexplained(self, p: SimPatient) -> tuple[RuleCode, ...]:
        if p.sensitivity is not None:
            return (_R.NO_EXPLANATION, _R.VIP_OR_SENSITIVE_UNEXPLAINED)
        return (_R.NO_EXPLANATION,)

    # -- events -------------------------------------------------------------------------
    def client(self, m: StaffMember) -> Client:
        ws = self.model.workstations[m.department]
        return ws[self.rng.randrange(len(ws))]

    def vpn(self) -> Client:
        v = self.model.vpn_clients
        return v[self.rng.randrange(len(v))]

    def event(
        self,
        t: int,
        m: StaffMember,
        p: SimPatient | None,
        *,
        client: Client,
        session: str,
        action: Action = "R",
        purpose: tuple[str, ...] = ("TREAT",),
        outcome: Outcome = 0,
        desc: str | None = None,
        event_type: Coding = TYPE_REST,
        subtype: tuple[Coding, ...] = (REST_READ,),
        object_type: str = "Observation",
    ) -> AccessEvent:
        rng = self.rng
        source = self.model.sources["ehr", m.campus]
        if p is None:
            return AccessEvent(
                schema=EVENT_SCHEMA,
                event_id=_uuid4(rng.getrandbits(128)),
                occurred_at=_fmt(t),
                recorded_at=_fmt(t + 40_000),
                event_type=DCM_USER_AUTHENTICATION,
                event_subtype=(DCM_LOGIN,),
                action="E",
                outcome=outcome,
                outcome_desc=desc,
                actor=m.actor,
                client=client,
                session_ref=session if outcome == 0 else None,
                source=self.model.sources["sso", m.campus],
                patient=NO_PATIENT,
            )
        if object_type == "Patient":
            obj = ObjectRef(type="Patient", id=f"Patient/{p.mrn}", role=ROLE_PATIENT)
        else:
            role = ROLE_REPORT if object_type == "DocumentReference" else ROLE_DOMAIN_RESOURCE
            obj = ObjectRef(type=object_type, id=f"{object_type}/{rng.getrandbits(28)}", role=role)
        return AccessEvent(
            schema=EVENT_SCHEMA,
            event_id=_uuid4(rng.getrandbits(128)),
            occurred_at=_fmt(t),
            recorded_at=_fmt(t + 120_000),
            event_type=event_type,
            event_subtype=subtype,
            action=action,
            outcome=outcome,
            outcome_desc=desc,
            purpose_of_use=purpose,
            actor=m.actor,
            client=client,
            session_ref=session,
            source=source,
            patient=p.patient,
            object=obj,
            sensitivity=p.sensitivity,
            correlation_id=f"{rng.getrandbits(64):016x}",
        )

    def session(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def group(self, name: str) -> str:
        self.groups += 1
        return f"{name}-{self.groups}"

    def read(self, t: int, m: StaffMember, p: SimPatient, **kw: Any) -> AccessEvent:
        kw.setdefault("client", self.client(m))
        kw.setdefault("session", self.session())
        return self.event(t, m, p, **kw)

    # -- one injection per rule type (each returns events with labels; None: unlabelled)
    def consent_denied(self, k: int) -> _Unit | None:
        plan, model = self.plan, self.model
        if k % 2 == 0 and plan.deny_practitioner:
            denied = sorted(plan.deny_practitioner)
            p = model.patients[denied[self.rng.randrange(len(denied))]]
            m = model.staff[plan.deny_practitioner[p.index]]
            found = None if m.index in self.used else self.slot([m], tries=300, reserved=True)
            if found is not None:
                return [(self.read(found[1], m, p), (_R.CONSENT_DENIED, _R.NO_EXPLANATION), None)]
        if not plan.opt_out:
            return None
        found = self.slot(self.clinicians())
        if found is None:
            return None
        actor, t = found
        pats = [model.patients[i] for i in sorted(plan.opt_out)]
        target = self.stranger(actor, pats)
        if target is None:
            return None
        rules = (_R.CONSENT_DENIED, *self.unexplained(target))
        return [(self.read(t, actor, target), rules, None)]

    def snoop(self, k: int) -> _Unit | None:
        found = self.slot(self.clinicians())
        if found is None:
            return None
        m, t = found
        p = self.stranger(m, self.clean_patients)
        if p is None:
            return None
        return [(self.read(t, m, p, object_type="Patient"), (_R.NO_EXPLANATION,), None)]

    def break_the_glass(self, k: int) -> _Unit | None:
        found = self.slot(self.clinicians(), span=20 * _US_MIN)
        if found is None:
            return None
        m, t = found
        p = self.stranger(m, self.clean_patients)
        if p is None:
            return None
        client, session = self.client(m), self.session()
        no_reason = k % 2 == 0
        start = self.event(
            t,
            m,
            p,
            client=client,
            session=session,
            action="E",
            purpose=() if no_reason else ("ETREAT",),
            event_type=DCM_SECURITY_ALERT,
            subtype=(DCM_EMERGENCY_OVERRIDE_STARTED,),
            object_type="Patient",
        )
        out: _Unit = [(start, (_R.BREAK_THE_GLASS,), None)]
        t += 20_000_000
        for _ in range(1 + self.rng.randrange(2)):
            t += 5_000_000 + self.rng.randrange(60_000_000)
            out.append(
                (
                    self.event(t, m, p, client=client, session=session, purpose=("ETREAT",)),
                    (_R.BREAK_THE_GLASS,),
                    None,
                )
            )
        if no_reason:  # stopped properly: only the missing reason is wrong
            t += 30_000_000
            stop = self.event(
                t,
                m,
                p,
                client=client,
                session=session,
                action="E",
                purpose=("ETREAT",),
                event_type=DCM_SECURITY_ALERT,
                subtype=(DCM_EMERGENCY_OVERRIDE_STOPPED,),
                object_type="Patient",
            )
            out.append((stop, None, None))
        return out

    def self_access(self, k: int) -> _Unit | None:
        items = sorted(self.plan.patient_of_employee.items())
        if not items:
            return None
        for j in range(len(items)):
            s, pi = items[(k + j) % len(items)]
            m, p = self.model.staff[s], self.model.patients[pi]
            found = self.slot([m], tries=300, reserved=True)
            if found is None:
                continue
            action: Action = "U" if k % 3 == 2 else "R"
            e = self.read(found[1], m, p, action=action, object_type="Patient")
            return [(e, (_R.SELF_ACCESS, *self.unexplained(p)), None)]
        return None

    def family(self, k: int) -> _Unit | None:
        items = sorted(self.plan.family.items())
        if k % 4 == 3 or not items:  # a shared surname only, unexplained
            found = self.slot(self.clinicians())
            if found is None:
                return None
            m, t = found
            surname = _surname(m.name)
            pool = [
                q
                for q in self.clean_patients
                if self.plan.patient_name[q.index][1] == surname and _unrelated(self.model, m, q)
            ]
            if not pool:
                return None
            p = pool[self.rng.randrange(len(pool))]
            return [(self.read(t, m, p), (_R.FAMILY, _R.NO_EXPLANATION), None)]
        for j in range(len(items)):
            pi, (s, _kind) = items[(k + j) % len(items)]
            m, p = self.model.staff[s], self.model.patients[pi]
            found = self.slot([m], tries=300, reserved=True)
            if found is not None:
                return [(self.read(found[1], m, p), (_R.FAMILY, _R.NO_EXPLANATION), None)]
        return None

    def co_worker(self, k: int) -> _Unit | None:
        items = sorted(self.plan.patient_of_employee.items())
        if not items:
            return None
        s, pi = items[k % len(items)]
        emp, p = self.model.staff[s], self.model.patients[pi]
        surname = self.plan.patient_name[pi][1]
        pool = [
            m
            for m in self.model.staff
            if m.role in _CLINICAL
            and m.index != s
            and m.department == emp.department
            and _unrelated(self.model, m, p)
            and _surname(m.name) != surname
        ]
        found = self.slot(pool)
        if found is None:
            return None
        m, t = found
        return [(self.read(t, m, p), (_R.CO_WORKER, *self.unexplained(p)), None)]

    def vip(self, k: int) -> _Unit | None:
        if not self.sensitive_patients:
            return None
        found = self.slot(self.clinicians())
        if found is None:
            return None
        m, t = found
        p = self.stranger(m, self.sensitive_patients)
        if p is None:
            return None
        return [(self.read(t, m, p), self.unexplained(p), None)]

    def inactive(self, k: int) -> _Unit | None:
        rng = self.rng
        cap = max(3, len(self.model.staff) // 40)
        if len(self.departures) >= cap:  # the same people come back again
            for _ in range(50):
                d = self.departures[rng.randrange(len(self.departures))]
                m = self.model.staff[d.staff_index]
                earliest = max(d.at_us + 30 * _US_MIN, self.t_lo)
                t = earliest + rng.randrange(max(1, self.t_hi - earliest))
                if t < self.t_hi and self.idle(m, t - 3 * _US_MIN, t + 3 * _US_MIN):
                    return self._comeback(m, t)
            return None
        pool = [
            m
            for m in self.clinicians()
            if m.index not in self.used
            and m.panel
            and self.times.get(m.id)
            and self.times[m.id][-1] < self.t_hi - 2 * _US_HOUR
        ]
        if not pool:
            return None
        m = pool[rng.randrange(len(pool))]
        self.used.add(m.index)
        left = self.times[m.id][-1] + 20 * _US_MIN
        status: Literal["terminated", "suspended"] = "terminated" if k % 3 else "suspended"
        self.departures.append(Departure(m.index, status, left))
        earliest = max(left + 30 * _US_MIN, self.t_lo)  # inside the measured period
        t = earliest + rng.randrange(max(1, self.t_hi - earliest))
        return self._comeback(m, t)

    def _comeback(self, m: StaffMember, t: int) -> _Unit:
        """A login and a read by a departed account, remotely."""
        rng = self.rng
        client, session = self.vpn(), self.session()
        p = self.model.patients[m.panel[rng.randrange(len(m.panel))]]
        login = self.event(t, m, None, client=client, session=session)
        read = self.read(t + 20_000_000, m, p, client=client, session=session)
        return [
            (login, self._inactive_rules(m, t), None),
            (read, self._inactive_rules(m, t + 20_000_000), None),
        ]

    def _inactive_rules(self, m: StaffMember, t: int) -> tuple[RuleCode, ...]:
        if self.on_shift_with_grace(m, t):
            return (_R.INACTIVE_USER,)
        return (_R.INACTIVE_USER, _R.AFTER_HOURS)

    def volume(self, size: int) -> _Unit | None:
        roles = ("him-specialist", "registration-clerk", "billing-specialist")
        pool = [m for m in self.model.staff if m.role in roles and m.index not in self.used]
        if not pool:
            return None
        rng = self.rng
        span = size * 6_000_000
        rules: tuple[RuleCode, ...] = (_R.VOLUME_SPIKE,)
        chosen: tuple[StaffMember, int] | None = None
        for _ in range(3000):
            m = pool[rng.randrange(len(pool))]
            t = self.t_lo + rng.randrange(max(1, self.t_hi - self.t_lo - span))
            if (
                self.on_shift_with_grace(m, t)
                and self.on_shift_with_grace(m, t + span)
                and self.idle(m, t, t + span + 65 * _US_MIN)
            ):
                chosen = m, t
                break
        if chosen is None:  # after hours then (an off-duty scrape)
            found = None
            for _ in range(3000):
                m = pool[rng.randrange(len(pool))]
                t = self.t_lo + rng.randrange(max(1, self.t_hi - self.t_lo - span))
                if self.idle(m, t - 65 * _US_MIN, t + span + 65 * _US_MIN):
                    found = m, t
                    break
            if found is None:
                return None
            chosen = found
            rules += (_R.AFTER_HOURS,)
        m, t = chosen
        self.used.add(m.index)
        purpose = {"him-specialist": "PATRQT", "registration-clerk": "HOPERAT"}.get(
            m.role, "HPAYMT"
        )
        skip = set(self.plan.employee_of_patient) | set(self.plan.family)
        candidates = [q for q in self.model.patients if q.index not in skip]
        patients = rng.sample(candidates, min(size, len(candidates)))
        client, session, g = self.client(m), self.session(), self.group("burst")
        out: _Unit = []
        for p in patients:
            t += 2_000_000 + rng.randrange(6_000_000)
            e = self.event(
                t, m, p, client=client, session=session, purpose=(purpose,), object_type="Patient"
            )
            out.append((e, rules, g))
        return out

    def after_hours(self, k: int) -> _Unit | None:
        rng = self.rng
        pool = [m for m in self.clinicians() if m.index not in self.used and m.panel]
        if not pool:
            return None
        for _ in range(2000):
            m = pool[rng.randrange(len(pool))]
            t = self.t_lo + rng.randrange(self.t_hi - self.t_lo)
            if not self.on_shift_with_grace(m, t) and self.idle(
                m, t - 3 * _US_HOUR, t + 3 * _US_HOUR
            ):
                p = self.model.patients[m.panel[rng.randrange(len(m.panel))]]
                return [(self.read(t, m, p, client=self.vpn()), (_R.AFTER_HOURS,), None)]
        return None

    def shared_credentials(self, k: int) -> _Unit | None:
        rng = self.rng
        legit = self.legit
        for _ in range(3000):
            e = legit[rng.randrange(len(legit))]
            m = self.by_id.get(e.actor.id)
            if m is None or m.index in self.used or not m.panel or m.role not in _CLINICAL:
                continue
            te = _us(e.occurred_at)
            if te < self.t_lo:  # keep injections inside the measured period
                continue
            t = te + 10_000_000 + rng.randrange(50_000_000)
            if not self.idle(m, te + 1, t + _SHARED_WINDOW_US + 30_000_000):
                continue
            if e.client is None:
                continue
            client = self.vpn()
            if client.address == e.client.address:
                continue
            p = self.model.patients[m.panel[rng.randrange(len(m.panel))]]
            return [(self.read(t, m, p, client=client), (_R.SHARED_CREDENTIALS,), None)]
        return None

    def denied_burst(self, k: int) -> _Unit | None:
        found = self.slot(
            [m for m in self.model.staff if m.role in _CLINICAL],
            before=_DENIED_WINDOW_US + _US_MIN,
            after=_DENIED_WINDOW_US + _US_MIN,
            span=5 * _US_MIN,
        )
        if found is None:
            return None
        m, t = found
        client, g = self.client(m), self.group("denied")
        out: _Unit = []
        logins = k % 2 == 0
        for _ in range(6):
            t += 10_000_000 + self.rng.randrange(30_000_000)
            if logins:
                e = self.event(
                    t, m, None, client=client, session="", outcome=4, desc="invalid credentials"
                )
                out.append((e, (_R.DENIED_BURST,), g))
            else:
                p = self.stranger(m, self.clean_patients)
                if p is None:
                    return None
                e = self.read(
                    t,
                    m,
                    p,
                    client=client,
                    outcome=4,
                    desc="access denied: not authorized for this patient",
                )
                out.append((e, (_R.DENIED_BURST, _R.NO_EXPLANATION), g))
        return out

    def disclosure(self, k: int) -> _Unit | None:
        pool = [m for m in self.model.staff if m.role == "him-specialist" or m.role in _CLINICAL]
        pool = [m for m in pool if m.role == "him-specialist" or m.panel]
        found = self.slot(pool)
        if found is None:
            return None
        m, t = found
        if m.panel:
            p = self.model.patients[m.panel[self.rng.randrange(len(m.panel))]]
        else:
            p = self.clean_patients[self.rng.randrange(len(self.clean_patients))]
        purpose: tuple[str, ...] = ("HMARKT",) if k % 2 == 0 else ()
        e = self.read(
            t,
            m,
            p,
            action="E",
            purpose=purpose,
            event_type=DCM_EXPORT,
            subtype=(LIFECYCLE_DISCLOSE,),
            object_type="DocumentReference",
        )
        rules: tuple[RuleCode, ...] = (_R.DISCLOSURE_WITHOUT_PURPOSE,)
        if p.index in self.plan.opt_out:  # an opt-out refuses marketing and unstated uses
            rules += (_R.CONSENT_DENIED,)
        return [(e, rules, None)]

    def repeat_offender(self, k: int) -> _Unit | None:
        cap = max(3, len(self.model.staff) // 40)
        if len(self.offenders) >= cap:  # known offenders offend again
            found = self.slot(self.offenders, reserved=True)
        else:  # not from the emergency departments: their routine overrides would be
            # weighted too (any flag of medium severity or more)
            pool = [
                m
                for m in self.clinicians()
                if m.department not in ("ED", "ICU")
                and m.id not in self.touched
                and m.id not in self.overriders
            ]
            found = self.slot(pool)
        if found is None:
            return None
        m, t = found
        p = self.stranger(m, self.clean_patients)
        if p is None:
            return None
        if m not in self.offenders:
            self.used.add(m.index)
            self.offenders.append(m)
            at = self.t_lo - (60 + self.rng.randrange(200)) * _US_DAY
            self.confirmed.append((m.id, _fmt(at)))
        return [(self.read(t, m, p), (_R.NO_EXPLANATION, _R.REPEAT_OFFENDER), None)]


def simulate_audit_scenario(
    model: HospitalModel,
    count: int,
    seed: int,
    start: dt.datetime = DEFAULT_START,
    inappropriate_rate: float = 0.01,
    *,
    warmup_events: int = 0,
) -> Scenario:
    """``count`` events (about ``inappropriate_rate`` of them injected), their reference
    data and the ground truth of the injected ones. Deterministic from the inputs.

    ``warmup_events``: legitimate traffic simulated *before* those ``count`` events,
    with nothing injected into it: the history an auditor that has been running for a
    while has (per-actor and per-role baselines). ``Scenario.scored_from`` is where
    the measured period starts."""
    if not 0.0 <= inappropriate_rate < 0.5:
        raise ValueError("inappropriate_rate must be in [0, 0.5)")
    if warmup_events < 0:
        raise ValueError("warmup_events must be >= 0")
    target = round(count * inappropriate_rate)
    legit = list(
        simulate(
            model, max(0, count - target) + warmup_events, seed, start, exclusive_sessions=True
        )
    )
    scored_from = legit[warmup_events].occurred_at if 0 < warmup_events < len(legit) else None
    rng = Random(f"careledger-scenario/{seed}/{_fmt(to_epoch_us(start))}/{inappropriate_rate}")
    injected: _Unit = []
    inj: _Injector | None = None
    if target and legit:
        t_lo = to_epoch_us(start) + 10 * _US_MIN
        if scored_from is not None:
            t_lo = max(t_lo, _us(scored_from) + 10 * _US_MIN)
        t_hi = _us(legit[-1].occurred_at)
        t_hi = max(t_lo + _US_HOUR, t_hi - 5 * _US_MIN)
        inj = _Injector(model, legit, rng, t_lo, t_hi)
        burst = max(60, min(300, target // 5))
        injected.extend(inj.volume(burst) or [])
        inj.observe(e for e, _, _ in injected)
        kinds = (
            inj.consent_denied,
            inj.snoop,
            inj.break_the_glass,
            inj.self_access,
            inj.family,
            inj.co_worker,
            inj.vip,
            inj.inactive,
            inj.after_hours,
            inj.shared_credentials,
            inj.denied_burst,
            inj.disclosure,
            inj.repeat_offender,
        )
        k = 0
        misses = 0
        while misses < 3 * len(kinds) and (
            k < len(kinds) or sum(1 for _, r, _ in injected if r) < target
        ):
            unit = kinds[k % len(kinds)](k // len(kinds))
            k += 1
            if unit:
                injected.extend(unit)
                inj.observe(e for e, _, _ in unit)
                misses = 0
            else:
                misses += 1
    events = legit + [e for e, _, _ in injected]
    events.sort(key=lambda e: e.occurred_at)
    truth = [
        GroundTruth(e.event_id, rules, e.actor.id, e.patient.id, group)
        for e, rules, group in injected
        if rules
    ]
    truth.sort(key=lambda g: g.event_id)
    departures = inj.departures if inj is not None else []
    records = build_reference_records(model, start, departures=departures)
    return Scenario(
        reference_records=records,
        events=events,
        ground_truth=truth,
        confirmed_violations=inj.confirmed if inj is not None else [],
        departures=departures,
        background_truth=_background_truth(
            model, legit, frozenset(a for a, _ in inj.confirmed) if inj is not None else frozenset()
        ),
        scored_from=scored_from,
    )


def ground_truth_lines(truth: Iterable[GroundTruth]) -> Iterable[str]:
    for g in truth:
        yield g.to_json() + "\n"
