"""FHIR R4 / R5 AuditEvent (JSON) and ITI-20 Bundles -> access events.

Both versions are read by one permissive mapper: the element names of R4 (``type``,
``subtype``, ``period``, ``purposeOfEvent``, ``outcome`` + ``outcomeDesc``,
``agent.network``) and of R5 (``category``, ``code``, ``occurred[x]``,
``authorization``, ``outcome{code, detail}``, ``patient``, ``agent.network[x]``) are all
understood wherever they occur; the version (and so the raw format) is the one whose
element names dominate, and a record that mixes both is flagged (VERSION_MIXED). See
docs/ingest-mapping.md for the field-by-field mapping.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from careledger_core.event import (
    AccessEvent,
    Actor,
    Client,
    Coding,
    ObjectRef,
    Patient,
    Sensitivity,
    Source,
)

from ._draft import Draft, add_patient, build_events, choose_event_type
from ._intake import decode_utf8, intake
from ._model import (
    DEFAULT_MAX_BYTES,
    FORMAT_FHIR_BUNDLE,
    FORMAT_FHIR_R4,
    FORMAT_FHIR_R5,
    EntryResult,
    IngestError,
    ParseResult,
    RawRecord,
    check_received_at,
    freeze_transport,
)
from ._values import (
    CONFIDENTIALITY,
    CORRELATION_DETAILS,
    NOBODY,
    UNSPECIFIED_SYSTEM,
    Issues,
    as_confidentiality,
    as_uuid,
    b64_text,
    classify_address,
    clip_description,
    clip_id,
    clip_text,
    clip_uri,
    is_act_reason,
    make_coding,
    most_restrictive,
    normalise_action,
    normalise_outcome,
    normalise_query,
    normalise_source_type,
    parse_cx,
    parse_time,
    unique_codes,
)

__all__ = ["parse_fhir", "parse_fhir_audit_event", "parse_fhir_bundle"]

_R5_ROOT: Final = frozenset(
    {
        "category",
        "code",
        "occurredPeriod",
        "occurredDateTime",
        "authorization",
        "patient",
        "severity",
        "basedOn",
        "encounter",
    }
)
_R4_ROOT: Final = frozenset({"type", "subtype", "period", "purposeOfEvent", "outcomeDesc"})
_R5_AGENT: Final = frozenset({"networkString", "networkUri", "networkReference", "authorization"})
_R4_AGENT: Final = frozenset({"network", "purposeOfUse", "altId", "name"})

_OBJECT_ROLE_SYSTEMS: Final = frozenset(
    {
        "http://terminology.hl7.org/CodeSystem/object-role",
        "http://hl7.org/fhir/object-role",
        "urn:oid:1.2.840.10008.2.16.4.3",  # unlikely, but harmless
    }
)
_ENTITY_TYPE_SYSTEMS: Final = frozenset(
    {
        "http://terminology.hl7.org/CodeSystem/audit-entity-type",
        "http://hl7.org/fhir/audit-entity-type",
        "http://hl7.org/fhir/object-type",
    }
)
_ROLE_PATIENT: Final = "1"
_ROLE_QUERY: Final = "24"
_ENTITY_PERSON: Final = "1"
#: BALP entity types that carry a transport or token identifier rather than data.
_CORRELATION_TYPES: Final = frozenset({"XrequestId"})
_TOKEN_TYPES: Final = frozenset({"UserOauthAgent", "UserSamlAgent", "jti"})
#: Agent types of systems, not people (DICOM role ids; BALP authorization server).
_SYSTEM_AGENT_TYPES: Final = frozenset(
    {"110150", "110151", "110152", "110153", "110154", "110155", "authserver", "dataprocessor"}
)
_PERSON_AGENT_TYPES: Final = frozenset({"humanuser", "IRCP", "AUT", "INF", "ENT", "CST"})
_PERSON_RESOURCES: Final = frozenset(
    {"Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Person"}
)
_ORG_TYPES: Final = frozenset({"PROV", "ORG"})


# ============================================================================ JSON access
class _Reader:
    """Typed access to a decoded JSON tree; shape errors become WRONG_TYPE issues."""

    __slots__ = ("issues",)

    def __init__(self, issues: Issues) -> None:
        self.issues = issues

    def obj(self, value: object, path: str) -> Mapping[str, Any] | None:
        if value is None:
            return None
        if isinstance(value, Mapping):
            return value
        self.issues.add("WRONG_TYPE", "expected an object: ignored", path)
        return None

    def arr(self, value: object, path: str) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, list):
            return value
        if isinstance(value, Mapping):
            self.issues.add("WRONG_TYPE", "expected an array: read as one item", path)
            return [value]
        self.issues.add("WRONG_TYPE", "expected an array: ignored", path)
        return []

    def string(self, value: object, path: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.issues.add("WRONG_TYPE", f"expected a string, got the number {value!r}", path)
            return str(value)
        self.issues.add("WRONG_TYPE", "expected a string: ignored", path)
        return None

    def boolean(self, value: object, path: str) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            self.issues.add("WRONG_TYPE", f"expected a boolean, got the string {value!r}", path)
            return value.strip().lower() == "true"
        self.issues.add("WRONG_TYPE", "expected a boolean: ignored", path)
        return None

    # ---- FHIR data types
    def codings(self, value: object, path: str, *, many: bool = False) -> list[Coding]:
        """Codings of a Coding, a CodeableConcept, or an array of either. ``many``: the
        element is an array (a single object there is read, and flagged); otherwise a
        single value (an array there is read, and flagged)."""
        out: list[Coding] = []
        if many and isinstance(value, Mapping):
            self.issues.add("WRONG_TYPE", "expected an array: read as one item", path)
        elif not many and isinstance(value, list):
            self.issues.add("WRONG_TYPE", "expected a single value: every item read", path)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            p = f"{path}[{i}]" if isinstance(value, list) else path
            o = self.obj(item, p)
            if o is None:
                continue
            if "coding" in o:
                for j, c in enumerate(self.arr(o.get("coding"), f"{p}.coding")):
                    coding = self._coding(c, f"{p}.coding[{j}]")
                    if coding is not None:
                        out.append(coding)
            else:
                coding = self._coding(o, p)
                if coding is not None:
                    out.append(coding)
        return out

    def _coding(self, value: object, path: str) -> Coding | None:
        o = self.obj(value, path)
        if o is None:
            return None
        return make_coding(
            self.string(o.get("system"), f"{path}.system"),
            self.string(o.get("code"), f"{path}.code"),
            self.string(o.get("display"), f"{path}.display"),
            self.issues,
            path,
        )

    def concept_texts(self, value: object, path: str) -> list[str]:
        """Texts of a CodeableConcept (array): ``text``, else coding displays/codes."""
        out: list[str] = []
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            p = f"{path}[{i}]" if isinstance(value, list) else path
            o = self.obj(item, p)
            if o is None:
                continue
            text = self.string(o.get("text"), f"{p}.text")
            if text and text.strip():
                out.append(text.strip())
                continue
            for c in self.codings(o, p):
                out.append(c.display or c.code)
        return out


@dataclasses.dataclass(slots=True)
class _Ref:
    """The parts of a FHIR Reference we use."""

    reference: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    base: str | None = None
    identifier_system: str | None = None
    identifier_value: str | None = None
    display: str | None = None

    @property
    def any_id(self) -> str | None:
        return self.identifier_value or self.reference or self.display


def _split_reference(reference: str) -> tuple[str | None, str | None, str | None]:
    """(base, type, id) of ``Type/id``, ``Type/id/_history/v`` or an absolute URL."""
    ref = reference.strip()
    if not ref or ref.startswith("#") or ref.startswith("urn:"):
        return None, None, None
    parts = ref.split("/")
    if "_history" in parts:
        cut = parts.index("_history")
        head, version = parts[:cut], parts[cut:]
    else:
        head, version = parts, []
    if len(head) < 2 or not head[-2][:1].isupper():
        return None, None, None
    base = "/".join(head[:-2]) or None
    rid = "/".join([head[-1], *version])
    return base, head[-2], rid


@dataclasses.dataclass(slots=True)
class _Agent:
    index: int
    path: str
    ref: _Ref
    alt_id: str | None
    name: str | None
    type_codes: list[Coding]
    roles: list[Coding]
    role_texts: list[str]
    requestor: bool | None
    network: tuple[str, str | None] | None  # (address, declared type)
    policy: list[str]
    location: str | None
    purposes: list[Coding]

    @property
    def type_code_values(self) -> set[str]:
        return {c.code for c in self.type_codes}

    def person_score(self) -> int:
        score = 0
        if self.type_code_values & _PERSON_AGENT_TYPES or self.ref.resource_type in (
            _PERSON_RESOURCES
        ):
            score += 2
        if self.name:
            score += 1
        if self.type_code_values & _SYSTEM_AGENT_TYPES or self.ref.resource_type in (
            "Device",
            "Organization",
        ):
            score -= 3
        return score

    @property
    def actor_id(self) -> str | None:
        return (
            self.ref.identifier_value
            or self.ref.reference
            or self.alt_id
            or (self.ref.display or self.name)
        )


@dataclasses.dataclass(slots=True)
class _Entity:
    index: int
    path: str
    ref: _Ref
    type_codes: list[Coding]
    role_codes: list[Coding]
    labels: list[Coding]
    query: str | None
    details: list[tuple[str, str]]  # (type, value as text)


# ============================================================================ the mapper
class _Mapper:
    """Maps one decoded AuditEvent object (R4, R5 or a mix) to a :class:`Draft`."""

    def __init__(self, doc: Mapping[str, Any], root: str, received_at: str, issues: Issues):
        self.doc = doc
        self.root = root
        self.received_at = received_at
        self.issues = issues
        self.r = _Reader(issues)

    def p(self, suffix: str) -> str:
        return f"{self.root}.{suffix}"

    # ---------------------------------------------------------------- version
    def version(self) -> str:
        doc = self.doc
        r5 = len(_R5_ROOT & doc.keys()) + (1 if isinstance(doc.get("outcome"), Mapping) else 0)
        r4 = len(_R4_ROOT & doc.keys()) + (1 if isinstance(doc.get("outcome"), str) else 0)
        agents = doc.get("agent")
        for agent in agents if isinstance(agents, list) else []:
            if isinstance(agent, Mapping):
                r5 += len(_R5_AGENT & agent.keys())
                r4 += len(_R4_AGENT & agent.keys())
        source = doc.get("source")
        if isinstance(source, Mapping):
            if isinstance(source.get("site"), Mapping):
                r5 += 1
            elif isinstance(source.get("site"), str):
                r4 += 1
        if r4 and r5:
            self.issues.add(
                "VERSION_MIXED",
                f"R4 ({r4}) and R5 ({r5}) element names: read as {'R5' if r5 > r4 else 'R4'}",
                self.root,
            )
        return FORMAT_FHIR_R5 if r5 > r4 else FORMAT_FHIR_R4

    # ---------------------------------------------------------------- references
    def ref(self, value: object, path: str) -> _Ref:
        out = _Ref()
        o = self.r.obj(value, path)
        if o is None:
            return out
        reference = self.r.string(o.get("reference"), f"{path}.reference")
        if reference and reference.strip():
            out.reference = reference.strip()
            out.base, out.resource_type, out.resource_id = _split_reference(reference)
        if out.resource_type is None:
            t = self.r.string(o.get("type"), f"{path}.type")
            out.resource_type = t.strip() if t and t.strip() else None
        ident = self.r.obj(o.get("identifier"), f"{path}.identifier")
        if ident is not None:
            value_ = self.r.string(ident.get("value"), f"{path}.identifier.value")
            system = self.r.string(ident.get("system"), f"{path}.identifier.system")
            out.identifier_value = value_.strip() if value_ and value_.strip() else None
            out.identifier_system = system.strip() if system and system.strip() else None
        display = self.r.string(o.get("display"), f"{path}.display")
        out.display = display.strip() if display and display.strip() else None
        return out

    # ---------------------------------------------------------------- pieces
    def agents(self) -> list[_Agent]:
        out: list[_Agent] = []
        for i, value in enumerate(self.r.arr(self.doc.get("agent"), self.p("agent"))):
            path = self.p(f"agent[{i}]")
            a = self.r.obj(value, path)
            if a is None:
                continue
            ref = self.ref(a.get("who"), f"{path}.who")
            # STU3 spelled the user as userId (an Identifier) + reference
            if ref.identifier_value is None and isinstance(a.get("userId"), Mapping):
                legacy = self.ref({"identifier": a.get("userId")}, f"{path}.userId")
                ref.identifier_value = legacy.identifier_value
                ref.identifier_system = legacy.identifier_system
            if ref.reference is None and isinstance(a.get("reference"), Mapping):
                legacy = self.ref(a.get("reference"), f"{path}.reference")
                ref.reference, ref.resource_type, ref.resource_id = (
                    legacy.reference,
                    legacy.resource_type,
                    legacy.resource_id,
                )
            roles_value = a.get("role")
            network: tuple[str, str | None] | None = None
            net = self.r.obj(a.get("network"), f"{path}.network")
            if net is not None:
                address = self.r.string(net.get("address"), f"{path}.network.address")
                kind = self.r.string(net.get("type"), f"{path}.network.type")
                if address and address.strip():
                    network = (address.strip(), kind)
            for key, kind in (("networkString", "string"), ("networkUri", "uri")):
                if network is None:
                    address = self.r.string(a.get(key), f"{path}.{key}")
                    if address and address.strip():
                        network = (address.strip(), kind)
            if network is None and a.get("networkReference") is not None:
                nref = self.ref(a.get("networkReference"), f"{path}.networkReference")
                if nref.display:
                    network = (nref.display, None)
            policy = [
                s.strip()
                for j, v in enumerate(self.r.arr(a.get("policy"), f"{path}.policy"))
                if (s := self.r.string(v, f"{path}.policy[{j}]")) and s.strip()
            ]
            location = self.ref(a.get("location"), f"{path}.location")
            alt = self.r.string(a.get("altId"), f"{path}.altId")
            name = self.r.string(a.get("name"), f"{path}.name")
            out.append(
                _Agent(
                    index=i,
                    path=path,
                    ref=ref,
                    alt_id=alt.strip() if alt and alt.strip() else None,
                    name=name.strip() if name and name.strip() else None,
                    type_codes=self.r.codings(a.get("type"), f"{path}.type"),
                    roles=self.r.codings(roles_value, f"{path}.role", many=True),
                    role_texts=self.r.concept_texts(roles_value, f"{path}.role"),
                    requestor=self.r.boolean(a.get("requestor"), f"{path}.requestor"),
                    network=network,
                    policy=policy,
                    location=location.display or location.reference,
                    purposes=self.r.codings(
                        a.get("purposeOfUse"), f"{path}.purposeOfUse", many=True
                    )
                    + self.r.codings(a.get("authorization"), f"{path}.authorization", many=True),
                )
            )
        return out

    def entities(self) -> list[_Entity]:
        out: list[_Entity] = []
        for i, value in enumerate(self.r.arr(self.doc.get("entity"), self.p("entity"))):
            path = self.p(f"entity[{i}]")
            e = self.r.obj(value, path)
            if e is None:
                continue
            query = self.r.string(e.get("query"), f"{path}.query")
            details: list[tuple[str, str]] = []
            for j, d in enumerate(self.r.arr(e.get("detail"), f"{path}.detail")):
                dp = f"{path}.detail[{j}]"
                detail = self.r.obj(d, dp)
                if detail is None:
                    continue
                kind_value = detail.get("type")
                if isinstance(kind_value, Mapping):  # R5: a CodeableConcept
                    texts = self.r.concept_texts(kind_value, f"{dp}.type")
                    kind = texts[0] if texts else None
                else:
                    kind = self.r.string(kind_value, f"{dp}.type")
                text = self.r.string(detail.get("valueString"), f"{dp}.valueString")
                if text is None:
                    encoded = self.r.string(
                        detail.get("valueBase64Binary"), f"{dp}.valueBase64Binary"
                    )
                    text = b64_text(encoded) if encoded else None
                if kind and text:
                    details.append((kind.strip(), text))
            out.append(
                _Entity(
                    index=i,
                    path=path,
                    ref=self.ref(e.get("what"), f"{path}.what"),
                    type_codes=self.r.codings(e.get("type"), f"{path}.type"),
                    role_codes=self.r.codings(e.get("role"), f"{path}.role"),
                    labels=self.r.codings(
                        e.get("securityLabel"), f"{path}.securityLabel", many=True
                    ),
                    query=query,
                    details=details,
                )
            )
        return out

    # ---------------------------------------------------------------- times
    def times(self) -> tuple[str, str]:
        """(occurred_at, recorded_at). Occurred: period.start / occurredDateTime /
        occurredPeriod.start (then .end); absent -> the recorded time (conformant).
        Recorded: ``recorded``; absent -> the occurred time, else received_at."""
        recorded: str | None = None
        raw_recorded = self.r.string(self.doc.get("recorded"), self.p("recorded"))
        if raw_recorded is not None and raw_recorded.strip():
            recorded = parse_time(raw_recorded, self.issues, self.p("recorded"))
        occurred: str | None = None
        candidates: list[tuple[object, str]] = []
        for key in ("period", "occurredPeriod"):
            period = self.r.obj(self.doc.get(key), self.p(key))
            if period is not None:
                candidates += [
                    (period.get("start"), self.p(f"{key}.start")),
                    (period.get("end"), self.p(f"{key}.end")),
                ]
        candidates.append((self.doc.get("occurredDateTime"), self.p("occurredDateTime")))
        for value, path in candidates:
            text = self.r.string(value, path)
            if text is not None and text.strip():
                occurred = parse_time(text, self.issues, path)
                if occurred is not None:
                    break
        if recorded is None:
            fallback = occurred or self.received_at
            self.issues.add(
                "MISSING_RECORDED_TIME",
                "no usable recorded time: "
                + ("the event time is used" if occurred else "received_at is used"),
                self.p("recorded"),
            )
            recorded = fallback
        return occurred or recorded, recorded

    # ---------------------------------------------------------------- codes
    def event_codes(self) -> tuple[Coding, tuple[Coding, ...]]:
        doc = self.doc
        types = self.r.codings(doc.get("type"), self.p("type"))
        types += self.r.codings(doc.get("category"), self.p("category"), many=True)
        subs = self.r.codings(doc.get("subtype"), self.p("subtype"), many=True)
        subs += self.r.codings(doc.get("code"), self.p("code"))
        where = self.p("category") if "category" in doc else self.p("type")
        return choose_event_type(types, subs, self.issues, where)

    def outcome(self) -> tuple[Literal[0, 4, 8, 12], str | None]:
        doc = self.doc
        value = doc.get("outcome")
        texts: list[str] = []
        code: str | None
        if isinstance(value, Mapping):  # R5
            codings = self.r.codings(value.get("code"), self.p("outcome.code"))
            code = codings[0].code if codings else None
            texts += self.r.concept_texts(value.get("detail"), self.p("outcome.detail"))
        else:
            code = self.r.string(value, self.p("outcome"))
        desc = self.r.string(doc.get("outcomeDesc"), self.p("outcomeDesc"))
        if desc and desc.strip():
            texts.insert(0, desc.strip())
        outcome, extra = normalise_outcome(code, self.issues, self.p("outcome"))
        if extra:
            texts.append(extra)
        text = "; ".join(t for t in texts if t)
        return outcome, clip_description(text or None, self.issues, self.p("outcome"))

    def purposes(self, actor: _Agent | None) -> tuple[str, ...]:
        doc = self.doc
        codings = self.r.codings(doc.get("purposeOfEvent"), self.p("purposeOfEvent"), many=True)
        codings += self.r.codings(doc.get("authorization"), self.p("authorization"), many=True)
        if actor is not None:
            codings += actor.purposes
        codes: list[str] = []
        for c in codings:
            if c.system == UNSPECIFIED_SYSTEM or is_act_reason(c.system):
                codes.append(c.code)
            else:
                self.issues.add(
                    "PURPOSE_NOT_ACTREASON",
                    f"purpose {c.code!r} from {c.system} ignored",
                    self.p("purposeOfEvent"),
                )
        return unique_codes(codes, self.issues, self.p("purposeOfEvent"))

    # ---------------------------------------------------------------- participants
    def actor(self, agents: list[_Agent]) -> tuple[Actor, _Agent | None]:
        requestors = [a for a in agents if a.requestor is True and a.actor_id]
        chosen: _Agent | None = None
        is_requestor = True
        if requestors:
            chosen = max(requestors, key=lambda a: (a.person_score(), -a.index))
        else:
            named = [a for a in agents if a.actor_id]
            if named:
                chosen = max(named, key=lambda a: (a.person_score(), -a.index))
                is_requestor = False
                self.issues.add(
                    "NO_REQUESTOR",
                    f"no identified agent has requestor=true: agent[{chosen.index}] is the actor",
                    self.p("agent"),
                )
        if chosen is None or not chosen.actor_id:
            self.issues.add("NO_ACTOR", "no agent names anyone: actor '-'", self.p("agent"))
            return Actor(id=NOBODY, roles=(), is_requestor=False), chosen
        path = chosen.path
        roles = [c.code for c in chosen.roles] or [t for t in chosen.role_texts]
        if not roles:
            roles = [c.code for c in chosen.type_codes]
        organization = None
        for a in agents:
            if a is chosen:
                continue
            if a.ref.resource_type == "Organization" or a.type_code_values & _ORG_TYPES:
                organization = a.ref.display or a.ref.reference or a.ref.identifier_value
                if organization:
                    break
        return (
            Actor(
                id=clip_id(chosen.actor_id, self.issues, f"{path}.who") or NOBODY,
                name=clip_text(chosen.name or chosen.ref.display, self.issues, f"{path}.name"),
                roles=unique_codes(roles, self.issues, f"{path}.role"),
                organization=clip_text(organization, self.issues, self.p("agent")),
                department=clip_text(chosen.location, self.issues, f"{path}.location"),
                is_requestor=is_requestor,
            ),
            chosen,
        )

    def client(self, agents: list[_Agent], actor: _Agent | None, action: str) -> Client | None:
        chosen: _Agent | None = None
        if actor is not None and actor.network is not None:
            chosen = actor
        else:
            candidates = [a for a in agents if a.network is not None and a is not actor]
            order = ("110152", "110153") if action == "R" else ("110153", "110152")
            for code in (*order, "110150"):
                chosen = next((a for a in candidates if code in a.type_code_values), None)
                if chosen is not None:
                    break
            if chosen is None and candidates:
                chosen = candidates[0]
        if chosen is None or chosen.network is None:
            return None
        address, declared = chosen.network
        path = f"{chosen.path}.network"
        addr = clip_uri(address, self.issues, path)
        if addr is None:
            return None
        workstation = None
        if chosen is not actor:
            workstation = chosen.ref.display or chosen.name or chosen.ref.identifier_value
        return Client(
            address=addr,
            address_type=classify_address(addr, declared, self.issues, path),
            workstation=clip_text(workstation, self.issues, f"{chosen.path}.who"),
        )

    def source(self) -> Source:
        path = self.p("source")
        src = self.r.obj(self.doc.get("source"), path)
        if src is None:
            self.issues.add("NO_SOURCE", "no source: system '-'", path)
            return Source(system=NOBODY, type=normalise_source_type([], self.issues, path))
        observer = self.ref(src.get("observer"), f"{path}.observer")
        system = observer.display or observer.identifier_value or observer.reference
        if system is None and isinstance(src.get("identifier"), Mapping):  # STU3
            system = self.ref({"identifier": src.get("identifier")}, f"{path}.identifier").any_id
        if system is None:
            self.issues.add("NO_SOURCE", "source names no observer: system '-'", path)
        site_value = src.get("site")
        if isinstance(site_value, Mapping):  # R5: a Reference
            site_ref = self.ref(site_value, f"{path}.site")
            site = site_ref.display or site_ref.identifier_value or site_ref.reference
        else:
            site = self.r.string(site_value, f"{path}.site")
        codes = [c.code for c in self.r.codings(src.get("type"), f"{path}.type", many=True)]
        return Source(
            system=clip_text(system, self.issues, f"{path}.observer") or NOBODY,
            site=clip_text(site, self.issues, f"{path}.site"),
            type=normalise_source_type(codes, self.issues, f"{path}.type"),
        )

    # ---------------------------------------------------------------- entities
    def _is_patient_entity(self, e: _Entity) -> bool:
        return any(
            c.code == _ROLE_PATIENT
            and (c.system in _OBJECT_ROLE_SYSTEMS or c.system == UNSPECIFIED_SYSTEM)
            for c in e.role_codes
        )

    def _patient_from_ref(self, ref: _Ref, path: str) -> Patient | None:
        if ref.identifier_value:
            ident, cx_system = parse_cx(ref.identifier_value)
            system = ref.identifier_system or cx_system
            pid = clip_id(ident, self.issues, f"{path}.identifier.value")
            if pid is not None:
                return Patient(id=pid, system=clip_uri(system, self.issues, path))
        if ref.resource_type == "Patient" and ref.resource_id:
            pid = clip_id(ref.resource_id.split("/_history/")[0], self.issues, path)
            if pid is not None:
                return Patient(id=pid, system=clip_uri(ref.base, self.issues, path))
        if ref.reference and not ref.reference.startswith("#"):
            pid = clip_id(ref.reference, self.issues, path)
            if pid is not None:
                return Patient(id=pid)
        return None

    def patients(self, entities: list[_Entity]) -> list[Patient]:
        found: list[Patient] = []
        if self.doc.get("patient") is not None:
            patient = self._patient_from_ref(
                self.ref(self.doc.get("patient"), self.p("patient")), self.p("patient")
            )
            if patient is not None:
                add_patient(found, patient)
            else:
                self.issues.add(
                    "PATIENT_UNIDENTIFIED", "patient without identifier: skipped", self.p("patient")
                )
        for e in entities:
            is_person = any(
                c.code == _ENTITY_PERSON and c.system in _ENTITY_TYPE_SYSTEMS for c in e.type_codes
            )
            if self._is_patient_entity(e) or (
                is_person and not e.role_codes and e.ref.resource_type == "Patient"
            ):
                if not self._is_patient_entity(e):
                    self.issues.add(
                        "PATIENT_ROLE_MISSING",
                        "a Person entity referencing a Patient without role: taken as the patient",
                        f"{e.path}.role",
                    )
                patient = self._patient_from_ref(e.ref, f"{e.path}.what")
                if patient is None:
                    self.issues.add(
                        "PATIENT_UNIDENTIFIED",
                        "patient entity without a usable identifier: skipped",
                        f"{e.path}.what",
                    )
                else:
                    add_patient(found, patient)
        if not found:
            for e in entities:
                if e.ref.resource_type == "Patient" and e.ref.resource_id:
                    patient = self._patient_from_ref(e.ref, f"{e.path}.what")
                    if patient is not None:
                        self.issues.add(
                            "PATIENT_INFERRED",
                            "no patient entity: the Patient resource the record touches is "
                            "taken as the patient",
                            f"{e.path}.what",
                        )
                        add_patient(found, patient)
                        break
        if not found:
            self.issues.add("NO_PATIENT", "the record names no patient: patient '-'", self.root)
        return found

    def _entity_kind(self, e: _Entity) -> str:
        codes = {c.code for c in e.type_codes} | {c.code for c in e.role_codes}
        if codes & _CORRELATION_TYPES:
            return "correlation"
        if codes & _TOKEN_TYPES:
            return "token"
        if self._is_patient_entity(e):
            return "patient"
        if any(c.code == _ROLE_QUERY for c in e.role_codes) or e.query:
            return "query"
        return "object"

    def object_ref(self, entities: list[_Entity]) -> ObjectRef | None:
        for e in entities:
            if self._entity_kind(e) != "object":
                continue
            type_ = e.ref.resource_type
            if type_ is None:
                typed = [c for c in e.type_codes if c.system not in _ENTITY_TYPE_SYSTEMS]
                type_ = typed[0].code if typed else None
            if type_ is None and e.type_codes:
                type_ = e.type_codes[0].code
            ident = e.ref.resource_id or e.ref.identifier_value or e.ref.reference
            if type_ is None and ident is None:
                continue
            role = e.role_codes[0].code if e.role_codes else None
            return ObjectRef(
                type=clip_id(type_, self.issues, f"{e.path}.type") or "unknown",
                id=clip_id(ident, self.issues, f"{e.path}.what"),
                role=clip_id(role, self.issues, f"{e.path}.role"),
            )
        return None

    def sensitivity(self, entities: list[_Entity]) -> Sensitivity | None:
        conf: list[str] = []
        labels: list[str] = []
        path = self.p("entity")
        for e in entities:
            for c in e.labels:
                if c.system == CONFIDENTIALITY:
                    if c.code in ("U", "L", "M", "N", "R", "V"):
                        conf.append(c.code)
                    else:
                        self.issues.add(
                            "CONFIDENTIALITY_UNKNOWN",
                            f"confidentiality {c.code!r} kept as a label",
                            f"{e.path}.securityLabel",
                        )
                        labels.append(c.code)
                else:
                    labels.append(c.code)
        if not conf and not labels:
            return None
        level = most_restrictive(conf) or "R"
        return Sensitivity(
            confidentiality=as_confidentiality(level),
            labels=unique_codes(labels, self.issues, path),
        )

    def query(self, entities: list[_Entity]) -> str | None:
        for e in entities:
            if e.query and e.query.strip():
                return normalise_query(e.query, self.issues, f"{e.path}.query")
        return None

    def correlation(self, entities: list[_Entity]) -> str | None:
        """BALP X-Request-Id entity; else an entity detail of a correlating type
        (X-Request-Id, HL7 v2 MSH-10 message control id)."""
        for e in entities:
            if self._entity_kind(e) == "correlation":
                value = e.ref.identifier_value or e.ref.reference
                if value:
                    return clip_id(value, self.issues, f"{e.path}.what")
        for e in entities:
            for kind, value in e.details:
                if kind.lower() in CORRELATION_DETAILS:
                    return clip_id(value, self.issues, f"{e.path}.detail")
        return None

    def session(self, actor: _Agent | None, entities: list[_Entity]) -> str | None:
        if actor is not None and actor.policy:
            return clip_id(actor.policy[0], self.issues, f"{actor.path}.policy")
        for e in entities:
            if self._entity_kind(e) == "token" and e.ref.identifier_value:
                return clip_id(e.ref.identifier_value, self.issues, f"{e.path}.what")
        return None

    # ---------------------------------------------------------------- all
    def draft(self) -> Draft:
        occurred_at, recorded_at = self.times()
        event_type, subtypes = self.event_codes()
        action_value = self.r.string(self.doc.get("action"), self.p("action"))
        action = normalise_action(action_value, subtypes, self.issues, self.p("action"))
        outcome, outcome_desc = self.outcome()
        agents = self.agents()
        actor, actor_agent = self.actor(agents)
        entities = self.entities()
        return Draft(
            source_id=as_uuid(self.doc.get("id")),
            occurred_at=occurred_at,
            recorded_at=recorded_at,
            event_type=event_type,
            event_subtype=subtypes,
            action=action,
            outcome=outcome,
            outcome_desc=outcome_desc,
            purpose_of_use=self.purposes(actor_agent),
            actor=actor,
            client=self.client(agents, actor_agent, action),
            session_ref=self.session(actor_agent, entities),
            source=self.source(),
            patients=self.patients(entities),
            object=self.object_ref(entities),
            sensitivity=self.sensitivity(entities),
            query=self.query(entities),
            correlation_id=self.correlation(entities),
        )


# ============================================================================ decoding
class _DuplicateTracker:
    """object_pairs_hook that keeps the last value of a repeated name and remembers it."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj and key not in self.names:
                self.names.append(key)
            obj[key] = value
        return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_json(data: bytes, max_bytes: int, issues: Issues) -> tuple[bytes, str, Any]:
    """(bytes, sha256, decoded document): TOO_LARGE, EMPTY, NOT_UTF8, NOT_JSON."""
    raw, sha256 = intake(data, max_bytes)
    text, bom = decode_utf8(raw, sha256)
    if bom:
        issues.add("BYTE_ORDER_MARK", "the JSON starts with a UTF-8 byte order mark", "$")
    tracker = _DuplicateTracker()
    try:
        doc = json.loads(text, object_pairs_hook=tracker, parse_constant=_reject_constant)
    except RecursionError:
        raise IngestError(
            "NOT_JSON", "JSON nested too deeply", sha256=sha256, size=len(raw)
        ) from None
    except ValueError as exc:  # JSONDecodeError, huge integers, NaN/Infinity
        raise IngestError(
            "NOT_JSON", f"not JSON: {str(exc)[:200]}", sha256=sha256, size=len(raw)
        ) from None
    if tracker.names:
        issues.add(
            "DUPLICATE_KEY",
            "repeated member name(s) " + ", ".join(repr(n) for n in tracker.names[:8]),
            "$",
        )
    return raw, sha256, doc


def _looks_like_audit_event(doc: Mapping[str, Any]) -> bool:
    return "agent" in doc and ("source" in doc or "recorded" in doc)


def _map_audit_event(
    doc: object,
    *,
    root: str,
    received_at: str,
    sha256: str,
    issues: Issues,
    raw_format: str | None = None,
    entry_index: int | None = None,
) -> tuple[str, tuple[AccessEvent, ...]]:
    """(version format, events) of one AuditEvent object; raises NOT_AN_AUDIT_RECORD.

    ``raw_format`` is the format of the received bytes (a Bundle's); by default the
    AuditEvent's own version format.
    """
    if not isinstance(doc, Mapping):
        raise IngestError(
            "NOT_AN_AUDIT_RECORD", f"{root} is not a JSON object", sha256=sha256, path=root
        )
    resource_type = doc.get("resourceType")
    if resource_type != "AuditEvent":
        if resource_type is None and _looks_like_audit_event(doc):
            issues.add("RESOURCE_TYPE_MISSING", "no resourceType: read as an AuditEvent", root)
        else:
            shown = (
                resource_type if isinstance(resource_type, str) else type(resource_type).__name__
            )
            raise IngestError(
                "NOT_AN_AUDIT_RECORD",
                f"{root} is a {shown[:64]!r}, not an AuditEvent",
                sha256=sha256,
                path=root,
            )
    mapper = _Mapper(doc, root, received_at, issues)
    fmt = mapper.version()
    events = build_events(
        mapper.draft(),
        raw_format=raw_format or fmt,
        raw_sha256=sha256,
        entry_index=entry_index,
    )
    return fmt, events


def _audit_event_result(
    raw: bytes, sha256: str, doc: object, issues: Issues, received_at: str, transport: Any
) -> ParseResult:
    fmt, events = _map_audit_event(
        doc, root="AuditEvent", received_at=received_at, sha256=sha256, issues=issues
    )
    record = RawRecord(
        data=raw,
        sha256=sha256,
        format=fmt,
        received_at=received_at,
        transport=freeze_transport(transport),
    )
    return ParseResult(events=events, issues=issues.freeze(), raw=record)


def _bundle_result(
    raw: bytes, sha256: str, doc: object, issues: Issues, received_at: str, transport: Any
) -> ParseResult:
    if not isinstance(doc, Mapping) or doc.get("resourceType") != "Bundle":
        raise IngestError("NOT_AN_AUDIT_RECORD", "not a FHIR Bundle", sha256=sha256, size=len(raw))
    reader = _Reader(issues)
    bundle_type = reader.string(doc.get("type"), "Bundle.type")
    if bundle_type not in ("batch", "transaction"):
        issues.add(
            "BUNDLE_TYPE",
            f"Bundle type {str(bundle_type)[:32]!r}: entries read as a batch",
            "Bundle.type",
        )
    entries_value = reader.arr(doc.get("entry"), "Bundle.entry")
    if not entries_value:
        issues.add("BUNDLE_EMPTY", "the Bundle has no entries", "Bundle.entry")
    results: list[EntryResult] = []
    all_events: list[AccessEvent] = []
    seen_ids: dict[str, int] = {}
    for i, entry in enumerate(entries_value):
        where = f"Bundle.entry[{i}]"
        entry_issues = Issues()
        entry_reader = _Reader(entry_issues)
        entry_obj = entry_reader.obj(entry, where) or {}
        full_url = entry_reader.string(entry_obj.get("fullUrl"), f"{where}.fullUrl")
        request = entry_reader.obj(entry_obj.get("request"), f"{where}.request")
        if request is not None:
            method = entry_reader.string(request.get("method"), f"{where}.request.method")
            if (method or "").strip().upper() != "POST":
                entry_issues.add(
                    "ENTRY_METHOD",
                    f"request method {str(method)[:16]!r}, expected POST",
                    f"{where}.request.method",
                )
        try:
            fmt, events = _map_audit_event(
                entry_obj.get("resource"),
                root=f"{where}.resource",
                received_at=received_at,
                sha256=sha256,
                issues=entry_issues,
                raw_format=FORMAT_FHIR_BUNDLE,
                entry_index=i,
            )
        except IngestError as exc:
            results.append(
                EntryResult(
                    index=i,
                    full_url=full_url,
                    format=None,
                    events=(),
                    issues=entry_issues.freeze(),
                    error=exc,
                )
            )
            continue
        for event in events:
            first = seen_ids.setdefault(event.event_id, i)
            if first != i:
                entry_issues.add(
                    "DUPLICATE_EVENT_ID",
                    f"event id {event.event_id} also given by entry {first}",
                    f"{where}.resource.id",
                )
        frozen = entry_issues.freeze()
        results.append(
            EntryResult(index=i, full_url=full_url, format=fmt, events=events, issues=frozen)
        )
        all_events.extend(events)
        issues.extend(frozen)
    record = RawRecord(
        data=raw,
        sha256=sha256,
        format=FORMAT_FHIR_BUNDLE,
        received_at=received_at,
        transport=freeze_transport(transport),
    )
    return ParseResult(
        events=tuple(all_events), issues=issues.freeze(), raw=record, entries=tuple(results)
    )


# ============================================================================ public API
def parse_fhir_audit_event(
    data: bytes,
    *,
    received_at: str,
    transport: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ParseResult:
    """Parse one FHIR R4 or R5 AuditEvent (JSON bytes) into access events.

    ``received_at`` (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) is when the gateway received the
    bytes; it is the last fallback for a missing time. Raises :class:`IngestError` when
    the bytes are not a JSON AuditEvent at all; anything else is accepted and flagged.
    """
    check_received_at(received_at)
    issues = Issues()
    raw, sha256, doc = _load_json(data, max_bytes, issues)
    return _audit_event_result(raw, sha256, doc, issues, received_at, transport)


def parse_fhir_bundle(
    data: bytes,
    *,
    received_at: str,
    transport: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ParseResult:
    """Parse an ITI-20 Bundle (type batch or transaction) of AuditEvents.

    Each entry is parsed on its own: an entry that is not an AuditEvent gets an
    :class:`EntryResult` with its :class:`IngestError` while the others are accepted, so
    the HTTP layer can answer per entry. Every event's ``raw_ref`` names the whole
    Bundle's bytes (format ``fhir-bundle+json``); event ids derived from the bytes
    include the entry index.
    """
    check_received_at(received_at)
    issues = Issues()
    raw, sha256, doc = _load_json(data, max_bytes, issues)
    return _bundle_result(raw, sha256, doc, issues, received_at, transport)


def parse_fhir(
    data: bytes,
    *,
    received_at: str,
    transport: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ParseResult:
    """An AuditEvent or a Bundle of them, whichever the bytes are (ITI-20 takes both)."""
    check_received_at(received_at)
    issues = Issues()
    raw, sha256, doc = _load_json(data, max_bytes, issues)
    if isinstance(doc, Mapping) and doc.get("resourceType") == "Bundle":
        return _bundle_result(raw, sha256, doc, issues, received_at, transport)
    return _audit_event_result(raw, sha256, doc, issues, received_at, transport)
