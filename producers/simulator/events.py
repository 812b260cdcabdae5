"""The simulator's traffic: ``simulate(model, count, seed, start)``.

``simulate`` yields ``count`` access events in
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

Also here: the event templates of the roles' operations (``_OPS``) and the failure
descriptions.
"""

from __future__ import annotations

import base64
import datetime as dt
import heapq
from bisect import bisect
from collections.abc import Iterator
from random import Random

from careledger_core.event import (
    EVENT_SCHEMA,
    AccessEvent,
    Action,
    Actor,
    Client,
    Coding,
    ObjectRef,
    Outcome,
)

from .model import HospitalModel
from .vocabulary import (
    _ROLE,
    _US_PER_HOUR,
    DCM_EMERGENCY_OVERRIDE_STARTED,
    DCM_EMERGENCY_OVERRIDE_STOPPED,
    DCM_EXPORT,
    DCM_INSTANCES_ACCESSED,
    DCM_LOGIN,
    DCM_LOGOUT,
    DCM_SECURITY_ALERT,
    DCM_USER_AUTHENTICATION,
    DEFAULT_START,
    LIFECYCLE_DISCLOSE,
    LIFECYCLE_EXTRACT,
    NO_PATIENT,
    OUTPUT_PRINT,
    REST_CREATE,
    REST_DELETE,
    REST_READ,
    REST_SEARCH,
    REST_UPDATE,
    ROLE_DOMAIN_RESOURCE,
    ROLE_PATIENT,
    ROLE_QUERY,
    ROLE_REPORT,
    ROLES,
    TYPE_REST,
    StaffMember,
    _Clock,
    _uuid4,
    to_epoch_us,
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
