"""Reference-data vectors (``references.json``): consent, care relationship, staff,
patient records -> canonical bytes -> leaf hash."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from careledger_core import leaf_hash
from careledger_core.reference import REFERENCE_SCHEMA, decode_and_canonicalize_reference
from tests.vectors.gen_common import Doc, _wire

_T0 = "2026-11-02T08:00:00.000000Z"


def _ref(kind: str, record_id: str, body: Doc, version: int = 1, **extra: Any) -> Doc:
    return {
        "schema": REFERENCE_SCHEMA,
        "kind": kind,
        "record_id": record_id,
        "version": version,
        "recorded_at": _T0,
        "effective_at": _T0,
        **extra,
        "body": body,
    }


CONSENT_R4: Doc = _ref(
    "consent",
    "consent-r4-deny-one-practitioner",
    {
        "resourceType": "Consent",
        "id": "consent-r4-deny-one-practitioner",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/MRN10000001"},
        "dateTime": "2026-10-01T09:30:00+02:00",
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": {
            "type": "permit",
            "period": {"start": "2026-10-01", "end": "2027-10-01"},
            "provision": [
                {
                    "type": "deny",
                    "actor": [
                        {
                            "role": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/"
                                        "CodeSystem/v3-ParticipationType",
                                        "code": "PRCP",
                                    }
                                ]
                            },
                            "reference": {"reference": "Practitioner/E123456"},
                        }
                    ],
                }
            ],
        },
    },
)

CONSENT_R5: Doc = _ref(
    "consent",
    "consent-r5-emergency-only",
    {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": "Patient/MRN10000002"},
        "date": "2026-10-02",
        "period": {"start": "2026-10-02T00:00:00Z"},
        "decision": "deny",
        "provision": [
            {
                "purpose": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "ETREAT",
                    }
                ]
            }
        ],
        "extension": [{"url": "urn:example:weight", "valueDecimal": 0.25}],
    },
    version=2,
)

CARE_RELATIONSHIP: Doc = _ref(
    "care-relationship",
    "ENC1234567890",
    {
        "patient_id": "MRN10000001",
        "kind": "encounter",
        "practitioner_id": "E123456",
        "department": "CARD",
        "start": "2026-11-02T07:45:00.000000Z",
        "end": "2026-11-05T12:00:00.000000Z",
    },
)

STAFF: Doc = _ref(
    "staff",
    "E123456",
    {
        "user_id": "E123456",
        "family_name": "Müller",
        "given_name": "Zoë",
        "roles": ["physician"],
        "department": "CARD",
        "manager_id": "E100001",
        "status": "active",
        "start_date": "2019-04-01",
        "address": {"line": "1 Harbour Road", "city": "Northbridge", "postcode": "NB1 2AA"},
        "phone": "+44 20 7946 0000",
        "patient_id": "MRN10000003",
        "shifts": [{"days": [0, 1, 2, 3, 4], "start_hour": 7, "end_hour": 15}],
        "teams": ["CARD-TEAM-A"],
    },
)

PATIENT: Doc = _ref(
    "patient",
    "MRN10000001",
    {
        "patient_id": "MRN10000001",
        "family_name": "O'Brien",
        "given_name": "Kofi",
        "address": {"line": "7 Mill Lane", "city": "Northbridge", "postcode": "NB3 9ZZ"},
        "phone": "+44 20 7946 0999",
        "vip": False,
        "emergency_contacts": [{"family_name": "O'Brien", "phone": "+44 20 7946 0998"}],
        "confidentiality": "R",
        "sensitivity_labels": ["HIV"],
    },
)

STAFF_TERMINATED_RETRACTION: Doc = _ref(
    "staff",
    "E123456",
    {**STAFF["body"], "status": "terminated", "end_date": "2026-11-30"},
    version=3,
    retracted=True,
)

POSITIVE_REFERENCES: dict[str, Doc] = {
    "consent-r4": CONSENT_R4,
    "consent-r5": CONSENT_R5,
    "care-relationship": CARE_RELATIONSHIP,
    "staff": STAFF,
    "patient": PATIENT,
    "retraction": STAFF_TERMINATED_RETRACTION,
}


def _reference_vector(name: str, description: str, data: bytes, same_as: str | None = None) -> Doc:
    rec, canonical = decode_and_canonicalize_reference(data)
    doc: Doc = {"name": name, "description": description, "input_hex": data.hex()}
    with contextlib.suppress(UnicodeDecodeError):
        doc["input"] = data.decode("utf-8")
    doc["kind"] = rec.kind
    doc["subject_id"] = rec.subject_id
    doc["canonical"] = canonical.decode("utf-8")
    doc["canonical_hex"] = canonical.hex()
    doc["leaf_hash"] = leaf_hash(canonical).hex()
    if same_as is not None:
        doc["same_canonical_as"] = same_as
    return doc


def references_doc() -> Doc:
    cases = [
        _reference_vector(name, f"{name} record, compact producer encoding", _wire(doc))
        for name, doc in POSITIVE_REFERENCES.items()
    ]
    pretty = json.dumps(dict(reversed(list(STAFF.items()))), indent=2, ensure_ascii=True)
    cases.append(
        _reference_vector(
            "non-canonical-input",
            "the staff record pretty-printed, members reversed, non-ASCII as \\u escapes",
            pretty.encode("ascii"),
            same_as="staff",
        )
    )
    cases.append(
        _reference_vector(
            "explicit-retracted-false",
            "retracted: false is the same as absent and is omitted",
            _wire(dict(PATIENT, retracted=False)),
            same_as="patient",
        )
    )
    return {
        "description": "Reference-data records (consent, care relationship, staff, patient) "
        "-> RFC 8785 canonical bytes -> leaf hash SHA-256(0x00 || canonical); subject_id is "
        "the patient id (user id for staff)",
        "schema": REFERENCE_SCHEMA,
        "cases": cases,
    }
