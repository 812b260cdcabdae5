"""Mapping the parts of a FHIR AuditEvent to the fields of an access event.

``_Mapper`` extends ``_Elements`` (the typed parts of the record) with the choices
the mapping makes: the event type and subtypes, outcome, purposes of use, who the
actor is (the requestor, else the most person-like agent), the client, the source,
the patients, the object, sensitivity, query, correlation and session; ``draft``
puts them together. See docs/ingest-mapping.md for the field-by-field mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from careledger_core.event import (
    Actor,
    Client,
    Coding,
    ObjectRef,
    Party,
    Patient,
    Sensitivity,
    Source,
)

from ._draft import Draft, add_patient, choose_event_type, is_transfer
from ._fhir_elements import _Agent, _Elements, _Entity, _Ref
from ._values import (
    CONFIDENTIALITY,
    CORRELATION_DETAILS,
    DISCLOSER_ROLES,
    NOBODY,
    RECIPIENT_ROLES,
    UNSPECIFIED_SYSTEM,
    as_confidentiality,
    as_uuid,
    choose_client,
    classify_address,
    clip_code,
    clip_description,
    clip_id,
    clip_text,
    clip_uri,
    is_act_reason,
    most_restrictive,
    normalise_action,
    normalise_outcome,
    normalise_query,
    normalise_source_type,
    parse_cx,
    unique_codes,
)

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
_ORG_TYPES: Final = frozenset({"PROV", "ORG"})


def _is_uri(value: str) -> bool:
    """An absolute URL or an OID URN: names a policy, not a token."""
    lowered = value.lower()
    return "://" in lowered or lowered.startswith(("urn:oid:", "urn:ietf:"))


def _roles(agent: _Agent) -> set[str]:
    """The agent's codes in ``type`` and ``role`` (R4 puts DICOM role ids in ``type``,
    R5 in ``type`` or ``role``)."""
    return agent.type_code_values | {c.code for c in agent.roles}


# ============================================================================ the mapper
class _Mapper(_Elements):
    """Maps one decoded AuditEvent object (R4, R5 or a mix) to a :class:`Draft`."""

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

    def client(
        self, agents: list[_Agent], actor: _Agent | None, action: str, transfer: bool
    ) -> Client | None:
        """Where the access came from: the actor's own network address; else another
        agent marked ``requestor`` (by the flag, not by its place in the list); else by
        DICOM role: for a transfer (export, import, disclosure) the releasing side
        (110153 Source), never the recipient, which is kept in ``recipient``; for a read
        the 110152 Destination (the machine the data went to, BALP), else 110153."""
        chosen: _Agent | None = None
        if actor is not None and actor.network is not None:
            chosen = actor
        else:
            chosen = choose_client(
                [a for a in agents if a.network is not None and a is not actor],
                _roles,
                lambda a: a.requestor,
                action,
                transfer,
            )
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

    def party(self, agents: list[_Agent], roles: tuple[str, ...]) -> Party | None:
        """The agent that holds the first of ``roles`` (DICOM role ids in ``type`` or
        ``role``, R4 and R5 alike), as a party of a transfer."""
        for code in roles:
            agent = next((a for a in agents if code in _roles(a)), None)
            if agent is None:
                continue
            ident = agent.actor_id
            if ident is None:
                continue
            path = agent.path
            name = agent.name or agent.ref.display
            address: str | None = None
            address_type: Literal["ip", "hostname", "uri"] | None = None
            if agent.network is not None:
                address = clip_uri(agent.network[0], self.issues, f"{path}.network")
                if address is not None:
                    address_type = classify_address(
                        address, agent.network[1], self.issues, f"{path}.network"
                    )
            return Party(
                id=clip_id(ident, self.issues, f"{path}.who") or NOBODY,
                name=clip_text(name if name != ident else None, self.issues, f"{path}.name"),
                role=code,
                address=address,
                address_type=address_type,
            )
        return None

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
                            "no patient entity: each Patient resource the record touches "
                            "is taken as a patient",
                            f"{e.path}.what",
                        )
                        add_patient(found, patient)
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
                type=clip_code(type_, self.issues, f"{e.path}.type") or "unknown",
                id=clip_id(ident, self.issues, f"{e.path}.what"),
                role=clip_code(role, self.issues, f"{e.path}.role"),
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
        """The actor's first ``policy`` value that is a token id (BALP: OAuth ``jti``,
        SAML assertion id), not a policy URI (HL7: "the policy the authorization was made
        under", e.g. a consent policy: not a session); else a BALP token entity."""
        tokens = [p for p in (actor.policy if actor is not None else []) if not _is_uri(p)]
        if actor is not None and tokens:
            return clip_id(tokens[0], self.issues, f"{actor.path}.policy")
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
        transfer = is_transfer(event_type, subtypes)
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
            client=self.client(agents, actor_agent, action, transfer),
            session_ref=self.session(actor_agent, entities),
            source=self.source(),
            patients=self.patients(entities),
            object=self.object_ref(entities),
            sensitivity=self.sensitivity(entities),
            query=self.query(entities),
            correlation_id=self.correlation(entities),
            recipient=self.party(agents, RECIPIENT_ROLES) if transfer else None,
            discloser=self.party(agents, DISCLOSER_ROLES) if transfer else None,
        )
