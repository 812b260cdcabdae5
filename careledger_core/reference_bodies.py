"""The bodies of reference records (``careledger.reference/1``), validated per kind.

* ``consent``: a FHIR Consent resource, R4 or R5, accepted as is. Checked:
  ``resourceType == "Consent"``, a known ``status``, the patient reference (R4
  ``patient.reference`` or R5 ``subject.reference``; the subject id is what follows
  ``Patient/``), R5 ``decision`` and R4 provision ``type`` (permit|deny) and every
  ``period.start``/``period.end`` (FHIR dateTime) at the root and in nested provisions.
  Anything else is kept verbatim.
* ``care-relationship``: ``{patient_id, kind: encounter|appointment|care-team|referral|
  order, practitioner_id?, team_id?, department?, start, end?}`` with at least one of
  practitioner_id / team_id / department; ``start``/``end`` are event timestamps and an
  absent ``end`` means open-ended.
* ``staff`` (workforce directory; ``record_id`` = ``user_id``): ``{user_id, family_name,
  given_name, roles: [code], department, manager_id?, status: active|suspended|terminated,
  start_date, end_date?, address?: {line, city, postcode}, phone?, patient_id?,
  shifts?: [{days: [0..6] (0 = Monday), start_hour: 0..23, end_hour: 0..24}],
  teams?: [team id]}``. Dates are ``YYYY-MM-DD``; shift hours are UTC and a shift whose
  ``end_hour`` is not after its ``start_hour`` runs overnight (it starts on the listed day).
* ``patient`` (demographics; ``record_id`` = ``patient_id``): ``{patient_id, family_name,
  given_name, address?, phone?, vip: bool, employee_user_id?, emergency_contacts?:
  [{family_name, given_name?, phone?, user_id?}], confidentiality?: U|L|M|N|R|V,
  sensitivity_labels?: [code]}``.

* ``source-key`` / ``source-heartbeat`` (ADR 0010, ``source.py``): ``{statement,
  signature}``, a registrar-signed key event (``record_id`` = ``<source_id>/<key_id>``)
  or a source-signed heartbeat (``record_id`` = ``<source_id>/<epoch>/<beat>``). Their
  signatures are checked by the processor and verifier against keys they trust; the
  times that count are the signed ones (``valid_from``, ``sent_at``).

``_parse_body`` validates a (frozen) body of a kind into its typed view; the envelope
(``reference.ReferenceRecord``) calls it on construction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, cast

from .errors import ValidationError
from .event import MAX_ID_LENGTH
from .reference_json import (
    _array,
    _boolean,
    _choice,
    _codes,
    _date,
    _fail,
    _ident,
    _integer,
    _is_valid_date,
    _join,
    _members,
    _opt_ident,
    _opt_string,
    _string,
    _timestamp,
    _wrong_type,
    thaw,
)
from .reference_privacy import ErasureBody, LegalHoldBody, erasure_body, legal_hold_body
from .source import (
    HeartbeatStatement,
    KeyEventStatement,
    heartbeat_from_dict,
    key_event_from_dict,
)

RelationshipKind = Literal["encounter", "appointment", "care-team", "referral", "order"]
StaffStatus = Literal["active", "suspended", "terminated"]
Confidentiality = Literal["U", "L", "M", "N", "R", "V"]

RELATIONSHIP_KINDS: Final[tuple[RelationshipKind, ...]] = (
    "encounter",
    "appointment",
    "care-team",
    "referral",
    "order",
)
STAFF_STATUSES: Final[tuple[StaffStatus, ...]] = ("active", "suspended", "terminated")
#: R4 and R5 Consent.status codes.
CONSENT_STATUSES: Final = frozenset(
    {
        "draft",
        "proposed",
        "active",
        "rejected",
        "inactive",
        "not-done",
        "entered-in-error",
        "unknown",
    }
)
_CONFIDENTIALITY: Final = ("U", "L", "M", "N", "R", "V")

#: FHIR R4/R5 ``dateTime`` (a time needs a zone; partial dates are allowed).
_FHIR_DATETIME_RE: Final = re.compile(
    r"\A(?:[0-9](?:[0-9](?:[0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
    r"(?:-(?:0[1-9]|1[0-2])(?:-(?:0[1-9]|[12][0-9]|3[01])"
    r"(?:T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?\Z"
)
_PATIENT_REF_RE: Final = re.compile(r"(?:\A|/)Patient/([^/]+)(?:/_history/[^/]+)?\Z")


# --------------------------------------------------------------------------- bodies


@dataclass(frozen=True, slots=True)
class Address:
    line: str
    city: str
    postcode: str


@dataclass(frozen=True, slots=True)
class Shift:
    """A weekly shift in UTC: starts at ``start_hour`` on each of ``days`` (0 = Monday)
    and ends at ``end_hour`` — the next day when ``end_hour <= start_hour``."""

    days: tuple[int, ...]
    start_hour: int
    end_hour: int

    @property
    def overnight(self) -> bool:
        return self.end_hour <= self.start_hour

    def covers(self, weekday: int, hour: int) -> bool:
        """True if the hour ``hour`` (0..23) of ``weekday`` (0 = Monday) is in this shift."""
        if not self.overnight:
            return weekday in self.days and self.start_hour <= hour < self.end_hour
        if hour >= self.start_hour:
            return weekday in self.days
        return hour < self.end_hour and (weekday - 1) % 7 in self.days


@dataclass(frozen=True, slots=True)
class EmergencyContact:
    family_name: str
    given_name: str | None = None
    phone: str | None = None
    user_id: str | None = None  # when the contact is also in the workforce directory


@dataclass(frozen=True, slots=True)
class ConsentBody:
    """A FHIR Consent (R4 or R5). ``resource`` is the resource itself (frozen JSON)."""

    patient_id: str
    status: str
    fhir_version: Literal["R4", "R5"]
    resource: Mapping[str, Any]

    @property
    def subject_id(self) -> str:
        return self.patient_id


@dataclass(frozen=True, slots=True)
class CareRelationshipBody:
    patient_id: str
    kind: RelationshipKind
    start: str
    practitioner_id: str | None = None
    team_id: str | None = None
    department: str | None = None
    end: str | None = None  # None: open-ended

    @property
    def subject_id(self) -> str:
        return self.patient_id


@dataclass(frozen=True, slots=True)
class StaffBody:
    user_id: str
    family_name: str
    given_name: str
    roles: tuple[str, ...]
    department: str
    status: StaffStatus
    start_date: str
    manager_id: str | None = None
    end_date: str | None = None
    address: Address | None = None
    phone: str | None = None
    patient_id: str | None = None  # the employee's own patient record
    shifts: tuple[Shift, ...] = ()
    teams: tuple[str, ...] = ()

    @property
    def subject_id(self) -> str:
        return self.user_id


@dataclass(frozen=True, slots=True)
class PatientBody:
    patient_id: str
    family_name: str
    given_name: str
    vip: bool
    address: Address | None = None
    phone: str | None = None
    employee_user_id: str | None = None
    emergency_contacts: tuple[EmergencyContact, ...] = ()
    confidentiality: Confidentiality | None = None
    sensitivity_labels: tuple[str, ...] = ()

    @property
    def subject_id(self) -> str:
        return self.patient_id


@dataclass(frozen=True, slots=True)
class SourceKeyBody:
    """A registrar-signed key event (ADR 0010): ``{statement, signature}``; ``record_id``
    is ``<source_id>/<key_id>``, a later version revokes or re-activates the key. The
    signature is checked by whoever trusts the registrar, not here."""

    statement: KeyEventStatement
    signature: str

    @property
    def subject_id(self) -> str:
        return self.statement.source_id


@dataclass(frozen=True, slots=True)
class SourceHeartbeatBody:
    """A source-signed heartbeat (ADR 0010): ``{statement, signature}``; ``record_id`` is
    ``<source_id>/<epoch>/<beat>``."""

    statement: HeartbeatStatement
    signature: str

    @property
    def subject_id(self) -> str:
        return self.statement.source_id


ReferenceBody: TypeAlias = (
    ConsentBody
    | CareRelationshipBody
    | StaffBody
    | PatientBody
    | SourceKeyBody
    | SourceHeartbeatBody
    | ErasureBody
    | LegalHoldBody
)


def _address(obj: Mapping[str, Any], name: str, path: str) -> Address | None:
    if name not in obj:
        return None
    p = _join(path, name)
    a = _members(obj[name], p, ("line", "city", "postcode"), ())
    return Address(
        line=_string(a, "line", p), city=_string(a, "city", p), postcode=_string(a, "postcode", p)
    )


def _fhir_period(obj: Mapping[str, Any], path: str) -> None:
    if "period" not in obj:
        return
    p = _join(path, "period")
    period = obj["period"]
    if not isinstance(period, Mapping):
        _wrong_type(p, "object", period)
    for end in ("start", "end"):
        if end in period:
            value = period[end]
            if not isinstance(value, str):
                _wrong_type(_join(p, end), "string", value)
            if _FHIR_DATETIME_RE.match(value) is None or (
                len(value) >= 10 and not _is_valid_date(value[:10])
            ):
                _fail(_join(p, end), "must be a FHIR dateTime (a time needs a zone)")
    start, stop = period.get("start"), period.get("end")
    if (
        isinstance(start, str)
        and isinstance(stop, str)
        and len(start) == len(stop)
        and start[-1] == stop[-1] == "Z"
        and stop < start
    ):
        _fail(_join(p, "end"), "period ends before it starts")


def _fhir_provisions(value: object, path: str, depth: int = 0) -> None:
    """R4: one provision object with a ``provision`` array; R5: arrays all the way."""
    if depth > 32:
        _fail(path, "provisions nested too deeply")
    items: tuple[tuple[object, str], ...]
    if isinstance(value, Mapping):
        items = ((value, path),)
    elif isinstance(value, list | tuple):
        items = tuple((item, f"{path}[{i}]") for i, item in enumerate(value))
    else:
        _wrong_type(path, "object or array", value)
    for item, ip in items:
        if not isinstance(item, Mapping):
            _wrong_type(ip, "object", item)
        if "type" in item:
            _choice(item, "type", ip, ("deny", "permit"))
        _fhir_period(item, ip)
        if "provision" in item:
            _fhir_provisions(item["provision"], _join(ip, "provision"), depth + 1)


def _patient_reference(body: Mapping[str, Any], member: str, path: str) -> str:
    p = _join(path, member)
    ref = body[member]
    if not isinstance(ref, Mapping):
        _wrong_type(p, "object", ref)
    rp = _join(p, "reference")
    if "reference" not in ref:
        _fail(rp, "missing required field (a Patient reference)")
    value = ref["reference"]
    if not isinstance(value, str):
        _wrong_type(rp, "string", value)
    m = _PATIENT_REF_RE.search(value)
    if m is None:
        _fail(rp, "must reference a Patient (Patient/<id>)")
    patient_id = m.group(1)
    if len(patient_id) > MAX_ID_LENGTH:
        _fail(rp, f"patient id must have at most {MAX_ID_LENGTH} characters")
    return patient_id


def _consent(body: Mapping[str, Any], path: str) -> ConsentBody:
    p = _join(path, "resourceType")
    if "resourceType" not in body:
        _fail(p, "missing required field")
    if body["resourceType"] != "Consent":
        _fail(p, "must be 'Consent'")
    if "status" not in body:
        _fail(_join(path, "status"), "missing required field")
    status = _choice(body, "status", path, sorted(CONSENT_STATUSES))
    r4 = _patient_reference(body, "patient", path) if "patient" in body else None
    r5 = _patient_reference(body, "subject", path) if "subject" in body else None
    if r4 is None and r5 is None:
        _fail(_join(path, "subject"), "missing: R4 patient.reference or R5 subject.reference")
    if r4 is not None and r5 is not None and r4 != r5:
        _fail(_join(path, "subject"), "patient (R4) and subject (R5) name different patients")
    if "decision" in body:
        _choice(body, "decision", path, ("deny", "permit"))
    _fhir_period(body, path)
    if "provision" in body:
        _fhir_provisions(body["provision"], _join(path, "provision"))
    # R5 by its own members (as verifiers.auditor.consent reads it): subject, decision,
    # grantor/grantee or a provision array; everything else (IHE's policy-only
    # consents included) is R4. A consent whose rules are only a policy reference is
    # valid: its evaluation is the policy table's business, never a body error.
    r5_style = (
        r5 is not None
        or any(k in body for k in ("decision", "grantor", "grantee"))
        or isinstance(body.get("provision"), list | tuple)
    )
    return ConsentBody(
        patient_id=cast(str, r5 if r5 is not None else r4),
        status=status,
        fhir_version="R5" if r5_style else "R4",
        resource=body,
    )


def _care_relationship(body: Mapping[str, Any], path: str) -> CareRelationshipBody:
    _members(
        body,
        path,
        ("patient_id", "kind", "start"),
        ("practitioner_id", "team_id", "department", "end"),
    )
    rel = CareRelationshipBody(
        patient_id=_ident(body, "patient_id", path),
        kind=cast(RelationshipKind, _choice(body, "kind", path, RELATIONSHIP_KINDS)),
        practitioner_id=_opt_ident(body, "practitioner_id", path),
        team_id=_opt_ident(body, "team_id", path),
        department=_opt_string(body, "department", path),
        start=_timestamp(body, "start", path),
        end=_timestamp(body, "end", path) if "end" in body else None,
    )
    if rel.practitioner_id is None and rel.team_id is None and rel.department is None:
        _fail(path, "needs at least one of practitioner_id, team_id, department")
    if rel.end is not None and rel.end < rel.start:
        _fail(_join(path, "end"), "ends before it starts")
    return rel


def _shifts(obj: Mapping[str, Any], path: str) -> tuple[Shift, ...]:
    if "shifts" not in obj:
        return ()
    p = _join(path, "shifts")
    out: list[Shift] = []
    for i, item in enumerate(_array(obj, "shifts", path)):
        sp = f"{p}[{i}]"
        s = _members(item, sp, ("days", "start_hour", "end_hour"), ())
        days_path = _join(sp, "days")
        raw_days = _array(s, "days", sp)
        if not raw_days:
            _fail(days_path, "list must not be empty")
        days: list[int] = []
        for j, day in enumerate(raw_days):
            dp = f"{days_path}[{j}]"
            if type(day) is not int:
                _wrong_type(dp, "integer", day)
            if not 0 <= day <= 6:
                _fail(dp, "integer out of range (0..6, 0 = Monday)")
            if day in days:
                _fail(dp, "duplicate day")
            days.append(day)
        start = _integer(s, "start_hour", sp, 0, 23)
        end = _integer(s, "end_hour", sp, 0, 24)
        if end == start:
            _fail(_join(sp, "end_hour"), "a shift cannot end at the hour it starts")
        out.append(Shift(days=tuple(days), start_hour=start, end_hour=end))
    return tuple(out)


def _staff(body: Mapping[str, Any], path: str) -> StaffBody:
    _members(
        body,
        path,
        ("user_id", "family_name", "given_name", "roles", "department", "status", "start_date"),
        ("manager_id", "end_date", "address", "phone", "patient_id", "shifts", "teams"),
    )
    staff = StaffBody(
        user_id=_ident(body, "user_id", path),
        family_name=_string(body, "family_name", path),
        given_name=_string(body, "given_name", path),
        roles=_codes(body, "roles", path),
        department=_string(body, "department", path),
        manager_id=_opt_ident(body, "manager_id", path),
        status=cast(StaffStatus, _choice(body, "status", path, STAFF_STATUSES)),
        start_date=_date(body, "start_date", path),
        end_date=_date(body, "end_date", path) if "end_date" in body else None,
        address=_address(body, "address", path),
        phone=_opt_string(body, "phone", path),
        patient_id=_opt_ident(body, "patient_id", path),
        shifts=_shifts(body, path),
        teams=_codes(body, "teams", path) if "teams" in body else (),
    )
    if staff.end_date is not None and staff.end_date < staff.start_date:
        _fail(_join(path, "end_date"), "ends before start_date")
    if staff.manager_id == staff.user_id:
        _fail(_join(path, "manager_id"), "a user cannot be their own manager")
    return staff


def _patient(body: Mapping[str, Any], path: str) -> PatientBody:
    _members(
        body,
        path,
        ("patient_id", "family_name", "given_name", "vip"),
        (
            "address",
            "phone",
            "employee_user_id",
            "emergency_contacts",
            "confidentiality",
            "sensitivity_labels",
        ),
    )
    contacts: list[EmergencyContact] = []
    if "emergency_contacts" in body:
        cp = _join(path, "emergency_contacts")
        for i, item in enumerate(_array(body, "emergency_contacts", path)):
            ip = f"{cp}[{i}]"
            c = _members(item, ip, ("family_name",), ("given_name", "phone", "user_id"))
            contacts.append(
                EmergencyContact(
                    family_name=_string(c, "family_name", ip),
                    given_name=_opt_string(c, "given_name", ip),
                    phone=_opt_string(c, "phone", ip),
                    user_id=_opt_ident(c, "user_id", ip),
                )
            )
    return PatientBody(
        patient_id=_ident(body, "patient_id", path),
        family_name=_string(body, "family_name", path),
        given_name=_string(body, "given_name", path),
        vip=_boolean(body, "vip", path),
        address=_address(body, "address", path),
        phone=_opt_string(body, "phone", path),
        employee_user_id=_opt_ident(body, "employee_user_id", path),
        emergency_contacts=tuple(contacts),
        confidentiality=(
            cast(Confidentiality, _choice(body, "confidentiality", path, _CONFIDENTIALITY))
            if "confidentiality" in body
            else None
        ),
        sensitivity_labels=(
            _codes(body, "sensitivity_labels", path) if "sensitivity_labels" in body else ()
        ),
    )


def _signed_statement(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    _members(body, "body", ("statement", "signature"), ())
    statement = body["statement"]
    if not isinstance(statement, Mapping):
        _wrong_type("body.statement", "object", statement)
    signature = _string(body, "signature", "body", 128)
    return thaw(statement), signature


def _source_key(body: Mapping[str, Any], record_id: str) -> SourceKeyBody:
    raw, signature = _signed_statement(body)
    try:
        statement = key_event_from_dict(raw)
    except ValidationError as exc:
        _fail("body.statement", exc.message)
    if record_id != f"{statement.source_id}/{statement.key_id}":
        _fail("record_id", "must be <source_id>/<key_id> of the statement")
    return SourceKeyBody(statement, signature)


def _source_heartbeat(body: Mapping[str, Any], record_id: str) -> SourceHeartbeatBody:
    raw, signature = _signed_statement(body)
    try:
        statement = heartbeat_from_dict(raw)
    except ValidationError as exc:
        _fail("body.statement", exc.message)
    if record_id != f"{statement.source_id}/{statement.epoch}/{statement.beat}":
        _fail("record_id", "must be <source_id>/<epoch>/<beat> of the statement")
    return SourceHeartbeatBody(statement, signature)


def _parse_body(kind: str, body: Mapping[str, Any], record_id: str) -> ReferenceBody:
    path = "body"
    if kind == "source-key":
        return _source_key(body, record_id)
    if kind == "source-heartbeat":
        return _source_heartbeat(body, record_id)
    if kind == "consent":
        return _consent(body, path)
    if kind == "erasure":
        return erasure_body(body, path)
    if kind == "legal-hold":
        return legal_hold_body(body, path)
    if kind == "care-relationship":
        return _care_relationship(body, path)
    if kind == "staff":
        staff = _staff(body, path)
        if staff.user_id != record_id:
            _fail("body.user_id", "must equal record_id")
        return staff
    patient = _patient(body, path)
    if patient.patient_id != record_id:
        _fail("body.patient_id", "must equal record_id")
    return patient
