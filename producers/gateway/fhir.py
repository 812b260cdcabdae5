"""The FHIR JSON the gateway answers with: OperationOutcome, CapabilityStatement, Bundles.

Pure: no I/O. Every document is a plain dict ready for ``json.dumps``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "FHIR_JSON",
    "Issue",
    "batch_response",
    "capability_statement",
    "operation_outcome",
]

FHIR_JSON: Final = "application/fhir+json"
#: The IHE RESTful ATNA (ITI-20) Audit Record Repository capability we implement.
RESTFUL_ATNA_REPOSITORY: Final = (
    "https://profiles.ihe.net/ITI/RESTful-ATNA/CapabilityStatement/IHE.RESTful-ATNA.Repository"
)

Severity = Literal["fatal", "error", "warning", "information"]

#: HTTP status -> (reason phrase, FHIR IssueType) of the problems the gateway reports.
STATUS: Final[Mapping[int, tuple[str, str]]] = {
    200: ("OK", "informational"),
    201: ("Created", "informational"),
    400: ("Bad Request", "invalid"),
    401: ("Unauthorized", "login"),
    403: ("Forbidden", "forbidden"),
    404: ("Not Found", "not-found"),
    405: ("Method Not Allowed", "not-supported"),
    408: ("Request Timeout", "timeout"),
    413: ("Payload Too Large", "too-long"),
    415: ("Unsupported Media Type", "not-supported"),
    422: ("Unprocessable Entity", "processing"),
    429: ("Too Many Requests", "throttled"),
    500: ("Internal Server Error", "exception"),
    503: ("Service Unavailable", "transient"),
}


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: Severity
    code: str  # FHIR IssueType (invalid, structure, login, too-long, transient, ...)
    diagnostics: str
    #: a careledger code (ingest error or conformance issue), as details.coding
    detail_code: str | None = None
    expression: str | None = None

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.detail_code:
            issue["details"] = {
                "coding": [
                    {
                        "system": "urn:careledger:ingest",
                        "code": self.detail_code,
                    }
                ],
                "text": self.detail_code,
            }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    """An OperationOutcome (at least one issue; FHIR requires it)."""
    listed = [i.to_fhir() for i in issues]
    if not listed:
        listed = [{"severity": "information", "code": "informational", "diagnostics": "ok"}]
    return {"resourceType": "OperationOutcome", "issue": listed}


def error_outcome(
    status: int, diagnostics: str, detail_code: str | None = None, expression: str | None = None
) -> dict[str, Any]:
    """An OperationOutcome for a refused request (``severity`` error, code by status)."""
    code = STATUS.get(status, ("", "exception"))[1]
    severity: Severity = "fatal" if status >= 500 else "error"
    return operation_outcome([Issue(severity, code, diagnostics, detail_code, expression)])


def status_line(status: int) -> str:
    """``"201 Created"``: the form Bundle.entry.response.status takes."""
    return f"{status} {STATUS.get(status, ('',))[0]}".strip()


@dataclass(frozen=True, slots=True)
class EntryResponse:
    """What became of one entry of a batch or transaction."""

    status: int
    location: str | None = None
    outcome: Mapping[str, Any] | None = None


def batch_response(
    kind: Literal["batch", "transaction"], entries: Sequence[EntryResponse]
) -> dict[str, Any]:
    """A ``batch-response`` / ``transaction-response`` Bundle, one entry per request entry."""
    out: list[dict[str, Any]] = []
    for e in entries:
        response: dict[str, Any] = {"status": status_line(e.status)}
        if e.location:
            response["location"] = e.location
        if e.outcome is not None:
            response["outcome"] = dict(e.outcome)
        out.append({"response": response})
    return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": out}


def capability_statement(
    *,
    software_version: str,
    base_url: str,
    date: str,
    max_record_bytes: int,
    auth_methods: Sequence[str],
) -> dict[str, Any]:
    """What the gateway implements: ITI-20 create of AuditEvent, batch and transaction."""
    security = (
        "Senders are authenticated per source: "
        + "; ".join(auth_methods)
        + ". Unauthenticated requests are refused with 401 unless the source is configured "
        "as an open (legacy) source."
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "careledger",
        "kind": "instance",
        "instantiates": [RESTFUL_ATNA_REPOSITORY],
        "software": {"name": "careledger ingest gateway", "version": software_version},
        "implementation": {
            "description": "careledger ingest gateway: FHIR AuditEvent feed (IHE ITI-20); "
            "FHIR R4 and R5 AuditEvent resources are accepted. Records are "
            "acknowledged only once Kafka has them; non-conformant records are "
            "accepted and their issues kept (IHE BALP).",
            "url": base_url,
        },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "application/json", "application/fhir+xml"],
        "rest": [
            {
                "mode": "server",
                "documentation": f"Largest accepted request body: {max_record_bytes} bytes.",
                "security": {"cors": False, "description": security},
                "resource": [
                    {
                        "type": "AuditEvent",
                        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
                        "interaction": [
                            {
                                "code": "create",
                                "documentation": "ITI-20: record one audit event; 201 with "
                                "Location AuditEvent/<id> once Kafka acknowledged it",
                            }
                        ],
                        "versioning": "no-version",
                        "readHistory": False,
                        "updateCreate": False,
                        "conditionalCreate": False,
                    },
                    {
                        "type": "Consent",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Consent",
                        "interaction": [
                            {
                                "code": "create",
                                "documentation": "a patient's consent (R4 or R5, JSON or "
                                "XML) from an authenticated sender: ledgered as a new "
                                "version; 201 once Kafka acknowledged it",
                            },
                            {
                                "code": "update",
                                "documentation": "a new version of Consent/<id> (a status "
                                "change included); every version is ledgered",
                            },
                        ],
                        "versioning": "versioned",
                        "readHistory": False,
                        "updateCreate": True,
                        "conditionalCreate": False,
                    },
                ],
                "interaction": [
                    {
                        "code": "batch",
                        "documentation": "a Bundle of AuditEvent creates and Consent "
                        "creates / updates",
                    },
                    {
                        "code": "transaction",
                        "documentation": "the same, all or none",
                    },
                ],
            }
        ],
    }
