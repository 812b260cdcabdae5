"""Erasure and legal-hold records (ADR 0037): validated like every reference record,
naming no one, and honoured only when the registrar signed them: anyone may write to
a reference topic, so a forged erasure must not excuse a deleted key and a forged
"lifted" must not lift a hold."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from careledger.erasure import _verified, signed_privacy_record
from careledger_core.reference import (
    ReferenceValidationError,
    canonical_reference_bytes,
    decode_and_canonicalize_reference,
)
from careledger_core.reference_privacy import ErasureBody, LegalHoldBody
from careledger_core.signing import SigningKey

REGISTRAR = SigningKey.from_seed(hashlib.sha256(b"registrar").digest())
MALLORY = SigningKey.from_seed(hashlib.sha256(b"mallory").digest())
REF = "ab" * 32


def _erasure(**changes: Any) -> dict[str, Any]:
    body = {
        "patient_ref": REF,
        "lookup": "ef" * 32,
        "outcome": "erased",
        "key_ids": ["cd" * 16],
        "reason": "gdpr-17",
        "policy": "eu-gdpr",
        "decision": "erasure on request allowed by eu-gdpr",
        "requested_by": "privacy-officer",
    }
    return {**body, **changes}


def test_a_signed_erasure_round_trips_and_is_honoured() -> None:
    rec = signed_privacy_record(REGISTRAR, "erasure", "erasure-1", _erasure())
    again, canonical = decode_and_canonicalize_reference(canonical_reference_bytes(rec))
    assert canonical == canonical_reference_bytes(rec)
    assert isinstance(again.parsed, ErasureBody) and again.subject_id == REF
    assert _verified(again, [REGISTRAR.public_key])


def test_an_erasure_signed_by_someone_else_or_edited_after_signing_is_not_honoured() -> None:
    forged = signed_privacy_record(MALLORY, "erasure", "erasure-2", _erasure())
    assert not _verified(forged, [REGISTRAR.public_key])
    rec = signed_privacy_record(REGISTRAR, "erasure", "erasure-3", _erasure())
    body = dict(rec.body)
    body["key_ids"] = ["ef" * 16]  # another key excused with the same signature
    edited = type(rec)(
        kind=rec.kind,
        record_id=rec.record_id,
        version=1,
        recorded_at=rec.recorded_at,
        effective_at=rec.effective_at,
        body=body,
    )
    assert not _verified(edited, [REGISTRAR.public_key])


def test_a_signature_over_a_hold_does_not_sign_an_erasure() -> None:
    """The kind is in the signed bytes: a hold's signature cannot be replayed."""
    hold = signed_privacy_record(
        REGISTRAR,
        "legal-hold",
        "hold-1",
        {"patient_ref": REF, "status": "lifted", "reason": "x", "placed_by": "p"},
    )
    assert isinstance(hold.parsed, LegalHoldBody) and _verified(hold, [REGISTRAR.public_key])
    erasure = _erasure()
    erasure["signature"] = hold.body["signature"]
    rec = type(hold)(
        kind="erasure",
        record_id="erasure-4",
        version=1,
        recorded_at=hold.recorded_at,
        effective_at=hold.effective_at,
        body=erasure,
    )
    assert not _verified(rec, [REGISTRAR.public_key])


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"patient_ref": "MRN-000042"}, "patient_ref"),  # an identifier, not a pseudonym
        ({"key_ids": []}, "key_ids"),  # an erasure destroys at least one key
        ({"outcome": "refused"}, "key_ids"),  # a refusal destroys none
        ({"key_ids": ["zz" * 16]}, "key_ids"),
        ({"outcome": "maybe"}, "outcome"),
        ({"lookup": "MRN-1"}, "lookup"),
    ],
)
def test_an_erasure_that_names_someone_or_does_not_add_up_is_refused(
    changes: dict[str, Any], where: str
) -> None:
    with pytest.raises(ReferenceValidationError, match=where):
        signed_privacy_record(REGISTRAR, "erasure", "erasure-5", _erasure(**changes))
