"""The careledger error tree.

Every error raised on purpose by careledger code is a :class:`CareledgerError` with a
stable machine-readable ``code`` and a ``details`` dict of diagnostics, so callers can
route on the code (dead-letter headers, verifier findings, CLI exit status) without
parsing messages::

    CareledgerError
    ├── ValidationError            bad input (caller's fault)
    │   ├── EventValidationError   an access event violates the schema  (EVENT_INVALID)
    │   ├── HeaderValidationError  a block header violates the schema   (BLOCK_HEADER_INVALID)
    │   ├── ReferenceValidationError  a reference-data record is malformed  (REFERENCE_INVALID)
    │   ├── KeyFormatError         a key text/literal is malformed      (KEY_INVALID)
    │   └── ConsentFormatError     a FHIR Consent cannot be evaluated   (CONSENT_INVALID)
    ├── IntegrityError             data is tampered with or not authentic
    │   ├── SignatureError         bad Ed25519 signature                (SIGNATURE_INVALID)
    │   ├── UnknownKeyError        signed by a key that is not trusted  (KEY_UNKNOWN)
    │   ├── ProofError             Merkle inclusion/consistency proof   (PROOF_INVALID)
    │   └── CheckpointError        malformed/unverifiable checkpoint    (CHECKPOINT_INVALID)
    │       └── NoteUnverifiedError  no signature by a trusted key      (NOTE_UNVERIFIED)
    └── InfrastructureError        an I/O failure (raised by the I/O packages, never by core)

No class here derives from ``ValueError``: msgspec converts ``ValueError``/``TypeError``
raised in ``__post_init__`` into its own error type, and we want ours to pass through.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "CareledgerError",
    "CheckpointError",
    "ConsentFormatError",
    "EventValidationError",
    "HeaderValidationError",
    "InfrastructureError",
    "IntegrityError",
    "KeyFormatError",
    "NoteUnverifiedError",
    "ProofError",
    "ReferenceValidationError",
    "SignatureError",
    "UnknownKeyError",
    "ValidationError",
]


class CareledgerError(Exception):
    """Base class of every careledger error.

    ``code`` is a stable machine code (class default, overridable per instance);
    ``details`` holds JSON-compatible diagnostics.
    """

    code: str = "CARELEDGER_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, object] = dict(details) if details else {}

    def __reduce__(self) -> tuple[object, ...]:
        # picklable across processes despite the keyword-only constructor
        return (_rebuild, (type(self), self.message, self.code, self.details))

    def to_dict(self) -> dict[str, object]:
        """JSON-compatible summary: ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": dict(self.details)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


def _rebuild(
    cls: type[CareledgerError], message: str, code: str, details: dict[str, object]
) -> CareledgerError:
    err = cls.__new__(cls)
    CareledgerError.__init__(err, message, code=code, details=details)
    if isinstance(err, _FieldValidationError):
        err.field = str(details.get("field", "$"))
        err.reason = str(details.get("reason", message))
    return err


class ValidationError(CareledgerError):
    """Input does not satisfy the contract (schema, format, range)."""

    code = "INVALID"


class _FieldValidationError(ValidationError):
    """A validation error located at one field of a JSON document."""

    subject = "document"

    def __init__(self, field: str, reason: str, **details: object) -> None:
        #: dotted path of the offending field (``"actor.id"``, ``"event_subtype[0].code"``),
        #: ``"$"`` for the document as a whole.
        self.field = field
        #: human-readable reason, without the path.
        self.reason = reason
        where = "" if field == "$" else f" at {field}"
        super().__init__(
            f"invalid {self.subject}{where}: {reason}",
            details={"field": field, "reason": reason, **details},
        )


class EventValidationError(_FieldValidationError):
    """An access event is malformed; ``.field`` says where, ``.reason`` says why."""

    code = "EVENT_INVALID"
    subject = "access event"


class HeaderValidationError(_FieldValidationError):
    """A block header is malformed or not in canonical form."""

    code = "BLOCK_HEADER_INVALID"
    subject = "block header"


class ReferenceValidationError(_FieldValidationError):
    """A reference-data record (consent, care relationship, staff, patient) is malformed;
    ``.field`` is the path (``"body.period.start"``), ``.reason`` says why."""

    code = "REFERENCE_INVALID"
    subject = "reference record"


class KeyFormatError(ValidationError):
    """A private key text, public key literal, seed or signature has the wrong shape."""

    code = "KEY_INVALID"


class ConsentFormatError(_FieldValidationError):
    """A FHIR Consent resource (R4 or R5) is malformed or cannot be evaluated; ``.field``
    is the FHIR path (``"provision.provision[1].type"``), ``.reason`` says why."""

    code = "CONSENT_INVALID"
    subject = "consent"


class IntegrityError(CareledgerError):
    """Data is not what it claims to be: tampered with, forged or inconsistent."""

    code = "INTEGRITY"


class SignatureError(IntegrityError):
    """An Ed25519 signature does not verify."""

    code = "SIGNATURE_INVALID"


class UnknownKeyError(IntegrityError):
    """Data is signed by a key id that is not among the trusted keys."""

    code = "KEY_UNKNOWN"


class ProofError(IntegrityError):
    """A Merkle inclusion or consistency proof does not verify."""

    code = "PROOF_INVALID"


class CheckpointError(IntegrityError):
    """A checkpoint or signed note is malformed or cannot be verified."""

    code = "CHECKPOINT_INVALID"


class NoteUnverifiedError(CheckpointError):
    """A signed note carries no signature by any of the given verifiers."""

    code = "NOTE_UNVERIFIED"


class InfrastructureError(CareledgerError):
    """An I/O dependency failed (Kafka, ClickHouse, files). Raised outside the core."""

    code = "INFRASTRUCTURE"
