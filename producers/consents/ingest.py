"""Consents received by the gateway -> Jobs (raw record + consent reference records, or
dead letters). No I/O here: the HTTP layer publishes the Job and answers.

* ``POST /Consent`` / ``PUT /Consent/{id}``: :func:`ingest_consent`;
* ``POST /`` with a Bundle holding Consent entries (JSON or XML): :func:`ingest_bundle`
  (a JSON Bundle without Consents goes to the AuditEvent path unchanged).

As for AuditEvents: the bytes are hashed as received and kept as one raw record
(``careledger.raw-record/1``, transport naming the authenticated sender); a refused
record or entry is dead-lettered with its bytes and reason (``careledger dead-letters``
lists and replays them). Consents are accepted only from an *authenticated* sender
(mTLS or a signed request): an open (legacy) source is identified by an address or a
header anyone can send, so its consents are refused (403) and dead-lettered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from careledger_core.reference import ReferenceRecord, canonical_reference_bytes
from producers.adapters import EntryResult, IngestError, ParseResult, RawRecord, parse_fhir_bundle
from producers.consents.intake import (
    ConsentProblem,
    IntakeContext,
    VersionClock,
    build_consent_record,
    check_consent,
    consent_id_for,
    decode_document,
    raw_format,
)
from producers.gateway.auth import Identity
from producers.gateway.ingest import (
    BundleIngest,
    Ingestor,
    Received,
    _bundle_head,
    dead_letter,
    dead_letter_job,
    random_uuid,
    raw_job,
)
from producers.gateway.publisher import DeadLetter, Job

__all__ = [
    "ConsentEntry",
    "ConsentIngest",
    "has_consents",
    "ingest_bundle",
    "ingest_consent",
]

#: Ways of authenticating that may send consents (not ``open``).
AUTHENTICATED: Final = frozenset({"mtls", "signature", "operator"})
FORMAT_BUNDLE_XML: Final = "fhir-bundle+xml"
FORMAT_BUNDLE_JSON: Final = "fhir-bundle+json"


@dataclass(frozen=True)
class ConsentIngest:
    """One Consent: accepted (``record``; ``job`` has the raw record and the reference
    record) or refused (``error``; ``job`` has the dead letter)."""

    job: Job
    record: ReferenceRecord | None = None
    error: ConsentProblem | None = None
    raw_record_id: str | None = None
    resource: dict[str, Any] | None = None
    issues: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class ConsentEntry:
    """A Consent entry of a Bundle: its record, or why it was refused."""

    index: int
    record: ReferenceRecord | None = None
    error: ConsentProblem | None = None


def _unauthenticated(identity: Identity) -> ConsentProblem | None:
    if identity.method in AUTHENTICATED:
        return None
    return ConsentProblem(
        "NOT_AUTHENTICATED",
        f"source {identity.source_id!r} is an open (legacy) source: consents are accepted "
        "only from an authenticated sender (client certificate or signed request)",
        "Consent",
    )


def _refused(rec: Received, identity: Identity, problem: ConsentProblem) -> Job:
    return dead_letter_job(
        rec,
        problem.code,
        problem.message,
        field=problem.path,
        key=identity.source_id.encode(),
        extra={"careledger-record-kind": "consent"},
    )


def _guessed_issues(guessed: Sequence[str]) -> list[dict[str, str]]:
    return [
        {
            "code": "XML_SHAPE_GUESSED",
            "message": "element not in careledger's Consent table: mapped by the generic rules",
            "path": p[:4096],
        }
        for p in guessed[:100]
    ]


def ingest_consent(
    rec: Received,
    identity: Identity,
    *,
    url_id: str | None,
    syntax: str | None,
    fhir_version: str | None,
    clock: VersionClock,
    topic: str,
    auth: str | None = None,
) -> ConsentIngest:
    """One Consent (``url_id``: the id of ``PUT /Consent/{id}``, None for POST)."""
    problem = _unauthenticated(identity)
    if problem is not None:
        return ConsentIngest(_refused(rec, identity, problem), error=problem)
    try:
        doc = decode_document(rec.data, syntax, fhir_version)
        hashes = check_consent(doc.resource)
        consent_id = consent_id_for(doc.resource, url_id, "Consent")
        raw_id = random_uuid()
        version = "R5" if _looks_r5(doc.resource) else "R4"
        fmt = raw_format(version, doc.syntax)
        ctx = IntakeContext(
            source_id=identity.source_id,
            auth=auth or identity.method,
            raw_record_id=raw_id,
            raw_sha256=rec.sha256,
            raw_format=fmt,
            received_at=rec.received_at,
        )
        record = build_consent_record(
            doc.resource, consent_id=consent_id, ctx=ctx, hashes=hashes, clock=clock
        )
    except ConsentProblem as exc:
        return ConsentIngest(_refused(rec, identity, exc), error=exc)
    issues = _guessed_issues(doc.guessed)
    job, record_id = raw_job(rec, fmt, (), issues, identity, record_id=raw_id)
    job.references = [(topic, record.subject_id.encode(), canonical_reference_bytes(record))]
    return ConsentIngest(
        job,
        record=record,
        raw_record_id=record_id,
        resource=doc.resource,
        issues=tuple(issues),
    )


def _looks_r5(resource: Mapping[str, Any]) -> bool:
    return any(k in resource for k in ("subject", "decision", "grantor", "grantee", "controller"))


# ----------------------------------------------------------------------------- Bundles
def _entries(doc: Mapping[str, Any]) -> list[Any]:
    entries = doc.get("entry", [])
    return entries if isinstance(entries, list) else []


def _is_consent_entry(entry: Any) -> bool:
    if not isinstance(entry, Mapping):
        return False
    resource = entry.get("resource")
    if isinstance(resource, Mapping) and resource.get("resourceType") == "Consent":
        return True
    request = entry.get("request")
    url = request.get("url") if isinstance(request, Mapping) else None
    return isinstance(url, str) and url.split("?")[0].split("/")[0] == "Consent"


def has_consents(data: bytes) -> bool:
    """Cheap check: could this JSON Bundle hold a Consent? (else the AuditEvent path)."""
    return b'"Consent' in data


def _entry_target(entry: Mapping[str, Any], path: str) -> str | None:
    """The consent id a PUT entry names (None for POST); ConsentProblem otherwise."""
    request = entry.get("request")
    if not isinstance(request, Mapping):
        return None
    method = request.get("method")
    url = request.get("url")
    if method == "POST":
        return None
    if method == "PUT" and isinstance(url, str):
        parts = url.split("?")[0].split("/")
        if len(parts) == 2 and parts[0] == "Consent" and parts[1]:
            return parts[1]
        raise ConsentProblem("BAD_REQUEST_URL", "PUT needs the url Consent/<id>", f"{path}.url")
    raise ConsentProblem(
        "METHOD_NOT_SUPPORTED",
        f"request method {str(method)[:16]!r}: Consent entries take POST or PUT (revoke with "
        "a new version whose status is inactive, or entered-in-error)",
        f"{path}.method",
    )


def ingest_bundle(
    ingestor: Ingestor,
    rec: Received,
    identity: Identity,
    *,
    syntax: str | None,
    fhir_version: str | None,
    clock: VersionClock,
    topic: str,
) -> BundleIngest:
    """A Bundle that holds Consents (JSON or XML), or a JSON Bundle of AuditEvents only
    (handed to ``ingestor.fhir_bundle`` unchanged)."""
    key = identity.source_id.encode()
    if syntax != "xml" and not has_consents(rec.data):
        return ingestor.fhir_bundle(rec, identity)
    try:
        doc = decode_document(rec.data, syntax, fhir_version)
    except ConsentProblem as exc:
        if syntax == "xml" or (syntax is None and rec.data.lstrip().startswith(b"<")):
            err = IngestError(exc.code, exc.message)
            return BundleIngest(
                dead_letter_job(rec, exc.code, exc.message, key=key), "batch", error=err
            )
        return ingestor.fhir_bundle(rec, identity)
    resource = doc.resource
    if resource.get("resourceType") != "Bundle":
        if doc.syntax == "json":
            return ingestor.fhir_bundle(rec, identity)
        err = IngestError("NOT_A_BUNDLE", "POST / takes a Bundle (batch or transaction)")
        return BundleIngest(
            dead_letter_job(rec, err.code, err.message, key=key), "batch", error=err
        )
    entries = _entries(resource)
    consent_indexes = [i for i, e in enumerate(entries) if _is_consent_entry(e)]
    if doc.syntax == "json" and not consent_indexes:
        return ingestor.fhir_bundle(rec, identity)
    kind = "transaction" if resource.get("type") == "transaction" else "batch"
    fmt = FORMAT_BUNDLE_XML if doc.syntax == "xml" else FORMAT_BUNDLE_JSON
    raw_id = random_uuid()
    # AuditEvent entries: the adapters (JSON); FHIR XML AuditEvents are not read
    audit: dict[int, EntryResult] = {}
    events: list[Any] = []
    issues: list[dict[str, str]] = _guessed_issues(doc.guessed)
    if doc.syntax == "json":
        try:
            parsed = parse_fhir_bundle(
                rec.data,
                received_at=rec.received_at,
                transport=rec.transport,
                max_bytes=ingestor.max_bytes,
            )
        except IngestError as exc:
            return BundleIngest(
                dead_letter_job(rec, exc.code, exc.message, key=key), kind, error=exc
            )
        issues += [i.to_dict() for i in parsed.issues]
        for e in parsed.entries:
            if e.index not in consent_indexes:
                audit[e.index] = e
                events.extend(e.events)
                issues += [i.to_dict() for i in e.issues]
    else:
        for i in range(len(entries)):
            if i not in consent_indexes:
                audit[i] = EntryResult(
                    i,
                    None,
                    None,
                    (),
                    (),
                    IngestError(
                        "NOT_SUPPORTED_XML",
                        "FHIR XML AuditEvents are not read: send them as JSON",
                    ),
                )
    consents: dict[int, ConsentEntry] = {}
    problem = _unauthenticated(identity)
    for i in consent_indexes:
        consents[i] = _bundle_consent(
            entries[i], i, identity, problem, rec, raw_id, fmt, clock, doc.syntax
        )
    failed_audit = [e for e in audit.values() if e.error is not None]
    failed_consents = [c for c in consents.values() if c.error is not None]
    if kind == "transaction" and (failed_audit or failed_consents):
        reasons = [f"entry {e.index}: {e.error.code}" for e in failed_audit if e.error]
        reasons += [f"entry {c.index}: {c.error.code}" for c in failed_consents if c.error]
        job = dead_letter_job(
            rec, "TRANSACTION_REFUSED", f"transaction refused ({'; '.join(reasons)})", key=key
        )
        refused = tuple(failed_audit) + tuple(
            EntryResult(c.index, None, None, (), (), IngestError(c.error.code, c.error.message))
            for c in failed_consents
            if c.error is not None
        )
        return BundleIngest(job, kind, refused_entries=refused, consents=consents)
    letters: list[DeadLetter] = []
    # a refused entry is dead-lettered with its own bytes (JSON), as AuditEvent entries are;
    # an XML entry with the whole Bundle's
    head = _bundle_head(rec.data).entry if doc.syntax == "json" else []
    for index, code, message, path in [
        *((e.index, e.error.code, e.error.message, None) for e in failed_audit if e.error),
        *(
            (c.index, c.error.code, c.error.message, c.error.path)
            for c in failed_consents
            if c.error
        ),
    ]:
        issues.append(
            {
                "code": "ENTRY_REFUSED",
                "message": f"entry {index} not accepted: {code}",
                "path": f"Bundle.entry[{index}]",
            }
        )
        letters.append(
            dead_letter(
                rec,
                code,
                f"Bundle entry {index}: {message}",
                field=path or f"Bundle.entry[{index}]",
                value=bytes(head[index]) if index < len(head) else None,
                key=key,
                extra={"careledger-bundle-entry": str(index)},
            )
        )
    job, record_id = raw_job(rec, fmt, events, issues[:200], identity, record_id=raw_id)
    job.dead_letters = letters
    job.references = [
        (topic, c.record.subject_id.encode(), canonical_reference_bytes(c.record))
        for c in consents.values()
        if c.record is not None
    ]
    result = ParseResult(
        events=tuple(events),
        issues=(),
        raw=RawRecord(rec.data, rec.sha256, fmt, rec.received_at, rec.transport),
        entries=tuple(audit[i] for i in sorted(audit)),
    )
    return BundleIngest(job, kind, result=result, record_id=record_id, consents=consents)


def _bundle_consent(
    entry: Any,
    index: int,
    identity: Identity,
    problem: ConsentProblem | None,
    rec: Received,
    raw_id: str,
    fmt: str,
    clock: VersionClock,
    syntax: str,
) -> ConsentEntry:
    path = f"Bundle.entry[{index}]"
    if problem is not None:
        return ConsentEntry(index, error=ConsentProblem(problem.code, problem.message, path))
    try:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, dict):
            raise ConsentProblem("NOT_A_CONSENT", "the entry has no resource", f"{path}.resource")
        url_id = _entry_target(entry, f"{path}.request")
        rpath = f"{path}.resource"
        hashes = check_consent(resource, rpath)
        consent_id = consent_id_for(resource, url_id, rpath)
        ctx = IntakeContext(
            source_id=identity.source_id,
            auth=identity.method,
            raw_record_id=raw_id,
            raw_sha256=rec.sha256,
            raw_format=fmt,
            received_at=rec.received_at,
            entry=index,
        )
        record = build_consent_record(
            resource, consent_id=consent_id, ctx=ctx, hashes=hashes, clock=clock, path=rpath
        )
    except ConsentProblem as exc:
        return ConsentEntry(index, error=exc)
    return ConsentEntry(index, record=record)
