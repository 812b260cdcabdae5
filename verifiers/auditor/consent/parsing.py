"""Parsing one FHIR Consent (R4 or R5) into a normalised ``Policy`` (pure).

Raises :class:`~careledger_core.errors.ConsentFormatError` (``CONSENT_INVALID``) naming
the FHIR path at fault. Also the two questions the consent ledger asks without
evaluating anything: ``consent_patient_id`` and ``is_active``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from careledger_core.errors import ConsentFormatError

from .fhir_time import _BadTime, _bounds, _instant
from .model import (
    ActorRule,
    Effect,
    FhirVersion,
    Period,
    Policy,
    Provision,
    RoleKind,
    TargetKind,
    _request_error,
)

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

_REFERENCE_TYPE_RE: Final = re.compile(r"\A[A-Z][A-Za-z]{1,63}\Z")


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
