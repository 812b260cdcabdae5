"""The gateway's FHIR answers: OperationOutcome shapes, Bundle responses, CapabilityStatement."""

from __future__ import annotations

import json
from typing import Any

import pytest

from producers.gateway import fhir

ISSUE_TYPES = {
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "unknown",
    "expired",
    "forbidden",
    "suppressed",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
    "informational",
}


def check_outcome(doc: dict[str, Any]) -> None:
    """The invariants of an OperationOutcome every answer must keep."""
    assert doc["resourceType"] == "OperationOutcome"
    assert doc["issue"], "an OperationOutcome has at least one issue"
    for issue in doc["issue"]:
        assert issue["severity"] in {"fatal", "error", "warning", "information"}
        assert issue["code"] in ISSUE_TYPES
        assert isinstance(issue["diagnostics"], str) and issue["diagnostics"]
        if "expression" in issue:
            assert all(isinstance(e, str) for e in issue["expression"])
        if "details" in issue:
            (coding,) = issue["details"]["coding"]
            assert coding["system"].startswith("urn:") and coding["code"]
    json.dumps(doc)  # serialisable


@pytest.mark.parametrize(
    ("status", "code", "severity"),
    [
        (400, "invalid", "error"),
        (401, "login", "error"),
        (413, "too-long", "error"),
        (415, "not-supported", "error"),
        (422, "processing", "error"),
        (503, "transient", "fatal"),
    ],
)
def test_error_outcomes_per_status(status: int, code: str, severity: str) -> None:
    doc = fhir.error_outcome(status, "what went wrong", "SOME_CODE", "AuditEvent.agent")
    check_outcome(doc)
    (issue,) = doc["issue"]
    assert (issue["code"], issue["severity"]) == (code, severity)
    assert issue["details"]["coding"][0]["code"] == "SOME_CODE"
    assert issue["expression"] == ["AuditEvent.agent"]


def test_an_empty_outcome_still_has_an_issue() -> None:
    check_outcome(fhir.operation_outcome([]))


def test_warnings_for_conformance_issues() -> None:
    doc = fhir.operation_outcome(
        [
            fhir.Issue("information", "informational", "recorded"),
            fhir.Issue(
                "warning", "business-rule", "no requestor", "NO_REQUESTOR", "AuditEvent.agent"
            ),
        ]
    )
    check_outcome(doc)
    assert [i["severity"] for i in doc["issue"]] == ["information", "warning"]


def test_batch_response_bundle() -> None:
    doc = fhir.batch_response(
        "batch",
        [
            fhir.EntryResponse(201, location="AuditEvent/abc"),
            fhir.EntryResponse(422, outcome=fhir.error_outcome(422, "not an AuditEvent")),
        ],
    )
    assert doc["resourceType"] == "Bundle" and doc["type"] == "batch-response"
    first, second = (e["response"] for e in doc["entry"])
    assert first == {"status": "201 Created", "location": "AuditEvent/abc"}
    assert second["status"] == "422 Unprocessable Entity"
    check_outcome(second["outcome"])
    assert fhir.batch_response("transaction", [])["type"] == "transaction-response"


def test_capability_statement() -> None:
    doc = fhir.capability_statement(
        software_version="0.1.0",
        base_url="http://127.0.0.1:18090",
        date="2026-11-29T10:00:00Z",
        max_record_bytes=1048576,
        auth_methods=["mutual TLS", "signed requests"],
    )
    assert doc["resourceType"] == "CapabilityStatement"
    assert doc["status"] == "active" and doc["kind"] == "instance"
    assert doc["fhirVersion"].startswith("4.")
    assert "application/fhir+json" in doc["format"]
    assert any("RESTful-ATNA" in url for url in doc["instantiates"])
    (rest,) = doc["rest"]
    assert rest["mode"] == "server"
    resource, consent = rest["resource"]
    assert resource["type"] == "AuditEvent"
    assert [i["code"] for i in resource["interaction"]] == ["create"]
    assert consent["type"] == "Consent"  # issue 11: create and update (new versions)
    assert [i["code"] for i in consent["interaction"]] == ["create", "update"]
    assert {i["code"] for i in rest["interaction"]} == {"batch", "transaction"}
    assert "signed requests" in rest["security"]["description"]
    assert "1048576" in rest["documentation"]
    json.dumps(doc)
