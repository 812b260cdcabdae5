"""Reference-data records (schema ``careledger.reference/1``) and their canonical bytes.

The auditor explains and flags accesses against reference data — patient consents, care
relationships, the workforce directory and patient demographics. Every change to that
data is one *reference record*, ledgered (chained, Merkle-rooted, signed) exactly like an
access event, so the state behind any decision is tamper-evident and can be rebuilt as of
any instant.

Envelope (JSON object on the wire; ``null`` and unknown members are rejected)::

    schema        "careledger.reference/1"
    kind          "consent" | "care-relationship" | "staff" | "patient" | "source-key" |
                  "source-heartbeat"
    record_id     stable id of the thing (consent id, relationship id, user id, patient id),
                  1..256 characters
    version       integer >= 1; a higher version supersedes lower ones of the same
                  (kind, record_id) from its effective_at on
    recorded_at   "YYYY-MM-DDTHH:MM:SS.ffffffZ": when the source recorded this version
    effective_at  same format: from when this version applies
    retracted     true: the record ends at effective_at (entered in error, revoked,
                  deleted); omitted when false (an explicit false is dropped)
    body          JSON object, validated per kind (see below)

Bodies:

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

Canonical bytes are generic RFC 8785 JCS of the envelope (bodies are free JSON: a FHIR
Consent may carry anything, floats included); the leaf hash is SHA-256(0x00 ‖ bytes), as
for events. Errors are :class:`~careledger_core.errors.ReferenceValidationError` with a
precise ``field`` path such as ``"body.period.start"`` or ``"body.shifts[0].end_hour"``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn, TypeAlias, cast

from .errors import ReferenceValidationError, ValidationError
from .event import MAX_ID_LENGTH, MAX_LIST_LENGTH, MAX_TEXT_LENGTH, is_valid_timestamp
from .hashing import leaf_hash
from .jcs import MAX_SAFE_INTEGER, canonicalize
from .source import (
    HeartbeatStatement,
    KeyEventStatement,
    heartbeat_from_dict,
    key_event_from_dict,
)

__all__ = [
    "CONSENT_STATUSES",
    "REFERENCE_KINDS",
    "REFERENCE_SCHEMA",
    "RELATIONSHIP_KINDS",
    "STAFF_STATUSES",
    "Address",
    "CareRelationshipBody",
    "ConsentBody",
    "EmergencyContact",
    "FrozenJSONObject",
    "PatientBody",
    "ReferenceBody",
    "ReferenceKind",
    "ReferenceRecord",
    "RelationshipKind",
    "Shift",
    "SourceHeartbeatBody",
    "SourceKeyBody",
    "StaffBody",
    "StaffStatus",
    "canonical_reference_bytes",
    "decode_and_canonicalize_reference",
    "decode_reference",
    "reference_from_dict",
    "reference_leaf_hash",
    "reference_to_dict",
    "thaw",
]

REFERENCE_SCHEMA: Final = "careledger.reference/1"

ReferenceKind = Literal[
    "consent", "care-relationship", "staff", "patient", "source-key", "source-heartbeat"
]
RelationshipKind = Literal["encounter", "appointment", "care-team", "referral", "order"]
StaffStatus = Literal["active", "suspended", "terminated"]
Confidentiality = Literal["U", "L", "M", "N", "R", "V"]

REFERENCE_KINDS: Final[tuple[ReferenceKind, ...]] = (
    "consent",
    "care-relationship",
    "staff",
    "patient",
    "source-key",
    "source-heartbeat",
)
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

_ENVELOPE_REQUIRED: Final = (
    "schema",
    "kind",
    "record_id",
    "version",
    "recorded_at",
    "effective_at",
    "body",
)
_ENVELOPE_OPTIONAL: Final = ("retracted",)

_DATE_RE: Final = re.compile(r"\A[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])\Z")
_DAYS_IN_MONTH: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
#: FHIR R4/R5 ``dateTime`` (a time needs a zone; partial dates are allowed).
_FHIR_DATETIME_RE: Final = re.compile(
    r"\A(?:[0-9](?:[0-9](?:[0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
    r"(?:-(?:0[1-9]|1[0-2])(?:-(?:0[1-9]|[12][0-9]|3[01])"
    r"(?:T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?\Z"
)
_PATIENT_REF_RE: Final = re.compile(r"(?:\A|/)Patient/([^/]+)(?:/_history/[^/]+)?\Z")


# --------------------------------------------------------------------------- frozen JSON


class FrozenJSONObject(dict[str, Any]):
    """A JSON object that cannot be changed (bodies of records are shared, never copied).

    It is a ``dict`` (so ``canonicalize``, ``json.dumps`` and ``isinstance(x, dict)``
    work); nested objects are frozen too and arrays are tuples. ``thaw`` gives plain
    mutable JSON.
    """

    __slots__ = ()

    def _immutable(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("reference record bodies are immutable; use thaw() for a copy")

    __setitem__ = _immutable
    __delitem__ = _immutable
    clear = _immutable
    pop = _immutable
    popitem = _immutable
    setdefault = _immutable
    update = _immutable
    __ior__ = _immutable

    def __reduce__(self) -> tuple[object, ...]:
        return (FrozenJSONObject, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(canonicalize(self))


def thaw(value: Any) -> Any:
    """Plain mutable JSON (``dict``/``list``) of a frozen body or value."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _join(path: str, name: str) -> str:
    return name if path == "$" else f"{path}.{name}"


def _fail(path: str, reason: str) -> NoReturn:
    raise ReferenceValidationError(path, reason)


def _freeze(value: object, path: str, *, allow_null: bool) -> Any:
    """Validate a generic JSON value and return an immutable copy."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            _fail(path, "lone surrogate: not valid Unicode")
        return value
    if value is True or value is False:
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            _fail(path, "integer outside ±(2^53−1)")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(path, "NaN and infinities are not JSON")
        return value
    if value is None:
        if not allow_null:
            _fail(path, "null is not allowed (omit the field instead)")
        return None
    if isinstance(value, Mapping):
        for dup in getattr(value, "duplicates", ()):
            _fail(_join(path, dup), "duplicate member name")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(path, f"member name {key!r} is not a string")
            child = _join(path, key)
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                _fail(child, "lone surrogate in member name: not valid Unicode")
            out[key] = _freeze(item, child, allow_null=allow_null)
        return FrozenJSONObject(out)
    if isinstance(value, list | tuple):
        return tuple(
            _freeze(item, f"{path}[{i}]", allow_null=allow_null) for i, item in enumerate(value)
        )
    _fail(path, f"a {type(value).__name__} is not a JSON value")


# --------------------------------------------------------------------------- field checks


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _wrong_type(path: str, expected: str, value: object) -> NoReturn:
    if value is None:
        _fail(path, "null is not allowed (omit the field instead)")
    _fail(path, f"wrong type: expected {expected}, got {_type_name(value)}")


def _members(
    obj: object, path: str, required: Iterable[str], optional: Iterable[str]
) -> Mapping[str, Any]:
    """``obj`` as an object that has every required member and no unknown one."""
    if not isinstance(obj, Mapping):
        _wrong_type(path, "object", obj)
    required = tuple(required)
    allowed = set(required).union(optional)
    for name in required:
        if name not in obj:
            _fail(_join(path, name), "missing required field")
    for name in obj:
        if name not in allowed:
            _fail(_join(path, str(name)), "unknown field")
    return obj


def _string(obj: Mapping[str, Any], name: str, path: str, max_length: int = MAX_TEXT_LENGTH) -> str:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, str):
        _wrong_type(p, "string", value)
    if not value:
        _fail(p, "string must not be empty")
    if len(value) > max_length:
        _fail(p, f"string must have at most {max_length} characters")
    return value


def _opt_string(
    obj: Mapping[str, Any], name: str, path: str, max_length: int = MAX_TEXT_LENGTH
) -> str | None:
    return _string(obj, name, path, max_length) if name in obj else None


def _ident(obj: Mapping[str, Any], name: str, path: str) -> str:
    return _string(obj, name, path, MAX_ID_LENGTH)


def _opt_ident(obj: Mapping[str, Any], name: str, path: str) -> str | None:
    return _string(obj, name, path, MAX_ID_LENGTH) if name in obj else None


def _choice(obj: Mapping[str, Any], name: str, path: str, choices: Iterable[str]) -> str:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, str):
        _wrong_type(p, "string", value)
    choices = tuple(choices)
    if value not in choices:
        _fail(p, f"invalid value {value!r}; expected one of {', '.join(choices)}")
    return value


def _integer(obj: Mapping[str, Any], name: str, path: str, low: int, high: int) -> int:
    p = _join(path, name)
    value = obj[name]
    if type(value) is not int:
        _wrong_type(p, "integer", value)
    if not low <= value <= high:
        _fail(p, f"integer out of range ({low}..{high})")
    return value


def _boolean(obj: Mapping[str, Any], name: str, path: str) -> bool:
    p = _join(path, name)
    value = obj[name]
    if value is not True and value is not False:
        _wrong_type(p, "boolean", value)
    return bool(value)


def _timestamp(obj: Mapping[str, Any], name: str, path: str) -> str:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, str):
        _wrong_type(p, "string", value)
    if not is_valid_timestamp(value):
        _fail(p, "must be a UTC timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ (6 fraction digits)")
    return value


def _is_valid_date(value: str) -> bool:
    if _DATE_RE.match(value) is None:
        return False
    year, month, day = int(value[0:4]), int(value[5:7]), int(value[8:10])
    if month == 2 and day == 29:
        return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return day <= _DAYS_IN_MONTH[month]


def _date(obj: Mapping[str, Any], name: str, path: str) -> str:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, str):
        _wrong_type(p, "string", value)
    if not _is_valid_date(value):
        _fail(p, "must be a calendar date YYYY-MM-DD")
    return value


def _array(obj: Mapping[str, Any], name: str, path: str) -> tuple[Any, ...]:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, list | tuple):
        _wrong_type(p, "array", value)
    if len(value) > MAX_LIST_LENGTH:
        _fail(p, f"list must have at most {MAX_LIST_LENGTH} items")
    return tuple(value)


def _codes(obj: Mapping[str, Any], name: str, path: str) -> tuple[str, ...]:
    items = _array(obj, name, path)
    p = _join(path, name)
    out: list[str] = []
    for i, item in enumerate(items):
        ip = f"{p}[{i}]"
        if not isinstance(item, str):
            _wrong_type(ip, "string", item)
        if not item:
            _fail(ip, "string must not be empty")
        if len(item) > MAX_ID_LENGTH:
            _fail(ip, f"string must have at most {MAX_ID_LENGTH} characters")
        out.append(item)
    return tuple(out)


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
    r5_style = r5 is not None or any(k in body for k in ("decision", "grantor", "grantee"))
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


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True, slots=True)
class ReferenceRecord:
    """One version of one reference-data record (``careledger.reference/1``).

    Validated on construction (``ReferenceValidationError``); ``body`` is kept as frozen
    JSON (its canonical form is what is ledgered) and ``parsed`` is its typed view.
    """

    kind: ReferenceKind
    record_id: str
    version: int
    recorded_at: str
    effective_at: str
    body: Mapping[str, Any] = field(hash=False)
    retracted: bool = False
    parsed: ReferenceBody = field(init=False, hash=False, compare=False, repr=False)
    _canonical: bytes | None = field(
        init=False, hash=False, compare=False, repr=False, default=None
    )

    def __post_init__(self) -> None:
        if self.kind not in REFERENCE_KINDS:
            if not isinstance(self.kind, str):
                _wrong_type("kind", "string", self.kind)
            expected = ", ".join(REFERENCE_KINDS)
            _fail("kind", f"invalid value {self.kind!r}; expected one of {expected}")
        fields: dict[str, Any] = {
            "record_id": self.record_id,
            "version": self.version,
            "recorded_at": self.recorded_at,
            "effective_at": self.effective_at,
            "retracted": self.retracted,
        }
        _ident(fields, "record_id", "$")
        _integer(fields, "version", "$", 1, MAX_SAFE_INTEGER)
        _timestamp(fields, "recorded_at", "$")
        _timestamp(fields, "effective_at", "$")
        _boolean(fields, "retracted", "$")
        if not isinstance(self.body, Mapping):
            _wrong_type("body", "object", self.body)
        body = _freeze(self.body, "body", allow_null=self.kind == "consent")
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "parsed", _parse_body(self.kind, body, self.record_id))

    @property
    def subject_id(self) -> str:
        """Patient id (consent, care-relationship, patient) or user id (staff)."""
        return self.parsed.subject_id

    @property
    def key(self) -> tuple[str, str]:
        """``(kind, record_id)``: the identity that versions supersede within."""
        return (self.kind, self.record_id)


def reference_to_dict(rec: ReferenceRecord) -> dict[str, Any]:
    """Plain JSON-shaped dict of ``rec`` (``retracted`` omitted when false)."""
    d: dict[str, Any] = {
        "schema": REFERENCE_SCHEMA,
        "kind": rec.kind,
        "record_id": rec.record_id,
        "version": rec.version,
        "recorded_at": rec.recorded_at,
        "effective_at": rec.effective_at,
    }
    if rec.retracted:
        d["retracted"] = True
    d["body"] = thaw(rec.body)
    return d


def canonical_reference_bytes(rec: ReferenceRecord) -> bytes:
    """RFC 8785 canonical bytes of the envelope (``retracted`` omitted when false)."""
    cached = rec._canonical
    if cached is not None:
        return cached
    d: dict[str, Any] = {
        "schema": REFERENCE_SCHEMA,
        "kind": rec.kind,
        "record_id": rec.record_id,
        "version": rec.version,
        "recorded_at": rec.recorded_at,
        "effective_at": rec.effective_at,
        "body": rec.body,
    }
    if rec.retracted:
        d["retracted"] = True
    try:
        data = canonicalize(d)
    except ValidationError as exc:  # only possible for bodies changed behind our back
        path = str(exc.details.get("path", "$")).removeprefix("$.")
        raise ReferenceValidationError(path, exc.message) from exc
    object.__setattr__(rec, "_canonical", data)
    return data


def reference_leaf_hash(rec: ReferenceRecord) -> bytes:
    """Merkle leaf hash of a record: SHA-256(0x00 ‖ canonical bytes)."""
    return leaf_hash(canonical_reference_bytes(rec))


def reference_from_dict(d: Mapping[str, object]) -> ReferenceRecord:
    """Validate a JSON-shaped mapping (as from ``json.loads``) into a record."""
    if not isinstance(d, Mapping):
        _wrong_type("$", "object", d)
    for dup in getattr(d, "duplicates", ()):
        _fail(dup, "duplicate member name")
    _members(d, "$", _ENVELOPE_REQUIRED, _ENVELOPE_OPTIONAL)
    for name, value in d.items():
        if value is None:
            _fail(str(name), "null is not allowed (omit the field instead)")
    if d["schema"] != REFERENCE_SCHEMA:
        if not isinstance(d["schema"], str):
            _wrong_type("schema", "string", d["schema"])
        _fail("schema", f"invalid value {d['schema']!r}; expected {REFERENCE_SCHEMA}")
    kind = d["kind"]
    if not isinstance(kind, str):
        _wrong_type("kind", "string", kind)
    body = d["body"]
    if not isinstance(body, Mapping):
        _wrong_type("body", "object", body)
    return ReferenceRecord(
        kind=cast(ReferenceKind, kind),
        record_id=cast(str, d["record_id"]),
        version=cast(int, d["version"]),
        recorded_at=cast(str, d["recorded_at"]),
        effective_at=cast(str, d["effective_at"]),
        retracted=cast(bool, d.get("retracted", False)),
        body=body,
    )


class _DupObject(dict[str, Any]):
    """A parsed JSON object that had duplicate member names."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    dup = _DupObject(pairs)
    seen: set[str] = set()
    dup.duplicates = []
    for key, _ in pairs:
        if key in seen:
            dup.duplicates.append(key)
        seen.add(key)
    return dup


class _NonFinite(Exception):
    pass


def _parse_constant(name: str) -> NoReturn:
    raise _NonFinite(name)


def decode_and_canonicalize_reference(data: bytes) -> tuple[ReferenceRecord, bytes]:
    """Validate one wire message; return the record and its canonical (JCS) bytes."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        _fail("$", "not valid UTF-8")
    try:
        doc = json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_parse_constant)
    except _NonFinite as exc:
        _fail("$", f"{exc} is not JSON")
    except (ValueError, RecursionError) as exc:
        _fail("$", f"invalid JSON: {exc}")
    if not isinstance(doc, dict):
        _wrong_type("$", "object", doc)
    rec = reference_from_dict(doc)
    return rec, canonical_reference_bytes(rec)


def decode_reference(data: bytes) -> ReferenceRecord:
    """Validate and decode one wire message (JSON bytes) into a :class:`ReferenceRecord`."""
    return decode_and_canonicalize_reference(data)[0]
