"""The reference plan: facts about the model's people that the reference data and the
injected scenarios share.

``_plan(model)`` (cached on the model) decides, deterministically from the model: the
addresses and phones of staff and patients, which patients are employees (the
``EMP``-labelled records), which are relatives of a clinician (same surname, household,
address, phone or emergency contact), emergency contacts, consent choices (opt-outs,
emergency-only consents, consents that deny one practitioner, research permits) and each
department's manager. Also the small time and name helpers the reference data, the
injections and the scenarios use.

The plan needs only the model's people (``HospitalPeople``), so that ``HospitalModel``
can build its own reference data without an import loop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from random import Random
from typing import Final, Protocol

from .vocabulary import FIRST_NAMES, SimPatient, StaffMember, _Clock, to_epoch_us

_US_MIN: Final = 60_000_000
_US_HOUR: Final = 60 * _US_MIN
_US_DAY: Final = 24 * _US_HOUR

STREETS = (
    "High Street", "Station Road", "Church Lane", "Mill Road", "Park Avenue", "Victoria Road",
    "Queens Road", "Green Lane", "Manor Way", "Orchard Close", "Riverside", "Kings Road",
    "Chapel Street", "Elm Grove", "Oak Drive", "Ash Court", "Willow Walk", "Harbour View",
    "Bridge Street", "School Lane", "North Street", "Market Place", "Hill Rise", "Cedar Road",
    "Meadow Way", "Castle Street", "West End", "Beech Avenue", "Forge Lane", "Granary Row",
)  # fmt: skip
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


class HospitalPeople(Protocol):
    """What the reference data needs of a ``HospitalModel``: its people.

    A protocol rather than the class, so that ``model`` (which builds its reference data
    with ``reference``) is not imported back from here."""

    seed: int
    staff: list[StaffMember]
    patients: list[SimPatient]
    research_cohort: tuple[int, ...]


# --------------------------------------------------------------------------- reference plan
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


def _unrelated(model: HospitalPeople, m: StaffMember, p: SimPatient) -> bool:
    """No care relationship links ``m`` (or their department or team) to ``p``."""
    if m.index in p.care_team or m.department == p.department:
        return False
    staff = model.staff
    return all(staff[i].department != m.department for i in p.care_team)


def _plan(model: HospitalPeople) -> _Plan:
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
