"""Reading a decoded FHIR AuditEvent: typed JSON access and the elements' parts.

``_Reader`` gives typed access to the decoded JSON tree (shape errors become
WRONG_TYPE issues) and reads the FHIR data types (Coding, CodeableConcept);
``_Elements`` reads the elements of one AuditEvent, whatever R4 / R5 / STU3 names
they use, into ``_Ref``, ``_Agent`` and ``_Entity`` values, the record times and
the version (R4 or R5, VERSION_MIXED when both occur).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from careledger_core.event import Coding

from ._model import FORMAT_FHIR_R4, FORMAT_FHIR_R5
from ._values import Issues, b64_text, make_coding, parse_time

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
#: Agent types of systems, not people (DICOM role ids; BALP authorization server).
_SYSTEM_AGENT_TYPES: Final = frozenset(
    {"110150", "110151", "110152", "110153", "110154", "110155", "authserver", "dataprocessor"}
)
_PERSON_AGENT_TYPES: Final = frozenset({"humanuser", "IRCP", "AUT", "INF", "ENT", "CST"})
_PERSON_RESOURCES: Final = frozenset(
    {"Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Person"}
)


# ============================================================================ JSON access
class _Reader:
    """Typed access to a decoded JSON tree; shape errors become WRONG_TYPE issues."""

    __slots__ = ("issues",)

    def __init__(self, issues: Issues) -> None:
        self.issues = issues

    def obj(self, value: object, path: str) -> Mapping[str, Any] | None:
        if type(value) is dict:  # the usual case, without the ABC check
            return value
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
        system, code, display = o.get("system"), o.get("code"), o.get("display")
        # the paths are only needed for a value of the wrong type (then in this order)
        if system is not None and type(system) is not str:
            system = self.string(system, f"{path}.system")
        if code is not None and type(code) is not str:
            code = self.string(code, f"{path}.code")
        if display is not None and type(display) is not str:
            display = self.string(display, f"{path}.display")
        return make_coding(system, code, display, self.issues, path)

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


# ============================================================================ the elements
class _Elements:
    """Reads the elements of one decoded AuditEvent object (R4, R5 or a mix) into
    typed parts; :class:`producers.adapters._fhir_mapper._Mapper` maps them to a draft."""

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
