"""Generate the careledger test vectors (``python tests/vectors/generate.py``).

Fixed inputs -> exact outputs, as JSON files anyone can check a re-implementation
against: canonical event bytes, leaf hashes, RFC 6962 roots and proofs, block header
bytes, block hashes, Ed25519 signatures, a C2SP signed-note checkpoint; and, under
``negative/``, one file per thing an attacker (or a bug) can break, each naming the
error a verifier must raise.

Conventions: binary values are lowercase hex; text (canonical JSON, notes) is given as
a UTF-8 string and, where bytes matter, also as hex. The test key's seed is
SHA-256(b"careledger test key"); the "other" (untrusted) key's seed is
SHA-256(b"careledger other key"). Merkle test leaf ``i`` is the ASCII string
``"leaf-<i>"`` (leaf hash = SHA-256(0x00 || data)).

``tests/unit/test_vectors.py`` regenerates everything in memory and fails if a file
here is stale, then checks every vector against careledger_core.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

VECTOR_DIR = Path(__file__).resolve().parent
_REPO = VECTOR_DIR.parents[1]
if str(_REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_REPO))

from careledger_core import (  # noqa: E402
    EMPTY_ROOT,
    EVENT_SCHEMA,
    GENESIS_PREV_HASH,
    SIGNING_CONTEXT,
    BlockHeader,
    Checkpoint,
    MerkleTree,
    SigningKey,
    block_hash,
    checkpoint_for,
    decode_and_canonicalize,
    format_checkpoint,
    format_private_key,
    format_public_key,
    header_bytes,
    leaf_hash,
    node_hash,
    sign_note,
)
from careledger_core.reference import (  # noqa: E402
    REFERENCE_SCHEMA,
    decode_and_canonicalize_reference,
)

Doc = dict[str, Any]

TEST_SEED = hashlib.sha256(b"careledger test key").digest()
OTHER_SEED = hashlib.sha256(b"careledger other key").digest()
TEST_KEY = SigningKey.from_seed(TEST_SEED)
OTHER_KEY = SigningKey.from_seed(OTHER_SEED)
NOTE_NAME = "careledger.test"
CHAIN_ID = "careledger.test/careledger.access-events/0"
MERKLE_SIZES = (*range(10), 1000)
BIG = 1000


def merkle_leaf_data(i: int) -> bytes:
    return f"leaf-{i}".encode("ascii")


def merkle_leaves(n: int) -> list[bytes]:
    return [leaf_hash(merkle_leaf_data(i)) for i in range(n)]


def _hex_list(items: tuple[bytes, ...] | list[bytes]) -> list[str]:
    return [h.hex() for h in items]


# --------------------------------------------------------------------------- events

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


def _wire(doc: Doc) -> bytes:
    """How a producer would send it: compact JSON in insertion (not sorted) order."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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


# --------------------------------------------------------------------------- references

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


# --------------------------------------------------------------------------- merkle


def merkle_roots_doc() -> Doc:
    return {
        "description": "RFC 6962 Merkle Tree Hash of the first n test leaves "
        "(leaf i = ASCII 'leaf-<i>'); n = 0 is SHA-256('')",
        "leaf_data_rule": "leaf-<i>",
        "leaf_hashes": _hex_list(merkle_leaves(9)),
        "cases": [
            {"tree_size": n, "root": MerkleTree(merkle_leaves(n)).root.hex()} for n in MERKLE_SIZES
        ],
    }


def inclusion_cases() -> list[Doc]:
    cases: list[Doc] = []
    for n in MERKLE_SIZES:
        if n == 0:
            continue
        tree = MerkleTree(merkle_leaves(n))
        indexes = range(n) if n < 10 else (0, 1, 2, 511, 512, 767, 998, 999)
        for i in indexes:
            cases.append(
                {
                    "leaf_index": i,
                    "tree_size": n,
                    "leaf_hash": tree.leaf(i).hex(),
                    "proof": _hex_list(tree.inclusion_proof(i)),
                    "root": tree.root.hex(),
                }
            )
    return cases


def consistency_cases() -> list[Doc]:
    cases: list[Doc] = []
    pairs = [(m, n) for n in range(1, 10) for m in range(0, n + 1)]
    pairs += [(m, BIG) for m in (1, 2, 7, 511, 512, 513, 999, 1000)]
    for m, n in pairs:
        leaves = merkle_leaves(n)
        tree = MerkleTree(leaves)
        cases.append(
            {
                "old_size": m,
                "new_size": n,
                "old_root": MerkleTree(leaves[:m]).root.hex(),
                "new_root": tree.root.hex(),
                "proof": _hex_list(tree.consistency_proof(m)),
            }
        )
    return cases


# --------------------------------------------------------------------------- blocks


def event_leaf_hashes() -> list[bytes]:
    return [leaf_hash(decode_and_canonicalize(_wire(d))[1]) for d in POSITIVE_EVENTS.values()]


def genesis_header(key: SigningKey = TEST_KEY) -> BlockHeader:
    leaves = event_leaf_hashes()
    return BlockHeader(
        chain_id=CHAIN_ID,
        height=0,
        prev_hash=GENESIS_PREV_HASH,
        merkle_root=MerkleTree(leaves).root.hex(),
        event_count=len(leaves),
        first_offset=0,
        last_offset=5,
        dead_lettered=1,
        absent_offsets=1,
        first_event_time="2024-01-01T00:00:00.000000Z",
        last_event_time="2024-06-15T08:00:00.500000Z",
        created_at="2024-06-15T08:00:02.000000Z",
        key_id=key.key_id,
    )


def second_header() -> BlockHeader:
    return BlockHeader(
        chain_id=CHAIN_ID,
        height=1,
        prev_hash=block_hash(genesis_header()).hex(),
        merkle_root=EMPTY_ROOT.hex(),
        event_count=0,
        first_offset=6,
        last_offset=7,
        dead_lettered=2,
        absent_offsets=0,
        first_event_time="2024-06-15T08:00:03.000000Z",
        last_event_time="2024-06-15T08:00:03.000000Z",
        created_at="2024-06-15T08:00:03.000000Z",
        key_id=TEST_KEY.key_id,
    )


def _block_vector(name: str, description: str, h: BlockHeader) -> Doc:
    hb = header_bytes(h)
    return {
        "name": name,
        "description": description,
        "header": json.loads(hb),
        "header_bytes": hb.decode("utf-8"),
        "header_hex": hb.hex(),
        "block_hash": block_hash(h).hex(),
        "signed_message_hex": (SIGNING_CONTEXT + hb).hex(),
        "signature": TEST_KEY.sign_header(h).hex(),
    }


def blocks_doc() -> Doc:
    return {
        "description": "Block headers -> canonical bytes -> block hash SHA-256(header bytes); "
        "signature = Ed25519 over SIGNING_CONTEXT || header bytes with the test key",
        "signing_context": SIGNING_CONTEXT.decode("ascii"),
        "trusted_keys": [format_public_key(TEST_KEY.public_key)],
        "cases": [
            _block_vector(
                "genesis",
                "height 0 over the four positive events (events.json order); offsets 0..5 "
                "= 4 events + 1 dead-lettered + 1 absent",
                genesis_header(),
            ),
            _block_vector(
                "no-events",
                "height 1, only dead-lettered offsets: merkle_root is SHA-256('')",
                second_header(),
            ),
        ],
    }


def checkpoint_note() -> tuple[Checkpoint, str]:
    cp = checkpoint_for(second_header())
    return cp, sign_note(format_checkpoint(cp), NOTE_NAME, TEST_KEY)


def checkpoint_doc() -> Doc:
    cp, note = checkpoint_note()
    return {
        "description": "C2SP signed-note checkpoint of the chain head (block 'no-events'): "
        "origin = chain id, size = head height + 1, root = base64 head block hash "
        "(a hash-chain head, not an RFC 6962 tree root)",
        "name": NOTE_NAME,
        "public_key": format_public_key(TEST_KEY.public_key),
        "origin": cp.origin,
        "size": cp.size,
        "root_hash": cp.root_hash.hex(),
        "body": format_checkpoint(cp),
        "note": note,
    }


def test_key_doc() -> Doc:
    return {
        "description": "The fixed test key. NEVER use it for anything but tests.",
        "seed_rule": "SHA-256(b'careledger test key')",
        "seed": TEST_SEED.hex(),
        "public_key_raw": TEST_KEY.public_key.raw.hex(),
        "public_key": format_public_key(TEST_KEY.public_key),
        "key_id": TEST_KEY.key_id,
        "private_key_text": format_private_key(TEST_KEY),
        "other_key": {
            "seed_rule": "SHA-256(b'careledger other key')",
            "public_key": format_public_key(OTHER_KEY.public_key),
            "key_id": OTHER_KEY.key_id,
        },
    }


# --------------------------------------------------------------------------- negative


def _flip(hex_text: str, byte: int = 0, bit: int = 0) -> str:
    raw = bytearray(bytes.fromhex(hex_text))
    raw[byte] ^= 1 << bit
    return raw.hex()


def _neg(description: str, check: str, error: str, code: str, **inputs: Any) -> Doc:
    return {"description": description, "check": check, "error": error, "code": code, **inputs}


def _event_neg(description: str, data: bytes, field: str, reason: str) -> Doc:
    doc = _neg(description, "decode_event", "EventValidationError", "EVENT_INVALID")
    doc["input_hex"] = data.hex()
    with contextlib.suppress(UnicodeDecodeError):
        doc["input"] = data.decode("utf-8")
    doc["field"] = field
    doc["reason_contains"] = reason
    return doc


def _header_neg(description: str, data: bytes, field: str) -> Doc:
    doc = _neg(description, "decode_header", "HeaderValidationError", "BLOCK_HEADER_INVALID")
    doc["header_bytes"] = data.decode("utf-8")
    doc["header_hex"] = data.hex()
    doc["field"] = field
    return doc


def negative_docs() -> dict[str, Doc]:
    tree = MerkleTree(merkle_leaves(9))
    idx = 5
    proof = _hex_list(tree.inclusion_proof(idx))
    inc: Doc = {
        "leaf_index": idx,
        "tree_size": 9,
        "leaf_hash": tree.leaf(idx).hex(),
        "proof": proof,
        "root": tree.root.hex(),
    }
    pe = "ProofError"
    pc = "PROOF_INVALID"
    vi = "verify_inclusion"
    out: dict[str, Doc] = {
        "wrong-leaf": _neg(
            "a different leaf hash with the right proof",
            vi,
            pe,
            pc,
            **dict(inc, leaf_hash=tree.leaf(idx + 1).hex()),
        ),
        "wrong-index": _neg(
            "the right proof presented for a neighbouring index",
            vi,
            pe,
            pc,
            **dict(inc, leaf_index=idx - 1),
        ),
        "index-beyond-tree-size": _neg(
            "leaf index >= tree size",
            vi,
            pe,
            pc,
            **dict(inc, leaf_index=9),
        ),
        "flipped-bit-in-proof": _neg(
            "one bit of one proof hash flipped",
            vi,
            pe,
            pc,
            **dict(inc, proof=[proof[0], _flip(proof[1], 7, 3), *proof[2:]]),
        ),
        "truncated-proof": _neg(
            "last proof hash removed",
            vi,
            pe,
            pc,
            **dict(inc, proof=proof[:-1]),
        ),
        "extended-proof": _neg(
            "an extra hash appended to a valid proof",
            vi,
            pe,
            pc,
            **dict(inc, proof=[*proof, proof[0]]),
        ),
        "wrong-root": _neg(
            "valid proof against another tree's root",
            vi,
            pe,
            pc,
            **dict(inc, root=MerkleTree(merkle_leaves(8)).root.hex()),
        ),
        "wrong-tree-size": _neg(
            "valid proof with a tree size whose audit path has another shape (sizes whose "
            "paths have the same shape cannot be told apart by the proof: the size must be "
            "authenticated together with the root, as block headers and checkpoints do)",
            vi,
            pe,
            pc,
            **dict(inc, tree_size=8),
        ),
    }
    # second preimage: present the two children of an interior node as one leaf
    two = merkle_leaves(2)
    out["second-preimage-node-as-leaf"] = _neg(
        "leaf data = left || right of the root of a 2-leaf tree, claimed as the single "
        "leaf of a 1-leaf tree with that root; the 0x00/0x01 prefixes make it fail",
        vi,
        pe,
        pc,
        leaf_data_hex=(two[0] + two[1]).hex(),
        leaf_index=0,
        tree_size=1,
        proof=[],
        root=node_hash(two[0], two[1]).hex(),
    )
    # CVE-2012-2459: a duplicated last leaf must not give the same root
    three = merkle_leaves(3)
    out["duplicated-last-leaf"] = _neg(
        "the 4-leaf list [l0, l1, l2, l2] must not share the root of [l0, l1, l2] "
        "(odd node promoted, not duplicated: CVE-2012-2459)",
        vi,
        pe,
        pc,
        leaf_index=3,
        tree_size=4,
        leaf_hash=three[2].hex(),
        proof=_hex_list(MerkleTree([*three, three[2]]).inclusion_proof(3)),
        root=MerkleTree(three).root.hex(),
    )

    big = MerkleTree(merkle_leaves(9))
    cons: Doc = {
        "old_size": 6,
        "new_size": 9,
        "old_root": MerkleTree(merkle_leaves(6)).root.hex(),
        "new_root": big.root.hex(),
        "proof": _hex_list(big.consistency_proof(6)),
    }
    vc = "verify_consistency"
    out["consistency-flipped-bit-in-proof"] = _neg(
        "one bit of a consistency proof hash flipped",
        vc,
        pe,
        pc,
        **dict(cons, proof=[_flip(cons["proof"][0], 0, 0), *cons["proof"][1:]]),
    )
    out["consistency-truncated-proof"] = _neg(
        "last consistency proof hash removed", vc, pe, pc, **dict(cons, proof=cons["proof"][:-1])
    )
    out["consistency-wrong-old-root"] = _neg(
        "old root of a different tree (history rewritten)",
        vc,
        pe,
        pc,
        **dict(cons, old_root=MerkleTree(merkle_leaves(7)[1:]).root.hex()),
    )
    out["consistency-wrong-new-root"] = _neg(
        "new root of a different tree", vc, pe, pc, **dict(cons, new_root=_flip(cons["new_root"]))
    )
    out["consistency-shrinking-tree"] = _neg(
        "new size smaller than old size (truncation)",
        vc,
        pe,
        pc,
        **dict(cons, old_size=9, new_size=6, old_root=cons["new_root"], new_root=cons["old_root"]),
    )

    # block signatures
    gh = genesis_header()
    hb = header_bytes(gh)
    sig = TEST_KEY.sign_header(gh).hex()
    trusted = [format_public_key(TEST_KEY.public_key)]
    vb = "verify_block_signature"
    se, sc = "SignatureError", "SIGNATURE_INVALID"
    other_header = genesis_header(OTHER_KEY)
    out["signature-by-unknown-key"] = _neg(
        "a well-formed block signed by a key the verifier does not trust",
        vb,
        "UnknownKeyError",
        "KEY_UNKNOWN",
        header_hex=header_bytes(other_header).hex(),
        signature=OTHER_KEY.sign_header(other_header).hex(),
        trusted_keys=trusted,
    )
    out["signature-by-other-key-claiming-test-key-id"] = _neg(
        "header names the trusted key id but was signed by another key",
        vb,
        se,
        sc,
        header_hex=hb.hex(),
        signature=OTHER_KEY.sign(SIGNING_CONTEXT + hb).hex(),
        trusted_keys=trusted,
    )
    out["flipped-bit-in-signature"] = _neg(
        "one bit of the signature flipped",
        vb,
        se,
        sc,
        header_hex=hb.hex(),
        signature=_flip(sig, 10, 1),
        trusted_keys=trusted,
    )
    out["truncated-signature"] = _neg(
        "signature missing its last byte",
        vb,
        se,
        sc,
        header_hex=hb.hex(),
        signature=sig[:-2],
        trusted_keys=trusted,
    )
    out["signature-without-context"] = _neg(
        "signature over the header bytes without the 'careledger-block-v1\\n' prefix",
        vb,
        se,
        sc,
        header_hex=hb.hex(),
        signature=TEST_KEY.sign(hb).hex(),
        trusted_keys=trusted,
    )
    changed = BlockHeader(**{**_fields(gh), "created_at": "2024-06-15T08:00:02.000001Z"})
    out["header-field-changed"] = _neg(
        "created_at moved by one microsecond after signing; the header is still valid",
        vb,
        se,
        sc,
        header_hex=header_bytes(changed).hex(),
        signature=sig,
        trusted_keys=trusted,
    )
    changed_root = BlockHeader(**{**_fields(gh), "merkle_root": _flip(gh.merkle_root)})
    out["header-merkle-root-changed"] = _neg(
        "merkle_root changed after signing (events swapped)",
        vb,
        se,
        sc,
        header_hex=header_bytes(changed_root).hex(),
        signature=sig,
        trusted_keys=trusted,
    )

    # header decoding
    text = hb.decode("utf-8")
    out["non-canonical-header"] = _header_neg(
        "the signed header with a space after each colon: same JSON, other bytes",
        text.replace('":', '": ').encode(),
        "$",
    )
    out["header-members-reordered"] = _header_neg(
        "members in declaration instead of sorted order",
        json.dumps(_fields(gh), separators=(",", ":")).encode(),
        "$",
    )
    out["header-duplicate-member"] = _header_neg(
        "a second 'height' member (parsers disagree on which wins)",
        text.replace('"height":0,', '"height":0,"height":0,').encode(),
        "$",
    )
    out["header-unknown-field"] = _header_neg(
        "an extra member",
        text.replace('{"absent_offsets"', '{"a":1,"absent_offsets"').encode(),
        "a",
    )
    out["header-offsets-unaccounted"] = _header_neg(
        "last_offset one higher: an offset that is neither event, dead letter nor absent",
        text.replace('"last_offset":5', '"last_offset":6').encode(),
        "event_count",
    )
    out["header-genesis-with-prev-hash"] = _header_neg(
        "height 0 with a non-zero prev_hash",
        text.replace(GENESIS_PREV_HASH, "1" * 64).encode(),
        "prev_hash",
    )
    out["header-uppercase-hex"] = _header_neg(
        "merkle_root in uppercase hex",
        text.replace(gh.merkle_root, gh.merkle_root.upper()).encode(),
        "merkle_root",
    )
    out["header-float-height"] = _header_neg(
        "height written as 0.0",
        text.replace('"height":0', '"height":0.0').encode(),
        "height",
    )

    # events
    base = _wire(ASCII_EVENT)

    def mutate(fn: Callable[[Doc], None]) -> bytes:
        doc = json.loads(base)
        fn(doc)
        return _wire(doc)

    out["event-with-unknown-field"] = _event_neg(
        "an extra member in actor",
        mutate(lambda d: d["actor"].update(badge="x")),
        "actor.badge",
        "unknown field",
    )
    out["event-with-null-optional-field"] = _event_neg(
        "null instead of omitting an optional field",
        mutate(lambda d: d.update(session_ref=None)),
        "session_ref",
        "null",
    )
    out["event-with-duplicate-member"] = _event_neg(
        "patient appears twice (first one is what a different parser would see)",
        base.replace(b'"patient":', b'"patient":{"id":"p-other"},"patient":'),
        "patient",
        "duplicate",
    )
    out["event-missing-required-field"] = _event_neg(
        "no patient",
        mutate(lambda d: d.pop("patient")),
        "patient",
        "missing",
    )
    out["event-bad-uuid"] = _event_neg(
        "uppercase UUID",
        mutate(lambda d: d.update(event_id=d["event_id"].upper())),
        "event_id",
        "UUID",
    )
    out["event-timestamp-without-microseconds"] = _event_neg(
        "3 fraction digits",
        mutate(lambda d: d.update(occurred_at="2024-03-01T12:34:56.123Z")),
        "occurred_at",
        "6 fraction digits",
    )
    out["event-impossible-date"] = _event_neg(
        "February 30th",
        mutate(lambda d: d.update(occurred_at="2024-02-30T00:00:00.000000Z")),
        "occurred_at",
        "calendar",
    )
    out["event-bad-outcome"] = _event_neg(
        "outcome 1 is not an audit-event-outcome code",
        mutate(lambda d: d.update(outcome=1)),
        "outcome",
        "0, 4, 8, 12",
    )
    out["event-float-outcome"] = _event_neg(
        "outcome 0.0 (no floats anywhere)",
        base.replace(b'"outcome":0', b'"outcome":0.0'),
        "outcome",
        "int",
    )
    out["event-source-type-out-of-range"] = _event_neg(
        "source.type 10",
        mutate(lambda d: d["source"].update(type=10)),
        "source.type",
        "range",
    )
    out["event-wrong-schema"] = _event_neg(
        "schema of another version",
        mutate(lambda d: d.update(schema="careledger.access-event/2")),
        "schema",
        EVENT_SCHEMA,
    )
    out["event-lone-surrogate"] = _event_neg(
        "a lone UTF-16 surrogate escape in actor.name",
        base.replace(b"Dr. Jane Roe", b"Dr. \\ud800 Roe"),
        "actor.name",
        "surrogate",
    )
    out["event-invalid-utf8"] = _event_neg(
        "a byte that is not UTF-8 inside a string",
        base.replace(b"Jane", b"J\xffne"),
        "$",
        "UTF-8",
    )
    out["event-not-an-object"] = _event_neg(
        "a JSON array at the top level",
        b"[" + base + b"]",
        "$",
        "object",
    )

    # checkpoints
    _, note = checkpoint_note()
    verifiers = {NOTE_NAME: format_public_key(TEST_KEY.public_key)}
    on = "open_note"
    body, sigline = note.split("\n\n")
    name_part, blob = sigline.rstrip("\n").rsplit(" ", 1)
    raw_blob = bytearray(base64.b64decode(blob))
    raw_blob[20] ^= 0x04
    out["checkpoint-flipped-bit-in-signature"] = _neg(
        "one bit of the note signature flipped",
        on,
        se,
        sc,
        note=f"{body}\n\n{name_part} {base64.b64encode(bytes(raw_blob)).decode()}\n",
        verifiers=verifiers,
    )
    lines = body.split("\n")
    older = "\n".join([lines[0], str(int(lines[1]) - 1), *lines[2:]])
    out["checkpoint-size-changed"] = _neg(
        "size decremented after signing (truncation hidden)",
        on,
        se,
        sc,
        note=f"{older}\n\n{sigline}",
        verifiers=verifiers,
    )
    out["checkpoint-signed-by-unknown-key"] = _neg(
        "same checkpoint signed by another key under the same name",
        on,
        "NoteUnverifiedError",
        "NOTE_UNVERIFIED",
        note=sign_note(body + "\n", NOTE_NAME, OTHER_KEY),
        verifiers=verifiers,
    )
    out["checkpoint-missing-blank-line"] = _neg(
        "no blank line between text and signatures",
        on,
        "CheckpointError",
        "CHECKPOINT_INVALID",
        note=f"{body}\n{sigline}",
        verifiers=verifiers,
    )
    return out


def _fields(h: BlockHeader) -> Doc:
    return {f: getattr(h, f) for f in h.__struct_fields__}


# --------------------------------------------------------------------------- output


def build_vectors() -> dict[str, Doc]:
    """Every vector file: relative path -> JSON document."""
    files: dict[str, Doc] = {
        "test-key.json": test_key_doc(),
        "events.json": events_doc(),
        "references.json": references_doc(),
        "merkle-roots.json": merkle_roots_doc(),
        "inclusion-proofs.json": {
            "description": "RFC 9162 inclusion proofs over the merkle-roots.json leaves",
            "cases": inclusion_cases(),
        },
        "consistency-proofs.json": {
            "description": "RFC 9162 consistency proofs over the merkle-roots.json leaves "
            "(old_size 0 and old_size == new_size have empty proofs)",
            "cases": consistency_cases(),
        },
        "blocks.json": blocks_doc(),
        "checkpoint.json": checkpoint_doc(),
    }
    for name, doc in negative_docs().items():
        files[f"negative/{name}.json"] = doc
    return files


def render(doc: Doc) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    files = build_vectors()
    for rel, doc in files.items():
        path = VECTOR_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(doc), encoding="utf-8")
    for path in VECTOR_DIR.rglob("*.json"):
        if path.relative_to(VECTOR_DIR).as_posix() not in files:
            path.unlink()
            print(f"removed stale {path.relative_to(VECTOR_DIR)}")
    print(f"wrote {len(files)} vector files to {VECTOR_DIR}")


if __name__ == "__main__":
    main()
