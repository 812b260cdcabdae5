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
_UNEVALUABLE: Final = ("code", "dataPeriod", "documentType", "expression")
_DATA_MEANINGS: Final = frozenset({"instance", "related", "dependents", "authoredby"})
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


def _data(node: Mapping[str, Any], path: str) -> tuple[tuple[str, str], ...]:
    out: set[tuple[str, str]] = set()
    for item, p in _array(node, "data", path):
        entry = _mapping(item, p)
        meaning = entry.get("meaning")
        if meaning not in _DATA_MEANINGS:
            _fail(_join(p, "meaning"), f"must be one of {', '.join(sorted(_DATA_MEANINGS))}")
        if "reference" not in entry:
            _fail(_join(p, "reference"), "missing required field")
        ref = _mapping(entry["reference"], _join(p, "reference"))
        text = ref.get("reference")
        if isinstance(text, str) and text.strip():
            parts = [part for part in text.strip().split("/") if part]
            if len(parts) >= 4 and parts[-2] == "_history":
                parts = parts[:-2]
            out.add((meaning, "/".join(parts[-2:])))
        else:  # identifier-only: cannot be compared with the data an event names
            out.add((meaning, "#unresolvable"))
    return tuple(sorted(out))


def _raw_provision(value: object, path: str, depth: int) -> _RawProvision:
    if depth > _MAX_DEPTH:
        _fail(path, f"provisions nested deeper than {_MAX_DEPTH}")
    node = _mapping(value, path)
    explicit = _effect_type(node["type"], _join(path, "type")) if "type" in node else None
    # R4 defines provision.period as "the timeframe in this rule is valid": a criterion
    # of the rule at every level, the root included.
    period = _period(node, path)
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
        data=_data(node, path),
        unevaluable=unevaluable,
    )
    p = _join(path, "provision")
    nested = node.get("provision", [])
    if isinstance(nested, Mapping):  # an R4-style single object where an array belongs
        nested = [nested]
    if not isinstance(nested, list | tuple):
        _fail(p, f"must be an array, got {_type_name(nested)}")
    children = tuple(_raw_provision(item, f"{p}[{i}]", depth + 1) for i, item in enumerate(nested))
    return _RawProvision(explicit, criteria, children)


def _covers(stated: tuple[str, ...], parent: tuple[str, ...]) -> bool:
    """A criterion (``stated``) met by every access meeting the parent's (``parent``)."""
    return not stated or (bool(parent) and set(parent) <= set(stated))


def _always_within(child: Provision, parent: Provision) -> bool:
    """``child`` matches every access its parent matches: it narrows nothing."""
    return (
        (child.period is None or child.period == parent.period)
        and all(a.role_kind == "provenance" or a in parent.actors for a in child.actors)
        and _covers(child.actions, parent.actions)
        and _covers(child.purposes, parent.purposes)
        and _covers(child.security_labels, parent.security_labels)
        and _covers(child.data_classes, parent.data_classes)
        and not child.data
        and not child.unevaluable
    )


def _resolve(
    raw: _RawProvision,
    parent: Effect,
    *,
    r4_root: bool,
    r5: bool,
    notes: list[str],
    path: str,
) -> Provision:
    c = raw.criteria
    if raw.type is not None:
        effect = raw.type
    elif not c.has_criteria:
        effect = parent  # a container
    elif r4_root and c.only_provenance:
        # R4: an untyped root provision naming only where the data is held (custodian,
        # author) names no one to grant anything to: it withholds that data (HL7's Out
        # and notAuthor examples, under OPTOUT and OPTIN alike; ADR 0021).
        effect = "deny"
        notes.append(f"{path}: names only the data's custodian/author: read as withholding")
    elif r5 and c.only_provenance and raw.children:
        # R5: a provision naming only where the data is held, with nested provisions,
        # scopes its exceptions to that data and keeps its parent's effect (HL7's R5
        # Emergency: "no data at Artis ... except for Emergency treatment use"). Without
        # nested provisions it is an exception like any other (R5 Out, notAuthor).
        effect = parent
        notes.append(f"{path}: names only the data's custodian/author: a scope, not a reversal")
    else:
        effect = _opposite(parent)  # an exception to its parent
    children: list[Provision] = []
    for i, child_raw in enumerate(raw.children):
        cpath = f"{path}.provision[{i}]"
        child = _resolve(child_raw, effect, r4_root=False, r5=r5, notes=notes, path=cpath)
        if child.effect != effect and child.effect == parent and _always_within(child, c):
            # It restates its parent's scope with the effect that already holds outside
            # the parent: read as "everything else", which the parent's parent says
            # (HL7's Emergency and pkb examples; ADR 0021).
            notes.append(f"{cpath}: restates its parent's scope with the outer effect: ignored")
            continue
        children.append(child)
    return Provision(
        effect=effect,
        typed=raw.type is not None,
        period=c.period,
        actors=c.actors,
        actions=c.actions,
        purposes=c.purposes,
        security_labels=c.security_labels,
        data_classes=c.data_classes,
        data=c.data,
        unevaluable=c.unevaluable,
        provisions=tuple(children),
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


def _coded_refs(value: object, path: str) -> list[str]:
    """``system|code`` (or the bare code) of each coding of a CodeableConcept."""
    concept = _mapping(value, path)
    out = []
    for coding, p in _array(concept, "coding", path):
        code = _coding_code(coding, p)
        system = _mapping(coding, p).get("system")
        out.append(f"{system}|{code}" if isinstance(system, str) and system else code)
    return out


def _policy_refs(res: Mapping[str, Any]) -> tuple[str, ...]:
    """The policies a consent refers to, in document order (see ``Policy.policy_refs``)."""
    refs: list[str] = []
    for item, p in _array(res, "policy", "$"):  # R4
        entry = _mapping(item, p)
        if "uri" in entry:
            refs.append(_string(entry["uri"], _join(p, "uri")).strip())
        elif "authority" in entry:
            refs.append(_string(entry["authority"], _join(p, "authority")).strip())
    rule = res.get("policyRule")
    if isinstance(rule, str) and rule.strip():  # STU3
        refs.append(rule.strip())
    elif rule is not None:
        refs.extend(_coded_refs(rule, "policyRule"))
    basis = res.get("policyBasis")  # R5
    if basis is not None:
        entry = _mapping(basis, "policyBasis")
        if "url" in entry:
            refs.append(_string(entry["url"], "policyBasis.url").strip())
        if "reference" in entry:
            ref = _mapping(entry["reference"], "policyBasis.reference")
            if isinstance(ref.get("reference"), str) and ref["reference"].strip():
                refs.append(ref["reference"].strip())
    for item, p in _array(res, "regulatoryBasis", "$"):  # R5
        refs.extend(_coded_refs(item, p))
    return tuple(dict.fromkeys(refs))


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
    single_root = False
    if "provision" in res:
        prov = res["provision"]
        if isinstance(prov, Mapping):  # R4 (and early R5 drafts): one root provision
            raw_top = (_raw_provision(prov, "provision", 0),)
            single_root = True
        elif isinstance(prov, list | tuple):
            raw_top = tuple(
                _raw_provision(item, f"provision[{i}]", 0) for i, item in enumerate(prov)
            )
        else:
            _fail("provision", f"must be an object or an array, got {_type_name(prov)}")
    # R5 Consent.period bounds the whole consent; R4 has none (its root provision's
    # period bounds that provision only).
    validity = _period(res, "$") if version == "R5" else None
    refs = _policy_refs(res)

    base: Effect | None
    if "decision" in res:
        base, source = _effect_type(res["decision"], "decision"), "decision"
    else:
        base, source = _policy_rule(res)
    inferred: Effect | None = None
    inferred_source = ""
    top_type = raw_top[0].type if len(raw_top) == 1 else None
    if base is None and top_type is not None:
        inferred = _opposite(top_type) if raw_top[0].criteria.has_criteria else top_type
        inferred_source = f"provision type {top_type}"
    if base is None and inferred is None and not refs and governs and version == "R4":
        _fail(
            "policyRule",
            "no base decision: an R4 consent needs a policy or a policyRule (ppc-1), "
            "or a typed root provision",
        )

    notes: list[str] = []
    r4_root = version == "R4" and single_root

    def resolve(under: Effect) -> tuple[Provision, ...]:
        return tuple(
            _resolve(
                raw,
                under,
                r4_root=r4_root,
                r5=version == "R5",
                notes=notes,
                path=_top_path(i, single_root),
            )
            for i, raw in enumerate(raw_top)
        )

    provisions: tuple[Provision, ...] = ()
    alternatives: tuple[tuple[Provision, ...], tuple[Provision, ...]] = ((), ())
    if base is not None:
        provisions = resolve(base)
    else:
        alternatives = (resolve("permit"), resolve("deny"))
        notes = sorted(set(notes))

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
        policy_refs=refs,
        inferred_base=inferred,
        inferred_source=inferred_source,
        alternatives=alternatives,
        notes=tuple(notes),
    )


def _top_path(index: int, single_root: bool) -> str:
    return "provision" if single_root else f"provision[{index}]"


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
