"""A realistic, seeded, reproducible hospital access-event simulator.

``HospitalModel`` is a small fictional hospital ("Northbridge General"): a workforce
(ids, names, roles, departments, campuses, shift patterns and working days),
patients (MRNs, a responsible department, an encounter, a care team drawn from
the workforce, sensitivity labels on some records), workstations with plausible
addresses, and the source systems that emit audit records (EHR, PACS imaging,
LIS lab, pharmacy, single sign-on).

``simulate(model, count, seed, start)`` yields ``count`` access events in
``occurred_at`` order. Staff on duty open sessions (login, a run of accesses,
logout) at a rate that follows the shifts on duty and the hour of the day, so
nights and weekends are quiet. Most accesses are reads of charts of the
clinician's own patients; there are notes and orders (C/U), rare deletes,
searches (E, with a base64 query; a researcher's cohort search fans out to one
event per patient sharing a correlation id), prints and disclosures, logins and
logouts (DICOM 110114 / 110122 / 110123), occasional break-the-glass episodes
(DICOM 110113 / 110127, reads with purpose ETREAT, then 110138), a few curious
accesses outside the care team, and failures (outcome 4 and 8, e.g. consent
denials on restricted records).

Everything is derived from ``random.Random`` seeded by the caller and from
``start``: no wall clock, no global random state, so ``(model seed, seed, start)``
gives the same bytes every time.

``HospitalModel.reference_records(start)`` is the reference data behind the traffic
(workforce directory, patient demographics, care relationships, FHIR consents) and
``producers.scenarios.simulate_audit_scenario`` adds labelled inappropriate accesses of
every audit rule type with their ground truth (``careledger simulate --with-reference
--ground-truth FILE``).

Authentication events (login/logout) concern no patient, but the wire format
requires one: they carry ``NO_PATIENT`` (id ``"-"``, the RFC 5424 nil value, with
system ``urn:careledger:no-patient``). Consumers that reason about patients must
skip that id.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import heapq
import logging
import os
import sys
import time
from bisect import bisect
from collections.abc import Iterable, Iterator, Sequence
from random import Random
from typing import TYPE_CHECKING, BinaryIO

from careledger_core.event import (
    EVENT_SCHEMA,
    AccessEvent,
    Action,
    Actor,
    Client,
    Coding,
    Confidentiality,
    ObjectRef,
    Outcome,
    Patient,
    Sensitivity,
    Source,
)

if TYPE_CHECKING:
    from careledger.config import Settings
    from careledger_core.reference import ReferenceRecord
    from producers.scenarios import Departure

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- codes
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
# Local code system for how an export left the system (no standard code for "printed").
OUTPUT_CHANNEL = "urn:careledger:code-system:output-channel"

TYPE_REST = Coding(system=AUDIT_EVENT_TYPE, code="rest", display="Restful Operation")
REST_READ = Coding(system=RESTFUL_INTERACTION, code="read", display="read")
REST_CREATE = Coding(system=RESTFUL_INTERACTION, code="create", display="create")
REST_UPDATE = Coding(system=RESTFUL_INTERACTION, code="update", display="update")
REST_DELETE = Coding(system=RESTFUL_INTERACTION, code="delete", display="delete")
REST_SEARCH = Coding(system=RESTFUL_INTERACTION, code="search-type", display="search type")

DCM_INSTANCES_ACCESSED = Coding(system=DCM, code="110103", display="DICOM Instances Accessed")
DCM_EXPORT = Coding(system=DCM, code="110106", display="Export")
DCM_SECURITY_ALERT = Coding(system=DCM, code="110113", display="Security Alert")
DCM_USER_AUTHENTICATION = Coding(system=DCM, code="110114", display="User Authentication")
DCM_LOGIN = Coding(system=DCM, code="110122", display="Login")
DCM_LOGOUT = Coding(system=DCM, code="110123", display="Logout")
DCM_EMERGENCY_OVERRIDE_STARTED = Coding(
    system=DCM, code="110127", display="Emergency Override Started"
)
DCM_EMERGENCY_OVERRIDE_STOPPED = Coding(
    system=DCM, code="110138", display="Emergency Override Stopped"
)
LIFECYCLE_DISCLOSE = Coding(system=LIFECYCLE, code="disclose", display="Disclose")
LIFECYCLE_EXTRACT = Coding(system=LIFECYCLE, code="extract", display="Extract")
OUTPUT_PRINT = Coding(system=OUTPUT_CHANNEL, code="print", display="Printed")

# object-role codes (http://terminology.hl7.org/CodeSystem/object-role)
ROLE_PATIENT = "1"
ROLE_REPORT = "3"
ROLE_DOMAIN_RESOURCE = "4"
ROLE_QUERY = "24"

ORGANIZATION = "Northbridge General Hospital"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5.99.1"  # HL7 example arc: fictional MRN namespace
NO_PATIENT = Patient(id="-", system="urn:careledger:no-patient")

DEFAULT_START = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)  # a Monday, midnight UTC

_SOURCE_TYPE_APPLICATION_SERVER = 4
_SOURCE_TYPE_SECURITY_SERVER = 6


# --------------------------------------------------------------------------- workforce
@dataclasses.dataclass(frozen=True)
class Department:
    code: str
    name: str
    clinical: bool  # patients are admitted under it
    campus: str
    subnet: int  # third octet of its workstations' addresses
    patient_weight: float  # share of patients admitted under it


DEPARTMENTS: tuple[Department, ...] = (
    Department("ED", "Emergency Department", True, "MAIN", 10, 18),
    Department("ICU", "Intensive Care Unit", True, "MAIN", 11, 6),
    Department("MED", "Internal Medicine", True, "MAIN", 12, 28),
    Department("CARD", "Cardiology", True, "WEST", 13, 16),
    Department("ONC", "Oncology", True, "WEST", 14, 12),
    Department("PSY", "Psychiatry", True, "MAIN", 15, 10),
    Department("OBS", "Obstetrics", True, "MAIN", 16, 10),
    Department("RAD", "Radiology", False, "MAIN", 20, 0),
    Department("LAB", "Laboratory", False, "MAIN", 21, 0),
    Department("PHARM", "Pharmacy", False, "MAIN", 22, 0),
    Department("REG", "Patient Registration", False, "MAIN", 30, 0),
    Department("BILL", "Billing", False, "WEST", 31, 0),
    Department("HIM", "Health Information Management", False, "MAIN", 32, 0),
    Department("IT", "Information Technology", False, "MAIN", 40, 0),
    Department("RES", "Clinical Research", False, "WEST", 41, 0),
)
_DEPT = {d.code: d for d in DEPARTMENTS}
CLINICAL_DEPARTMENTS = tuple(d.code for d in DEPARTMENTS if d.clinical)
CAMPUS_OCTET = {"MAIN": 20, "WEST": 30}
CAMPUS_SITE = {"MAIN": "NGH-MAIN", "WEST": "NGH-WEST"}

DAY, EVENING, NIGHT = "day", "evening", "night"
SHIFT_HOURS = {DAY: (7, 15), EVENING: (15, 23), NIGHT: (23, 7)}

# Relative activity by hour of day (rounds in the morning, quiet small hours).
HOUR_ACTIVITY = (
    0.55, 0.45, 0.35, 0.3, 0.3, 0.4, 0.6, 0.9, 1.3, 1.4, 1.35, 1.25,
    1.0, 1.15, 1.25, 1.1, 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6,
)  # fmt: skip


# Operations: (name, weight). The names are resolved to templates in _OPS below.
@dataclasses.dataclass(frozen=True)
class RoleSpec:
    code: str
    share: float  # share of the workforce
    departments: tuple[str, ...]
    shifts: tuple[float, float, float]  # day, evening, night
    weekdays_only: bool
    sessions_per_hour: float  # sessions started per staff member per hour on duty
    accesses_per_session: float  # mean
    clinical: bool  # has a care-team panel
    ops: tuple[tuple[str, float], ...]
    purpose: str  # default v3-ActReason purpose of use


ROLES: tuple[RoleSpec, ...] = (
    RoleSpec(
        "physician",
        14,
        ("ED", "ICU", "MED", "CARD", "ONC", "PSY", "OBS"),
        (0.7, 0.15, 0.15),
        False,
        1.0,
        20,
        True,
        (
            ("read", 62),
            ("read_note", 10),
            ("image", 3),
            ("note", 5),
            ("order", 4),
            ("update_clin", 5),
            ("search", 8),
            ("print", 1.2),
            ("disclose", 0.6),
            ("delete", 0.4),
        ),
        "TREAT",
    ),
    RoleSpec(
        "nurse",
        34,
        ("ED", "ICU", "MED", "CARD", "ONC", "PSY", "OBS"),
        (0.45, 0.3, 0.25),
        False,
        1.1,
        18,
        True,
        (
            ("read", 64),
            ("read_note", 6),
            ("vitals", 12),
            ("nursing_note", 4),
            ("update_nurse", 6),
            ("search", 6),
            ("print", 1.0),
            ("delete", 0.3),
        ),
        "TREAT",
    ),
    RoleSpec(
        "pharmacist",
        5,
        ("PHARM",),
        (0.6, 0.25, 0.15),
        False,
        1.5,
        12,
        True,
        (("read_meds", 60), ("dispense", 16), ("update_meds", 14), ("search_meds", 10)),
        "TREAT",
    ),
    RoleSpec(
        "radiologist",
        3,
        ("RAD",),
        (0.7, 0.2, 0.1),
        False,
        1.2,
        12,
        True,
        (("image", 55), ("read", 15), ("rad_report", 18), ("update_report", 6), ("search", 6)),
        "TREAT",
    ),
    RoleSpec(
        "lab-technician",
        8,
        ("LAB",),
        (0.5, 0.3, 0.2),
        False,
        1.5,
        14,
        True,
        (("read_order", 35), ("lab_result", 40), ("update_order", 15), ("search_lab", 10)),
        "TREAT",
    ),
    RoleSpec(
        "registration-clerk",
        8,
        ("REG",),
        (0.6, 0.3, 0.1),
        False,
        2.5,
        6,
        False,
        (("read_demo", 50), ("search_patient", 20), ("update_demo", 15), ("register", 15)),
        "HOPERAT",
    ),
    RoleSpec(
        "billing-specialist",
        7,
        ("BILL",),
        (1.0, 0.0, 0.0),
        True,
        1.0,
        12,
        False,
        (
            ("read_billing", 55),
            ("claim", 20),
            ("update_claim", 12),
            ("search_claims", 8),
            ("disclose_payer", 5),
        ),
        "HPAYMT",
    ),
    RoleSpec(
        "him-specialist",
        3,
        ("HIM",),
        (1.0, 0.0, 0.0),
        True,
        0.8,
        8,
        False,
        (
            ("read", 40),
            ("read_note", 25),
            ("print", 10),
            ("disclose_patient", 20),
            ("update_clin", 5),
        ),
        "PATRQT",
    ),
    RoleSpec(
        "it-admin",
        3,
        ("IT",),
        (0.8, 0.1, 0.1),
        False,
        1.0,
        3,
        False,
        (("read_demo", 70), ("search_patient", 30)),
        "HSYSADMIN",
    ),
    RoleSpec(
        "researcher",
        3,
        ("RES",),
        (1.0, 0.0, 0.0),
        True,
        0.5,
        10,
        False,
        (("cohort_search", 15), ("read", 45), ("read_note", 15), ("extract", 10)),
        "HRESCH",
    ),
)
_ROLE = {r.code: r for r in ROLES}

FIRST_NAMES = (
    "Olivia", "Liam", "Amara", "Noah", "Sofia", "Mateo", "Aisha", "Lucas", "Mei", "Ethan",
    "Priya", "James", "Fatima", "Daniel", "Chloe", "Omar", "Hannah", "Kenji", "Grace", "Diego",
    "Leila", "Samuel", "Ingrid", "Kwame", "Elena", "Tomasz", "Nadia", "Arjun", "Zoe", "Hugo",
    "Yara", "Felix", "Ana", "Ibrahim", "Maya", "Jonas", "Lucia", "Dmitri", "Ines", "Malik",
    "Sara", "Wei", "Clara", "Tariq", "Emma", "Rafael", "Freya", "Kofi", "Julia", "Ravi",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Okafor", "Garcia", "Nguyen", "Kowalski", "Patel", "Johansson", "Kim", "Haddad",
    "Müller", "Rossi", "Silva", "Cohen", "Tanaka", "Brown", "Mensah", "Ivanova", "Dubois",
    "O'Brien", "Hernández", "Chen", "Novak", "Abubakar", "Larsen", "Walker", "Fischer",
    "Santos", "Ali", "Murphy", "Yilmaz", "Andersen", "Moreau", "Khan", "Bianchi", "Schmidt",
    "Lopez", "Wright", "Sato", "Jensen", "Adeyemi", "Petrov", "Costa", "Kelly", "Wang",
    "Nowak", "Ortiz", "Lindqvist", "Mwangi", "Hoffmann", "Reyes", "Das", "Taylor", "Lee",
    "Baker", "Hughes", "Popescu", "Vargas", "Eriksen", "Farah", "Young",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class StaffMember:
    index: int
    id: str
    name: str
    role: str
    department: str  # department code
    campus: str
    shift: str
    workdays: frozenset[int]  # 0 = Monday
    panel: tuple[int, ...]  # indices of the patients whose care team includes this person
    actor: Actor


@dataclasses.dataclass(frozen=True)
class SimPatient:
    index: int
    mrn: str
    name: str  # reference data only (e.g. for same-surname rules); never in events
    department: str
    encounter_id: str
    care_team: tuple[int, ...]  # staff indices
    sensitivity: Sensitivity | None
    patient: Patient


@dataclasses.dataclass(frozen=True)
class SourceSystem:
    key: str
    system: str
    type: int
    description: str


SOURCE_SYSTEMS: tuple[SourceSystem, ...] = (
    SourceSystem(
        "ehr",
        "ehr.northbridge.example",
        _SOURCE_TYPE_APPLICATION_SERVER,
        "electronic health record (FHIR API)",
    ),
    SourceSystem(
        "pacs",
        "pacs.northbridge.example",
        _SOURCE_TYPE_APPLICATION_SERVER,
        "PACS imaging archive and radiology reporting",
    ),
    SourceSystem(
        "lis",
        "lis.northbridge.example",
        _SOURCE_TYPE_APPLICATION_SERVER,
        "laboratory information system",
    ),
    SourceSystem(
        "rx", "rx.northbridge.example", _SOURCE_TYPE_APPLICATION_SERVER, "pharmacy system"
    ),
    SourceSystem(
        "sso",
        "sso.northbridge.example",
        _SOURCE_TYPE_SECURITY_SERVER,
        "single sign-on / identity provider",
    ),
)
# mean delay between occurrence and recording, in microseconds
_RECORD_DELAY_US = {"ehr": 120_000, "pacs": 900_000, "lis": 300_000, "rx": 200_000, "sso": 40_000}


class _Op:
    """A precomputed event template: everything that does not vary per event."""

    __slots__ = (
        "action", "event_type", "kind", "object_role", "object_types", "query", "source_key",
        "subtype",
    )  # fmt: skip

    def __init__(
        self,
        kind: str,
        event_type: Coding,
        subtype: tuple[Coding, ...],
        action: Action,
        object_types: tuple[str, ...],
        object_role: str,
        source_key: str = "ehr",
        query: str = "",
    ) -> None:
        self.kind = kind  # "rest", "search", "cohort", "image", "export"
        self.event_type = event_type
        self.subtype = subtype
        self.action = action
        self.object_types = object_types
        self.object_role = object_role
        self.source_key = source_key
        self.query = query  # format string with {t} (type) and {mrn} or {code}


def _rest(
    sub: Coding,
    action: Action,
    types: tuple[str, ...],
    role: str = ROLE_DOMAIN_RESOURCE,
    source: str = "ehr",
) -> _Op:
    return _Op("rest", TYPE_REST, (sub,), action, types, role, source)


def _search(types: tuple[str, ...], query: str, source: str = "ehr", kind: str = "search") -> _Op:
    return _Op(kind, TYPE_REST, (REST_SEARCH,), "E", types, ROLE_QUERY, source, query)


_OPS: dict[str, _Op] = {
    "read": _rest(
        REST_READ,
        "R",
        (
            "Patient",
            "Encounter",
            "Observation",
            "Observation",
            "Condition",
            "MedicationRequest",
            "AllergyIntolerance",
            "Procedure",
            "CarePlan",
            "DiagnosticReport",
        ),
    ),
    "read_note": _rest(REST_READ, "R", ("DocumentReference", "DiagnosticReport"), ROLE_REPORT),
    "image": _Op("image", DCM_INSTANCES_ACCESSED, (), "R", ("ImagingStudy",), ROLE_REPORT, "pacs"),
    "note": _rest(REST_CREATE, "C", ("DocumentReference",), ROLE_REPORT),
    "order": _rest(REST_CREATE, "C", ("ServiceRequest", "ServiceRequest", "MedicationRequest")),
    "update_clin": _rest(
        REST_UPDATE, "U", ("Condition", "CarePlan", "DocumentReference", "Encounter")
    ),
    "delete": _rest(REST_DELETE, "D", ("DocumentReference", "AllergyIntolerance", "Observation")),
    "vitals": _rest(REST_CREATE, "C", ("Observation", "Observation", "MedicationAdministration")),
    "nursing_note": _rest(REST_CREATE, "C", ("DocumentReference",), ROLE_REPORT),
    "update_nurse": _rest(
        REST_UPDATE, "U", ("CarePlan", "Observation", "MedicationAdministration")
    ),
    "search": _search(
        ("Observation", "DocumentReference", "MedicationRequest", "Condition"),
        "GET /fhir/{t}?patient=Patient/{mrn}&_sort=-date&_count=50",
    ),
    "read_meds": _rest(
        REST_READ,
        "R",
        ("MedicationRequest", "MedicationRequest", "AllergyIntolerance", "Observation"),
        source="rx",
    ),
    "dispense": _rest(REST_CREATE, "C", ("MedicationDispense",), source="rx"),
    "update_meds": _rest(REST_UPDATE, "U", ("MedicationRequest",), source="rx"),
    "search_meds": _search(
        ("MedicationRequest", "MedicationDispense"),
        "GET /fhir/{t}?patient=Patient/{mrn}&status=active",
        "rx",
    ),
    "rad_report": _rest(REST_CREATE, "C", ("DiagnosticReport",), ROLE_REPORT, "pacs"),
    "update_report": _rest(REST_UPDATE, "U", ("DiagnosticReport",), ROLE_REPORT, "pacs"),
    "read_order": _rest(REST_READ, "R", ("ServiceRequest", "Specimen"), source="lis"),
    "lab_result": _rest(
        REST_CREATE, "C", ("Observation", "Observation", "DiagnosticReport"), source="lis"
    ),
    "update_order": _rest(
        REST_UPDATE, "U", ("ServiceRequest", "Specimen", "Observation"), source="lis"
    ),
    "search_lab": _search(
        ("ServiceRequest", "Specimen"), "GET /fhir/{t}?subject=Patient/{mrn}&status=active", "lis"
    ),
    "read_demo": _rest(REST_READ, "R", ("Patient", "Patient", "Coverage", "Appointment")),
    "search_patient": _search(("Patient",), "GET /fhir/{t}?identifier={mrn}"),
    "update_demo": _rest(REST_UPDATE, "U", ("Patient", "Coverage")),
    "register": _rest(REST_CREATE, "C", ("Encounter", "Appointment", "Coverage")),
    "read_billing": _rest(
        REST_READ, "R", ("Claim", "Account", "Encounter", "Coverage", "Procedure")
    ),
    "claim": _rest(REST_CREATE, "C", ("Claim",)),
    "update_claim": _rest(REST_UPDATE, "U", ("Claim", "Account")),
    "search_claims": _search(
        ("Claim", "ExplanationOfBenefit"), "GET /fhir/{t}?patient=Patient/{mrn}&_count=20"
    ),
    "cohort_search": _search(
        ("Condition", "Observation"),
        "GET /fhir/{t}?code=http://snomed.info/sct|{code}&_count=100",
        kind="cohort",
    ),
    "print": _Op(
        "export",
        DCM_EXPORT,
        (OUTPUT_PRINT,),
        "R",
        ("DocumentReference", "DiagnosticReport"),
        ROLE_REPORT,
    ),
    "disclose": _Op(
        "export", DCM_EXPORT, (LIFECYCLE_DISCLOSE,), "E", ("DocumentReference",), ROLE_REPORT
    ),
    "disclose_patient": _Op(
        "export",
        DCM_EXPORT,
        (LIFECYCLE_DISCLOSE,),
        "E",
        ("DocumentReference", "Bundle"),
        ROLE_REPORT,
    ),
    "disclose_payer": _Op(
        "export", DCM_EXPORT, (LIFECYCLE_DISCLOSE,), "E", ("Claim", "Bundle"), ROLE_REPORT
    ),
    "extract": _Op("export", DCM_EXPORT, (LIFECYCLE_EXTRACT,), "E", ("Bundle",), ROLE_REPORT),
}
# Clinical reads of a break-the-glass episode.
_BTG_OPS = (_OPS["read"], _OPS["read"], _OPS["read_note"], _OPS["read"], _OPS["search"])
# SNOMED CT codes of research cohorts (diabetes, heart failure, breast cancer, AF, CKD).
_COHORT_CODES = ("44054006", "84114007", "254837009", "49436004", "709044004")

_FAILURES_MINOR = (
    "resource not found",
    "version conflict",
    "request timed out",
    "validation failed",
)
_FAILURES_SERIOUS = (
    "access denied: not authorized for this patient",
    "access denied by patient consent",
    "access denied: restricted record",
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
        ``simulate(self, ..., start)``; see :mod:`producers.scenarios`."""
        from producers.scenarios import build_reference_records

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


# --------------------------------------------------------------------------- time
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 86_400_000_000


def to_epoch_us(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _Clock:
    """Formats epoch microseconds as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (cached per day)."""

    __slots__ = ("_days",)

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def format(self, us: int) -> str:
        sec, frac = divmod(us, 1_000_000)
        day, sec = divmod(sec, 86_400)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = (_EPOCH + dt.timedelta(days=day)).strftime("%Y-%m-%d")
            self._days[day] = prefix
        h, sec = divmod(sec, 3600)
        m, s = divmod(sec, 60)
        return f"{prefix}T{h:02d}:{m:02d}:{s:02d}.{frac:06d}Z"


def format_timestamp(moment: dt.datetime) -> str:
    return _Clock().format(to_epoch_us(moment))


def parse_start(text: str) -> dt.datetime:
    """An ISO date or date-time; naive values are UTC."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def _uuid4(bits: int) -> str:
    """``str(uuid.UUID(int=bits, version=4))`` without the object."""
    h = "%032x" % ((bits & _UUID_CLEAR) | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --------------------------------------------------------------------------- simulation
class _Session:
    __slots__ = (
        "actor", "btg_at", "btg_left", "btg_patient", "client", "cohort", "cohort_op", "corr",
        "current", "logout", "member", "ops", "ops_cum", "purpose", "query", "remaining",
        "session_ref", "site", "state",
    )  # fmt: skip

    actor: Actor
    btg_at: int
    btg_left: int
    btg_patient: int
    client: Client
    cohort: list[int]
    cohort_op: _Op | None
    corr: str | None
    current: int
    logout: bool
    member: StaffMember
    ops: list[_Op]
    ops_cum: list[float]
    purpose: tuple[str, ...]
    query: str | None
    remaining: int
    session_ref: str
    site: str
    state: int


# session states
_S_FAILED_LOGIN, _S_LOGIN, _S_ACCESS, _S_BTG_START, _S_BTG_STOP, _S_COHORT, _S_LOGOUT = range(7)


def simulate(
    model: HospitalModel,
    count: int,
    seed: int,
    start: dt.datetime = DEFAULT_START,
    *,
    exclusive_sessions: bool = False,
) -> Iterator[AccessEvent]:
    """Yield ``count`` access events in ``occurred_at`` order, deterministic from the inputs.

    ``exclusive_sessions`` (used by audit scenarios; off by default so that existing
    callers get the same bytes): a person has at most one session at a time, works at
    one workstation of their department per day and connects remotely from their own
    laptop, so one account is never active from two places at once in legitimate
    traffic.
    """
    rng = Random(seed)
    random_ = rng.random
    getrandbits = rng.getrandbits
    expovariate = rng.expovariate
    choice = rng.choice
    fmt = _Clock().format
    heappush, heappop = heapq.heappush, heapq.heappop
    b64 = base64.b64encode

    patients = model.patients
    n_patients = len(patients)
    staff = model.staff
    sources = model.sources
    delays = _RECORD_DELAY_US
    duty, duty_cum, rates = model.duty, model.duty_cum_weights, model.session_rate_per_us
    # hour-of-week of epoch hour 0: 1970-01-01 was a Thursday (weekday 3)
    how_offset = 3 * 24
    role_ops: dict[str, tuple[list[_Op], list[float]]] = {}
    for spec in ROLES:
        cum: list[float] = []
        acc = 0.0
        for _name, w in spec.ops:
            acc += w
            cum.append(acc)
        role_ops[spec.code] = ([_OPS[name] for name, _w in spec.ops], cum)
    purposes = {spec.code: (spec.purpose,) for spec in ROLES}
    patient_objs = [
        ObjectRef(type="Patient", id=f"Patient/{p.mrn}", role=ROLE_PATIENT) for p in patients
    ]
    etreat = ("ETREAT",)
    login_sub, logout_sub = (DCM_LOGIN,), (DCM_LOGOUT,)
    btg_start_sub = (DCM_EMERGENCY_OVERRIDE_STARTED,)
    btg_stop_sub = (DCM_EMERGENCY_OVERRIDE_STOPPED,)
    clinical_roles = {"physician", "nurse"}
    remote_roles = {"physician", "radiologist", "it-admin"}

    def next_arrival(t: int) -> int:
        while True:
            hour_index = t // _US_PER_HOUR
            lam = rates[(hour_index + how_offset) % 168]
            hour_end = (hour_index + 1) * _US_PER_HOUR
            if lam > 0:
                nxt = t + int(expovariate(lam)) + 1
                if nxt < hour_end:
                    return nxt
            t = hour_end  # memoryless: draw again from the boundary at the new rate

    def open_session(t: int) -> _Session:
        hour_index = t // _US_PER_HOUR
        how = (hour_index + how_offset) % 168
        cum = duty_cum[how]
        member = staff[duty[how][bisect(cum, random_() * cum[-1])]]
        if exclusive_sessions:
            for _ in range(50):
                if member.index not in busy:
                    break
                member = staff[duty[how][bisect(cum, random_() * cum[-1])]]
            busy.add(member.index)
        spec = _ROLE[member.role]
        s = _Session()
        s.member = member
        s.actor = member.actor
        hour = hour_index % 24
        remote_p = 0.08 if (hour < 7 or hour >= 19) else 0.02
        if member.role in remote_roles and random_() < remote_p:
            if exclusive_sessions:
                s.client = model.vpn_clients[member.index % len(model.vpn_clients)]
            else:
                s.client = choice(model.vpn_clients)
        elif exclusive_sessions:
            ws = model.workstations[member.department]
            s.client = ws[member.index % len(ws)]
        else:
            s.client = choice(model.workstations[member.department])
        if exclusive_sessions:
            last = last_place.get(member.index)
            if last is not None and t - last[1] < 10 * 60_000_000:
                s.client = last[0]  # still where they just were
        s.site = member.campus
        s.state = _S_FAILED_LOGIN if random_() < 0.03 else _S_LOGIN
        s.session_ref = ""
        s.remaining = 1 + int(expovariate(1.0 / spec.accesses_per_session))
        s.ops, s.ops_cum = role_ops[member.role]
        s.purpose = purposes[member.role]
        s.current = -1
        s.cohort = []
        s.cohort_op = None
        s.corr = None
        s.query = None
        s.logout = random_() < 0.92  # the others time out without a logout record
        s.btg_at = -1
        s.btg_left = 0
        s.btg_patient = -1
        if member.role in clinical_roles:
            p_btg = 0.05 if member.department in ("ED", "ICU") else 0.006
            if random_() < p_btg:
                s.btg_at = 1 + rng.randrange(s.remaining)  # fires when remaining == btg_at
                s.btg_left = 1 + rng.randrange(5)
                s.btg_patient = choice(model.emergency_patients)
        return s

    def pick_patient(s: _Session) -> int:
        if s.current >= 0 and random_() < 0.6:
            return s.current  # keep working in the chart that is open
        member = s.member
        panel = member.panel
        if panel and random_() > 0.0015:
            p = panel[int(random_() * len(panel))]
        elif member.role == "researcher":
            p = choice(model.research_cohort)
        else:  # clerks, billing, HIM, IT: any patient; clinicians: a rare curious look
            p = int(random_() * n_patients)
        s.current = p
        return p

    def outcome_for(p: int, member: StaffMember) -> tuple[Outcome, str | None]:
        r = random_()
        if r < 0.008:
            return 4, _FAILURES_MINOR[int(r * 1000) % 4]
        pat = patients[p]
        if pat.sensitivity is not None and member.role != "him-specialist":
            if member.index not in pat.care_team and r < 0.15:
                return 8, _FAILURES_SERIOUS[1 + int(r * 1000) % 2]
        elif r < 0.0105:
            return 8, _FAILURES_SERIOUS[0]
        return 0, None

    def gap(s: _Session) -> int:
        return 1_000_000 + int(expovariate(1.0 / 25_000_000))

    def auth(
        t: int,
        s: _Session,
        sub: tuple[Coding, ...],
        outcome: Outcome,
        desc: str | None,
        session_ref: str | None,
    ) -> AccessEvent:
        return AccessEvent(
            schema=EVENT_SCHEMA,
            event_id=_uuid4(getrandbits(128)),
            occurred_at=fmt(t),
            recorded_at=fmt(t + int(expovariate(1.0) * delays["sso"])),
            event_type=DCM_USER_AUTHENTICATION,
            event_subtype=sub,
            action="E",
            outcome=outcome,
            outcome_desc=desc,
            actor=s.actor,
            client=s.client,
            session_ref=session_ref,
            source=sources["sso", s.site],
            patient=NO_PATIENT,
        )

    def override(t: int, s: _Session, sub: tuple[Coding, ...]) -> AccessEvent:
        p = s.btg_patient
        return AccessEvent(
            schema=EVENT_SCHEMA,
            event_id=_uuid4(getrandbits(128)),
            occurred_at=fmt(t),
            recorded_at=fmt(t + int(expovariate(1.0) * delays["ehr"])),
            event_type=DCM_SECURITY_ALERT,
            event_subtype=sub,
            action="E",
            outcome=0,
            purpose_of_use=etreat,
            actor=s.actor,
            client=s.client,
            session_ref=s.session_ref,
            source=sources["ehr", s.site],
            patient=patients[p].patient,
            object=patient_objs[p],
            sensitivity=patients[p].sensitivity,
        )

    def access(
        t: int,
        s: _Session,
        op: _Op,
        p: int,
        purpose: tuple[str, ...],
        query: str | None,
        corr: str | None,
    ) -> AccessEvent:
        pat = patients[p]
        types = op.object_types
        otype = types[int(random_() * len(types))]
        if otype == "Patient":
            obj = patient_objs[p]
        elif otype == "ImagingStudy":
            obj = ObjectRef(type=otype, id=f"urn:oid:2.25.{getrandbits(64)}", role=op.object_role)
        else:
            obj = ObjectRef(type=otype, id=f"{otype}/{getrandbits(28)}", role=op.object_role)
        kind = op.kind
        if kind == "search":
            query = b64(op.query.format(t=otype, mrn=pat.mrn).encode()).decode()
        if corr is None and kind != "image":
            corr = f"{getrandbits(64):016x}"
        outcome, desc = outcome_for(p, s.member)
        return AccessEvent(
            schema=EVENT_SCHEMA,
            event_id=_uuid4(getrandbits(128)),
            occurred_at=fmt(t),
            recorded_at=fmt(t + int(expovariate(1.0) * delays[op.source_key])),
            event_type=op.event_type,
            event_subtype=op.subtype,
            action=op.action,
            outcome=outcome,
            outcome_desc=desc,
            purpose_of_use=purpose,
            actor=s.actor,
            client=s.client,
            session_ref=s.session_ref,
            source=sources[op.source_key, s.site],
            patient=pat.patient,
            object=obj,
            sensitivity=pat.sensitivity,
            query=query,
            correlation_id=corr,
        )

    def step(t: int, s: _Session) -> tuple[AccessEvent, int]:
        """The session's next event at ``t`` and when it acts again (-1: never)."""
        state = s.state
        if state == _S_ACCESS:
            if s.btg_at == s.remaining:  # break the glass now
                s.btg_at = -1
                s.current = s.btg_patient
                return override(t, s, btg_start_sub), t + 2_000_000 + int(random_() * 20_000_000)
            if s.btg_left > 0 and s.btg_at < 0:  # inside the override
                s.btg_left -= 1
                event = access(t, s, choice(_BTG_OPS), s.btg_patient, etreat, None, None)
                if s.btg_left == 0:
                    if random_() < 0.96:
                        s.state = _S_BTG_STOP
                    s.current = -1
                return event, t + gap(s)
            op = s.ops[bisect(s.ops_cum, random_() * s.ops_cum[-1])]
            s.remaining -= 1
            if op.kind == "cohort":
                k = 3 + int(random_() * 10)
                s.cohort = rng.sample(model.research_cohort, min(k, len(model.research_cohort)))
                text = op.query.format(t=op.object_types[0], code=choice(_COHORT_CODES))
                s.query = b64(text.encode()).decode()
                s.corr = f"{getrandbits(64):016x}"
                s.cohort_op = op
                s.state = _S_COHORT
                return access(t, s, op, s.cohort.pop(), s.purpose, s.query, s.corr), t + 1 + int(
                    random_() * 400
                )
            event = access(t, s, op, pick_patient(s), s.purpose, None, None)
        elif state == _S_COHORT:
            op = s.cohort_op  # type: ignore[assignment]
            event = access(t, s, op, s.cohort.pop(), s.purpose, s.query, s.corr)
            if s.cohort:
                return event, t + 1 + int(random_() * 400)
            s.state = _S_ACCESS
        elif state == _S_LOGIN:
            s.session_ref = f"{getrandbits(64):016x}"
            s.state = _S_ACCESS
            return auth(t, s, login_sub, 0, None, s.session_ref), t + gap(s)
        elif state == _S_FAILED_LOGIN:
            s.state = _S_LOGIN
            return (
                auth(t, s, login_sub, 4, "invalid credentials", None),
                t + 3_000_000 + int(random_() * 20_000_000),
            )
        elif state == _S_BTG_STOP:
            s.state = _S_ACCESS
            event = override(t, s, btg_stop_sub)
        else:  # _S_LOGOUT
            return auth(t, s, logout_sub, 0, None, s.session_ref), -1
        # after an ordinary access (or the end of a fan-out / override)
        if s.remaining <= 0 and s.btg_left <= 0 and s.btg_at < 0:
            if not s.logout:
                return event, -1
            s.state = _S_LOGOUT
        return event, t + gap(s)

    heap: list[tuple[int, int, _Session]] = []
    busy: set[int] = set()  # members with a session open (exclusive_sessions)
    last_place: dict[int, tuple[Client, int]] = {}  # member -> (client, when they left)
    seq = 0
    t_fresh = next_arrival(to_epoch_us(start))
    for _ in range(count):
        if heap and heap[0][0] <= t_fresh:
            t, _seq, s = heappop(heap)
        else:
            t = t_fresh
            s = open_session(t)
            t_fresh = next_arrival(t)
        event, again = step(t, s)
        if again >= 0:
            seq += 1
            heappush(heap, (again, seq, s))
        elif exclusive_sessions:
            busy.discard(s.member.index)
            last_place[s.member.index] = (s.client, t)
        yield event


# --------------------------------------------------------------------------- CLI
@dataclasses.dataclass(frozen=True)
class SimulationSummary:
    sent: int  # handed to the producer
    acked: int  # acknowledged by Kafka (acks=all)
    failed: int  # not acknowledged: failed, or still pending when the flush gave up
    seconds: float  # from the first event to the end of the final flush

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0


class _Progress:
    """A rate-limited progress line on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.every = 0.5 if self.tty else 2.0
        self.started = time.monotonic()
        self.last = self.started

    def maybe(self, now: float, sent: int, acked: int, failed: int) -> None:
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self._print(now, sent, acked, failed, end="\r" if self.tty else "\n")

    def done(self, sent: int, acked: int, failed: int) -> None:
        if self.enabled and self.tty:
            print(" " * 100, end="\r", file=sys.stderr)

    def _print(self, now: float, sent: int, acked: int, failed: int, end: str) -> None:
        elapsed = max(now - self.started, 1e-9)
        print(
            f"simulate: sent {sent:,}/{self.total:,}  {sent / elapsed:,.0f} ev/s  "
            f"acked {acked:,}  failed {failed:,}",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def run_simulation(
    settings: Settings,
    count: int,
    seed: int,
    rate: float = 0.0,
    progress: bool = True,
    *,
    topic: str | None = None,
    patients: int = 3000,
    staff: int = 400,
    start: dt.datetime = DEFAULT_START,
    message_timeout_s: float = 30.0,
    events: Iterable[AccessEvent] | None = None,
) -> SimulationSummary:
    """Produce ``count`` simulated events to Kafka and wait for every acknowledgement.

    ``rate`` is events per second (0 = as fast as possible). Never raises for delivery
    problems: the summary's ``failed`` counts every event Kafka did not acknowledge.
    ``events``: send these (e.g. an audit scenario's) instead of ``simulate``'s.
    """
    from careledger.kafka.producer import AccessEventProducer, DeliveryError

    if events is None:
        model = HospitalModel(staff=staff, patients=patients, seed=seed)
        log.info("simulating %s", model.describe())
        events = simulate(model, count, seed, start)
    meter = _Progress(count, progress)
    sent = 0
    report = None
    producer = AccessEventProducer(
        settings,
        topic=topic,
        extra_config={"message.timeout.ms": int(message_timeout_s * 1000)},
    )
    started = time.monotonic()
    interval = 1.0 / rate if rate > 0 else 0.0
    send = producer.send
    try:
        for event in events:
            send(event)
            sent += 1
            if interval or not sent & 0xFF:
                now = time.monotonic()
                if interval:
                    ahead = started + sent * interval - now
                    if ahead > 0.002:
                        time.sleep(ahead)
                    producer.poll(0)  # at low rates send() serves reports too rarely
                r = producer.report()
                meter.maybe(now, sent, r.acked, r.failed)
        try:
            report = producer.close(timeout=message_timeout_s + 15.0)
        except DeliveryError as exc:  # already logged by the SDK; counted below
            report = exc.report
    finally:
        if report is None:  # interrupted: report what got through
            try:
                report = producer.close(timeout=5.0)
            except DeliveryError as exc:
                report = exc.report
    seconds = time.monotonic() - started
    meter.done(sent, report.acked, report.failed)
    return SimulationSummary(
        sent=sent, acked=report.acked, failed=sent - report.acked, seconds=seconds
    )


def write_events(
    out: BinaryIO,
    count: int,
    seed: int,
    *,
    patients: int = 3000,
    staff: int = 400,
    start: dt.datetime = DEFAULT_START,
) -> int:
    """Write ``count`` events as canonical JSON lines (no Kafka); returns the count."""
    from careledger_core.event import canonical_event_bytes

    model = HospitalModel(staff=staff, patients=patients, seed=seed)
    n = 0
    for event in simulate(model, count, seed, start):
        out.write(canonical_event_bytes(event) + b"\n")
        n += 1
    return n


def configure_simulate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=10_000, help="events to send (10000)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (42)")
    parser.add_argument(
        "--start",
        type=parse_start,
        default=DEFAULT_START,
        help="simulated start time, ISO date or date-time, UTC (2026-11-02T00:00:00Z)",
    )
    parser.add_argument("--topic", help="Kafka topic (default: settings.topic_events)")
    parser.add_argument("--patients", type=int, default=3000, help="patients in the model (3000)")
    parser.add_argument("--staff", type=int, default=400, help="workforce size (400)")
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write canonical JSON lines to FILE ('-' = stdout) instead of sending to Kafka",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument(
        "--with-reference",
        action="store_true",
        help="also produce the reference data (workforce, patients, care relationships, "
        "consents) consistent with the traffic to its topics first, each acknowledged "
        "(with --output: as the first lines of FILE)",
    )
    parser.add_argument(
        "--ground-truth",
        metavar="FILE",
        help="inject labelled inappropriate accesses and write their ground truth to FILE "
        "as JSON lines {event_id, rules, actor_id, patient_id} (never to Kafka); the "
        'traffic\'s own curious accesses are included with "injected": false',
    )
    parser.add_argument(
        "--inappropriate-rate",
        type=float,
        default=None,
        help="share of injected inappropriate accesses (0.01 with --ground-truth, else 0)",
    )


def command_simulate(args: argparse.Namespace, settings: Settings) -> int:
    if args.count < 0 or args.rate < 0 or args.patients < 1 or args.staff < len(ROLES):
        print(
            f"simulate: --count/--rate must be >= 0, --patients >= 1, --staff >= {len(ROLES)}",
            file=sys.stderr,
        )
        return 2
    with_reference = getattr(args, "with_reference", False)
    ground_truth = getattr(args, "ground_truth", None)
    inappropriate = getattr(args, "inappropriate_rate", None)
    if with_reference or ground_truth or inappropriate is not None:
        return _command_scenario(args, settings, with_reference, ground_truth, inappropriate)
    if args.output:
        started = time.monotonic()
        kwargs = {"patients": args.patients, "staff": args.staff, "start": args.start}
        if args.output == "-":
            try:
                n = write_events(sys.stdout.buffer, args.count, args.seed, **kwargs)
                sys.stdout.flush()
            except BrokenPipeError:  # e.g. piped into head: not an error
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
        else:
            with open(args.output, "wb") as f:
                n = write_events(f, args.count, args.seed, **kwargs)
        print(
            f"simulate: wrote {n:,} events in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
        return 0
    topic = args.topic or settings.topic_events
    summary = run_simulation(
        settings,
        args.count,
        args.seed,
        rate=args.rate,
        progress=not args.quiet,
        topic=topic,
        patients=args.patients,
        staff=args.staff,
        start=args.start,
    )
    print(
        f"simulate: {summary.sent:,} events to {topic} (seed {args.seed}): "
        f"acked {summary.acked:,}, not acknowledged {summary.failed:,}, "
        f"{summary.seconds:.1f} s ({summary.rate:,.0f} ev/s)",
        file=sys.stderr,
    )
    return 0 if summary.failed == 0 and summary.acked == summary.sent else 1


def produce_reference(
    settings: Settings, records: Iterable[ReferenceRecord], timeout_s: float = 45.0
) -> tuple[int, int]:
    """Produce reference records to their topics (keyed by subject id: patient or user
    id) and wait for every acknowledgement. Returns (sent, acknowledged)."""
    from careledger.kafka.producer import AccessEventProducer, DeliveryError
    from careledger_core.reference import canonical_reference_bytes
    from producers.scenarios import reference_topic_setting

    producers: dict[str, AccessEventProducer] = {}
    sent = acked = 0
    try:
        for rec in records:
            topic = getattr(settings, reference_topic_setting(rec.kind))
            producer = producers.get(topic)
            if producer is None:
                producer = producers[topic] = AccessEventProducer(settings, topic=topic)
            producer.send_raw(canonical_reference_bytes(rec), rec.subject_id.encode())
            sent += 1
    finally:
        for producer in producers.values():
            try:
                acked += producer.close(timeout=timeout_s).acked
            except DeliveryError as exc:  # logged by the SDK (counts and topics only)
                acked += exc.report.acked
    return sent, acked


def _command_scenario(
    args: argparse.Namespace,
    settings: Settings,
    with_reference: bool,
    ground_truth: str | None,
    inappropriate: float | None,
) -> int:
    from careledger_core.event import canonical_event_bytes
    from careledger_core.reference import canonical_reference_bytes
    from producers.scenarios import simulate_audit_scenario

    rate = inappropriate if inappropriate is not None else (0.01 if ground_truth else 0.0)
    if not 0.0 <= rate < 0.5:
        print("simulate: --inappropriate-rate must be in [0, 0.5)", file=sys.stderr)
        return 2
    started = time.monotonic()
    model = HospitalModel(staff=args.staff, patients=args.patients, seed=args.seed)
    scenario = simulate_audit_scenario(model, args.count, args.seed, args.start, rate)
    # identifiers stay out of logs: counts only
    print(
        f"simulate: scenario of {len(scenario.events):,} events ({scenario.injected:,} "
        f"inappropriate), {len(scenario.reference_records):,} reference records "
        f"in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    if ground_truth:
        with open(ground_truth, "w", encoding="utf-8") as f:
            for g in scenario.all_truth():
                f.write(g.to_json() + "\n")
    if args.output:
        out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
        try:
            if with_reference:
                for rec in scenario.reference_records:
                    out.write(canonical_reference_bytes(rec) + b"\n")
            for event in scenario.events:
                out.write(canonical_event_bytes(event) + b"\n")
            out.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        finally:
            if out is not sys.stdout.buffer:
                out.close()
        return 0
    if with_reference:
        sent, acked = produce_reference(settings, scenario.reference_records)
        print(f"simulate: {sent:,} reference records, acked {acked:,}", file=sys.stderr)
        if acked != sent:
            return 1
    topic = args.topic or settings.topic_events
    summary = run_simulation(
        settings,
        len(scenario.events),
        args.seed,
        rate=args.rate,
        progress=not args.quiet,
        topic=topic,
        events=scenario.events,
    )
    print(
        f"simulate: {summary.sent:,} events to {topic} (seed {args.seed}): "
        f"acked {summary.acked:,}, not acknowledged {summary.failed:,}, "
        f"{summary.seconds:.1f} s ({summary.rate:,.0f} ev/s)",
        file=sys.stderr,
    )
    return 0 if summary.failed == 0 and summary.acked == summary.sent else 1
