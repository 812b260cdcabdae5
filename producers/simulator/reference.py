"""The simulator's reference data: ``build_reference_records(model, start)``.

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
during the simulated period; :func:`producers.simulator.scenarios.simulate_audit_scenario`
picks them from the traffic (after the person's last legitimate access) so legitimate
traffic never comes from an inactive account.

``reference_topic_setting(kind)`` names the ``Settings`` attribute of each kind's topic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from random import Random
from typing import Any, Final, Literal

from careledger_core.reference import REFERENCE_SCHEMA, ReferenceRecord, reference_from_dict

from .plan import (
    _US_DAY,
    _US_HOUR,
    _US_MIN,
    HospitalPeople,
    _date,
    _fmt,
    _given,
    _Plan,
    _plan,
    _surname,
)
from .vocabulary import DEFAULT_START, SHIFT_HOURS, SimPatient, StaffMember, to_epoch_us

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://loinc.org"
WORKFORCE_ROLE = "urn:careledger:code-system:workforce-role"
CITY = "Northbridge"
#: purposes of the operational roles (registration, billing, records, IT)
_OPS_PURPOSES: Final = ("HOPERAT", "HPAYMT", "PATRQT", "HSYSADMIN")


# --------------------------------------------------------------------------- departures
@dataclasses.dataclass(frozen=True)
class Departure:
    """A staff member leaves (``terminated``) or is ``suspended`` at ``at_us``."""

    staff_index: int
    status: Literal["terminated", "suspended"]
    at_us: int


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


def _staff_body(model: HospitalPeople, plan: _Plan, m: StaffMember, hired: str) -> dict[str, Any]:
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


def _practitioners(model: HospitalPeople, p: SimPatient) -> list[dict[str, Any]]:
    return [
        {
            "role": _concept(PARTICIPATION, "PRCP"),
            "reference": {"reference": f"Practitioner/{model.staff[i].id}"},
        }
        for i in p.care_team
    ]


def _consents(
    model: HospitalPeople, plan: _Plan, p: SimPatient, rng: Random, t0: int
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
                    # No period on the root: in R4 it would bound the root rule itself
                    # (an exception to OPTOUT, i.e. a permit), not the consent; the
                    # consent is in force from its ledger effective time (ADR 0021).
                    "provision": {
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
    model: HospitalPeople,
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
    model: HospitalPeople, p: SimPatient, rng: Random, t0: int
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
