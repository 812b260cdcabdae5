"""Access-event vectors (``events.json``): fixed events -> canonical bytes -> leaf hash."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json

from careledger_core import EVENT_SCHEMA, decode_and_canonicalize, leaf_hash
from tests.vectors.gen_common import Doc, _wire

MINIMAL_EVENT: Doc = {
    "schema": EVENT_SCHEMA,
    "event_id": "00000000-0000-4000-8000-000000000001",
    "occurred_at": "2024-01-01T00:00:00.000000Z",
    "recorded_at": "2024-01-01T00:00:00.000001Z",
    "event_type": {
        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "code": "rest",
    },
    "action": "R",
    "outcome": 0,
    "actor": {"id": "u1", "roles": [], "is_requestor": True},
    "source": {"system": "ehr", "type": 4},
    "patient": {"id": "p1"},
}

ASCII_EVENT: Doc = {
    "schema": EVENT_SCHEMA,
    "event_id": "3f2b8c1e-9a4d-4e6b-8c1f-2d3e4f5a6b7c",
    "occurred_at": "2024-03-01T12:34:56.123456Z",
    "recorded_at": "2024-03-01T12:34:56.223456Z",
    "event_type": {
        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "code": "rest",
        "display": "RESTful Operation",
    },
    "event_subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
    "action": "R",
    "outcome": 0,
    "purpose_of_use": ["TREAT"],
    "actor": {
        "id": "u-10293",
        "name": "Dr. Jane Roe",
        "roles": ["physician"],
        "department": "Cardiology",
        "is_requestor": True,
    },
    "source": {"system": "ehr-prod-1", "site": "main-campus", "type": 4},
    "patient": {"id": "p-0042", "system": "urn:oid:1.2.36.146.595.217.0.1"},
    "object": {"type": "Observation", "id": "obs-77"},
}

NON_ASCII_EVENT: Doc = {
    "schema": EVENT_SCHEMA,
    "event_id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "occurred_at": "2024-02-29T23:59:59.999999Z",
    "recorded_at": "2024-03-01T00:00:00.000000Z",
    "event_type": {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "110110",
        "display": "Patient Record — consultation du dossier",
    },
    "action": "R",
    "outcome": 8,
    "outcome_desc": '😷 refusé: "consent" \\ rule\n(ligne 2)\ttab \u0001 \u007f \u2028 end',
    "actor": {
        "id": "zoë.ångström",
        "name": "Dr. Zoë Ångström-Müller",
        "roles": ["médecin", "医師"],
        "organization": "Ελληνικό Νοσοκομείο",
        "department": "心臓内科",
        "is_requestor": True,
    },
    "source": {"system": "système-dpi", "type": 1},
    "patient": {"id": "患者-0042"},
}

ALL_FIELDS_EVENT: Doc = {
    "schema": EVENT_SCHEMA,
    "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "occurred_at": "2024-06-15T08:00:00.500000Z",
    "recorded_at": "2024-06-15T08:00:01.000000Z",
    "event_type": {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "110112",
        "display": "Query",
    },
    "event_subtype": [
        {"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"},
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110127"},
    ],
    "action": "E",
    "outcome": 4,
    "outcome_desc": "partial result",
    "purpose_of_use": ["ETREAT", "BTG"],
    "actor": {
        "id": "nurse-7",
        "name": "N. Seven",
        "roles": ["nurse", "emergency"],
        "organization": "General Hospital",
        "department": "ED",
        "is_requestor": False,
    },
    "client": {"address": "10.0.0.17", "address_type": "ip", "workstation": "ED-WS-03"},
    "session_ref": "jti-5f1c0d",
    "source": {"system": "fhir-gw", "site": "north", "type": 9},
    "patient": {"id": "24^^^MPI&1.2.3&ISO^PI", "system": "urn:oid:1.2.3"},
    "object": {"type": "Patient", "id": "pat-24", "role": "1"},
    "sensitivity": {"confidentiality": "V", "labels": ["HIV", "PSY"]},
    "query": base64.b64encode(b"GET /Observation?patient=24&code=hiv").decode("ascii"),
    "correlation_id": "req-0001",
    "raw_ref": {
        "format": "fhir-r4-json",
        "sha256": hashlib.sha256(b"raw source record").hexdigest(),
        "uri": "s3://raw/2024/06/15/0001.json",
    },
}

POSITIVE_EVENTS: dict[str, Doc] = {
    "minimal": MINIMAL_EVENT,
    "ascii": ASCII_EVENT,
    "non-ascii": NON_ASCII_EVENT,
    "all-optional-fields": ALL_FIELDS_EVENT,
}


def _event_vector(name: str, description: str, data: bytes, same_as: str | None = None) -> Doc:
    _, canonical = decode_and_canonicalize(data)
    doc: Doc = {"name": name, "description": description, "input_hex": data.hex()}
    with contextlib.suppress(UnicodeDecodeError):
        doc["input"] = data.decode("utf-8")
    doc["canonical"] = canonical.decode("utf-8")
    doc["canonical_hex"] = canonical.hex()
    doc["leaf_hash"] = leaf_hash(canonical).hex()
    if same_as is not None:
        doc["same_canonical_as"] = same_as
    return doc


def events_doc() -> Doc:
    cases = [
        _event_vector(name, f"{name} event, compact producer encoding", _wire(doc))
        for name, doc in POSITIVE_EVENTS.items()
    ]
    # "/" only occurs inside strings here, where "\/" is a valid escape for it
    pretty = json.dumps(dict(reversed(list(ASCII_EVENT.items()))), indent=2).replace("/", "\\/")
    cases.append(
        _event_vector(
            "non-canonical-input",
            "the ascii event pretty-printed, members reversed, '/' escaped as '\\/': "
            "canonicalisation must give the ascii event's bytes",
            pretty.encode("ascii"),
            same_as="ascii",
        )
    )
    escaped = json.dumps(NON_ASCII_EVENT, ensure_ascii=True).encode("ascii")
    cases.append(
        _event_vector(
            "non-ascii-escaped-input",
            "the non-ascii event with every non-ASCII character as a \\u escape "
            "(astral ones as surrogate pairs)",
            escaped,
            same_as="non-ascii",
        )
    )
    with_empty = dict(MINIMAL_EVENT, event_subtype=[], purpose_of_use=[])
    cases.append(
        _event_vector(
            "empty-optional-lists-omitted",
            "empty optional lists are the same as absent ones and are omitted",
            _wire(with_empty),
            same_as="minimal",
        )
    )
    return {
        "description": "Access events -> RFC 8785 canonical bytes -> leaf hash "
        "SHA-256(0x00 || canonical)",
        "schema": EVENT_SCHEMA,
        "cases": cases,
    }
