"""FHIR Consent (R4 and R5) evaluation: is this access permitted by the patient's consents?

Pure and deterministic: no I/O, no clock, no randomness, no dependence on the order of the
consents. The auditor asks :func:`evaluate_consent` about one access (a
:class:`ConsentRequest`, usually built with :meth:`ConsentRequest.from_event`) given the
patient's consent resources as of the event time, and stores the
:class:`ConsentDecision` — outcome, deciding consent, deciding provision and a reason —
so "why was this allowed?" always has an answer.

API
---
* :func:`parse_consent` turns one Consent resource (a JSON-shaped mapping) into a
  normalised :class:`Policy`, or raises :class:`~careledger_core.errors.ConsentFormatError`
  (``CONSENT_INVALID``) naming the FHIR path at fault.
* :func:`consent_patient_id` and :func:`is_active` answer the two questions the consent
  ledger needs without evaluating anything.
* :func:`evaluate_consent` accepts resources or already parsed :class:`Policy` objects.

Semantics (the decisions this module makes, in one place)
---------------------------------------------------------
Which consents count
    Only ``status == "active"`` consents of the request's patient (``Patient/<id>`` in R4
    ``patient`` / R5 ``subject``) whose validity period covers the access time. The
    validity period is R5 ``Consent.period`` and R4 ``Consent.provision.period`` (the root
    provision's period; R4 ``dateTime`` is when the consent was recorded, not a validity
    bound). R4 consents whose ``scope`` is only ``treatment`` or ``adr`` (consent to a
    procedure, advance directive) do not govern access to data and are ignored. If no
    consent counts, the outcome is ``"no-consent"``: the consent ledger has nothing to
    say and other explanations (care relationships, ...) decide.

Base decision (what the consent says when no provision matches)
    R5: ``decision``. R4: ``policyRule``, read with the HL7 v3 ActCode definitions —
    OPTIN/OPTINR ("a grantor's assent to the terms") permit, OPTOUT/OPTOUTE ("a
    grantor's dissent") deny; this is also how HL7's own Consent examples use them (the
    opt-out example withholds data, the emergency-only example is an "overall deny"). A
    legacy STU3 ``policyRule`` URI ending in ``opt-in``/``opt-out`` is read the same way.
    Without a recognised policy (R4) or ``decision`` (R5), the base comes from the single
    top-level provision's explicit ``type``: the type itself when that provision states
    no criteria (it covers everything), the opposite otherwise (it is an exception to an
    unstated base). A governing consent with no base at all is a ``ConsentFormatError``.

Provisions and nesting
    A provision is an exception to its parent (the parent of a top-level provision is the
    base decision). Its effect is its explicit ``type`` when it has one (R4; R5 drafts);
    otherwise it flips its parent's effect (R5 semantics, also applied to an untyped R4
    provision, whose root provision may not carry a type). An untyped provision that
    states no criteria of its own is a mere container (an R4 root provision holding only
    the consent period and nested provisions): it carries its parent's effect and never
    decides by itself — when none of its children match, its parent decides. Paths
    (``ConsentDecision.provision_path``) index ``Consent.provision`` downwards; R4's
    single root provision is index 0. The empty path means the base decision.

Matching a provision
    A provision applies when every criterion it states matches; a criterion with several
    values matches when any value does:

    * ``period`` (of a nested provision): covers the access time.
    * ``actor``: entries are grouped by role; every role group must have a matching
      entry (HL7 writes "custodian X and recipient Y" as two entries). A reference
      matches by id: ``Practitioner``, ``PractitionerRole``, ``Person``,
      ``RelatedPerson``, ``Patient``, ``Device`` ids against the actor id,
      ``Organization`` ids against the actor's organization; an identifier-only reference
      by its value against the actor id. Group, CareTeam, contained or ``urn:``
      references cannot be resolved here and never match (expand them before
      evaluating). Recipient roles (PRCP, IRCP, RCV, REFT, GRANTEE, DELEGATEE) only
      qualify the reference. Data-provenance roles (CST custodian, AUT author, INF, ENT,
      LA, AUTHEN, VRF, TRANS) describe where the data comes from, which an access event
      does not carry; this evaluator runs at the custodian, so such entries always
      match. Any other role code is a workforce role and must be among the actor's
      roles (exact code).
    * ``action`` (consent-action codes): each access needs one or more consent actions,
      and every one of them must be permitted (deny wins): R -> access (or use),
      C -> collect, U -> access (or use) and correct, D -> correct, E (export) -> access
      (or use) and disclose. So a practitioner denied "access" cannot export either, and
      a read-only grant does not allow disclosure.
    * ``purpose`` (v3 ActReason): one of the access's purposes of use. BTG (break the
      glass) also counts as ETREAT. No other subsumption: a deny of TREAT does not
      cover ETREAT (HL7's No-Emergency example lists both).
    * ``securityLabel``: a confidentiality code (U < L < M < N < R < V) is a high-water
      mark — it matches data labelled at that level or lower (FHIR's definition); any
      other code (HIV, PSY, ...) must be one of the data's labels.
    * ``class`` (R4) / ``resourceType`` (R5): the data's resource type.
    * ``code``, ``data``, ``dataPeriod``, ``documentType``, ``expression`` describe data
      content an access event does not carry: a provision stating them never matches.

Choosing the decision
    Within one consent the deepest matching provision wins (the most specific); among
    matches equally deep, deny wins. Across consents, deny wins: one denying consent
    overrides any number of permitting ones (a patient's refusal is never silently
    outvoted by an older or broader permit).

Which consent and provision are reported
    The outcome settled, the reported rule is the most specific one with that outcome
    (among the consents, and among equally deep matches within one consent), so a
    blanket permit does not hide the permit that names this practitioner for this
    purpose. A rule's scope is its provision together with the provisions it is nested
    in (it applies only within them); the base decision has none. Rules compare by, in
    order (greater is more specific):

    1. whom it names, by the actor entries that matched: the actor (a person
       reference) 3, the actor's organization 2, one of the actor's workforce roles 1,
       anyone (no actor criterion, or only recipient-role or data-provenance entries) 0;
    2. how many kinds of criteria it states: ``period``, ``action``, ``purpose``,
       ``securityLabel``, ``class``/``resourceType`` (0 to 5; kinds, not values: a
       provision for TREAT or ETREAT is not narrower than one for TREAT);
    3. its nesting depth (the base decision is 0);

    then, among equally specific rules, the smallest consent id, provision path and
    action requirement (for actions needing several consent actions).

Times
    FHIR ``date`` and ``dateTime`` with any precision (``2015``, ``2015-02``,
    ``2015-02-07``, ``2015-02-07T13:28:17.239+02:00``); a time must carry its zone, as
    FHIR requires. A period's start is the beginning of its value and its end includes
    the whole of its value (``end: 2015-02-01`` covers all of that day), per FHIR
    ``Period``. A date without a time is taken in UTC (the evaluator has no local zone).

Anything FHIR marks as a ``modifierExtension`` cannot be understood here and makes the
resource unusable (``ConsentFormatError``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn, TypeAlias

from careledger_core.errors import ConsentFormatError, ValidationError
from careledger_core.event import AccessEvent

__all__ = [
    "ACTION_REQUIREMENTS",
    "CONFIDENTIALITY_ORDER",
    "ActorRule",
    "ConsentDecision",
    "ConsentRequest",
    "Effect",
    "Period",
    "Policy",
    "Provision",
    "consent_patient_id",
    "evaluate_consent",
    "is_active",
    "parse_consent",
]

Effect: TypeAlias = Literal["permit", "deny"]
Outcome: TypeAlias = Literal["permit", "deny", "no-consent"]
Action: TypeAlias = Literal["C", "R", "U", "D", "E"]
FhirVersion: TypeAlias = Literal["R4", "R5"]
RoleKind: TypeAlias = Literal["none", "recipient", "provenance", "workforce"]
TargetKind: TypeAlias = Literal["none", "person", "organization", "unresolvable"]

#: consent-action codes each access action needs; each inner tuple is one requirement
#: met by any of its codes, and every requirement must be permitted.
ACTION_REQUIREMENTS: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = {
    "C": (("collect",),),
    "R": (("access", "use"),),
    "U": (("access", "use"), ("correct",)),
    "D": (("correct",),),
    "E": (("access", "use"), ("disclose",)),
}
#: v3 Confidentiality codes, lowest to highest.
CONFIDENTIALITY_ORDER: Final = ("U", "L", "M", "N", "R", "V")
_CONF_RANK: Final = {code: rank for rank, code in enumerate(CONFIDENTIALITY_ORDER)}
#: request purpose -> further purposes it counts as.
_PURPOSE_IMPLIES: Final[Mapping[str, tuple[str, ...]]] = {"BTG": ("ETREAT",)}

_RECIPIENT_ROLES: Final = frozenset({"PRCP", "IRCP", "RCV", "REFT", "GRANTEE", "DELEGATEE"})
_PROVENANCE_ROLES: Final = frozenset({"CST", "AUT", "INF", "ENT", "LA", "AUTHEN", "VRF", "TRANS"})
_PERSON_TYPES: Final = frozenset(
    {"Practitioner", "PractitionerRole", "Person", "RelatedPerson", "Patient", "Device"}
)
_PERMIT_POLICIES: Final = frozenset({"OPTIN", "OPTINR"})
_DENY_POLICIES: Final = frozenset({"OPTOUT", "OPTOUTE"})
_NON_ACCESS_SCOPES: Final = frozenset({"treatment", "adr"})
_STATUSES: Final = frozenset(
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
#: provision members an access event cannot be tested against.
_UNEVALUABLE: Final = ("code", "data", "dataPeriod", "documentType", "expression")
_MAX_DEPTH: Final = 32

_DATETIME_RE: Final = re.compile(
    r"\A(?P<y>[0-9]{4})(?:-(?P<mo>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2}))?)?)?\Z"
)
_REFERENCE_TYPE_RE: Final = re.compile(r"\A[A-Z][A-Za-z]{1,63}\Z")
_US_PER_SECOND: Final = 1_000_000
_US_PER_DAY: Final = 86_400 * _US_PER_SECOND


# --------------------------------------------------------------------------- time


class _BadTime(Exception):
    pass


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days from 1970-01-01 to y-m-d (proleptic Gregorian; any year, no overflow)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _bounds(value: str, *, need_instant: bool = False) -> tuple[int, int]:
    """``[lower, upper)`` of a FHIR date/dateTime in UTC microseconds since the epoch.

    The upper bound is the end of the value's precision: ``2015`` covers the whole year,
    ``…T10:00:00Z`` the whole second. Raises ``_BadTime``.
    """
    m = _DATETIME_RE.match(value)
    if m is None:
        raise _BadTime("must be a FHIR date or dateTime (a time needs seconds and a zone)")
    g = m.groupdict()
    y = int(g["y"])
    if y == 0:
        raise _BadTime("year 0000 does not exist")
    if g["mo"] is None:
        if need_instant:
            raise _BadTime("must be an instant (date, time to the second and zone)")
        return _days_from_civil(y, 1, 1) * _US_PER_DAY, _days_from_civil(y + 1, 1, 1) * (
            _US_PER_DAY
        )
    mo = int(g["mo"])
    if not 1 <= mo <= 12:
        raise _BadTime("no such month")
    if g["d"] is None:
        if need_instant:
            raise _BadTime("must be an instant (date, time to the second and zone)")
        nxt = _days_from_civil(y + 1, 1, 1) if mo == 12 else _days_from_civil(y, mo + 1, 1)
        return _days_from_civil(y, mo, 1) * _US_PER_DAY, nxt * _US_PER_DAY
    d = int(g["d"])
    if not 1 <= d <= _days_in_month(y, mo):
        raise _BadTime("no such calendar date")
    day = _days_from_civil(y, mo, d) * _US_PER_DAY
    if g["h"] is None:
        if need_instant:
            raise _BadTime("must be an instant (date, time to the second and zone)")
        return day, day + _US_PER_DAY
    h, mi, s = int(g["h"]), int(g["mi"]), int(g["s"])
    if h > 23 or mi > 59 or s > 60:
        raise _BadTime("no such time of day")
    frac = g["f"] or ""
    micro = int((frac + "000000")[:6])
    unit = 10 ** (6 - len(frac)) if len(frac) < 6 else 1
    if s == 60:  # leap second: the last representable instant of the minute
        s, micro, unit = 59, 999_999, 1
    tz = g["tz"]
    offset = 0
    if tz != "Z":
        th, tm = int(tz[1:3]), int(tz[4:6])
        if tm > 59 or th > 14 or (th == 14 and tm > 0):
            raise _BadTime("no such time-zone offset")
        offset = (th * 3600 + tm * 60) * _US_PER_SECOND * (1 if tz[0] == "+" else -1)
    lower = day + (h * 3600 + mi * 60 + s) * _US_PER_SECOND + micro - offset
    return lower, lower + unit


def _instant(value: object) -> int:
    """UTC microseconds of a full FHIR instant (the request time). Raises ``_BadTime``."""
    if not isinstance(value, str):
        raise _BadTime(f"must be a string, got {type(value).__name__}")
    return _bounds(value, need_instant=True)[0]


def _format_us(us: int) -> str:
    days, rest = divmod(us, _US_PER_DAY)
    # civil_from_days (inverse of _days_from_civil)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (m <= 2)
    secs, micro = divmod(rest, _US_PER_SECOND)
    hh, rem = divmod(secs, 3600)
    mm, ss = divmod(rem, 60)
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{micro:06d}Z"


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Period:
    """A validity interval ``[start_us, end_us)`` in UTC microseconds; None = unbounded."""

    start_us: int | None = None
    end_us: int | None = None

    def covers(self, instant_us: int) -> bool:
        if self.start_us is not None and instant_us < self.start_us:
            return False
        return self.end_us is None or instant_us < self.end_us

    def describe(self) -> str:
        start = "-inf" if self.start_us is None else _format_us(self.start_us)
        end = "+inf" if self.end_us is None else _format_us(self.end_us)
        return f"[{start}, {end})"


@dataclass(frozen=True, slots=True)
class ActorRule:
    """One ``provision.actor`` entry, normalised.

    ``role_kind``: ``none`` (no role), ``recipient`` (qualifies the reference),
    ``provenance`` (about the data's origin: always matches), ``workforce`` (must be one
    of the actor's roles). ``target``: what the reference names; ``target_id`` its id.
    """

    roles: tuple[str, ...]
    role_kind: RoleKind
    target: TargetKind
    target_id: str | None = None

    def matches(self, request: ConsentRequest) -> bool:
        if self.role_kind == "provenance":
            return True
        if self.role_kind == "workforce" and not set(self.roles) & set(request.actor_roles):
            return False
        if self.target == "none":
            return True
        if self.target == "person":
            return self.target_id == request.actor_id
        if self.target == "organization":
            return request.actor_organization is not None and (
                self.target_id == request.actor_organization
            )
        return False


@dataclass(frozen=True, slots=True)
class Provision:
    """One provision (rule) with its effective decision and nested exceptions.

    Criteria tuples are sorted and de-duplicated; an empty tuple states no criterion.
    ``typed`` tells whether ``effect`` was written (``type``) or derived (flip/container).
    """

    effect: Effect
    typed: bool
    period: Period | None = None
    actors: tuple[ActorRule, ...] = ()
    actions: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    security_labels: tuple[str, ...] = ()
    data_classes: tuple[str, ...] = ()
    unevaluable: tuple[str, ...] = ()
    provisions: tuple[Provision, ...] = ()

    @property
    def has_criteria(self) -> bool:
        return bool(
            self.period
            or self.actors
            or self.actions
            or self.purposes
            or self.security_labels
            or self.data_classes
            or self.unevaluable
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """A Consent resource normalised for evaluation (see the module docstring).

    ``base`` is None only for consents that do not govern access to data
    (``governs_access`` False). ``period`` is the consent's validity. ``grantees`` (R5)
    are kept for reporting; access is decided by provision actors.
    """

    consent_id: str
    fhir_version: FhirVersion
    status: str
    patient_id: str
    governs_access: bool
    base: Effect | None
    base_source: str
    period: Period | None = None
    provisions: tuple[Provision, ...] = ()
    grantees: tuple[str, ...] = ()

    def applies_to(self, request: ConsentRequest) -> bool:
        """Counts for ``request``: governs access, active, same patient, period covers."""
        return (
            self.governs_access
            and self.base is not None
            and self.status == "active"
            and self.patient_id == request.patient_id
            and (self.period is None or self.period.covers(request.at_us))
        )


def _request_error(name: str, reason: str) -> ValidationError:
    return ValidationError(
        f"invalid consent request at {name}: {reason}",
        details={"field": name, "reason": reason},
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentRequest:
    """One access to evaluate. ``at`` is a FHIR instant, normally the event's
    ``occurred_at`` (``YYYY-MM-DDTHH:MM:SS.ffffffZ``); ``security_labels`` mixes the
    confidentiality code and sensitivity labels; ``data_class`` is a resource type.
    Raises :class:`~careledger_core.errors.ValidationError` for a malformed request."""

    patient_id: str
    at: str
    actor_id: str
    actor_roles: tuple[str, ...] = ()
    actor_organization: str | None = None
    purposes: tuple[str, ...] = ()
    action: Action
    security_labels: tuple[str, ...] = ()
    data_class: str | None = None
    at_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("patient_id", "actor_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise _request_error(name, "must be a non-empty string")
        for name in ("actor_organization", "data_class"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise _request_error(name, "must be a non-empty string or None")
        for name in ("actor_roles", "purposes", "security_labels"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise _request_error(name, "must be a tuple of strings")
            items = tuple(value)
            if not all(isinstance(item, str) for item in items):
                raise _request_error(name, "must be a tuple of strings")
            object.__setattr__(self, name, items)
        if self.action not in ACTION_REQUIREMENTS:
            raise _request_error("action", "must be one of C, R, U, D, E")
        try:
            object.__setattr__(self, "at_us", _instant(self.at))
        except _BadTime as exc:
            raise _request_error("at", str(exc)) from None

    @classmethod
    def from_event(cls, event: AccessEvent) -> ConsentRequest:
        """The request an access event makes: who, for whom, when, why, what and how."""
        labels: tuple[str, ...] = ()
        if event.sensitivity is not None:
            labels = (event.sensitivity.confidentiality, *event.sensitivity.labels)
        return cls(
            patient_id=event.patient.id,
            at=event.occurred_at,
            actor_id=event.actor.id,
            actor_roles=tuple(event.actor.roles),
            actor_organization=event.actor.organization,
            purposes=tuple(event.purpose_of_use),
            action=event.action,
            security_labels=labels,
            data_class=event.object.type if event.object is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """The outcome, the deciding consent (None for ``no-consent``), the deciding
    provision (indices from ``Consent.provision``; empty = the base decision) and why."""

    outcome: Outcome
    consent_id: str | None
    provision_path: tuple[int, ...]
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "outcome": self.outcome,
            "consent_id": self.consent_id,
            "provision_path": list(self.provision_path),
            "reason": self.reason,
        }


# --------------------------------------------------------------------------- parsing


def _fail(path: str, reason: str) -> NoReturn:
    raise ConsentFormatError(path, reason)


def _join(path: str, member: str) -> str:
    return member if path == "$" else f"{path}.{member}"


def _type_name(value: object) -> str:
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "null" if value is None else type(value).__name__


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, f"must be an object, got {_type_name(value)}")
    if value.get("modifierExtension"):
        _fail(_join(path, "modifierExtension"), "modifier extensions cannot be evaluated")
    return value


def _array(obj: Mapping[str, Any], member: str, path: str) -> list[tuple[Any, str]]:
    """Items of an array member with their paths (absent -> empty)."""
    if member not in obj:
        return []
    value = obj[member]
    p = _join(path, member)
    if not isinstance(value, list | tuple):
        _fail(p, f"must be an array, got {_type_name(value)}")
    return [(item, f"{p}[{i}]") for i, item in enumerate(value)]


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(path, "must be a non-empty string")
    return value


def _coding_code(value: object, path: str) -> str:
    coding = _mapping(value, path)
    if "code" not in coding:
        _fail(_join(path, "code"), "missing: a coding without a code cannot be matched")
    return _string(coding["code"], _join(path, "code"))


def _concept_codes(value: object, path: str) -> tuple[str, ...]:
    concept = _mapping(value, path)
    codes = tuple(_coding_code(c, p) for c, p in _array(concept, "coding", path))
    if not codes:
        _fail(_join(path, "coding"), "missing: a concept without a coded value")
    return codes


def _period(obj: Mapping[str, Any], path: str) -> Period | None:
    if "period" not in obj:
        return None
    p = _join(path, "period")
    period = _mapping(obj["period"], p)
    start = end = None
    for member in ("start", "end"):
        if member not in period:
            continue
        mp = _join(p, member)
        try:
            lower, upper = _bounds(_string(period[member], mp))
        except _BadTime as exc:
            _fail(mp, str(exc))
        if member == "start":
            start = lower
        else:
            end = upper
    if start is not None and end is not None and end <= start:
        _fail(_join(p, "end"), "period ends before it starts")
    return Period(start, end)


def _reference(value: object, path: str) -> tuple[TargetKind, str | None]:
    ref = _mapping(value, path)
    if "reference" in ref:
        text = _string(ref["reference"], _join(path, "reference")).strip()
        if text.startswith(("#", "urn:")):
            return "unresolvable", text
        parts = [part for part in text.split("/") if part]
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) < 2 or _REFERENCE_TYPE_RE.match(parts[-2]) is None:
            _fail(_join(path, "reference"), "must be a reference Type/id")
        rtype, rid = parts[-2], parts[-1]
    elif "identifier" in ref:
        ident = _mapping(ref["identifier"], _join(path, "identifier"))
        if "value" not in ident:
            _fail(_join(path, "identifier.value"), "missing required field")
        rid = _string(ident["value"], _join(path, "identifier.value"))
        rtype = ref.get("type", "Practitioner")
        if not isinstance(rtype, str) or not rtype:
            _fail(_join(path, "type"), "must be a resource type")
        rtype = rtype.rsplit("/", 1)[-1]  # Reference.type may be a full StructureDefinition URL
    else:
        _fail(path, "needs a reference or an identifier")
    if rtype in _PERSON_TYPES:
        return "person", rid
    if rtype == "Organization":
        return "organization", rid
    return "unresolvable", f"{rtype}/{rid}"


def _actor(value: object, path: str) -> ActorRule:
    actor = _mapping(value, path)
    roles: tuple[str, ...] = ()
    if "role" in actor:
        roles = tuple(sorted(set(_concept_codes(actor["role"], _join(path, "role")))))
    target: TargetKind = "none"
    target_id = None
    if "reference" in actor:
        target, target_id = _reference(actor["reference"], _join(path, "reference"))
    if not roles and target == "none":
        _fail(path, "an actor needs a role or a reference")
    kind: RoleKind
    if not roles:
        kind = "none"
    elif set(roles) & _RECIPIENT_ROLES:
        kind = "recipient"
    elif set(roles) & _PROVENANCE_ROLES:
        kind = "provenance"
    else:
        kind = "workforce"
    return ActorRule(roles=roles, role_kind=kind, target=target, target_id=target_id)


def _codes(obj: Mapping[str, Any], member: str, path: str, *, concept: bool) -> set[str]:
    out: set[str] = set()
    for item, p in _array(obj, member, path):
        if concept:
            out.update(_concept_codes(item, p))
        else:
            out.add(_coding_code(item, p))
    return out


def _opposite(effect: Effect) -> Effect:
    return "deny" if effect == "permit" else "permit"


def _effect_type(value: object, path: str) -> Effect:
    if value == "permit":
        return "permit"
    if value == "deny":
        return "deny"
    _fail(path, "must be 'permit' or 'deny'")


@dataclass(frozen=True, slots=True)
class _RawProvision:
    """A provision parsed except for its effect (which needs the base decision)."""

    type: Effect | None
    criteria: Provision  # effect placeholder; children empty
    children: tuple[_RawProvision, ...]


def _raw_provision(value: object, path: str, depth: int, *, r4_root: bool) -> _RawProvision:
    if depth > _MAX_DEPTH:
        _fail(path, f"provisions nested deeper than {_MAX_DEPTH}")
    node = _mapping(value, path)
    explicit = _effect_type(node["type"], _join(path, "type")) if "type" in node else None
    # R4: the root provision's period is the consent's validity, not a criterion.
    period = None if r4_root else _period(node, path)
    actors = tuple(_actor(item, p) for item, p in _array(node, "actor", path))
    classes = _codes(node, "class", path, concept=False)
    classes |= _codes(node, "resourceType", path, concept=False)
    unevaluable = tuple(name for name in _UNEVALUABLE if node.get(name))
    criteria = Provision(
        effect="permit",
        typed=explicit is not None,
        period=period,
        actors=tuple(sorted(set(actors), key=repr)),
        actions=tuple(sorted(_codes(node, "action", path, concept=True))),
        purposes=tuple(sorted(_codes(node, "purpose", path, concept=False))),
        security_labels=tuple(sorted(_codes(node, "securityLabel", path, concept=False))),
        data_classes=tuple(sorted(classes)),
        unevaluable=unevaluable,
    )
    p = _join(path, "provision")
    nested = node.get("provision", [])
    if isinstance(nested, Mapping):  # an R4-style single object where an array belongs
        nested = [nested]
    if not isinstance(nested, list | tuple):
        _fail(p, f"must be an array, got {_type_name(nested)}")
    children = tuple(
        _raw_provision(item, f"{p}[{i}]", depth + 1, r4_root=False) for i, item in enumerate(nested)
    )
    return _RawProvision(explicit, criteria, children)


def _resolve(raw: _RawProvision, parent: Effect) -> Provision:
    c = raw.criteria
    if raw.type is not None:
        effect = raw.type
    elif c.has_criteria:
        effect = _opposite(parent)  # an exception to its parent
    else:
        effect = parent  # a container
    return Provision(
        effect=effect,
        typed=raw.type is not None,
        period=c.period,
        actors=c.actors,
        actions=c.actions,
        purposes=c.purposes,
        security_labels=c.security_labels,
        data_classes=c.data_classes,
        unevaluable=c.unevaluable,
        provisions=tuple(_resolve(child, effect) for child in raw.children),
    )


def _patient_id(resource: Mapping[str, Any]) -> str:
    ids: dict[str, str] = {}
    for member in ("patient", "subject"):
        if member not in resource:
            continue
        ref = _mapping(resource[member], member)
        rp = _join(member, "reference")
        if "reference" not in ref:
            _fail(rp, "missing required field (a Patient reference)")
        parts = [part for part in _string(ref["reference"], rp).split("/") if part]
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) < 2 or parts[-2] != "Patient":
            _fail(rp, "must reference a Patient (Patient/<id>)")
        ids[member] = parts[-1]
    if not ids:
        _fail("subject", "missing: R4 patient.reference or R5 subject.reference")
    if len(set(ids.values())) > 1:
        _fail("subject", "patient (R4) and subject (R5) name different patients")
    return next(iter(ids.values()))


def _resource(resource: object) -> Mapping[str, Any]:
    res = _mapping(resource, "$")
    if res.get("resourceType") != "Consent":
        _fail("resourceType", "must be 'Consent'")
    return res


def consent_patient_id(resource: Mapping[str, Any]) -> str:
    """The id of the patient a Consent is about (``Patient/<id>`` of R4 ``patient`` or R5
    ``subject``). Raises ``ConsentFormatError``."""
    return _patient_id(_resource(resource))


def _version(res: Mapping[str, Any]) -> FhirVersion:
    r5 = (
        "subject" in res
        or any(k in res for k in ("decision", "grantor", "grantee"))
        or isinstance(res.get("provision"), list | tuple)
    )
    return "R5" if r5 else "R4"


def _policy_rule(res: Mapping[str, Any]) -> tuple[Effect | None, str]:
    if "policyRule" not in res:
        return None, ""
    rule = res["policyRule"]
    if isinstance(rule, str):  # STU3: a URI
        if rule.endswith("opt-in"):
            return "permit", "policyRule opt-in"
        if rule.endswith("opt-out"):
            return "deny", "policyRule opt-out"
        return None, ""
    concept = _mapping(rule, "policyRule")
    codes = {_coding_code(c, p) for c, p in _array(concept, "coding", "policyRule")}
    permit, deny = codes & _PERMIT_POLICIES, codes & _DENY_POLICIES
    if permit and deny:
        _fail("policyRule", f"both opt-in and opt-out codes: {sorted(codes)}")
    if permit:
        return "permit", f"policyRule {min(permit)}"
    if deny:
        return "deny", f"policyRule {min(deny)}"
    return None, ""


def _governs_access(res: Mapping[str, Any]) -> bool:
    scope = res.get("scope")
    if not isinstance(scope, Mapping):
        return True
    codes = {c.get("code") for c in scope.get("coding", ()) if isinstance(c, Mapping)}
    codes.discard(None)
    return not codes or not codes <= _NON_ACCESS_SCOPES


def parse_consent(resource: Mapping[str, Any]) -> Policy:
    """Normalise one FHIR Consent (R4 or R5) for evaluation.

    Raises :class:`~careledger_core.errors.ConsentFormatError` (``CONSENT_INVALID``) with
    the FHIR path at fault for a resource that cannot be evaluated.
    """
    res = _resource(resource)
    if "id" not in res:
        _fail("id", "missing: a consent must be identifiable to be cited")
    consent_id = _string(res["id"], "id")
    if "status" not in res:
        _fail("status", "missing required field")
    status = res["status"]
    if status not in _STATUSES:
        _fail("status", f"must be one of {', '.join(sorted(_STATUSES))}")
    patient_id = _patient_id(res)
    version = _version(res)
    governs = _governs_access(res)

    raw_top: tuple[_RawProvision, ...] = ()
    validity: Period | None = None
    if "provision" in res:
        prov = res["provision"]
        if isinstance(prov, Mapping):  # R4 (and early R5 drafts): one root provision
            r4_root = version == "R4"
            raw_top = (_raw_provision(prov, "provision", 0, r4_root=r4_root),)
            if r4_root:
                validity = _period(prov, "provision")
        elif isinstance(prov, list | tuple):
            raw_top = tuple(
                _raw_provision(item, f"provision[{i}]", 0, r4_root=False)
                for i, item in enumerate(prov)
            )
        else:
            _fail("provision", f"must be an object or an array, got {_type_name(prov)}")
    if version == "R5":
        validity = _period(res, "$")

    base: Effect | None
    if "decision" in res:
        base, source = _effect_type(res["decision"], "decision"), "decision"
    else:
        base, source = _policy_rule(res)
    top_type = raw_top[0].type if len(raw_top) == 1 else None
    if base is None and top_type is not None:
        base = _opposite(top_type) if raw_top[0].criteria.has_criteria else top_type
        source = f"provision type {top_type}"
    if base is None and governs:
        _fail(
            "decision" if version == "R5" else "policyRule",
            "no base decision: needs R5 decision, an R4 opt-in/opt-out policyRule "
            "or a typed top-level provision",
        )
    provisions = tuple(_resolve(raw, base) for raw in raw_top) if base is not None else ()

    grantees = tuple(
        sorted(
            _string(_mapping(item, p).get("reference"), _join(p, "reference"))
            for item, p in _array(res, "grantee", "$")
            if isinstance(item, Mapping) and "reference" in item
        )
    )
    return Policy(
        consent_id=consent_id,
        fhir_version=version,
        status=status,
        patient_id=patient_id,
        governs_access=governs,
        base=base,
        base_source=source,
        period=validity,
        provisions=provisions,
        grantees=grantees,
    )


def is_active(resource: Mapping[str, Any] | Policy, at: str) -> bool:
    """True if the consent is ``active`` and its validity period covers instant ``at``.

    Raises ``ConsentFormatError`` for a malformed consent and ``ValidationError`` for a
    malformed ``at``.
    """
    policy = resource if isinstance(resource, Policy) else parse_consent(resource)
    try:
        at_us = _instant(at)
    except _BadTime as exc:
        raise _request_error("at", str(exc)) from None
    return policy.status == "active" and (policy.period is None or policy.period.covers(at_us))


# --------------------------------------------------------------------------- evaluation


def _labels_match(wanted: tuple[str, ...], have: tuple[str, ...]) -> bool:
    have_ranks = [_CONF_RANK[label] for label in have if label in _CONF_RANK]
    for code in wanted:
        if code in _CONF_RANK:
            if any(rank <= _CONF_RANK[code] for rank in have_ranks):
                return True
        elif code in have:
            return True
    return False


def _actors_match(rules: tuple[ActorRule, ...], request: ConsentRequest) -> bool:
    groups: dict[tuple[str, ...], bool] = {}
    for rule in rules:
        groups[rule.roles] = groups.get(rule.roles, False) or rule.matches(request)
    return all(groups.values())


@dataclass(frozen=True, slots=True)
class _Ask:
    """One consent-action requirement of a request, with the request's derived sets."""

    request: ConsentRequest
    actions: frozenset[str]
    purposes: frozenset[str]


def _matches(p: Provision, ask: _Ask) -> bool:
    req = ask.request
    if p.unevaluable:
        return False
    if p.period is not None and not p.period.covers(req.at_us):
        return False
    if p.actions and ask.actions.isdisjoint(p.actions):
        return False
    if p.purposes and ask.purposes.isdisjoint(p.purposes):
        return False
    if p.data_classes and req.data_class not in p.data_classes:
        return False
    if p.security_labels and not _labels_match(p.security_labels, req.security_labels):
        return False
    return not p.actors or _actors_match(p.actors, req)


_NAMES_PERSON: Final = 3
_NAMES_ORGANIZATION: Final = 2
_NAMES_ROLE: Final = 1


def _names(rule: ActorRule) -> int:
    """Whom a matching actor entry singles out (see "Which consent ... reported")."""
    if rule.role_kind == "provenance":
        return 0  # about the data's origin: matches any actor
    if rule.target == "person":
        return _NAMES_PERSON
    if rule.target == "organization":
        return _NAMES_ORGANIZATION
    return _NAMES_ROLE if rule.role_kind == "workforce" else 0


def _specificity(
    policy: Policy, path: tuple[int, ...], request: ConsentRequest
) -> tuple[int, int, int]:
    """(whom it names, kinds of criteria, depth) of the rule at ``path``, over the
    provision and its ancestors (which all match when it does); greater is more
    specific. The base decision (empty path) is (0, 0, 0)."""
    names = 0
    kinds: set[str] = set()
    provisions = policy.provisions
    for index in path:
        p = provisions[index]
        for rule in p.actors:
            if rule.matches(request):
                names = max(names, _names(rule))
        for kind, stated in (
            ("period", p.period is not None),
            ("action", p.actions),
            ("purpose", p.purposes),
            ("securityLabel", p.security_labels),
            ("class", p.data_classes),
        ):
            if stated:
                kinds.add(kind)
        provisions = p.provisions
    return names, len(kinds), len(path)


def _decide(policy: Policy, ask: _Ask) -> tuple[Effect, tuple[int, ...]]:
    """The deepest matching provision's effect (deny first among equals) and path (the
    most specific of those, then the smallest path); the base decision with the empty
    path if none matches. An untyped provision without criteria is a container: it
    never decides by itself."""
    found: list[tuple[Effect, tuple[int, ...]]] = []

    def walk(provisions: tuple[Provision, ...], prefix: tuple[int, ...]) -> bool:
        """Record the deepest matches below; True if anything was recorded."""
        recorded = False
        for i, p in enumerate(provisions):
            if not _matches(p, ask):
                continue
            path = (*prefix, i)
            if walk(p.provisions, path):
                recorded = True
            elif p.typed or p.has_criteria:  # an untyped container decides nothing itself
                found.append((p.effect, path))
                recorded = True
        return recorded

    walk(policy.provisions, ())
    if not found:
        assert policy.base is not None  # applies_to() admits only governing policies
        return policy.base, ()

    def rank(f: tuple[Effect, tuple[int, ...]]) -> tuple[int, bool, int, int, tuple[int, ...]]:
        names, kinds, depth = _specificity(policy, f[1], ask.request)
        return -depth, f[0] != "deny", -names, -kinds, f[1]

    return min(found, key=rank)


def _where(policy: Policy, path: tuple[int, ...]) -> str:
    if not path:
        return f"base decision ({policy.base_source})"
    steps = []
    for depth, index in enumerate(path):
        if depth == 0 and policy.fhir_version == "R4" and len(policy.provisions) == 1:
            steps.append("provision")
        else:
            steps.append(f"provision[{index}]")
    return ".".join(steps)


@dataclass(frozen=True, slots=True)
class _Verdict:
    effect: Effect
    policy: Policy
    path: tuple[int, ...]
    requirement: int
    #: ``_specificity`` of the deciding rule
    specificity: tuple[int, int, int]

    @property
    def key(self) -> tuple[int, int, int, str, tuple[int, ...], int]:
        """Sort key: the most specific rule first, then consent id, path, requirement."""
        names, kinds, depth = self.specificity
        return -names, -kinds, -depth, self.policy.consent_id, self.path, self.requirement


def _no_consent(policies: list[Policy], request: ConsentRequest) -> ConsentDecision:
    own = sorted(
        (p for p in policies if p.patient_id == request.patient_id), key=lambda p: p.consent_id
    )
    notes = []
    for p in own:
        if not p.governs_access:
            notes.append(f"Consent/{p.consent_id} does not govern data access")
        elif p.status != "active":
            notes.append(f"Consent/{p.consent_id} is {p.status}")
        else:
            period = p.period.describe() if p.period is not None else ""
            notes.append(f"Consent/{p.consent_id} is valid {period} only")
    why = f": {'; '.join(notes)}" if notes else ""
    reason = f"no active consent of patient {request.patient_id} covers {request.at}{why}"
    return ConsentDecision("no-consent", None, (), reason)


_VERB: Final[Mapping[str, str]] = {"permit": "permits", "deny": "denies"}


def _ask_text(request: ConsentRequest, requirement: tuple[str, ...]) -> str:
    return f"action {request.action} ({'/'.join(requirement)})"


def evaluate_consent(
    consents: Sequence[Mapping[str, Any] | Policy], request: ConsentRequest
) -> ConsentDecision:
    """Decide ``request`` against the patient's consents (resources or parsed policies).

    Every resource is parsed first, so a malformed one raises ``ConsentFormatError``
    whatever the request. Deterministic and independent of the order of ``consents``;
    see the module docstring for the semantics.
    """
    policies = [c if isinstance(c, Policy) else parse_consent(c) for c in consents]
    applicable = sorted(
        (p for p in policies if p.applies_to(request)), key=lambda p: (p.consent_id, repr(p))
    )
    if not applicable:
        return _no_consent(policies, request)
    purposes = set(request.purposes)
    for purpose in request.purposes:
        purposes.update(_PURPOSE_IMPLIES.get(purpose, ()))
    requirements = ACTION_REQUIREMENTS[request.action]
    verdicts = []
    for index, requirement in enumerate(requirements):
        ask = _Ask(request, frozenset(requirement), frozenset(purposes))
        for policy in applicable:
            effect, path = _decide(policy, ask)
            verdicts.append(
                _Verdict(effect, policy, path, index, _specificity(policy, path, request))
            )
    denies = [v for v in verdicts if v.effect == "deny"]
    winner = min(denies or verdicts, key=lambda v: v.key)
    policy = winner.policy
    what = _ask_text(request, requirements[winner.requirement])
    reason = (
        f"Consent/{policy.consent_id} ({policy.fhir_version}) {_VERB[winner.effect]} {what}: "
        f"{_where(policy, winner.path)}"
    )
    if winner.effect == "deny":
        permitting = sorted({v.policy.consent_id for v in verdicts if v.effect == "permit"})
        others = [cid for cid in permitting if cid != policy.consent_id]
        if others:
            reason += "; deny wins over the permit of " + ", ".join(
                f"Consent/{cid}" for cid in others
            )
    return ConsentDecision(winner.effect, policy.consent_id, winner.path, reason)
