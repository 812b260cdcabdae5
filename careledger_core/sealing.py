"""Sealing an access event (ADR 0037): what the ledger may keep forever, what only a
patient's data key opens, and the commitment that ties them together.

* :func:`split` takes an event's canonical document apart into its **public part**
  (codes, times, roles, department: nothing that names or numbers a person) and its
  **sensitive part** (the paths of :data:`SENSITIVE_PATHS`); :func:`join` puts them
  back together.
* :func:`commitment` is ``SHA-256(COMMITMENT_CONTEXT || salt || JCS(sensitive))`` with a
  32-byte random salt per event: binding, and hiding while the salt is secret. The
  public part plus the commitment (:func:`ledger_document`) is what a source signs and
  what the ledger's leaf hashes, so destroying the salt and the sensitive part changes
  no leaf, root or signature.
* :func:`seal` encrypts ``salt || JCS(sensitive)`` with XChaCha20-Poly1305 (IETF) under
  the patient's data key, with the leaf hash as associated data (a ciphertext moved to
  another row does not open) and a nonce derived from the leaf hash and the salt (no
  nonce to get wrong: one (leaf, salt) has one ciphertext). :func:`unseal` reverses it
  and checks the commitment.
* :func:`patient_ref` is the per-patient pseudonym for joins and rules:
  ``HMAC-SHA256(data key, PATIENT_REF_CONTEXT)``, unlinkable once the key is gone.

Pure: no I/O, no randomness of its own (salts and keys are the caller's). Errors:
:class:`SealError` (an ``IntegrityError``) with a stable ``code``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from nacl.exceptions import CryptoError

from ._aead import xchacha_decrypt, xchacha_encrypt
from .errors import IntegrityError

__all__ = [
    "COMMITMENT_CONTEXT",
    "KEY_BYTES",
    "PATIENT_REF_CONTEXT",
    "SALT_BYTES",
    "SENSITIVE_PATHS",
    "SealError",
    "canonical",
    "commitment",
    "commitment_of_bytes",
    "join",
    "join_into",
    "ledger_document",
    "parse_part",
    "patient_ref",
    "seal",
    "seal_bytes",
    "split",
    "unseal",
    "unseal_bytes",
]

COMMITMENT_CONTEXT: Final = b"careledger.event-commitment/1\x00"
NONCE_CONTEXT: Final = b"careledger.seal-nonce/1\x00"
PATIENT_REF_CONTEXT: Final = b"careledger.patient-ref/1"
SALT_BYTES: Final = 32
KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 24
_TAG_BYTES: Final = 16

#: the parts of an access event that name, number or locate a person (or carry free
#: text that may): everything else is public (ADR 0037)
SENSITIVE_PATHS: Final[tuple[tuple[str, ...], ...]] = (
    ("patient",),
    ("actor", "id"),
    ("actor", "name"),
    ("client",),
    ("session_ref",),
    ("object", "id"),
    ("outcome_desc",),
    ("query",),
    ("correlation_id",),
    ("raw_ref", "uri"),
    ("recipient",),
    ("discloser",),
)


_JCS: Final = msgspec.json.Encoder(order="sorted")


def canonical(value: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of an event's (sensitive) part, fast: msgspec with sorted members
    equals JCS for what an access event holds (ASCII member names, no floats; the
    tests compare both on simulated events), as ``event.py`` uses it for events."""
    return _JCS.encode(value)


def _copy(value: Mapping[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = msgspec.json.decode(_JCS.encode(value))
    return copied


class SealError(IntegrityError):
    """A sealed part that does not open, or does not open to its commitment. ``code``:
    ``BAD_INPUT``, ``SEALED_MALFORMED``, ``SEALED_UNOPENED``, ``COMMITMENT_MISMATCH``."""

    code = "SEAL"


def _key(name: str, value: bytes, size: int) -> None:
    if type(value) is not bytes or len(value) != size:
        raise SealError(f"{name} must be {size} bytes", code="BAD_INPUT")


def split(document: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(public part, sensitive part) of an event's canonical document. The sensitive
    part maps each present path of :data:`SENSITIVE_PATHS`, dotted, to its value."""
    public = _copy(document)  # a deep copy of JSON
    sensitive: dict[str, Any] = {}
    for path in SENSITIVE_PATHS:
        parent: Any = public
        for step in path[:-1]:
            parent = parent.get(step) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent:
            sensitive[".".join(path)] = parent.pop(path[-1])
    return public, sensitive


def join(public: Mapping[str, Any], sensitive: Mapping[str, Any]) -> dict[str, Any]:
    """The document :func:`split` took apart."""
    return join_into(_copy(public), sensitive)


_KNOWN: Final = {".".join(p): p for p in SENSITIVE_PATHS}


def join_into(document: dict[str, Any], sensitive: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`join` into ``document`` itself (a dict the caller owns, e.g. just decoded:
    no copy on the processor's per-event path); returns it."""
    known = _KNOWN
    for dotted, value in sensitive.items():
        path = known.get(dotted)
        if path is None:
            raise SealError(code="BAD_INPUT", message=f"{dotted!r} is not a sensitive path")
        parent = document
        for step in path[:-1]:
            child = parent.setdefault(step, {})
            if not isinstance(child, dict):
                raise SealError(code="BAD_INPUT", message=f"{step!r} is not an object")
            parent = child
        parent[path[-1]] = value
    return document


def commitment(salt: bytes, sensitive: Mapping[str, Any]) -> bytes:
    """The salted SHA-256 commitment to a sensitive part (32 bytes)."""
    return commitment_of_bytes(salt, canonical(sensitive))


def commitment_of_bytes(salt: bytes, body: bytes) -> bytes:
    """:func:`commitment` of a sensitive part given as its canonical bytes (as
    :func:`parse_part` checked them)."""
    _key("salt", salt, SALT_BYTES)
    return hashlib.sha256(COMMITMENT_CONTEXT + salt + body).digest()


def ledger_document(public: Mapping[str, Any], commitment_: bytes) -> dict[str, Any]:
    """What a source signs and the ledger hashes: the public part and the commitment."""
    if "sealed_commitment" in public:
        raise SealError(code="BAD_INPUT", message="the public part already holds a commitment")
    _key("commitment", commitment_, 32)
    return {**public, "sealed_commitment": commitment_.hex()}


def _nonce(leaf_hash: bytes, salt: bytes) -> bytes:
    return hashlib.sha256(NONCE_CONTEXT + leaf_hash + salt).digest()[:_NONCE_BYTES]


def seal_bytes(data_key: bytes, leaf_hash: bytes, salt: bytes, body: bytes) -> bytes:
    """``nonce || XChaCha20-Poly1305(data_key, salt || body, AAD=leaf_hash)``, the nonce
    derived from the leaf hash and the salt: the sealing of events (:func:`seal`) and of
    reference records (``careledger_core.sealed_reference``)."""
    _key("data key", data_key, KEY_BYTES)
    _key("leaf hash", leaf_hash, 32)
    _key("salt", salt, SALT_BYTES)
    nonce = _nonce(leaf_hash, salt)
    return nonce + xchacha_encrypt(salt + body, leaf_hash, nonce, data_key)


def unseal_bytes(data_key: bytes, leaf_hash: bytes, sealed: bytes) -> tuple[bytes, bytes]:
    """(salt, body) of what :func:`seal_bytes` sealed for this leaf. Raises
    :class:`SealError` (``SEALED_MALFORMED``, ``SEALED_UNOPENED``)."""
    _key("data key", data_key, KEY_BYTES)
    _key("leaf hash", leaf_hash, 32)
    if type(sealed) is not bytes or len(sealed) < _NONCE_BYTES + _TAG_BYTES + SALT_BYTES:
        raise SealError(code="SEALED_MALFORMED", message="the sealed part is too short")
    nonce, box = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    try:
        plaintext = xchacha_decrypt(box, leaf_hash, nonce, data_key)
    except CryptoError:
        raise SealError(
            code="SEALED_UNOPENED",
            message="the sealed part does not open with this key for this leaf",
        ) from None
    salt, body = plaintext[:SALT_BYTES], plaintext[SALT_BYTES:]
    if nonce != _nonce(leaf_hash, salt):
        raise SealError(
            code="SEALED_MALFORMED", message="the nonce is not the one of this leaf and salt"
        )
    return salt, body


def seal(data_key: bytes, leaf_hash: bytes, salt: bytes, sensitive: Mapping[str, Any]) -> bytes:
    """``nonce || XChaCha20-Poly1305(data_key, salt || JCS(sensitive), AAD=leaf_hash)``."""
    return seal_bytes(data_key, leaf_hash, salt, canonical(sensitive))


def unseal(
    data_key: bytes, leaf_hash: bytes, sealed: bytes, expected: bytes
) -> tuple[bytes, dict[str, Any]]:
    """(salt, sensitive part) of ``sealed``, checked against the leaf it belongs to and
    the commitment ``expected`` the leaf signs. Raises :class:`SealError`."""
    salt, body = unseal_bytes(data_key, leaf_hash, sealed)
    sensitive = parse_part(body, "the sealed part")
    if not hmac.compare_digest(commitment(salt, sensitive), expected):
        raise SealError(
            code="COMMITMENT_MISMATCH",
            message="the sealed part does not open the commitment the leaf signs",
        )
    return salt, sensitive


def parse_part(body: bytes, what: str) -> dict[str, Any]:
    """A sensitive part's canonical JSON bytes, decoded; :class:`SealError`
    ``SEALED_MALFORMED`` naming ``what`` when they are not a canonical JSON object."""
    try:
        sensitive = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise SealError(code="SEALED_MALFORMED", message=f"{what} is not JSON") from None
    if not isinstance(sensitive, dict) or canonical(sensitive) != body:
        raise SealError(code="SEALED_MALFORMED", message=f"{what} is not canonical JSON")
    return sensitive


def patient_ref(data_key: bytes) -> str:
    """The patient's pseudonym (hex), from their data key."""
    _key("data key", data_key, KEY_BYTES)
    return hmac.new(data_key, PATIENT_REF_CONTEXT, hashlib.sha256).hexdigest()
