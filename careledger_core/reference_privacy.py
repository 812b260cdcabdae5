"""Reference records of erasure and legal holds (ADR 0037): what ``careledger erase``
ledgers, and what blocks it. Neither names a person: a patient appears as their
pseudonym (``patient_ref``, 64 hex digits), which nothing ties to them once their data
key is gone.

* ``erasure`` (``record_id`` = the erasure's id): ``{patient_ref, lookup, outcome:
  erased|refused, key_ids: [hex 32], reason, policy, decision, requested_by, signature}``:
  the data keys destroyed (what ``verify`` then counts as erased rather than missing;
  none for a refusal), why, the retention policies and their decision, and by whom.
  ``lookup`` is the key store's HMAC of the patient (keyed in the token): with it the
  deployment, and only a holder of the token, can show the patient their erased lines
  and that the erasure happened (accountability); without the token it ties to no one.
* ``legal-hold`` (``record_id`` = the hold's id): ``{patient_ref, status: active|lifted,
  reason, placed_by, signature}``: a later version lifts it. A standing hold blocks every
  erasure of the patient.

Both are signed (``signature``: base64 Ed25519 over :func:`signed_bytes`, the body
without its signature, canonical, after a context) by the deployment's registrar key:
anyone may write to a reference topic, so ``verify`` honours an erasure, and
``careledger erase`` a hold, only when the signature verifies against a trusted
registrar key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from .jcs import canonicalize
from .reference_json import _array, _choice, _fail, _ident, _join, _members, _string, thaw

__all__ = [
    "PRIVACY_CONTEXT",
    "ErasureBody",
    "LegalHoldBody",
    "erasure_body",
    "legal_hold_body",
    "signed_bytes",
]

PRIVACY_CONTEXT: Final = b"careledger.privacy-record/1\x00"

HoldStatus = Literal["active", "lifted"]
ErasureOutcome = Literal["erased", "refused"]
_HEX64: Final = re.compile(r"\A[0-9a-f]{64}\Z")
_HEX32: Final = re.compile(r"\A[0-9a-f]{32}\Z")
MAX_KEYS: Final = 64


def signed_bytes(kind: str, body: Mapping[str, Any]) -> bytes:
    """What the registrar signs for a privacy record of ``kind``: the context, the kind
    and the canonical body without its ``signature``."""
    unsigned = {k: thaw(v) for k, v in body.items() if k != "signature"}
    return PRIVACY_CONTEXT + kind.encode() + b"\x00" + canonicalize(unsigned)


@dataclass(frozen=True, slots=True)
class ErasureBody:
    patient_ref: str
    lookup: str
    outcome: ErasureOutcome
    key_ids: tuple[str, ...]
    reason: str
    policy: str
    decision: str
    requested_by: str
    signature: str

    @property
    def subject_id(self) -> str:
        return self.patient_ref


@dataclass(frozen=True, slots=True)
class LegalHoldBody:
    patient_ref: str
    status: HoldStatus
    reason: str
    placed_by: str
    signature: str

    @property
    def subject_id(self) -> str:
        return self.patient_ref


def _ref(body: Mapping[str, Any], path: str) -> str:
    ref = _ident(body, "patient_ref", path)
    if not _HEX64.match(ref):
        _fail(_join(path, "patient_ref"), "must be 64 lowercase hex digits (a pseudonym)")
    return ref


def erasure_body(body: Mapping[str, Any], path: str) -> ErasureBody:
    _members(
        body,
        path,
        (
            "patient_ref",
            "lookup",
            "outcome",
            "key_ids",
            "reason",
            "policy",
            "decision",
            "requested_by",
            "signature",
        ),
        (),
    )
    outcome = cast(ErasureOutcome, _choice(body, "outcome", path, ("erased", "refused")))
    ids = _array(body, "key_ids", path)
    if outcome == "erased" and not 1 <= len(ids) <= MAX_KEYS:
        _fail(_join(path, "key_ids"), f"an erasure lists 1 to {MAX_KEYS} data key ids")
    if outcome == "refused" and ids:
        _fail(_join(path, "key_ids"), "a refusal destroys no key")
    for i, key_id in enumerate(ids):
        if not isinstance(key_id, str) or not _HEX32.match(key_id):
            _fail(f"{_join(path, 'key_ids')}[{i}]", "must be 32 lowercase hex digits")
    lookup = _ident(body, "lookup", path)
    if not _HEX64.match(lookup):
        _fail(_join(path, "lookup"), "must be 64 lowercase hex digits (the key store's HMAC)")
    return ErasureBody(
        patient_ref=_ref(body, path),
        lookup=lookup,
        outcome=outcome,
        key_ids=tuple(ids),
        reason=_ident(body, "reason", path),
        policy=_string(body, "policy", path),
        decision=_string(body, "decision", path),
        requested_by=_ident(body, "requested_by", path),
        signature=_ident(body, "signature", path),
    )


def legal_hold_body(body: Mapping[str, Any], path: str) -> LegalHoldBody:
    _members(body, path, ("patient_ref", "status", "reason", "placed_by", "signature"), ())
    return LegalHoldBody(
        patient_ref=_ref(body, path),
        status=cast(HoldStatus, _choice(body, "status", path, ("active", "lifted"))),
        reason=_string(body, "reason", path),
        placed_by=_ident(body, "placed_by", path),
        signature=_ident(body, "signature", path),
    )
