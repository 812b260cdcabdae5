"""The simulator's vocabulary: what the hospital model, the traffic, the reference data
and the audit scenarios all speak.

Code systems and codings (FHIR audit-event types, RESTful interactions, DICOM, ISO 21089
lifecycle, object roles), the fictional hospital's fixed tables (departments and campuses,
shifts, activity by hour, roles with their operations, first and last names, source
systems), the model's small value types (``StaffMember``, ``SimPatient``,
``SourceSystem``) and the time and identifier helpers (epoch microseconds, timestamp
formatting, ``parse_start``, ``_uuid4``).

Authentication events (login/logout) concern no patient, but the wire format
requires one: they carry ``NO_PATIENT`` (id ``"-"``, the RFC 5424 nil value, with
system ``urn:careledger:no-patient``). Consumers that reason about patients must
skip that id.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from careledger_core.event import Actor, Coding, Patient, Sensitivity

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


# Operations: (name, weight). The names are resolved to templates in ``events._OPS``.
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
