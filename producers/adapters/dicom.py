"""IHE ATNA audit messages (DICOM PS3.15 A.5 ``AuditMessage`` XML) -> access events.

Both coded-value dialects are read: DICOM (``csd-code``, ``codeSystemName``,
``originalText``) and the legacy RFC 3881 one (``code``, ``codeSystemName``,
``displayName``); the raw format says which one the message uses. Element and attribute
names are matched without namespace and without regard to case (typos in case are
common in the wild). The XML is parsed with defusedxml: a DTD, an entity declaration or
an external reference is refused (XML_FORBIDDEN), never expanded or fetched. See
docs/ingest-mapping.md for the field-by-field mapping.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Final, Literal
from xml.etree.ElementTree import Element, ParseError, TreeBuilder, XMLParser

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

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

from ._draft import Draft, add_patient, build_events, choose_event_type, is_transfer
from ._intake import UTF8_BOM, decode_utf8, intake
from ._model import (
    DEFAULT_MAX_BYTES,
    FORMAT_DICOM_XML,
    FORMAT_RFC3881_XML,
    IngestError,
    ParseResult,
    RawRecord,
    check_received_at,
    freeze_transport,
)
from ._values import (
    CONFIDENTIALITY_ORDER,
    CORRELATION_DETAILS,
    DISCLOSER_ROLES,
    NOBODY,
    RECIPIENT_ROLES,
    UNSPECIFIED_SYSTEM,
    Issues,
    as_confidentiality,
    b64_text,
    choose_client,
    classify_address,
    clip_code,
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
    unescape_once,
    unique_codes,
)

__all__ = ["parse_dicom_audit_xml"]

_ROOT: Final = "AuditMessage"
_DECLARED_ENCODING: Final = re.compile(
    rb"\A\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']", re.IGNORECASE
)
#: DICOM RoleIDCodes of systems, not people (PS3.16 CID 402).
_SYSTEM_ROLES: Final = frozenset({"110150", "110151", "110152", "110153", "110154", "110155"})
_USER_TYPE_PERSON: Final = "1"
_USER_TYPE_SYSTEM: Final = "2"
_OBJECT_TYPES: Final = {"1": "person", "2": "system-object", "3": "organization", "4": "other"}
_PATIENT_NUMBER: Final = "2"  # RFC 3881 ParticipantObjectIDTypeCode "Patient Number"
_ROLE_QUERY: Final = "24"
#: ParticipantObjectDetail types carrying a session (token) or a correlation id.
_SESSION_DETAILS: Final = frozenset({"jti", "assertionid", "saml-assertion-id", "sessionid"})


# ============================================================================ XML access
@functools.lru_cache(maxsize=1024)
def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def _local(tag: object) -> str:
    return _local_name(tag) if isinstance(tag, str) else ""


def _text(element: Element | None) -> str | None:
    if element is None:
        return None
    text = "".join(element.itertext()).strip()
    return text or None


@dataclasses.dataclass(slots=True)
class _Participant:
    index: int
    path: str
    user_id: str | None
    alt_user_id: str | None
    user_name: str | None
    requestor: bool | None
    nap_id: str | None
    nap_type: str | None
    user_type: str | None
    roles: list[Coding]

    @property
    def role_codes(self) -> set[str]:
        return {c.code for c in self.roles}

    @property
    def any_id(self) -> str | None:
        return self.user_id or self.alt_user_id or self.user_name

    def person_score(self) -> int:
        score = 0
        if self.user_type == _USER_TYPE_PERSON:
            score += 2
        if self.user_name:
            score += 1
        if self.user_type == _USER_TYPE_SYSTEM or self.role_codes & _SYSTEM_ROLES:
            score -= 3
        return score


@dataclasses.dataclass(slots=True)
class _Object:
    index: int
    path: str
    object_id: str | None
    type_code: str | None
    role: str | None
    id_type: Coding | None
    sensitivity: str | None
    query: str | None
    details: list[tuple[str, str]]


class _Mapper:
    def __init__(self, root: Element, received_at: str, issues: Issues) -> None:
        self.root = root
        self.received_at = received_at
        self.issues = issues
        self.dicom_codes = 0
        self.rfc3881_codes = 0
        # per element (held, so never confused with another): {lower-case local name:
        # value of its first such attribute} and {lower-case local name: children}
        self._attr_maps: dict[Element, dict[str, str]] = {}
        self._child_maps: dict[Element, dict[str, list[Element]]] = {}

    def _children(self, element: Element, name: str) -> list[Element]:
        """The children named ``name`` (local name, any case), in document order; each
        element's children are grouped by name once, not scanned per lookup."""
        groups = self._child_maps.get(element)
        if groups is None:
            groups = {}
            for child in element:
                groups.setdefault(_local(child.tag), []).append(child)
            self._child_maps[element] = groups
        return groups.get(name.lower(), [])

    def _first(self, element: Element, name: str) -> Element | None:
        found = self._children(element, name)
        return found[0] if found else None

    def _raw_attr(self, element: Element, name: str) -> str | None:
        """Attribute by local name, case-insensitively, the first if several match
        (``None`` when absent); each element's attributes are scanned once."""
        found = self._attr_maps.get(element)
        if found is None:
            found = {}
            for key, value in element.attrib.items():
                found.setdefault(_local(key), value)
            self._attr_maps[element] = found
        return found.get(name.lower())

    # ---------------------------------------------------------------- values
    def attr(self, element: Element, name: str, path: str, *, required: bool = False) -> str | None:
        value = self._raw_attr(element, name)
        if value is None:
            return None
        value = value.strip()
        if not value:
            if required:
                self.issues.add("EMPTY_VALUE", f"{name} is empty", f"{path}@{name}")
            return None
        return value

    def coded(self, element: Element | None, path: str) -> Coding | None:
        """A coded value in either dialect."""
        if element is None:
            return None
        code = self._raw_attr(element, "csd-code")
        if code is not None:
            self.dicom_codes += 1
            display = self._raw_attr(element, "originalText") or self._raw_attr(
                element, "displayName"
            )
        else:
            code = self._raw_attr(element, "code")
            if code is not None:
                self.rfc3881_codes += 1
            display = self._raw_attr(element, "displayName") or self._raw_attr(
                element, "originalText"
            )
        if code is None or not code.strip():
            self.issues.add("EMPTY_VALUE", "coded value without a code", path)
            return None
        system = self._raw_attr(element, "codeSystemName") or self._raw_attr(element, "codeSystem")
        return make_coding(system, code, display, self.issues, path)

    def codes(self, parent: Element, name: str, path: str) -> list[Coding]:
        out: list[Coding] = []
        for i, child in enumerate(self._children(parent, name)):
            coding = self.coded(child, f"{path}/{name}[{i + 1}]")
            if coding is not None:
                out.append(coding)
        return out

    # ---------------------------------------------------------------- sections
    def participants(self) -> list[_Participant]:
        out: list[_Participant] = []
        for i, ap in enumerate(self._children(self.root, "ActiveParticipant")):
            path = f"{_ROOT}/ActiveParticipant[{i + 1}]"
            requestor_text = self.attr(ap, "UserIsRequestor", path)
            requestor: bool | None = None
            if requestor_text is not None:
                lowered = requestor_text.lower()
                if lowered in ("true", "1"):
                    requestor = True
                elif lowered in ("false", "0"):
                    requestor = False
                else:
                    self.issues.add(
                        "WRONG_TYPE",
                        f"UserIsRequestor {requestor_text[:16]!r} is not a boolean: ignored",
                        f"{path}@UserIsRequestor",
                    )
                if lowered in ("1", "0"):
                    self.issues.add(
                        "WRONG_TYPE",
                        f"UserIsRequestor {requestor_text!r}: read as a boolean",
                        f"{path}@UserIsRequestor",
                    )
            out.append(
                _Participant(
                    index=i,
                    path=path,
                    user_id=self.attr(ap, "UserID", path, required=True),
                    alt_user_id=self.attr(ap, "AlternativeUserID", path),
                    user_name=self.attr(ap, "UserName", path),
                    requestor=requestor,
                    nap_id=self.attr(ap, "NetworkAccessPointID", path),
                    nap_type=self.attr(ap, "NetworkAccessPointTypeCode", path),
                    user_type=self.attr(ap, "UserTypeCode", path),
                    roles=self.codes(ap, "RoleIDCode", path),
                )
            )
        return out

    def objects(self) -> list[_Object]:
        out: list[_Object] = []
        for i, po in enumerate(self._children(self.root, "ParticipantObjectIdentification")):
            path = f"{_ROOT}/ParticipantObjectIdentification[{i + 1}]"
            details: list[tuple[str, str]] = []
            for detail in self._children(po, "ParticipantObjectDetail"):
                kind = (self._raw_attr(detail, "type") or "").strip()
                value = (self._raw_attr(detail, "value") or "").strip()
                if kind and value:
                    details.append((kind, value))
            sensitivity = self.attr(po, "ParticipantObjectSensitivity", path) or _text(
                self._first(po, "ParticipantObjectSensitivity")
            )
            out.append(
                _Object(
                    index=i,
                    path=path,
                    object_id=self.attr(po, "ParticipantObjectID", path, required=True),
                    type_code=self.attr(po, "ParticipantObjectTypeCode", path),
                    role=self.attr(po, "ParticipantObjectTypeCodeRole", path),
                    id_type=self.coded(
                        self._first(po, "ParticipantObjectIDTypeCode"),
                        f"{path}/ParticipantObjectIDTypeCode",
                    ),
                    sensitivity=sensitivity,
                    query=_text(self._first(po, "ParticipantObjectQuery")),
                    details=details,
                )
            )
        return out

    def event(
        self,
    ) -> tuple[
        str,
        Coding,
        tuple[Coding, ...],
        Literal["C", "R", "U", "D", "E"],
        Literal[0, 4, 8, 12],
        str | None,
        tuple[str, ...],
    ]:
        """(time, type, subtypes, action, outcome, outcome text, purposes)."""
        path = f"{_ROOT}/EventIdentification"
        ei = self._first(self.root, "EventIdentification")
        if ei is None:
            ei = Element("EventIdentification")
            self.issues.add("EMPTY_VALUE", "no EventIdentification", path)
        when = self.attr(ei, "EventDateTime", path, required=True)
        occurred = parse_time(when, self.issues, f"{path}@EventDateTime") if when else None
        if occurred is None:
            self.issues.add(
                "MISSING_EVENT_TIME",
                "no usable EventDateTime: received_at is used",
                f"{path}@EventDateTime",
            )
            occurred = self.received_at
        types = self.codes(ei, "EventID", path)
        subtypes = self.codes(ei, "EventTypeCode", path)
        event_type, event_subtype = choose_event_type(
            types, subtypes, self.issues, f"{path}/EventID"
        )
        action = normalise_action(
            self.attr(ei, "EventActionCode", path),
            event_subtype,
            self.issues,
            f"{path}@EventActionCode",
        )
        outcome, unknown = normalise_outcome(
            self.attr(ei, "EventOutcomeIndicator", path, required=True),
            self.issues,
            f"{path}@EventOutcomeIndicator",
        )
        texts = [t for t in (_text(self._first(ei, "EventOutcomeDescription")), unknown) if t]
        description = clip_description(
            "; ".join(texts) or None, self.issues, f"{path}/EventOutcomeDescription"
        )
        purposes: list[str] = []
        for coding in self.codes(ei, "PurposeOfUse", path):
            if coding.system == UNSPECIFIED_SYSTEM or is_act_reason(coding.system):
                purposes.append(coding.code)
            else:
                self.issues.add(
                    "PURPOSE_NOT_ACTREASON",
                    f"purpose {coding.code!r} from {coding.system} ignored",
                    f"{path}/PurposeOfUse",
                )
        return (
            occurred,
            event_type,
            event_subtype,
            action,
            outcome,
            description,
            unique_codes(purposes, self.issues, f"{path}/PurposeOfUse"),
        )

    def actor(self, participants: list[_Participant]) -> tuple[Actor, _Participant | None]:
        requestors = [p for p in participants if p.requestor is True and p.any_id]
        chosen: _Participant | None = None
        is_requestor = True
        if requestors:
            chosen = max(requestors, key=lambda p: (p.person_score(), -p.index))
        else:
            named = [p for p in participants if p.any_id]
            if named:
                chosen = max(named, key=lambda p: (p.person_score(), -p.index))
                is_requestor = False
                self.issues.add(
                    "NO_REQUESTOR",
                    "no identified participant has UserIsRequestor=true: "
                    f"participant {chosen.index + 1} is the actor",
                    f"{_ROOT}/ActiveParticipant",
                )
        if chosen is None or not chosen.any_id:
            self.issues.add(
                "NO_ACTOR", "no participant names anyone: actor '-'", f"{_ROOT}/ActiveParticipant"
            )
            return Actor(id=NOBODY, roles=(), is_requestor=False), chosen
        return (
            Actor(
                id=clip_id(chosen.any_id, self.issues, f"{chosen.path}@UserID") or NOBODY,
                name=clip_text(chosen.user_name, self.issues, f"{chosen.path}@UserName"),
                roles=unique_codes(
                    [c.code for c in chosen.roles], self.issues, f"{chosen.path}/RoleIDCode"
                ),
                is_requestor=is_requestor,
            ),
            chosen,
        )

    def client(
        self,
        participants: list[_Participant],
        actor: _Participant | None,
        action: str,
        transfer: bool,
    ) -> Client | None:
        """Where the access came from: the actor's own network access point; else
        another participant with ``UserIsRequestor`` (by the flag, not by its place);
        else by RoleIDCode: for a transfer the releasing side (110153 Source), never the
        recipient (kept in ``recipient``); for a read 110152, else 110153."""
        chosen: _Participant | None = None
        if actor is not None and actor.nap_id:
            chosen = actor
        else:
            chosen = choose_client(
                [p for p in participants if p.nap_id and p is not actor],
                lambda p: p.role_codes,
                lambda p: p.requestor,
                action,
                transfer,
            )
        if chosen is None or not chosen.nap_id:
            return None
        path = f"{chosen.path}@NetworkAccessPointID"
        address = clip_uri(chosen.nap_id, self.issues, path)
        if address is None:
            return None
        workstation = None if chosen is actor else chosen.any_id
        return Client(
            address=address,
            address_type=classify_address(address, chosen.nap_type, self.issues, path),
            workstation=clip_text(workstation, self.issues, f"{chosen.path}@UserID"),
        )

    def party(self, participants: list[_Participant], roles: tuple[str, ...]) -> Party | None:
        """The participant with the first of ``roles`` (RoleIDCode), as a party of a
        transfer."""
        for code in roles:
            p = next((p for p in participants if code in p.role_codes and p.any_id), None)
            if p is None or p.any_id is None:
                continue
            address: str | None = None
            address_type: Literal["ip", "hostname", "uri"] | None = None
            if p.nap_id:
                path = f"{p.path}@NetworkAccessPointID"
                address = clip_uri(p.nap_id, self.issues, path)
                if address is not None:
                    address_type = classify_address(address, p.nap_type, self.issues, path)
            return Party(
                id=clip_id(p.any_id, self.issues, f"{p.path}@UserID") or NOBODY,
                name=clip_text(
                    p.user_name if p.user_name != p.any_id else None,
                    self.issues,
                    f"{p.path}@UserName",
                ),
                role=code,
                address=address,
                address_type=address_type,
            )
        return None

    def source(self) -> Source:
        path = f"{_ROOT}/AuditSourceIdentification"
        asi = self._first(self.root, "AuditSourceIdentification")
        if asi is None:
            self.issues.add("NO_SOURCE", "no AuditSourceIdentification: system '-'", path)
            return Source(system=NOBODY, type=normalise_source_type([], self.issues, path))
        system = self.attr(asi, "AuditSourceID", path, required=True)
        if system is None:
            self.issues.add("NO_SOURCE", "no AuditSourceID: system '-'", path)
        codes: list[str] = []
        for i, element in enumerate(self._children(asi, "AuditSourceTypeCode")):
            code = (
                self._raw_attr(element, "csd-code")
                or self._raw_attr(element, "code")
                or _text(element)
            )
            if code:
                codes.append(code)
            else:
                self.issues.add(
                    "EMPTY_VALUE",
                    "AuditSourceTypeCode without a code",
                    f"{path}/AuditSourceTypeCode[{i + 1}]",
                )
        misplaced = self.attr(asi, "code", path) or self.attr(asi, "csd-code", path)
        if not codes and misplaced:
            self.issues.add(
                "MISPLACED_VALUE",
                "the source type is an attribute of AuditSourceIdentification, not an "
                "AuditSourceTypeCode element: read anyway",
                f"{path}@code",
            )
            codes.append(misplaced)
        return Source(
            system=clip_text(system, self.issues, f"{path}@AuditSourceID") or NOBODY,
            site=clip_text(
                self.attr(asi, "AuditEnterpriseSiteID", path),
                self.issues,
                f"{path}@AuditEnterpriseSiteID",
            ),
            type=normalise_source_type(codes, self.issues, f"{path}/AuditSourceTypeCode"),
        )

    def patients(self, objects: list[_Object]) -> list[Patient]:
        found: list[Patient] = []
        for o in objects:
            if o.type_code != "1":
                continue
            if o.role != "1":
                if o.role is None and o.id_type is not None and o.id_type.code == _PATIENT_NUMBER:
                    self.issues.add(
                        "PATIENT_ROLE_MISSING",
                        "a person with a Patient Number but no role: taken as a patient",
                        f"{o.path}@ParticipantObjectTypeCodeRole",
                    )
                else:
                    continue
            if o.object_id is None:
                self.issues.add(
                    "PATIENT_UNIDENTIFIED",
                    "patient without ParticipantObjectID: skipped",
                    f"{o.path}@ParticipantObjectID",
                )
                continue
            object_id, unescaped = unescape_once(o.object_id)
            if unescaped:
                self.issues.add(
                    "DOUBLE_ESCAPED",
                    "the patient id holds XML entity references after XML unescaping "
                    "(escaped twice): unescaped once more",
                    f"{o.path}@ParticipantObjectID",
                )
            ident, system = parse_cx(object_id)
            pid = clip_id(ident, self.issues, f"{o.path}@ParticipantObjectID")
            if pid is None:
                self.issues.add(
                    "PATIENT_UNIDENTIFIED",
                    f"patient id {o.object_id[:64]!r} has no id component: skipped",
                    f"{o.path}@ParticipantObjectID",
                )
                continue
            add_patient(
                found,
                Patient(
                    id=pid, system=clip_uri(system, self.issues, f"{o.path}@ParticipantObjectID")
                ),
            )
        if not found:
            self.issues.add("NO_PATIENT", "the message names no patient: patient '-'", _ROOT)
        return found

    @staticmethod
    def _is_patient(o: _Object) -> bool:
        return o.type_code == "1" and (
            o.role == "1"
            or (o.role is None and o.id_type is not None and o.id_type.code == _PATIENT_NUMBER)
        )

    def object_ref(self, objects: list[_Object]) -> ObjectRef | None:
        for o in objects:
            if self._is_patient(o) or o.role == _ROLE_QUERY or o.query:
                continue
            type_ = (o.id_type.code if o.id_type else None) or _OBJECT_TYPES.get(
                o.type_code or "", "unknown"
            )
            return ObjectRef(
                type=clip_code(type_, self.issues, f"{o.path}/ParticipantObjectIDTypeCode")
                or "unknown",
                id=clip_id(o.object_id, self.issues, f"{o.path}@ParticipantObjectID"),
                role=clip_code(o.role, self.issues, f"{o.path}@ParticipantObjectTypeCodeRole"),
            )
        return None

    def sensitivity(self, objects: list[_Object]) -> Sensitivity | None:
        levels: list[str] = []
        labels: list[str] = []
        for o in objects:
            if not o.sensitivity:
                continue
            for token in re.split(r"[\s,;|^]+", o.sensitivity):
                if not token:
                    continue
                if token.upper() in CONFIDENTIALITY_ORDER and len(token) == 1:
                    levels.append(token.upper())
                else:
                    labels.append(token)
        if not levels and not labels:
            return None
        return Sensitivity(
            confidentiality=as_confidentiality(most_restrictive(levels) or "R"),
            labels=unique_codes(labels, self.issues, f"{_ROOT}/ParticipantObjectIdentification"),
        )

    def query(self, objects: list[_Object]) -> str | None:
        for o in objects:
            if o.query:
                return normalise_query(o.query, self.issues, f"{o.path}/ParticipantObjectQuery")
        return None

    def detail(self, objects: list[_Object], kinds: frozenset[str], what: str) -> str | None:
        for o in objects:
            for kind, value in o.details:
                if kind.lower() in kinds:
                    return clip_id(
                        b64_text(value), self.issues, f"{o.path}/ParticipantObjectDetail[{what}]"
                    )
        return None

    # ---------------------------------------------------------------- all
    def draft(self) -> Draft:
        occurred, event_type, subtypes, action, outcome, desc, purposes = self.event()
        participants = self.participants()
        actor, actor_participant = self.actor(participants)
        objects = self.objects()
        transfer = is_transfer(event_type, subtypes)
        return Draft(
            source_id=None,
            occurred_at=occurred,
            recorded_at=occurred,
            event_type=event_type,
            event_subtype=subtypes,
            action=action,
            outcome=outcome,
            outcome_desc=desc,
            purpose_of_use=purposes,
            actor=actor,
            client=self.client(participants, actor_participant, action, transfer),
            session_ref=self.detail(objects, _SESSION_DETAILS, "session"),
            source=self.source(),
            patients=self.patients(objects),
            object=self.object_ref(objects),
            sensitivity=self.sensitivity(objects),
            query=self.query(objects),
            correlation_id=self.detail(objects, CORRELATION_DETAILS, "correlation"),
            recipient=self.party(participants, RECIPIENT_ROLES) if transfer else None,
            discloser=self.party(participants, DISCLOSER_ROLES) if transfer else None,
        )

    def dialect(self) -> str:
        if self.dicom_codes and self.rfc3881_codes:
            self.issues.add(
                "VERSION_MIXED",
                f"{self.dicom_codes} DICOM (csd-code) and {self.rfc3881_codes} RFC 3881 (code) "
                "coded values",
                _ROOT,
            )
        return FORMAT_RFC3881_XML if self.rfc3881_codes > self.dicom_codes else FORMAT_DICOM_XML


# ============================================================================ parsing
def _parse_plain(body: bytes) -> Element | None:
    """The fast path: the C parser, for a well-formed AuditMessage without a DTD.

    Entity declarations and external references can only come from a DTD, and a DTD
    needs the literal ``<!DOCTYPE`` (the bytes are read as UTF-8 whatever they declare),
    so a document without it cannot reach what ``DefusedXMLParser`` forbids. Anything
    else (a DTD, malformed XML, another root) returns None: the defused parser then
    decides, with its own messages.
    """
    if b"<!DOCTYPE" in body:
        return None
    parser = XMLParser(target=TreeBuilder(), encoding="utf-8")
    try:
        parser.feed(body)
        root: Element = parser.close()
    except (ParseError, ValueError, RecursionError, MemoryError):
        return None
    return root if _local(root.tag) == _ROOT.lower() else None


def _parse_xml(raw: bytes, sha256: str, issues: Issues) -> Element:
    decode_utf8(raw, sha256)  # NOT_UTF8 before the parser sees anything
    body = raw[len(UTF8_BOM) :] if raw.startswith(UTF8_BOM) else raw
    body = body.lstrip(b" \t\r\n")  # syslog framing often leaves a space or newline
    declared = _DECLARED_ENCODING.match(body)
    if declared is not None and declared.group(1).lower().replace(b"_", b"-") not in (
        b"utf-8",
        b"utf8",
    ):
        issues.add(
            "XML_ENCODING_DECLARED",
            f"declared encoding {declared.group(1).decode('ascii')!r}: read as UTF-8",
            "?xml",
        )
    plain = _parse_plain(body)
    if plain is not None:
        return plain
    parser = DefusedXMLParser(
        target=TreeBuilder(),
        encoding="utf-8",
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    try:
        parser.feed(body)
        root: Element = parser.close()
    except DefusedXmlException as exc:
        raise IngestError(
            "XML_FORBIDDEN",
            f"XML with a DTD, entity or external reference is refused ({type(exc).__name__})",
            sha256=sha256,
            size=len(raw),
        ) from None
    except ParseError as exc:
        raise IngestError(
            "NOT_XML", f"not well-formed XML: {exc}"[:300], sha256=sha256, size=len(raw)
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # pragma: no cover - defensive
        raise IngestError(
            "NOT_XML", f"unreadable XML: {type(exc).__name__}", sha256=sha256, size=len(raw)
        ) from None
    if _local(root.tag) != _ROOT.lower():
        raise IngestError(
            "NOT_AN_AUDIT_RECORD",
            f"root element is <{str(root.tag)[:64]}>, not <AuditMessage>",
            sha256=sha256,
            size=len(raw),
        )
    return root


def parse_dicom_audit_xml(
    data: bytes,
    *,
    received_at: str,
    transport: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ParseResult:
    """Parse one ATNA ``AuditMessage`` (DICOM PS3.15 A.5 or RFC 3881 XML, UTF-8 with or
    without BOM and XML declaration) into access events, one per patient it names.

    ``data`` is the message as received (e.g. the MSG part of a syslog frame); it is
    hashed before anything else. Raises :class:`IngestError` (TOO_LARGE, EMPTY, NOT_UTF8,
    NOT_XML, XML_FORBIDDEN, NOT_AN_AUDIT_RECORD); every other departure from the
    standard is accepted and reported in ``issues``.
    """
    check_received_at(received_at)
    issues = Issues()
    raw, sha256 = intake(data, max_bytes)
    root = _parse_xml(raw, sha256, issues)
    mapper = _Mapper(root, received_at, issues)
    draft = mapper.draft()
    fmt = mapper.dialect()
    events = build_events(
        draft,
        raw_format=fmt,
        raw_sha256=sha256,
        issues=issues,
        path=f"{_ROOT}/ParticipantObjectIdentification",
    )
    record = RawRecord(
        data=raw,
        sha256=sha256,
        format=fmt,
        received_at=received_at,
        transport=freeze_transport(transport),
    )
    return ParseResult(events=events, issues=issues.freeze(), raw=record)
