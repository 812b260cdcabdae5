"""The fictional hospital the simulator draws from: ``HospitalModel``.

``HospitalModel`` is a small fictional hospital ("Northbridge General"): a workforce
(ids, names, roles, departments, campuses, shift patterns and working days),
patients (MRNs, a responsible department, an encounter, a care team drawn from
the workforce, sensitivity labels on some records), workstations with plausible
addresses, and the source systems that emit audit records (EHR, PACS imaging,
LIS lab, pharmacy, single sign-on).

``HospitalModel.reference_records(start)`` is the reference data behind the traffic
(workforce directory, patient demographics, care relationships, FHIR consents), built
by :mod:`producers.simulator.reference`.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect
from collections.abc import Sequence
from random import Random

from careledger_core.event import Actor, Client, Confidentiality, Patient, Sensitivity, Source
from careledger_core.reference import ReferenceRecord

from .reference import Departure, build_reference_records
from .vocabulary import (
    _DEPT,
    _ROLE,
    CAMPUS_OCTET,
    CAMPUS_SITE,
    DAY,
    DEFAULT_START,
    DEPARTMENTS,
    EVENING,
    FIRST_NAMES,
    HOUR_ACTIVITY,
    LAST_NAMES,
    MRN_SYSTEM,
    NIGHT,
    ORGANIZATION,
    ROLES,
    SHIFT_HOURS,
    SOURCE_SYSTEMS,
    SimPatient,
    StaffMember,
)


# --------------------------------------------------------------------------- model
class HospitalModel:
    """A fictional hospital: workforce, patients, care teams, workstations, sources.

    Deterministic from ``(staff, patients, seed)``.
    """

    def __init__(self, *, staff: int = 400, patients: int = 3000, seed: int = 42) -> None:
        if staff < len(ROLES) or patients < 1:
            raise ValueError(f"need at least {len(ROLES)} staff and 1 patient")
        rng = Random(f"careledger-hospital/{seed}/{staff}/{patients}")
        self.seed = seed
        self.organization = ORGANIZATION
        self.sources = {
            (s.key, campus): Source(system=s.system, site=site, type=s.type)
            for s in SOURCE_SYSTEMS
            for campus, site in CAMPUS_SITE.items()
        }
        self.staff: list[StaffMember] = []
        self.patients: list[SimPatient] = []
        self._build_staff(rng, staff)
        self._build_workstations(rng)
        self._build_patients(rng, patients)
        self._build_schedule()

    # -- construction -------------------------------------------------------------
    def _build_staff(self, rng: Random, n: int) -> None:
        total = sum(r.share for r in ROLES)
        counts = [max(1, round(n * r.share / total)) for r in ROLES]
        while sum(counts) > n:  # rounding: take back from the largest group
            counts[counts.index(max(counts))] -= 1
        while sum(counts) < n:
            counts[1] += 1  # nurses
        ids = rng.sample(range(100000, 999999), n)
        rows: list[tuple[str, str, str, str, frozenset[int]]] = []
        for spec, count in zip(ROLES, counts, strict=True):
            # shifts by quota (not by chance) so that every shift is staffed as planned,
            # in a shuffled order so that shift and department are independent
            order = list(range(count))
            rng.shuffle(order)
            bounds = [sum(spec.shifts[: k + 1]) / sum(spec.shifts) for k in range(3)]
            for i in range(count):
                # spread clinicians over departments round-robin, so each has some
                dept = spec.departments[i % len(spec.departments)]
                position = (order[i] + 0.5) / count
                shift = (DAY, EVENING, NIGHT)[min(bisect(bounds, position), 2)]
                if spec.weekdays_only:
                    workdays = frozenset(range(5))
                else:
                    off = rng.randrange(7)
                    workdays = frozenset(d for d in range(7) if d not in (off, (off + 1) % 7))
                name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
                rows.append((spec.code, dept, shift, name, workdays))
        self._staff_rows = rows
        self._staff_ids = [f"E{i}" for i in ids]

    def _build_workstations(self, rng: Random) -> None:
        per_dept: dict[str, int] = {}
        for _role, dept, *_ in self._staff_rows:
            per_dept[dept] = per_dept.get(dept, 0) + 1
        self.workstations: dict[str, tuple[Client, ...]] = {}
        for d in DEPARTMENTS:
            n = per_dept.get(d.code, 0) // 3 + 2
            hosts = rng.sample(range(10, 250), n)
            self.workstations[d.code] = tuple(
                Client(
                    address=f"10.{CAMPUS_OCTET[d.campus]}.{d.subnet}.{h}",
                    address_type="ip",
                    workstation=f"NGH-{d.code}-WS{k + 1:03d}",
                )
                for k, h in enumerate(sorted(hosts))
            )
        # remote access over the VPN (laptops, no managed workstation name)
        self.vpn_clients = tuple(
            Client(
                address=f"10.250.{rng.randrange(0, 16)}.{rng.randrange(2, 254)}", address_type="ip"
            )
            for _ in range(64)
        )

    def _build_patients(self, rng: Random, n: int) -> None:
        by_role_dept: dict[tuple[str, str], list[int]] = {}
        by_role: dict[str, list[int]] = {}
        for i, (role, dept, *_rest) in enumerate(self._staff_rows):
            by_role_dept.setdefault((role, dept), []).append(i)
            by_role.setdefault(role, []).append(i)
        clinical = [d for d in DEPARTMENTS if d.clinical]
        weights = [d.patient_weight for d in clinical]
        panels: list[list[int]] = [[] for _ in self._staff_rows]
        mrns = rng.sample(range(10_000_000, 99_999_999), n)
        for p in range(n):
            dept = rng.choices(clinical, weights=weights)[0].code
            team: list[int] = []
            docs = by_role_dept.get(("physician", dept)) or by_role["physician"]
            team.extend(rng.sample(docs, min(len(docs), rng.choice((1, 1, 2)))))
            nurses = by_role_dept.get(("nurse", dept)) or by_role["nurse"]
            team.extend(rng.sample(nurses, min(len(nurses), rng.choice((2, 3, 3, 4)))))
            team.append(rng.choice(by_role["pharmacist"]))
            if rng.random() < 0.55:
                team.append(rng.choice(by_role["lab-technician"]))
            if rng.random() < 0.3 or dept in ("ED", "ICU", "ONC"):
                team.append(rng.choice(by_role["radiologist"]))
            for s in team:
                panels[s].append(p)
            labels: tuple[str, ...] = ()
            confidentiality: Confidentiality = "N"
            r = rng.random()
            if dept == "PSY":
                labels, confidentiality = ("PSY",), "R"
            elif r < 0.015:
                labels, confidentiality = ("HIV",), "R"
            elif r < 0.03:
                labels, confidentiality = ("ETH",), "R"  # substance use (42 CFR Part 2)
            elif r < 0.04:
                labels, confidentiality = ("STD",), "R"
            elif r < 0.045:
                labels, confidentiality = ("CEL",), "V"  # celebrity / VIP
            elif r < 0.05:
                labels, confidentiality = ("EMP",), "R"  # employee as patient
            sensitivity = (
                Sensitivity(confidentiality=confidentiality, labels=labels) if labels else None
            )
            mrn = f"MRN{mrns[p]}"
            self.patients.append(
                SimPatient(
                    index=p,
                    mrn=mrn,
                    name=f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
                    department=dept,
                    encounter_id=f"ENC{rng.randrange(10**9, 10**10)}",
                    care_team=tuple(sorted(set(team))),
                    sensitivity=sensitivity,
                    patient=Patient(id=mrn, system=MRN_SYSTEM),
                )
            )
        for i, (role, dept, shift, name, workdays) in enumerate(self._staff_rows):
            d = _DEPT[dept]
            self.staff.append(
                StaffMember(
                    index=i,
                    id=self._staff_ids[i],
                    name=name,
                    role=role,
                    department=dept,
                    campus=d.campus,
                    shift=shift,
                    workdays=workdays,
                    panel=tuple(panels[i]),
                    actor=Actor(
                        id=self._staff_ids[i],
                        name=name,
                        roles=(role,),
                        organization=ORGANIZATION,
                        department=d.name,
                        is_requestor=True,
                    ),
                )
            )
        # researchers' cohort: chronic-disease patients
        self.research_cohort = tuple(
            p.index for p in self.patients if p.department in ("CARD", "ONC", "MED")
        ) or tuple(range(n))
        self.patients_by_department: dict[str, tuple[int, ...]] = {}
        for sp in self.patients:
            self.patients_by_department.setdefault(sp.department, ())
            self.patients_by_department[sp.department] += (sp.index,)
        self.emergency_patients = self.patients_by_department.get("ED") or tuple(range(n))

    def on_duty(self, member: StaffMember, weekday: int, hour: int) -> bool:
        start, end = SHIFT_HOURS[member.shift]
        if start < end:
            return start <= hour < end and weekday in member.workdays
        if hour >= start:  # a night shift starts on its own day ...
            return weekday in member.workdays
        if hour < end:  # ... and ends the next morning
            return (weekday - 1) % 7 in member.workdays
        return False

    def _build_schedule(self) -> None:
        """Per hour of the week: who is on duty, and session start rate (per microsecond)."""
        self.duty: list[tuple[int, ...]] = []
        self.duty_cum_weights: list[list[float]] = []
        self.session_rate_per_us: list[float] = []
        for how in range(168):
            weekday, hour = divmod(how, 24)
            members = tuple(m.index for m in self.staff if self.on_duty(m, weekday, hour))
            activity = HOUR_ACTIVITY[hour] * (0.75 if weekday >= 5 else 1.0)
            cum: list[float] = []
            total = 0.0
            for i in members:
                total += _ROLE[self.staff[i].role].sessions_per_hour * activity
                cum.append(total)
            self.duty.append(members)
            self.duty_cum_weights.append(cum)
            self.session_rate_per_us.append(total / 3_600_000_000)

    def reference_records(
        self, start: dt.datetime = DEFAULT_START, *, departures: Sequence[Departure] = ()
    ) -> list[ReferenceRecord]:
        """The reference data (workforce, patients, care relationships, consents) behind
        ``simulate(self, ..., start)``; see :mod:`producers.simulator.reference`."""
        return build_reference_records(self, start, departures=departures)

    def describe(self) -> str:
        roles: dict[str, int] = {}
        for m in self.staff:
            roles[m.role] = roles.get(m.role, 0) + 1
        sensitive = sum(1 for p in self.patients if p.sensitivity is not None)
        return (
            f"{ORGANIZATION}: {len(self.staff)} staff ("
            + ", ".join(f"{k} {v}" for k, v in roles.items())
            + f"), {len(self.patients)} patients ({sensitive} with restricted records)"
        )
