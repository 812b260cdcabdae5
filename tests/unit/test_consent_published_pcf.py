"""The decision table, IHE PCF part: the IHE PCF 1.0.0 and 1.1.0 Consent examples held in
tests/fixtures/consent/ihe (byte for byte, see its README), JSON and XML, with the
accesses each speaks about and the decision each must get (ADR 0021, "IHE PCF
examples"). The rows and checks of the other examples are in test_consent_published.py;
the check that every example held is in a table is here (it sees both tables).

The XML examples (published by IHE only as FHIR XML in the index) are read through the
production FHIR XML reader, ``producers.consents.intake.decode_document``; their
narrative is quoted from the published text itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producers.consents.intake import decode_document
from tests.unit.test_consent_published import (
    FIXTURES,
    IHE,
    POLICY_TABLE,
    ROWS,
    Row,
    load,
    squash,
)
from tests.unit.test_consent_xml import fhir_xml_to_json
from verifiers.auditor.consent import ConsentRequest, evaluate_consent, parse_consent
from verifiers.auditor.consent.policy_table import load_policy_table

# IHE PCF: generated narratives only; the rows quote the provision as the narrative
# renders it (ADR 0021, "IHE PCF examples").
PCF_RESEARCH = "<td>permit</td><td>healthcare research (Details: http://terminology.hl7.org/CodeSystem/v3-ActReason code HRESCH"  # noqa: E501
PCF_NORMAL_RESTRICTED = "<td>permit</td><td>normal (Details: http://terminology.hl7.org/CodeSystem/v3-Confidentiality code N = 'normal', stated as 'null'), restricted"  # noqa: E501
PCF_NORMAL = "<td>permit</td><td>normal (Details: http://terminology.hl7.org/CodeSystem/v3-Confidentiality code N = 'normal', stated as 'null')</td><td>treatment"  # noqa: E501
PCF_NOT_RESTRICTED = "<td>deny</td><td>restricted (Details: http://terminology.hl7.org/CodeSystem/v3-Confidentiality code R"  # noqa: E501
PCF_BREAK_GLASS = "<p><b>securityLabel</b>: restricted (Details: http://terminology.hl7.org/CodeSystem/v3-Confidentiality code R = 'restricted', stated as 'null')</p><p><b>purpose</b>: break the glass"  # noqa: E501
PCF_PSY_OR_SDV = "<p><b>securityLabel</b>: psychiatry disorder information sensitivity (Details: http://terminology.hl7.org/CodeSystem/v3-ActCode code PSY"  # noqa: E501
PCF_AUTHOREDBY = '<td>authoredby</td><td><a href="Practitioner-ex-practitioner.html">Practitioner/ex-practitioner</a></td>'  # noqa: E501
PCF_NOT_AUTHOREDBY = "<p><b>type</b>: deny</p><blockquote><p><b>data</b></p>"
PCF_DATA = '<p><b>meaning</b>: instance</p><p><b>reference</b>: <a href="Observation-ex-weight.html">Observation/ex-weight</a></p>'  # noqa: E501
PCF_NOT_ENCOUNTER = PCF_NOT_AUTHOREDBY
PCF_EXPIRED = "<td>permit</td><td>?? --&gt; 2022-12-31</td>"
PCF_TIMEFRAME = "<td>2022-01-01 --&gt; 2022-12-31</td>"
PCF_INK = '<a href="DocumentReference-ex-consent-ink.html">DocumentReference/ex-consent-ink</a>'


def pcf(
    version: str, name: str, narrative: str, expect: str, note: str = "", by: str = "consent",
    **access: Any,
) -> Row:  # fmt: skip
    """A row for IHE PCF example ``name`` of PCF ``version`` (patient ex-patient, TREAT)."""
    fixture = f"ihe/PCF-{version}-Consent-ex-consent-{name}.json"
    return Row(fixture, narrative, expect, {**IHE, **access}, note=note, decided_by=by)


WIDEN = "the table's permit never widens the consent's typed permit root (ADR 0021)"
NO_GRAPH = "LIMITATION: not decidable without the record graph (as notThis; ADR 0021)"
SAFE = "SAFE SIDE: the permit cannot match an access event and is not widened (ADR 0021)"
OUT_OF_SCOPE = "SAFE SIDE: the nested permit lies outside its parent's N/TPO scope (ADR 0021)"
WEIGHT: dict[str, Any] = {
    "data_class": "Observation",
    "data_references": ("Observation/ex-weight",),
}
OTHER: dict[str, Any] = {"data_class": "Observation", "data_references": ("Observation/other",)}
ALCOHOL: dict[str, Any] = {
    "data_class": "Observation",
    "data_references": ("Observation/ex-alcoholUse",),
}
ENCOUNTER: dict[str, Any] = {
    "data_class": "Encounter",
    "data_references": ("Encounter/ex-encounter",),
}
SUGAR: dict[str, Any] = {
    "data_class": "Observation",
    "data_references": ("Observation/ex-bloodSugar",),
}
RESEARCH: dict[str, Any] = {"purposes": ("HRESCH",)}

# IHE PCF 1.0.0 and 1.1.0: the rest of the Consent examples (ADR 0021, "IHE PCF examples")
PCF_ROWS = [
    pcf("1.1.0", "basic-research", PCF_RESEARCH, "permit", **RESEARCH),
    pcf("1.1.0", "basic-research", PCF_RESEARCH, "deny", "policy not in the table"),
    pcf("1.0.0", "basic-ink", PCF_INK, "permit"),
    pcf("1.0.0", "basic-ink", PCF_INK, "deny", by="policy-table", **RESEARCH),
    pcf("1.0.0", "expired-treat", PCF_EXPIRED, "permit", at="2022-06-30T10:00:00Z"),
    pcf("1.0.0", "expired-treat", PCF_EXPIRED, "deny", WIDEN, at="2023-01-10T10:00:00Z"),
    pcf("1.0.0", "advanced-normal", PCF_NORMAL, "permit", security_labels=("N",)),
    pcf("1.0.0", "advanced-normal", PCF_NORMAL, "permit", security_labels=("L",)),
    pcf("1.0.0", "advanced-normal", PCF_NORMAL, "deny", WIDEN, security_labels=("R",)),
    pcf("1.1.0", "advanced-normal-restricted", PCF_NORMAL_RESTRICTED, "permit",
        security_labels=("N",)),
    pcf("1.1.0", "advanced-normal-restricted", PCF_NORMAL_RESTRICTED, "permit",
        security_labels=("R", "PSY")),
    pcf("1.1.0", "advanced-normal-restricted", PCF_NORMAL_RESTRICTED, "deny", WIDEN,
        security_labels=("V",)),
    pcf("1.1.0", "advanced-normal-restricted", PCF_NORMAL_RESTRICTED, "deny",
        by="policy-table", security_labels=("N",), **RESEARCH),
    pcf("1.0.0", "advanced-normal-not-restricted", PCF_NOT_RESTRICTED, "permit",
        "a denied level withholds that level and above (ADR 0021)", security_labels=("N",)),
    pcf("1.0.0", "advanced-normal-not-restricted", PCF_NOT_RESTRICTED, "deny",
        security_labels=("R",)),
    pcf("1.0.0", "advanced-normal-not-restricted", PCF_NOT_RESTRICTED, "deny",
        security_labels=("V",)),
    pcf("1.0.0", "advanced-normal-break-glass-restricted", PCF_BREAK_GLASS, "permit",
        security_labels=("N",)),
    pcf("1.0.0", "advanced-normal-break-glass-restricted", PCF_BREAK_GLASS, "deny", WIDEN,
        security_labels=("R",)),
    pcf("1.0.0", "advanced-normal-break-glass-restricted", PCF_BREAK_GLASS, "deny",
        OUT_OF_SCOPE + "; Group membership is not in the event", security_labels=("R",),
        purposes=("BTG",)),
    pcf("1.0.0", "advanced-normal-focused-psy-or-sdv", PCF_PSY_OR_SDV, "permit",
        security_labels=("N",)),
    pcf("1.0.0", "advanced-normal-focused-psy-or-sdv", PCF_PSY_OR_SDV, "permit",
        actor_id="ex-practitioner", security_labels=("N", "PSY")),
    pcf("1.0.0", "advanced-normal-focused-psy-or-sdv", PCF_PSY_OR_SDV, "permit",
        "AMBIGUOUS: nothing denies SDV-tagged normal data to others (ADR 0021)",
        security_labels=("N", "SDV")),
    pcf("1.0.0", "advanced-normal-focused-psy-or-sdv", PCF_PSY_OR_SDV, "deny", OUT_OF_SCOPE,
        actor_id="ex-practitioner", security_labels=("R", "PSY")),
    pcf("1.1.0", "intermediate-authoredby", PCF_AUTHOREDBY, "deny", SAFE, **WEIGHT),
    pcf("1.1.0", "intermediate-not-authoredby", PCF_NOT_AUTHOREDBY, "permit", NO_GRAPH,
        **WEIGHT),
    pcf("1.1.0", "intermediate-not-authoredby", PCF_NOT_AUTHOREDBY, "deny",
        by="policy-table", **RESEARCH),
    pcf("1.0.0", "intermediate-data", PCF_DATA, "permit", **WEIGHT),
    pcf("1.0.0", "intermediate-data", PCF_DATA, "permit", **ENCOUNTER),
    pcf("1.0.0", "intermediate-data", PCF_DATA, "deny", WIDEN, **OTHER),
    pcf("1.0.0", "intermediate-not-encounter", PCF_NOT_ENCOUNTER, "deny", **ENCOUNTER),
    pcf("1.0.0", "intermediate-not-encounter", PCF_NOT_ENCOUNTER, "permit", NO_GRAPH,
        **SUGAR),
    pcf("1.0.0", "intermediate-timeframe", PCF_TIMEFRAME, "deny", SAFE),
]  # fmt: skip


# ==== IHE PCF 1.1.0 examples published (in the index) only as FHIR XML


def pcf_xml(name: str, narrative: str, expect: str, note: str = "", by: str = "consent",
            **access: Any) -> Row:  # fmt: skip
    """A row for the PCF 1.1.0 XML example ``Consent-ex-{name}.xml``."""
    fixture = f"ihe/PCF-1.1.0-Consent-ex-{name}.xml"
    return Row(fixture, narrative, expect, {**IHE, **access}, note=note, decided_by=by)


PCF_PURPOSE = '<a href="Organization-ex-org-researcher.html">Organization/ex-org-researcher</a> &quot;research house org&quot;</td></tr></table><p><b>purpose</b>: FooBar'  # noqa: E501
PCF_DISSENT_BREAK_GLASS = "<p><b>type</b>: deny</p><blockquote><p><b>provision</b></p><p><b>type</b>: permit</p><blockquote><p><b>actor</b></p></blockquote><p><b>purpose</b>: break the glass"  # noqa: E501
RESEARCHER: dict[str, Any] = {"actor_organization": "ex-org-researcher"}
NO_GROUP = "SAFE SIDE: Group membership is not in the event; the permit never matches (ADR 0021)"
NOT_IN_TABLE = "policy not in the table: the typed root's opposite (deny)"

PCF_XML_ROWS = [
    # advanced-normal-break-glass-restricted: as its 1.0.0 JSON (same content)
    pcf_xml("consent-advanced-normal-break-glass-restricted", PCF_BREAK_GLASS, "permit",
            security_labels=("N",)),
    pcf_xml("consent-advanced-normal-break-glass-restricted", PCF_BREAK_GLASS, "deny", WIDEN,
            security_labels=("R",)),
    pcf_xml("consent-advanced-normal-break-glass-restricted", PCF_BREAK_GLASS, "deny",
            OUT_OF_SCOPE + "; Group membership is not in the event", security_labels=("R",),
            purposes=("BTG",)),
    # intermediate-not-encounter: as its 1.0.0 JSON (same content)
    pcf_xml("consent-intermediate-not-encounter", PCF_NOT_ENCOUNTER, "deny", **ENCOUNTER),
    pcf_xml("consent-intermediate-not-encounter", PCF_NOT_ENCOUNTER, "permit", NO_GRAPH,
            **SUGAR),
    pcf_xml("consent-intermediate-not-encounter", PCF_NOT_ENCOUNTER, "deny",
            by="policy-table", **RESEARCH),
    # intermediate-purpose: the research organization, for purpose FooBar only
    pcf_xml("consent-intermediate-purpose", PCF_PURPOSE, "permit", **RESEARCHER,
            purposes=("FooBar",)),
    pcf_xml("consent-intermediate-purpose", PCF_PURPOSE, "deny", NOT_IN_TABLE, **RESEARCHER),
    pcf_xml("consent-intermediate-purpose", PCF_PURPOSE, "deny", NOT_IN_TABLE, **RESEARCHER,
            purposes=("HRESCH",)),
    pcf_xml("consent-intermediate-purpose", PCF_PURPOSE, "deny", purposes=("FooBar",)),
    # dissent-intermediate-break-glass: deny all; break-glass by privileged users only
    pcf_xml("dissent-intermediate-break-glass", PCF_DISSENT_BREAK_GLASS, "deny"),
    pcf_xml("dissent-intermediate-break-glass", PCF_DISSENT_BREAK_GLASS, "deny",
            purposes=("ETREAT",)),
    pcf_xml("dissent-intermediate-break-glass", PCF_DISSENT_BREAK_GLASS, "deny", NO_GROUP,
            purposes=("BTG",)),
    pcf_xml("dissent-intermediate-break-glass", PCF_DISSENT_BREAK_GLASS, "deny",
            NO_GROUP + "; a Group id is not a person's", actor_id="ex-privilegedUsers",
            purposes=("BTG",)),
]  # fmt: skip


def resource(fixture: str) -> dict[str, Any]:
    """The example's FHIR JSON: JSON as held, XML through the production reader."""
    if fixture.endswith(".xml"):
        decoded = decode_document((FIXTURES / fixture).read_bytes(), "xml")
        assert decoded.guessed == (), decoded.guessed
        return decoded.resource
    return load(fixture)


def narrative(fixture: str) -> str:
    """The example's ``text.div`` as published (for XML: the published text itself, so
    entities such as ``&quot;`` stay as IHE wrote them)."""
    if fixture.endswith(".xml"):
        text = (FIXTURES / fixture).read_bytes().decode("utf-8")
        start = text.index('<div xmlns="http://www.w3.org/1999/xhtml">')
        return text[start : text.index("</text>", start)]
    div: str = load(fixture)["text"]["div"]
    return div


@pytest.fixture(scope="module")
def table() -> Any:
    return load_policy_table(POLICY_TABLE)


@pytest.mark.parametrize("row", PCF_ROWS + PCF_XML_ROWS, ids=lambda r: r.id)
def test_pcf_example_decides_as_its_narrative_says(row: Row, table: Any) -> None:
    assert squash(row.narrative) in squash(narrative(row.fixture)), "quote the example's own"
    decision = evaluate_consent([resource(row.fixture)], row.request(), policy_table=table)
    assert decision.outcome == row.expect, decision.reason
    assert decision.decided_by == row.decided_by, decision.reason


def _package(path: Path) -> bool:
    """HL7's R4 examples package files (``Consent-*.json``) and the IHE ones; the R4
    build's ``consent-example-*.json`` are the same examples (test_consent_published.py)."""
    return not (path.parent.name == "r4" and path.name.startswith("consent-example"))


def _xml_only(path: Path) -> bool:
    """The PCF 1.1.0 XML examples (the BALP and R4 XML are the forms of JSON examples
    held, checked in test_consent_published.py)."""
    return path.name.startswith("PCF-")


def test_every_published_example_is_in_the_table() -> None:
    held = {f"{p.parent.name}/{p.name}" for p in FIXTURES.glob("*/*.json") if _package(p)}
    held |= {f"ihe/{p.name}" for p in FIXTURES.glob("ihe/*.xml") if _xml_only(p)}
    assert held == {row.fixture for row in ROWS + PCF_ROWS + PCF_XML_ROWS}


PCF_XML = sorted(f"ihe/{p.name}" for p in FIXTURES.glob("ihe/PCF-*.xml"))


@pytest.mark.parametrize("path", PCF_XML)
def test_every_pcf_xml_example_parses_and_is_never_invalid(path: str) -> None:
    policy = parse_consent(resource(path))
    assert policy.status == "active"
    assert policy.patient_id == "ex-patient"


@pytest.mark.parametrize(
    ("xml", "js"),
    [
        (
            "ihe/PCF-1.1.0-Consent-ex-consent-advanced-normal-break-glass-restricted.xml",
            "ihe/PCF-1.0.0-Consent-ex-consent-advanced-normal-break-glass-restricted.json",
        ),
        (
            "ihe/PCF-1.1.0-Consent-ex-consent-intermediate-not-encounter.xml",
            "ihe/PCF-1.0.0-Consent-ex-consent-intermediate-not-encounter.json",
        ),
    ],
)
def test_pcf_1_1_0_xml_is_the_same_consent_as_its_1_0_0_json(xml: str, js: str) -> None:
    """Same consent in both publications: all but the generated narrative are equal
    (1.1.0's narrative links terminology 5.3.0, 1.0.0's 5.0.0)."""
    new, old = resource(xml), load(js)
    new.pop("text"), old.pop("text")
    assert new == old
    assert parse_consent(resource(xml)) == parse_consent(load(js))


def test_a_group_recipient_never_matches_an_access_event() -> None:
    """dissent-intermediate-break-glass's permit names Group/ex-privilegedUsers: without a
    group resolver no actor matches it, whatever its id, roles or organization."""
    res = resource("ihe/PCF-1.1.0-Consent-ex-dissent-intermediate-break-glass.xml")
    table = load_policy_table(POLICY_TABLE)
    for actor in ("ex-privilegedUsers", "Group/ex-privilegedUsers", "someone"):
        request = ConsentRequest(
            patient_id="ex-patient",
            at="2023-01-10T10:00:00Z",
            actor_id=actor,
            actor_roles=("IRCP",),
            actor_organization="ex-privilegedUsers",
            purposes=("BTG",),
            action="R",
        )
        decision = evaluate_consent([res], request, policy_table=table)
        assert decision.outcome == "deny", decision.reason
        assert decision.provision_path == (0,), decision.reason


@pytest.mark.parametrize("path", PCF_XML)
def test_the_production_xml_reader_and_the_test_converter_agree(path: str) -> None:
    """The BALP and R4 XML rows go through the test converter; these through the
    production reader: both give the same resource (the narrative aside)."""
    produced, converted = resource(path), fhir_xml_to_json((FIXTURES / path).read_bytes())
    produced.pop("text"), converted.pop("text")
    assert produced == converted
