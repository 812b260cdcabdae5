"""Test support: FHIR XML -> FHIR JSON for the Consent examples held as XML
(tests/fixtures/consent), so the published XML is read as published and never re-typed.

Only what those examples use: primitives (``value`` attributes) become strings, the
narrative ``div`` becomes its XML text, comments are dropped (by the parser), and an
element is a JSON array when FHIR's Consent (R4/R5) or a data type it uses defines it as
repeating.
"""

from __future__ import annotations

from typing import Any, Final
from xml.etree import ElementTree

FHIR_NS: Final = "{http://hl7.org/fhir}"
XHTML_NS: Final = "{http://www.w3.org/1999/xhtml}"
#: (parent element, child) pairs FHIR defines as 0..* in the Consent examples we hold
#: ("*" = under any parent).
REPEATING: Final = {
    ("*", "coding"),
    ("*", "extension"),
    ("*", "modifierExtension"),
    ("*", "identifier"),
    ("meta", "security"),
    ("meta", "tag"),
    ("meta", "profile"),
    ("Consent", "category"),
    ("Consent", "organization"),
    ("Consent", "performer"),
    ("Consent", "policy"),
    ("Consent", "verification"),
    ("Consent", "grantor"),
    ("Consent", "grantee"),
    ("Consent", "controller"),
    ("Consent", "manager"),
    ("Consent", "regulatoryBasis"),
    ("provision", "actor"),
    ("provision", "action"),
    ("provision", "securityLabel"),
    ("provision", "purpose"),
    ("provision", "class"),
    ("provision", "documentType"),
    ("provision", "resourceType"),
    ("provision", "code"),
    ("provision", "data"),
    ("provision", "provision"),
}


def _local(tag: str) -> str:
    return tag.split("}", 1)[1] if tag.startswith("{") else tag


def _repeats(parent: str, child: str) -> bool:
    return (parent, child) in REPEATING or ("*", child) in REPEATING


def _element(elem: ElementTree.Element) -> Any:
    name = _local(elem.tag)
    out: dict[str, Any] = {}
    for child in elem:
        cname = _local(child.tag)
        if child.tag == f"{XHTML_NS}div":
            out["div"] = ElementTree.tostring(child, encoding="unicode")
            continue
        value: Any = child.get("value") if child.get("value") is not None else _element(child)
        if child.get("value") is not None and len(child):
            value = {"value": child.get("value"), **_element(child)}
        if _repeats(name, cname):
            out.setdefault(cname, []).append(value)
        elif cname in out:
            raise ValueError(f"{name}.{cname} repeats but is not known to repeat")
        else:
            out[cname] = value
    return out


def fhir_xml_to_json(data: bytes) -> dict[str, Any]:
    """The JSON form of one FHIR resource given as XML."""
    root = ElementTree.fromstring(data)
    if not root.tag.startswith(FHIR_NS):
        raise ValueError("not a FHIR resource")
    resource = {"resourceType": _local(root.tag), **_element(root)}
    return resource


def test_converter_reads_primitives_arrays_and_nesting() -> None:
    xml = (
        b'<Consent xmlns="http://hl7.org/fhir"><id value="x"/><!-- c -->'
        b'<category><coding><code value="a"/></coding></category>'
        b'<provision><actor><reference><reference value="Patient/p"/></reference></actor>'
        b'<provision><type value="deny"/></provision></provision></Consent>'
    )
    assert fhir_xml_to_json(xml) == {
        "resourceType": "Consent",
        "id": "x",
        "category": [{"coding": [{"code": "a"}]}],
        "provision": {
            "actor": [{"reference": {"reference": "Patient/p"}}],
            "provision": [{"type": "deny"}],
        },
    }
