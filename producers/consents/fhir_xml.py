"""FHIR XML -> FHIR JSON for Consent resources (R4 and R5) and the Bundles that carry them.

Pure (no I/O). The XML is parsed with defusedxml: a DTD, an entity declaration or an
external reference is refused (``XML_FORBIDDEN``), never expanded or fetched, so a
"billion laughs" document costs nothing. The mapping follows the FHIR XML rules
(https://hl7.org/fhir/R4/xml.html, json.html):

* the root element (namespace ``http://hl7.org/fhir``) names the ``resourceType``;
* a primitive is an element with a ``value`` attribute; its ``id`` and ``extension``
  go to ``_name`` (arrays of primitives keep their positions with ``null``);
* ``extension`` / ``modifierExtension`` carry ``url`` as an attribute;
* elements that repeat (cardinality ``*``) are JSON arrays even with one occurrence:
  known per type from :data:`TYPES` (Consent R4 and R5 and the data types they use);
* booleans, integers and decimals become JSON ``true``/numbers, by type (``integer64``
  stays a string, as in FHIR JSON);
* the narrative ``div`` (XHTML) is kept as a string (re-serialised: attribute order and
  white space may differ from a hand-written JSON copy; the raw record keeps the bytes).

Elements this table does not know (contained resources of other types, future
elements) are mapped by the generic rules: an element repeated among its siblings, or
named in :data:`ALWAYS_ARRAYS`, is an array; the paths where the shape was guessed are
returned so the caller can report them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

__all__ = ["FHIR_NS", "MAX_DEPTH", "FhirXmlError", "XmlResult", "read_fhir_xml"]

FHIR_NS: Final = "http://hl7.org/fhir"
XHTML_NS: Final = "http://www.w3.org/1999/xhtml"
#: Deeper element nesting is refused (no recursion limits are ever reached).
MAX_DEPTH: Final = 64

# (child type, repeats). Primitive kinds: string, boolean, integer, decimal, xhtml.
_S: Final = ("string", False)
_SS: Final = ("string", True)
_B: Final = ("boolean", False)
_I: Final = ("integer", False)
_D: Final = ("decimal", False)

_RESOURCE_BASE: Final[dict[str, tuple[str, bool]]] = {
    "id": _S,
    "meta": ("Meta", False),
    "implicitRules": _S,
    "language": _S,
    "text": ("Narrative", False),
    "contained": ("Resource", True),
    "extension": ("Extension", True),
    "modifierExtension": ("Extension", True),
}
_ELEMENT_BASE: Final[dict[str, tuple[str, bool]]] = {
    "id": _S,
    "extension": ("Extension", True),
    "modifierExtension": ("Extension", True),
}


def _element(**children: tuple[str, bool]) -> dict[str, tuple[str, bool]]:
    return {**_ELEMENT_BASE, **children}


_CC: Final = ("CodeableConcept", False)
_CCS: Final = ("CodeableConcept", True)
_REF: Final = ("Reference", False)
_REFS: Final = ("Reference", True)
_CODINGS: Final = ("Coding", True)
_PERIOD: Final = ("Period", False)

#: The types a Consent uses, element by element.
TYPES: Final[dict[str, dict[str, tuple[str, bool]]]] = {
    "Meta": _element(
        versionId=_S,
        lastUpdated=_S,
        source=_S,
        profile=_SS,
        security=_CODINGS,
        tag=_CODINGS,
    ),
    "Narrative": _element(status=_S, div=("xhtml", False)),
    "Coding": _element(system=_S, version=_S, code=_S, display=_S, userSelected=_B),
    "CodeableConcept": _element(coding=_CODINGS, text=_S),
    "Identifier": _element(
        use=_S, type=_CC, system=_S, value=_S, period=_PERIOD, assigner=("Reference", False)
    ),
    "Reference": _element(reference=_S, type=_S, identifier=("Identifier", False), display=_S),
    "Period": _element(start=_S, end=_S),
    "Expression": _element(description=_S, name=_S, language=_S, expression=_S, reference=_S),
    "Attachment_R4": _element(
        contentType=_S,
        language=_S,
        data=_S,
        url=_S,
        size=_I,
        hash=_S,
        title=_S,
        creation=_S,
    ),
    "Attachment_R5": _element(
        contentType=_S,
        language=_S,
        data=_S,
        url=_S,
        size=_S,  # integer64: a string in FHIR JSON
        hash=_S,
        title=_S,
        creation=_S,
        height=_I,
        width=_I,
        frames=_I,
        duration=_D,
        pages=_I,
    ),
    "Consent_R4": {
        **_RESOURCE_BASE,
        "identifier": ("Identifier", True),
        "status": _S,
        "scope": _CC,
        "category": _CCS,
        "patient": _REF,
        "dateTime": _S,
        "performer": _REFS,
        "organization": _REFS,
        "sourceAttachment": ("Attachment_R4", False),
        "sourceReference": _REF,
        "policy": ("ConsentPolicy_R4", True),
        "policyRule": _CC,
        "verification": ("ConsentVerification_R4", True),
        "provision": ("Provision_R4", False),
    },
    "ConsentPolicy_R4": _element(authority=_S, uri=_S),
    "ConsentVerification_R4": _element(verified=_B, verifiedWith=_REF, verificationDate=_S),
    "Provision_R4": _element(
        type=_S,
        period=_PERIOD,
        actor=("ProvisionActor", True),
        action=_CCS,
        securityLabel=_CODINGS,
        purpose=_CODINGS,
        **{"class": _CODINGS},
        code=_CCS,
        dataPeriod=_PERIOD,
        data=("ProvisionData", True),
        provision=("Provision_R4", True),
    ),
    "ProvisionActor": _element(role=_CC, reference=_REF),
    "ProvisionData": _element(meaning=_S, reference=_REF),
    "Consent_R5": {
        **_RESOURCE_BASE,
        "identifier": ("Identifier", True),
        "status": _S,
        "category": _CCS,
        "subject": _REF,
        "date": _S,
        "period": _PERIOD,
        "grantor": _REFS,
        "grantee": _REFS,
        "manager": _REFS,
        "controller": _REFS,
        "sourceAttachment": ("Attachment_R5", True),
        "sourceReference": _REFS,
        "regulatoryBasis": _CCS,
        "policyBasis": ("ConsentPolicyBasis_R5", False),
        "policyText": _REFS,
        "verification": ("ConsentVerification_R5", True),
        "decision": _S,
        "provision": ("Provision_R5", True),
    },
    "ConsentPolicyBasis_R5": _element(reference=_REF, url=_S),
    "ConsentVerification_R5": _element(
        verified=_B,
        verificationType=_CC,
        verifiedBy=_REF,
        verifiedWith=_REF,
        verificationDate=_SS,
    ),
    "Provision_R5": _element(
        period=_PERIOD,
        actor=("ProvisionActor", True),
        action=_CCS,
        securityLabel=_CODINGS,
        purpose=_CODINGS,
        documentType=_CODINGS,
        resourceType=_CODINGS,
        code=_CCS,
        dataPeriod=_PERIOD,
        data=("ProvisionData", True),
        expression=("Expression", False),
        provision=("Provision_R5", True),
    ),
    "Bundle": {
        **_RESOURCE_BASE,
        "identifier": ("Identifier", False),
        "type": _S,
        "timestamp": _S,
        "total": _I,
        "link": ("BundleLink", True),
        "entry": ("BundleEntry", True),
        "signature": ("Resource", False),
    },
    "BundleLink": _element(relation=_S, url=_S),
    "BundleEntry": _element(
        link=("BundleLink", True),
        fullUrl=_S,
        resource=("Resource", False),
        search=("Resource", False),
        request=("BundleRequest", False),
        response=("Resource", False),
    ),
    "BundleRequest": _element(
        method=_S, url=_S, ifNoneMatch=_S, ifModifiedSince=_S, ifMatch=_S, ifNoneExist=_S
    ),
}

#: Elements that are arrays wherever they occur (used for types not in TYPES).
ALWAYS_ARRAYS: Final = frozenset(
    {
        "extension",
        "modifierExtension",
        "coding",
        "contained",
        "given",
        "prefix",
        "suffix",
        "line",
        "telecom",
        "profile",
        "security",
        "tag",
    }
)
_GENERIC_BOOLEANS: Final = frozenset({"active", "userSelected", "verified", "deceasedBoolean"})
#: Extension / choice value suffixes and their JSON kinds.
_VALUE_KINDS: Final = {
    "Boolean": "boolean",
    "Integer": "integer",
    "UnsignedInt": "integer",
    "PositiveInt": "integer",
    "Decimal": "decimal",
}
#: Extension values of the complex types in TYPES.
_VALUE_TYPES: Final = {
    "CodeableConcept": "CodeableConcept",
    "Coding": "Coding",
    "Reference": "Reference",
    "Identifier": "Identifier",
    "Period": "Period",
    "Expression": "Expression",
    "Attachment": "Attachment_R4",
}
#: Elements that only R5 Consents have at the root (else the Consent is read as R4).
R5_ONLY: Final = frozenset(
    {
        "subject",
        "date",
        "period",
        "grantor",
        "grantee",
        "manager",
        "controller",
        "regulatoryBasis",
        "policyBasis",
        "policyText",
        "decision",
    }
)
_DECIMAL_RE: Final = re.compile(r"\A-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_INTEGER_RE: Final = re.compile(r"\A-?(?:0|[1-9][0-9]*)\Z")


class FhirXmlError(Exception):
    """The bytes are not FHIR XML we can map; ``code`` is an ingest error code."""

    def __init__(self, code: str, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path


@dataclass
class XmlResult:
    """The FHIR JSON of the document and the paths whose shape was guessed."""

    resource: dict[str, Any]
    guessed: list[str] = field(default_factory=list)


def _local(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def parse_xml(data: bytes) -> Element:
    """Well-formed XML without DTD, entities or external references, or FhirXmlError."""
    parser = DefusedXMLParser(
        target=TreeBuilder(),
        encoding="utf-8",
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    try:
        parser.feed(data)
        root: Element = parser.close()
    except DefusedXmlException as exc:
        raise FhirXmlError(
            "XML_FORBIDDEN",
            f"XML with a DTD, entity or external reference is refused ({type(exc).__name__})",
        ) from None
    except ParseError as exc:
        raise FhirXmlError("NOT_XML", f"not well-formed XML: {exc}"[:300]) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise FhirXmlError("NOT_XML", f"unreadable XML: {type(exc).__name__}") from None
    return root


def read_fhir_xml(data: bytes, *, fhir_version: str | None = None) -> XmlResult:
    """FHIR JSON of a FHIR XML resource (``data``: UTF-8 bytes, BOM removed).

    ``fhir_version`` ("R4" / "R5", e.g. from the media type) picks the Consent table;
    without it a Consent with an R5-only root element is read as R5, else as R4.
    """
    root = parse_xml(data)
    ns, name = _local(root.tag)
    if ns != FHIR_NS:
        raise FhirXmlError(
            "NOT_FHIR_XML",
            f"root element <{name[:64]}> is not in the FHIR namespace {FHIR_NS}",
        )
    reader = _Reader(fhir_version)
    return XmlResult(reader.resource(root, name, 1), reader.guessed)


class _Reader:
    def __init__(self, fhir_version: str | None) -> None:
        self.fhir_version = fhir_version
        self.guessed: list[str] = []

    def resource(self, elem: Element, path: str, depth: int) -> dict[str, Any]:
        _ns, name = _local(elem.tag)
        type_name = name
        if name == "Consent":
            version = self.fhir_version
            if version not in ("R4", "R5"):
                roots = {_local(c.tag)[1] for c in elem}
                version = "R5" if roots & R5_ONLY else "R4"
            type_name = f"Consent_{version}"
        out: dict[str, Any] = {"resourceType": name}
        out.update(self.children(elem, type_name, path, depth))
        return out

    def children(
        self, elem: Element, type_name: str | None, path: str, depth: int
    ) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise FhirXmlError("TOO_DEEP", f"elements nested deeper than {MAX_DEPTH}", path)
        # a resource of another type (contained) has no table: the generic rules
        table = TYPES.get(type_name) if type_name is not None else None
        groups: dict[str, list[Element]] = {}
        for child in elem:
            ns, name = _local(str(child.tag))
            if ns != FHIR_NS and not (ns == XHTML_NS and name == "div"):
                raise FhirXmlError(
                    "NOT_FHIR_XML", f"element <{name[:64]}> is not in the FHIR namespace", path
                )
            groups.setdefault(name, []).append(child)
        out: dict[str, Any] = {}
        if elem.get("id") is not None:
            out["id"] = elem.get("id")
        if type_name == "Extension" and elem.get("url") is not None:
            out["url"] = elem.get("url")
        for name, items in groups.items():
            child_path = f"{path}.{name}"
            spec = table.get(name) if table is not None else None
            if spec is None:
                spec = self._guess(type_name, name, items, child_path)
            child_type, repeats = spec
            if len(items) > 1 and not repeats:
                raise FhirXmlError(
                    "FHIR_XML_INVALID", f"{child_path}: repeated, but allows one value", path
                )
            values: list[Any] = []
            extras: list[dict[str, Any] | None] = []
            for i, item in enumerate(items):
                item_path = f"{child_path}[{i}]" if repeats else child_path
                value, extra = self.value(item, child_type, name, item_path, depth + 1)
                values.append(value)
                extras.append(extra)
            if any(v is not None for v in values):
                out[name] = values if repeats else values[0]
            if any(e is not None for e in extras):
                out[f"_{name}"] = extras if repeats else extras[0]
        return out

    def _guess(
        self, type_name: str | None, name: str, items: list[Element], path: str
    ) -> tuple[str, bool]:
        if type_name == "Extension" or type_name is None or type_name not in TYPES:
            if name.startswith("value") and name[5:] in _VALUE_KINDS:
                return (_VALUE_KINDS[name[5:]], False)
            if name.startswith("value") and name[5:] in _VALUE_TYPES:
                return (_VALUE_TYPES[name[5:]], False)
            if name in ("extension", "modifierExtension"):
                return ("Extension", True)
        repeats = name in ALWAYS_ARRAYS or len(items) > 1
        is_primitive = items[0].get("value") is not None
        if type_name != "Extension" and not (
            type_name is None and name.startswith("value") and is_primitive
        ):
            self.guessed.append(path)
        if name == "div":
            return ("xhtml", False)
        if _is_resource(items[0]) and name in ("contained", "resource"):
            return ("Resource", repeats)
        if is_primitive:
            return ("boolean" if name in _GENERIC_BOOLEANS else "string", repeats)
        return ("", repeats)  # a complex element of an unknown type

    def value(
        self, elem: Element, child_type: str, name: str, path: str, depth: int
    ) -> tuple[Any, dict[str, Any] | None]:
        """(JSON value or None, the ``_name`` object of a primitive or None)."""
        if depth > MAX_DEPTH:
            raise FhirXmlError("TOO_DEEP", f"elements nested deeper than {MAX_DEPTH}", path)
        if child_type == "xhtml":
            ns, local = _local(str(elem.tag))
            if ns != XHTML_NS or local != "div":
                raise FhirXmlError("FHIR_XML_INVALID", f"{path}: not an XHTML div", path)
            return _xhtml(elem, depth, top=True), None
        if child_type == "Resource":
            inner = list(elem)
            if len(inner) != 1:
                raise FhirXmlError(
                    "FHIR_XML_INVALID", f"{path}: must contain exactly one resource", path
                )
            return self.resource(inner[0], path, depth + 1), None
        if child_type in ("string", "boolean", "integer", "decimal"):
            raw = elem.get("value")
            value = None if raw is None else _typed(raw, child_type, path)
            extra = self.children(elem, "Element", path, depth)
            extra.pop("modifierExtension", None)
            return value, (extra or None)
        return self.children(elem, child_type or None, path, depth), None


TYPES["Element"] = dict(_ELEMENT_BASE)
TYPES["Extension"] = dict(_ELEMENT_BASE)


def _is_resource(elem: Element) -> bool:
    inner = list(elem)
    return len(inner) == 1 and _local(str(inner[0].tag))[1][:1].isupper()


def _typed(raw: str, kind: str, path: str) -> Any:
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise FhirXmlError("FHIR_XML_INVALID", f"{path}: {raw[:40]!r} is not a boolean", path)
        return raw == "true"
    if kind == "integer":
        if not _INTEGER_RE.match(raw) or len(raw) > 16:
            raise FhirXmlError("FHIR_XML_INVALID", f"{path}: {raw[:40]!r} is not an integer", path)
        return int(raw)
    if kind == "decimal":
        if not _DECIMAL_RE.match(raw) or len(raw) > 40:
            raise FhirXmlError("FHIR_XML_INVALID", f"{path}: {raw[:40]!r} is not a decimal", path)
        number = float(raw)
        return int(number) if _INTEGER_RE.match(raw) else number
    return raw


def _escape(text: str, attribute: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if attribute else text


def _xhtml(elem: Element, depth: int, top: bool = False) -> str:
    """The XHTML element as text (default namespace, no prefixes)."""
    if depth > MAX_DEPTH:
        raise FhirXmlError("TOO_DEEP", f"elements nested deeper than {MAX_DEPTH}")
    ns, name = _local(str(elem.tag))
    if ns and ns != XHTML_NS:
        raise FhirXmlError("FHIR_XML_INVALID", f"narrative element <{name[:40]}> is not XHTML")
    attrs = "".join(
        f' {_local(str(k))[1]}="{_escape(str(v), True)}"' for k, v in sorted(elem.attrib.items())
    )
    if top:
        attrs = f' xmlns="{XHTML_NS}"' + attrs
    inner = _escape(elem.text or "")
    for child in elem:
        inner += _xhtml(child, depth + 1) + _escape(child.tail or "")
    if not inner:
        return f"<{name}{attrs}/>"
    return f"<{name}{attrs}>{inner}</{name}>"


def fhir_version_of_media(params: Mapping[str, str]) -> str | None:
    """``fhirVersion=4.0`` / ``5.0`` media type parameter -> "R4" / "R5" (else None)."""
    value = params.get("fhirversion", "")
    if value.startswith("4."):
        return "R4"
    if value.startswith("5."):
        return "R5"
    return None
