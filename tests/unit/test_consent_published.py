"""The decision table: every published Consent example we hold (tests/fixtures/consent,
byte for byte, see its README) with the accesses its own narrative speaks about and the
decision each must get. The narrative sentence is quoted in each row; where HL7's
structure and narrative disagree (or the narrative says nothing) the row says so and
docs/adr/0021-consent-evaluation.md records what we chose and why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from careledger_core.errors import ConsentFormatError
from careledger_core.reference import ReferenceRecord
from tests.unit.test_consent_xml import fhir_xml_to_json
from verifiers.auditor.consent import (
    ConsentDecision,
    ConsentRequest,
    evaluate_consent,
    parse_consent,
)
from verifiers.auditor.consent.policy_table import EMPTY_POLICY_TABLE, load_policy_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "consent"
POLICY_TABLE = FIXTURES / "policy-table.toml"
#: any instant in late 2015 (the Canadian examples were recorded 2015-11-18)
AT = "2015-12-01T10:00:00.000000Z"


def load(path: str) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads((FIXTURES / path).read_bytes())
    return resource


def squash(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Row:
    fixture: str
    narrative: str
    expect: str  # permit | deny | no-consent
    access: dict[str, Any] = field(default_factory=dict)
    #: why this row is not read straight off the narrative (see ADR 0021)
    note: str = ""
    decided_by: str = "consent"

    def request(self) -> ConsentRequest:
        fields: dict[str, Any] = {
            "patient_id": "f001",
            "at": AT,
            "actor_id": "some-practitioner",
            "actor_roles": ("physician",),
            "actor_organization": "f001",
            "purposes": ("TREAT",),
            "action": "R",
        }
        fields.update(self.access)
        return ConsentRequest(**fields)

    @property
    def id(self) -> str:
        return f"{self.fixture}:{self.expect}:{sorted(self.access.items())}"


OUT = "Patient &quot;P. van de Heuvel&quot; wishes to have no data at the Good Health Psychiatric Hospital available for normal treatment use."  # noqa: E501
EMERGENCY = "An overall Deny consent Directive, with an exception &quot;Permit&quot; of purposeOfUse &quot;ETREAT&quot; at &quot;Good Health&quot; hospital, and exception &quot;Deny&quot; all other purposeOfUse from good health hospital."  # noqa: E501
GRANTOR = "Patient &quot;P. van de Heuvel&quot; wishes to provide XXX with read-only access to the data at Good Health Psychiatric Hospital available for patient requested access use."  # noqa: E501
NOT_AUTHOR = "Patient &quot;P. van de Heuvel&quot; wishes to have all of the PHI collected at the Good Health Psychiatric Hospital restricted from disclosure to every provider."  # noqa: E501
NOT_ORG = "P. decides that he would like to withdraw/withhold consent to disclose any instance of his health information to Good Health Clinic."  # noqa: E501
NOT_THEM = "she does not want her ex-spouse to have any access to her IIHI."
NOT_THIS = "he indicates that he would like withhold consent to disclose the order and all results associated with that specific order from all other providers"  # noqa: E501
NOT_TIME = "Patient &quot;P. van de Heuvel&quot; wishes to withhold disclosure of all data from a timeframe to any provider."  # noqa: E501
BASIC = "Patient &quot;P. van de Heuvel&quot; wishes to have all of the PHI collected at the Good Health Psychiatric Hospital available for normal treatment use."  # noqa: E501
PKB = "This example demonstrates how to encode this screen shot in a consent resource"
PKB_PATIENT = {"patient_id": "example"}
SIGNATURE = "<b>category</b>: Notice of Privacy Practices"
SMART = "<b>period</b>: 23/06/2016 5:02:33 PM --&gt; 23/06/2016 5:32:33 PM"
BALP = "<h3>Policies</h3>"
PCF_TREAT = "<td>permit</td><td>treatment (Details: http://terminology.hl7.org/CodeSystem/v3-ActReason code TREAT"  # noqa: E501
PCF_NOT_DATA = "<p><b>type</b>: deny</p><blockquote><p><b>data</b></p>"

# R5 5.0.0 (hl7.fhir.r5.examples): the Canadian scenarios re-told at Burgers/Artis/Blijdorp
R5_OUT = "Patient &quot;P. van de Heuvel&quot; wishes to have no data at the Burgers University Medical Center available for normal treatment use."  # noqa: E501
R5_EMERGENCY = "Patient &quot;Pieter van de Heuvel&quot; wishes to have no data at the Artis University Medical Center available except for Emergency treatment use. An overall Deny consent directive, with an exception &quot;Permit&quot; for purposeOfUse &quot;ETREAT&quot; at Artis University Medical Center."  # noqa: E501
R5_GRANTOR = "Patient &quot;Roel&quot; wishes to provide Dr. Simone Heps with read-only access to the data at Blijdorp Medisch Centrum available for patient requested access use."  # noqa: E501
R5_NOT_AUTHOR = "Patient &quot;P. van de Heuvel&quot; wishes to have all of the PHI collected at the Burgers University Medical Center restricted from disclosure to every provider."  # noqa: E501
R5_NOT_ORG = "P. decides that he would like to withdraw/withhold consent to disclose any instance of his health information to Burgers University Medical Center."  # noqa: E501
R5_NOT_THEM = "she does not want her ex-spouse to have any access to her IIHI."
R5_NOT_THIS = "like withhold consent to disclose the order and all results associated with that specific order from all other providers"  # noqa: E501
R5_NOT_TIME = NOT_TIME
R5_BASIC = "Patient &quot;Peter James Chalmers (&quot;Jim&quot;)&quot; wishes to have all of the PHI collected at the Burgers University Medical Center available for normal treatment use."  # noqa: E501
R5_PKB = PKB
R5_CDA = "A base denial of access to Dr. F001 but allows for sharing CDA documents of type Discharge Summary + Summarization of Episode Note from a specific author for a limited period"  # noqa: E501
R5_SMART = "<b>period</b>: 2016-06-23T17:02:33+10:00 --&gt; 2016-06-23T17:32:33+10:00"
R5_SMART_PATIENT = {"patient_id": "xcda"}
R5_GRANTOR_ACTOR = {"patient_id": "f201", "actor_id": "f007", "actor_roles": ()}
R5_CDA_ACCESS = {"patient_id": "pat2", "at": "2019-01-15T00:00:00Z"}

IHE = {"patient_id": "ex-patient", "at": "2023-01-10T10:00:00Z"}

# The other IHE PCF examples (JSON and XML) and the check that every example held is in
# a table: tests/unit/test_consent_published_pcf.py.

ROWS = [
    # ---- R4 consent-example-Out: OPTOUT, root provision = the custodian only
    Row("r4/Consent-consent-example-Out.json", OUT, "deny"),
    Row("r4/Consent-consent-example-Out.json", OUT, "deny", {"purposes": ("ETREAT",)}),
    Row("r4/Consent-consent-example-Out.json", OUT, "deny", {"actor_organization": "elsewhere"}),
    # ---- R4 consent-example-Emergency
    Row(
        "r4/Consent-consent-example-Emergency.json", EMERGENCY, "permit", {"purposes": ("ETREAT",)}
    ),
    Row("r4/Consent-consent-example-Emergency.json", EMERGENCY, "permit", {"purposes": ("BTG",)}),
    Row("r4/Consent-consent-example-Emergency.json", EMERGENCY, "deny", {"purposes": ("TREAT",)}),
    Row("r4/Consent-consent-example-Emergency.json", EMERGENCY, "deny", {"purposes": ("HPAYMT",)}),
    # ---- R4 consent-example-grantor: read-only access for one individual
    Row(
        "r4/Consent-consent-example-grantor.json",
        GRANTOR,
        "permit",
        {"actor_id": "example", "actor_roles": (), "purposes": ("PATRQT",)},
    ),
    Row(
        "r4/Consent-consent-example-grantor.json",
        GRANTOR,
        "deny",
        {"actor_id": "example", "actor_roles": (), "action": "U"},
        note="read-only: an update needs 'correct' too",
    ),
    Row(
        "r4/Consent-consent-example-grantor.json",
        GRANTOR,
        "deny",
        {"actor_id": "example", "actor_roles": (), "action": "E"},
        note="read-only: an export needs 'disclose' too",
    ),
    Row("r4/Consent-consent-example-grantor.json", GRANTOR, "deny", {"actor_id": "someone-else"}),
    # ---- R4 consent-example-notAuthor
    Row("r4/Consent-consent-example-notAuthor.json", NOT_AUTHOR, "deny"),
    Row(
        "r4/Consent-consent-example-notAuthor.json", NOT_AUTHOR, "deny", {"actor_organization": "x"}
    ),
    # ---- R4 consent-example-notOrg
    Row("r4/Consent-consent-example-notOrg.json", NOT_ORG, "deny"),
    Row("r4/Consent-consent-example-notOrg.json", NOT_ORG, "deny", {"action": "U"}),
    Row(
        "r4/Consent-consent-example-notOrg.json", NOT_ORG, "permit", {"actor_organization": "other"}
    ),
    # ---- R4 consent-example-notThem: the nurse Practitioner/f204 and nobody else
    Row("r4/Consent-consent-example-notThem.json", NOT_THEM, "deny", {"actor_id": "f204"}),
    Row(
        "r4/Consent-consent-example-notThem.json",
        NOT_THEM,
        "deny",
        {"actor_id": "f204", "action": "E"},
    ),
    Row("r4/Consent-consent-example-notThem.json", NOT_THEM, "permit", {"actor_id": "f201"}),
    # ---- R4 consent-example-notThis: the order Task/example3 itself
    Row(
        "r4/Consent-consent-example-notThis.json",
        NOT_THIS,
        "deny",
        {"data_class": "Task", "data_references": ("Task/example3",)},
    ),
    Row(
        "r4/Consent-consent-example-notThis.json",
        NOT_THIS,
        "permit",
        {"data_class": "Observation", "data_references": ("Observation/unrelated",)},
        note="results referring to the order cannot be told apart without the record graph",
    ),
    # ---- R4 consent-example-notTime: withheld inside the window, shared outside
    Row(
        "r4/Consent-consent-example-notTime.json", NOT_TIME, "deny", {"at": "2015-01-15T00:00:00Z"}
    ),
    Row(
        "r4/Consent-consent-example-notTime.json", NOT_TIME, "deny", {"at": "2015-02-01T23:00:00Z"}
    ),
    Row(
        "r4/Consent-consent-example-notTime.json",
        NOT_TIME,
        "permit",
        {"at": "2015-03-01T00:00:00Z"},
    ),
    Row(
        "r4/Consent-consent-example-notTime.json",
        NOT_TIME,
        "permit",
        {"at": "2014-12-31T23:00:00Z"},
    ),
    # ---- R4 consent-example (basic): same structure as notTime, opposite narrative
    Row(
        "r4/Consent-consent-example-basic.json",
        BASIC,
        "deny",
        {"at": "2015-06-01T00:00:00Z"},
        note="AMBIGUOUS: structure identical to notTime (OPTIN + a root provision with only "
        "a period); we follow the structure, the narrative says permit (ADR 0021)",
    ),
    Row("r4/Consent-consent-example-basic.json", BASIC, "permit", {"at": "2016-06-01T00:00:00Z"}),
    # ---- R4 consent-example-pkb: OPTOUT, Organization/f001 may access normal data
    Row(
        "r4/Consent-consent-example-pkb.json",
        PKB,
        "permit",
        {**PKB_PATIENT, "security_labels": ("N",)},
    ),
    Row(
        "r4/Consent-consent-example-pkb.json",
        PKB,
        "deny",
        {**PKB_PATIENT, "security_labels": ("N", "PSY")},
        note="narrative is a screenshot reference: decided by structure",
    ),
    Row(
        "r4/Consent-consent-example-pkb.json",
        PKB,
        "deny",
        {**PKB_PATIENT, "security_labels": ("R",)},
    ),
    Row(
        "r4/Consent-consent-example-pkb.json",
        PKB,
        "deny",
        {**PKB_PATIENT, "security_labels": ("N",), "actor_organization": "other"},
    ),
    # ---- R4 consent-example-signature (patient 72): generated narrative only
    Row(
        "r4/Consent-consent-example-signature.json",
        SIGNATURE,
        "deny",
        {"patient_id": "72", "actor_id": "13", "at": "2016-01-01T00:00:00Z"},
        note="AMBIGUOUS: OPTIN with a root provision naming Practitioner/13: an exception "
        "to an opt-in withholds (ADR 0021)",
    ),
    Row(
        "r4/Consent-consent-example-signature.json",
        SIGNATURE,
        "permit",
        {"patient_id": "72", "actor_id": "14", "at": "2016-01-01T00:00:00Z"},
    ),
    # ---- R4 consent-example-smartonfhir (patient xcda): MedicationRequest for 30 minutes
    Row(
        "r4/Consent-consent-example-smartonfhir.json",
        SMART,
        "permit",
        {"patient_id": "xcda", "at": "2016-06-23T07:10:00Z", "data_class": "MedicationRequest"},
    ),
    Row(
        "r4/Consent-consent-example-smartonfhir.json",
        SMART,
        "deny",
        {"patient_id": "xcda", "at": "2016-06-23T07:10:00Z", "data_class": "Observation"},
    ),
    # ==== R5 5.0.0: `decision` is the default, each provision reverses its parent
    # ---- R5 consent-example-Out: permit; provision = custodian Organization/f001
    Row("r5/Consent-consent-example-Out.json", R5_OUT, "deny"),
    Row("r5/Consent-consent-example-Out.json", R5_OUT, "deny", {"purposes": ("ETREAT",)}),
    Row("r5/Consent-consent-example-Out.json", R5_OUT, "deny", {"actor_organization": "elsewhere"}),
    # ---- R5 consent-example-Emergency: deny; custodian Organization/f201 > ETREAT
    Row(
        "r5/Consent-consent-example-Emergency.json",
        R5_EMERGENCY,
        "permit",
        {"purposes": ("ETREAT",)},
        note="AMBIGUOUS: read by reversal, the custodian-only provision permits and its "
        "nested ETREAT denies; the custodian provision is read as a scope (ADR 0021)",
    ),
    Row(
        "r5/Consent-consent-example-Emergency.json",
        R5_EMERGENCY,
        "permit",
        {"purposes": ("BTG",)},
    ),
    Row(
        "r5/Consent-consent-example-Emergency.json",
        R5_EMERGENCY,
        "deny",
        {"purposes": ("TREAT",)},
    ),
    Row(
        "r5/Consent-consent-example-Emergency.json",
        R5_EMERGENCY,
        "deny",
        {"purposes": ("HPAYMT",)},
    ),
    # ---- R5 consent-example-grantor (patient f201): deny; permit Practitioner/f007 access
    Row(
        "r5/Consent-consent-example-grantor.json",
        R5_GRANTOR,
        "permit",
        {**R5_GRANTOR_ACTOR, "purposes": ("PATRQT",)},
    ),
    Row(
        "r5/Consent-consent-example-grantor.json",
        R5_GRANTOR,
        "deny",
        {**R5_GRANTOR_ACTOR, "action": "U"},
        note="read-only: an update needs 'correct' too",
    ),
    Row(
        "r5/Consent-consent-example-grantor.json",
        R5_GRANTOR,
        "deny",
        {**R5_GRANTOR_ACTOR, "action": "E"},
        note="read-only: an export needs 'disclose' too",
    ),
    Row(
        "r5/Consent-consent-example-grantor.json",
        R5_GRANTOR,
        "deny",
        {**R5_GRANTOR_ACTOR, "actor_id": "someone-else"},
    ),
    # ---- R5 consent-example-notAuthor: permit; provision = custodian Organization/f001
    Row("r5/Consent-consent-example-notAuthor.json", R5_NOT_AUTHOR, "deny"),
    Row(
        "r5/Consent-consent-example-notAuthor.json",
        R5_NOT_AUTHOR,
        "deny",
        {"actor_organization": "x"},
    ),
    # ---- R5 consent-example-notOrg: permit; deny recipient Organization/f001
    Row("r5/Consent-consent-example-notOrg.json", R5_NOT_ORG, "deny"),
    Row("r5/Consent-consent-example-notOrg.json", R5_NOT_ORG, "deny", {"action": "U"}),
    Row(
        "r5/Consent-consent-example-notOrg.json",
        R5_NOT_ORG,
        "permit",
        {"actor_organization": "other"},
    ),
    # ---- R5 consent-example-notThem (patient mom): permit; deny Practitioner/f204
    Row(
        "r5/Consent-consent-example-notThem.json",
        R5_NOT_THEM,
        "deny",
        {"patient_id": "mom", "actor_id": "f204"},
    ),
    Row(
        "r5/Consent-consent-example-notThem.json",
        R5_NOT_THEM,
        "deny",
        {"patient_id": "mom", "actor_id": "f204", "action": "E"},
    ),
    Row(
        "r5/Consent-consent-example-notThem.json",
        R5_NOT_THEM,
        "permit",
        {"patient_id": "mom", "actor_id": "f201"},
    ),
    # ---- R5 consent-example-notThis: permit; deny data related MedicationRequest/medrx0305
    Row(
        "r5/Consent-consent-example-notThis.json",
        R5_NOT_THIS,
        "deny",
        {"data_class": "MedicationRequest", "data_references": ("MedicationRequest/medrx0305",)},
    ),
    Row(
        "r5/Consent-consent-example-notThis.json",
        R5_NOT_THIS,
        "permit",
        {"data_class": "Observation", "data_references": ("Observation/unrelated",)},
        note="results referring to the order cannot be told apart without the record graph",
    ),
    # ---- R5 consent-example-notTime: permit; deny inside Jan 2015
    Row(
        "r5/Consent-consent-example-notTime.json",
        R5_NOT_TIME,
        "deny",
        {"at": "2015-01-15T00:00:00Z"},
    ),
    Row(
        "r5/Consent-consent-example-notTime.json",
        R5_NOT_TIME,
        "deny",
        {"at": "2015-02-01T23:00:00Z"},
    ),
    Row(
        "r5/Consent-consent-example-notTime.json",
        R5_NOT_TIME,
        "permit",
        {"at": "2015-03-01T00:00:00Z"},
    ),
    Row(
        "r5/Consent-consent-example-notTime.json",
        R5_NOT_TIME,
        "permit",
        {"at": "2014-12-31T23:00:00Z"},
    ),
    # ---- R5 consent-example-basic (patient example): deny; permit inside 1964-2019
    Row(
        "r5/Consent-consent-example-basic.json",
        R5_BASIC,
        "permit",
        {"patient_id": "example", "at": "2015-06-01T00:00:00Z"},
        note="R5 writes basic as the reverse of notTime, so its narrative and structure "
        "agree (R4's basic does not: ADR 0021)",
    ),
    Row(
        "r5/Consent-consent-example-basic.json",
        R5_BASIC,
        "deny",
        {"patient_id": "example", "at": "2019-06-01T00:00:00Z"},
        note="after the provision's timeframe: the consent's decision (deny)",
    ),
    # ---- R5 consent-example-pkb: deny; Organization/f001 access N, except PSY/SPI/SEX
    Row(
        "r5/Consent-consent-example-pkb.json",
        R5_PKB,
        "permit",
        {**PKB_PATIENT, "security_labels": ("N",)},
    ),
    Row(
        "r5/Consent-consent-example-pkb.json",
        R5_PKB,
        "deny",
        {**PKB_PATIENT, "security_labels": ("N", "PSY")},
        note="narrative is a screenshot reference: decided by structure",
    ),
    Row(
        "r5/Consent-consent-example-pkb.json",
        R5_PKB,
        "deny",
        {**PKB_PATIENT, "security_labels": ("N", "SEX")},
    ),
    Row(
        "r5/Consent-consent-example-pkb.json",
        R5_PKB,
        "deny",
        {**PKB_PATIENT, "security_labels": ("R",)},
    ),
    Row(
        "r5/Consent-consent-example-pkb.json",
        R5_PKB,
        "deny",
        {**PKB_PATIENT, "security_labels": ("N",), "actor_organization": "other"},
    ),
    # ---- R5 consent-example-CDA (patient pat2): permit; deny Practitioner/f001 for a year
    Row(
        "r5/Consent-consent-example-CDA.json",
        R5_CDA,
        "deny",
        {**R5_CDA_ACCESS, "actor_id": "f001"},
        note="the nested permit (CDA documents by documentType and code, from one author) "
        "cannot be tested against an access event and never matches (ADR 0021)",
    ),
    Row(
        "r5/Consent-consent-example-CDA.json",
        R5_CDA,
        "permit",
        {**R5_CDA_ACCESS, "actor_id": "f002"},
    ),
    Row(
        "r5/Consent-consent-example-CDA.json",
        R5_CDA,
        "permit",
        {**R5_CDA_ACCESS, "actor_id": "f001", "at": "2020-01-01T00:00:00Z"},
        note="AMBIGUOUS: outside the provision's period the decision (permit) holds",
    ),
    # ---- R5 consent-example-smartonfhir (patient xcda): MedicationRequest for 30 minutes
    Row(
        "r5/Consent-consent-example-smartonfhir.json",
        R5_SMART,
        "permit",
        {**R5_SMART_PATIENT, "at": "2016-06-23T07:10:00Z", "data_class": "MedicationRequest"},
    ),
    Row(
        "r5/Consent-consent-example-smartonfhir.json",
        R5_SMART,
        "permit",
        {
            **R5_SMART_PATIENT,
            "at": "2016-06-23T07:10:00Z",
            "data_class": "MedicationRequest",
            "action": "U",
        },
        note="the nested provision grants access and correct",
    ),
    Row(
        "r5/Consent-consent-example-smartonfhir.json",
        R5_SMART,
        "deny",
        {**R5_SMART_PATIENT, "at": "2016-06-23T07:10:00Z", "data_class": "Observation"},
    ),
    Row(
        "r5/Consent-consent-example-smartonfhir.json",
        R5_SMART,
        "permit",
        {**R5_SMART_PATIENT, "at": "2016-06-24T00:00:00Z", "data_class": "Observation"},
        note="AMBIGUOUS: outside the window the decision (permit) holds; R5 Consent.period "
        "could have bounded the whole consent but the example does not use it (ADR 0021)",
    ),
    # ---- IHE BALP ex-consent: rules only in an external policy
    Row(
        "ihe/BALP-1.0.1-Consent-ex-consent.json",
        BALP,
        "permit",
        IHE,
        note="decided by the policy table (tests/fixtures/consent/policy-table.toml)",
        decided_by="policy-table",
    ),
    # ---- IHE PCF basic-treat: permit for TREAT, HPAYMT, HOPERAT under the base policy
    Row("ihe/PCF-1.1.0-Consent-ex-consent-basic-treat.json", PCF_TREAT, "permit", IHE),
    Row(
        "ihe/PCF-1.1.0-Consent-ex-consent-basic-treat.json",
        PCF_TREAT,
        "permit",
        {**IHE, "purposes": ("HOPERAT",)},
    ),
    Row(
        "ihe/PCF-1.1.0-Consent-ex-consent-basic-treat.json",
        PCF_TREAT,
        "deny",
        {**IHE, "purposes": ("HRESCH",)},
        note="the policy table says the base policy denies other purposes",
        decided_by="policy-table",
    ),
    # ---- IHE PCF intermediate-not-data: but not Observation/ex-alcoholUse
    Row(
        "ihe/PCF-1.1.0-Consent-ex-consent-intermediate-not-data.json",
        PCF_NOT_DATA,
        "deny",
        {**IHE, "data_class": "Observation", "data_references": ("Observation/ex-alcoholUse",)},
    ),
    Row(
        "ihe/PCF-1.1.0-Consent-ex-consent-intermediate-not-data.json",
        PCF_NOT_DATA,
        "permit",
        {**IHE, "data_class": "Observation", "data_references": ("Observation/ex-weight",)},
    ),
]


@pytest.fixture(scope="module")
def table() -> Any:
    return load_policy_table(POLICY_TABLE)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_published_example_decides_as_its_narrative_says(row: Row, table: Any) -> None:
    div = load(row.fixture)["text"]["div"]
    assert squash(row.narrative) in squash(div), "the quoted narrative must be the example's own"
    decision = evaluate_consent([load(row.fixture)], row.request(), policy_table=table)
    assert decision.outcome == row.expect, decision.reason
    assert decision.decided_by == row.decided_by, decision.reason


def _build_twin(path: Path) -> Path:
    stem = "consent-example-basic" if path.stem == "consent-example" else path.stem
    return path.with_name(f"Consent-{stem}.json")


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("r4/consent-example*.json"))
)
def test_the_r4_builds_json_is_hl7s_package_content(path: str) -> None:
    """The R4 build's JSON (paired with its XML for the intake) says what HL7's package
    says; only generated narratives may differ, so the decision table covers both."""
    build, package = load(path), json.loads(_build_twin(FIXTURES / path).read_bytes())
    build.pop("text"), package.pop("text")
    assert build == package
    assert parse_consent(load(path)) == parse_consent(
        json.loads(_build_twin(FIXTURES / path).read_bytes())
    )


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.json"))
)
def test_every_published_example_parses_and_is_never_invalid(path: str) -> None:
    policy = parse_consent(load(path))
    assert policy.status == "active"


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.json"))
)
def test_every_published_example_is_a_valid_consent_record_for_the_ledger(path: str) -> None:
    rec = ReferenceRecord(
        kind="consent",
        record_id=load(path)["id"],
        version=1,
        recorded_at="2024-01-01T00:00:00.000000Z",
        effective_at="2024-01-01T00:00:00.000000Z",
        body=load(path),
    )
    assert rec.subject_id == parse_consent(load(path)).patient_id


def test_policy_only_consent_without_a_rule_says_so_and_is_not_invalid() -> None:
    resource = load("ihe/BALP-1.0.1-Consent-ex-consent.json")
    request = ConsentRequest(
        patient_id="ex-patient", at="2023-01-10T10:00:00Z", actor_id="a", action="R"
    )
    decision = evaluate_consent([resource], request, policy_table=EMPTY_POLICY_TABLE)
    assert decision.outcome == "no-consent"
    assert decision.decided_by == "no-policy-rule"
    assert "no rule for policy urn:uuid:a7ff9fa3-fbb6-4c5e-a1cc-6128069bbd4b" in decision.reason
    assert decision.policy == "urn:uuid:a7ff9fa3-fbb6-4c5e-a1cc-6128069bbd4b"


def test_policy_table_decision_names_the_policy() -> None:
    table = load_policy_table(POLICY_TABLE)
    resource = load("ihe/BALP-1.0.1-Consent-ex-consent.json")
    request = ConsentRequest(
        patient_id="ex-patient", at="2023-01-10T10:00:00Z", actor_id="a", action="R"
    )
    decision: ConsentDecision = evaluate_consent([resource], request, policy_table=table)
    assert decision.to_dict()["fallback"] == "policy-table"
    assert decision.to_dict()["policy"] == "urn:uuid:a7ff9fa3-fbb6-4c5e-a1cc-6128069bbd4b"
    assert "policy table" in decision.reason


# --------------------------------------------------------------------------- XML forms


def _json_twin(xml: Path) -> str:
    """The package JSON of an XML example (``consent-example`` is ``-basic``'s)."""
    stem = "consent-example-basic" if xml.stem == "consent-example" else xml.stem
    return f"r4/Consent-{stem}.json"


XML_PAIRS = sorted((str(p.relative_to(FIXTURES)), _json_twin(p)) for p in FIXTURES.glob("r4/*.xml"))


@pytest.mark.parametrize(("xml", "js"), XML_PAIRS)
def test_xml_form_of_an_example_evaluates_like_its_json_form(xml: str, js: str) -> None:
    converted = fhir_xml_to_json((FIXTURES / xml).read_bytes())
    assert parse_consent(converted) == parse_consent(load(js))


def test_balp_xml_and_json_publications_agree() -> None:
    xml = fhir_xml_to_json((FIXTURES / "ihe" / "BALP-1.1.4-Consent-ex-consent.xml").read_bytes())
    assert parse_consent(xml) == parse_consent(load("ihe/BALP-1.0.1-Consent-ex-consent.json"))


# --------------------------------------------------------------------------- provenance


def test_readme_lists_every_fixture_with_its_sha256() -> None:
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for path in sorted(p for p in FIXTURES.glob("*/*") if p.suffix in (".json", ".xml")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"`{path.relative_to(FIXTURES)}`" in readme, path
        assert digest in readme, f"{path}: sha256 {digest} not in README"


def test_an_invalid_consent_is_still_invalid() -> None:
    resource = load("r4/Consent-consent-example-Out.json")
    del resource["policyRule"]
    with pytest.raises(ConsentFormatError):
        parse_consent(resource)


def test_r5_custodian_only_provision_scopes_its_nested_rules_and_is_otherwise_reversed() -> None:
    """R5 Emergency's custodian-only provision keeps the decision (deny) for its nested
    ETREAT exception; the same provision without nested rules reverses it like any R5
    exception (as Out and notAuthor do). ADR 0021."""
    emergency = load("r5/Consent-consent-example-Emergency.json")
    policy = parse_consent(emergency)
    assert policy.provisions[0].effect == "deny"
    assert policy.provisions[0].provisions[0].effect == "permit"
    assert any("a scope, not a reversal" in note for note in policy.notes)
    alone = load("r5/Consent-consent-example-Emergency.json")
    del alone["provision"][0]["provision"]
    assert parse_consent(alone).provisions[0].effect == "permit"
    request = ConsentRequest(
        patient_id="f001", at=AT, actor_id="x", purposes=("TREAT",), action="R"
    )
    assert evaluate_consent([alone], request, policy_table=EMPTY_POLICY_TABLE).outcome == "permit"
    assert evaluate_consent([emergency], request, policy_table=EMPTY_POLICY_TABLE).outcome == (
        "deny"
    )
