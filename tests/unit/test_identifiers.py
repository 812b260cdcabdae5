"""Identifiers (issue 12, point 4; ADR 0026): one identifier, one spelling.

Attack: ``exam\\u200bple``, the full-width ``ｅｘａｍｐｌｅ`` and the NFD spelling of a
patient id were stored as three patients besides ``example``, so the access report for
``example`` missed them. Now the core refuses identifiers with invisible, control or
full-width characters and identifiers not in NFC; the adapters normalise at intake (NFC,
full-width -> ASCII) and refuse what stays invisible; the report normalises the asked id.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from careledger_core.errors import EventValidationError
from careledger_core.event import (
    EVENT_SCHEMA,
    canonical_event_bytes,
    decode_and_canonicalize,
    decode_event,
    event_from_dict,
    normalise_identifier,
)
from producers.adapters import (
    ERROR_CODES,
    IngestError,
    parse_dicom_audit_xml,
    parse_fhir_audit_event,
)

BASE: dict[str, Any] = {
    "schema": EVENT_SCHEMA,
    "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "occurred_at": "2024-06-15T08:00:00.500000Z",
    "recorded_at": "2024-06-15T08:00:01.000000Z",
    "event_type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112"},
    "action": "E",
    "outcome": 4,
    "actor": {"id": "nurse-7", "name": "N. Seven", "roles": ["nurse"], "is_requestor": False},
    "session_ref": "jti-5f1c0d",
    "source": {"system": "fhir-gw", "site": "north", "type": 9},
    "patient": {"id": "24^^^MPI&1.2.3&ISO^PI", "system": "urn:oid:1.2.3"},
    "object": {"type": "Patient", "id": "pat-24", "role": "1"},
    "correlation_id": "req-0001",
}

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
RECEIVED = "2026-01-05T08:00:00.000000Z"

ZWSP = "exam\u200bple"
NFD = "Jose\u0301"  # "José" decomposed
NFC = unicodedata.normalize("NFC", NFD)
FULL_WIDTH = "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45"  # ｅｘａｍｐｌｅ

INVISIBLE = [
    "exam\u200bple",  # zero width space
    "exam\u2060ple",  # word joiner
    "\ufeffexample",  # byte order mark / zero width no-break space
    "exam\u202eelp",  # right-to-left override
    "exam\u2066ple\u2069",  # bidi isolates
    "exam\u00adple",  # soft hyphen
    "exam\u200dple",  # zero width joiner
    "example\ufe0f",  # variation selector
    "exam\U000e0041ple",  # tag character
]
CONTROL = ["exam\x00ple", "example\r", "exam\nple", "\x1b[31mexample", "exam\x7fple", "a\x85b"]
ID_PATHS = [
    ("actor", "id"),
    ("patient", "id"),
    ("object", "id"),
    ("session_ref",),
    ("correlation_id",),
]


def _with(path: tuple[str, ...], value: str) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    target = doc
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    return doc


def _wire(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


# ----------------------------------------------------------------------- the core


@pytest.mark.parametrize("value", INVISIBLE + CONTROL, ids=ascii)
@pytest.mark.parametrize("path", ID_PATHS, ids=".".join)
def test_the_core_refuses_invisible_and_control_characters_in_identifiers(
    path: tuple[str, ...], value: str
) -> None:
    doc = _with(path, value)
    for decode in (lambda d: decode_event(_wire(d)), event_from_dict):
        with pytest.raises(EventValidationError) as info:
            decode(doc)
        assert info.value.field == ".".join(path)
        assert "invisible, control or full-width" in info.value.reason


def test_a_disclosure_party_id_is_an_identifier_too() -> None:
    doc = copy.deepcopy(BASE)
    doc["recipient"] = {"id": ZWSP, "role": "110152"}
    with pytest.raises(EventValidationError) as info:
        decode_event(_wire(doc))
    assert info.value.field == "recipient.id"


@pytest.mark.parametrize("path", ID_PATHS, ids=".".join)
def test_the_core_refuses_identifiers_not_in_nfc(path: tuple[str, ...]) -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event(_wire(_with(path, NFD)))
    assert info.value.field == ".".join(path)
    assert "NFC" in info.value.reason
    assert decode_event(_wire(_with(path, NFC))) is not None  # the composed spelling is fine


def test_the_core_refuses_full_width_identifiers() -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event(_wire(_with(("patient", "id"), FULL_WIDTH)))
    assert info.value.field == "patient.id"


def test_names_and_texts_are_not_identifiers() -> None:
    """Only identifiers are restricted: a name in NFD or with a ZWJ (emoji, Indic
    scripts) is still accepted as the source wrote it (outputs neutralise it)."""
    doc = copy.deepcopy(BASE)
    doc["actor"]["name"] = f"{NFD} \u200d"
    assert decode_event(_wire(doc)).actor.name == f"{NFD} \u200d"


def test_valid_ascii_and_nfc_identifiers_keep_their_canonical_bytes() -> None:
    event, canonical = decode_and_canonicalize(_wire(BASE))
    assert canonical_event_bytes(event) == canonical
    for value in ("example", NFC, "24^^^MPI&1.2.3&ISO^PI", "患者-0042", "Ωμέγα"):
        doc = _with(("patient", "id"), value)
        assert decode_event(_wire(doc)).patient.id == value


@pytest.mark.parametrize(
    ("asked", "canonical"),
    [
        ("example", "example"),
        (NFD, NFC),
        (FULL_WIDTH, "example"),
        ("\uff2d\uff32\uff2e\uff0d\uff11\uff12", "MRN-12"),  # ＭＲＮ－１２
        ("\uff76\uff9e", "\u30ac"),  # half-width katakana KA + voiced mark -> ガ
        ("  example  ", "example"),
    ],
)
def test_normalise_identifier_gives_the_one_spelling(asked: str, canonical: str) -> None:
    assert normalise_identifier(asked) == canonical
    assert normalise_identifier(canonical) == canonical


@pytest.mark.parametrize("value", INVISIBLE + CONTROL + ["", "   "], ids=ascii)
def test_normalise_identifier_refuses_what_cannot_be_made_visible(value: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        normalise_identifier(value)


def test_normalising_does_not_merge_distinct_compatibility_characters() -> None:
    """Only width is folded (RFC 8264 width mapping), not all of NFKC: the superscript
    two and the ligature stay as written (NFKC would turn ``x²`` into ``x2``)."""
    assert normalise_identifier("x\u00b2") == "x\u00b2"
    assert normalise_identifier("\ufb01le") == "\ufb01le"


# ----------------------------------------------------------------------- adapters


def _fhir(patient_ref: str, who: str = "95") -> bytes:
    doc = json.loads((FIXTURES / "fhir-r4" / "audit-event-example-vread.json").read_bytes())
    doc["entity"][0]["what"]["reference"] = patient_ref
    doc["agent"][0]["who"]["identifier"]["value"] = who
    return json.dumps(doc, ensure_ascii=False).encode()


def test_fhir_intake_turns_nfd_and_full_width_into_the_one_spelling() -> None:
    for sent, stored in ((NFD, NFC), (FULL_WIDTH, "example"), ("example", "example")):
        result = parse_fhir_audit_event(_fhir(f"Patient/{sent}"), received_at=RECEIVED)
        (event,) = result.events
        assert event.patient.id == stored
        if sent != stored:
            assert "IDENTIFIER_NORMALISED" in {i.code for i in result.issues}
    result = parse_fhir_audit_event(_fhir("Patient/example", who=FULL_WIDTH), received_at=RECEIVED)
    assert result.events[0].actor.id == "example"


@pytest.mark.parametrize("value", [ZWSP, "exam\u202eelp", "\ufeffexample", "exam\x1bple"])
def test_fhir_intake_refuses_an_invisible_patient_id(value: str) -> None:
    with pytest.raises(IngestError) as info:
        parse_fhir_audit_event(_fhir(f"Patient/{value}"), received_at=RECEIVED)
    assert info.value.code == "INVALID_IDENTIFIER" and "INVALID_IDENTIFIER" in ERROR_CODES
    assert info.value.sha256 is not None
    assert "invisible" in info.value.message


def test_fhir_intake_refuses_an_invisible_actor_id() -> None:
    with pytest.raises(IngestError) as info:
        parse_fhir_audit_event(_fhir("Patient/example", who=ZWSP), received_at=RECEIVED)
    assert info.value.code == "INVALID_IDENTIFIER"


def _dicom(patient: str) -> bytes:
    xml = (FIXTURES / "atna" / "dicom-patient-record.xml").read_bytes()
    assert b'"MRN-30417"' in xml or b"MRN-30417" in xml
    return xml.replace(b"MRN-30417", patient.encode("utf-8"))


def test_dicom_intake_turns_nfd_and_full_width_into_the_one_spelling() -> None:
    for sent, stored in ((f"MRN-{NFD}", f"MRN-{NFC}"), (FULL_WIDTH, "example")):
        result = parse_dicom_audit_xml(_dicom(sent), received_at=RECEIVED)
        assert result.events[0].patient.id == stored


def test_dicom_intake_refuses_an_invisible_patient_id() -> None:
    with pytest.raises(IngestError) as info:
        parse_dicom_audit_xml(_dicom(ZWSP), received_at=RECEIVED)
    assert info.value.code == "INVALID_IDENTIFIER"


# ----------------------------------------------------------------------- the report


def test_the_access_report_asks_for_the_one_spelling() -> None:
    from verifiers.reports.access_report import report_patient_id

    assert report_patient_id("example") == "example"
    assert report_patient_id(NFD) == NFC
    assert report_patient_id(FULL_WIDTH) == "example"
    with pytest.raises(ValueError, match="identifier"):
        report_patient_id(ZWSP)


# ----------------------------------------------------------------------- the gateway


def test_the_gateway_dead_letters_an_invisible_patient_id_with_its_bytes() -> None:
    from producers.gateway.auth import Identity
    from producers.gateway.ingest import Ingestor, received

    xml = _dicom(ZWSP)
    frame = b"<85>1 2026-11-29T09:20:01Z pacs PACS 12 IHE+RFC-3881 - " + xml
    rec = received(frame, "syslog-tcp", {"peer": "127.0.0.1:5000"})
    job, refused = Ingestor(1 << 20).syslog_frame(rec, Identity("pacs-net", "open", "127.0.0.1"))
    assert refused == "INVALID_IDENTIFIER" and not job.events
    (dead,) = job.dead_letters
    assert dead.value == frame
    codes = {k: v for k, v in dead.headers}
    assert codes["careledger-error-code"] in (b"INVALID_IDENTIFIER", "INVALID_IDENTIFIER")


def test_an_identifier_that_nfc_lengthens_is_cut_to_the_bound() -> None:
    from producers.adapters._values import Issues, clip_id

    issues = Issues()
    value = clip_id("\u0958" * 256, issues, "p")  # NFC decomposes each into two
    assert value is not None and len(value) <= 256
    assert unicodedata.is_normalized("NFC", value)
    assert {"IDENTIFIER_NORMALISED", "VALUE_TRUNCATED"} <= {i.code for i in issues.freeze()}
