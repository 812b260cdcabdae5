"""FHIR R4 / R5 AuditEvent (JSON) and ITI-20 Bundles -> access events.

Both versions are read by one permissive mapper: the element names of R4 (``type``,
``subtype``, ``period``, ``purposeOfEvent``, ``outcome`` + ``outcomeDesc``,
``agent.network``) and of R5 (``category``, ``code``, ``occurred[x]``,
``authorization``, ``outcome{code, detail}``, ``patient``, ``agent.network[x]``) are all
understood wherever they occur; the version (and so the raw format) is the one whose
element names dominate, and a record that mixes both is flagged (VERSION_MIXED). See
docs/ingest-mapping.md for the field-by-field mapping.

The reading of the elements is in ``_fhir_elements``, the mapping to access-event
fields in ``_fhir_mapper``; here are the JSON decoding, the AuditEvent and Bundle
entry points and the public API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from careledger_core.event import AccessEvent

from ._draft import build_events
from ._fhir_elements import _Reader
from ._fhir_mapper import _Mapper
from ._intake import decode_utf8, intake
from ._model import (
    DEFAULT_MAX_BYTES,
    FORMAT_FHIR_BUNDLE,
    EntryResult,
    IngestError,
    ParseResult,
    RawRecord,
    check_received_at,
    freeze_transport,
)
from ._values import Issues

__all__ = ["parse_fhir", "parse_fhir_audit_event", "parse_fhir_bundle"]


# ============================================================================ decoding
class _DuplicateTracker:
    """object_pairs_hook that keeps the last value of a repeated name and remembers it."""

    def __init__(self) -> None:
        # a dict (insertion order, constant-time membership): a list made 16k repeated
        # names quadratic (issue 12)
        self.names: dict[str, None] = {}

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                self.names[key] = None
            obj[key] = value
        return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_json(data: bytes, max_bytes: int, issues: Issues) -> tuple[bytes, str, Any]:
    """(bytes, sha256, decoded document): TOO_LARGE, EMPTY, NOT_UTF8, NOT_JSON."""
    raw, sha256 = intake(data, max_bytes)
    text, bom = decode_utf8(raw, sha256)
    if bom:
        issues.add("BYTE_ORDER_MARK", "the JSON starts with a UTF-8 byte order mark", "$")
    tracker = _DuplicateTracker()
    try:
        doc = json.loads(text, object_pairs_hook=tracker, parse_constant=_reject_constant)
    except RecursionError:
        raise IngestError(
            "NOT_JSON", "JSON nested too deeply", sha256=sha256, size=len(raw)
        ) from None
    except ValueError as exc:  # JSONDecodeError, huge integers, NaN/Infinity
        raise IngestError(
            "NOT_JSON", f"not JSON: {str(exc)[:200]}", sha256=sha256, size=len(raw)
        ) from None
    if tracker.names:
        issues.add(
            "DUPLICATE_KEY",
            "repeated member name(s) " + ", ".join(repr(n) for n in list(tracker.names)[:8]),
            "$",
        )
    return raw, sha256, doc


def _looks_like_audit_event(doc: Mapping[str, Any]) -> bool:
    return "agent" in doc and ("source" in doc or "recorded" in doc)


def _map_audit_event(
    doc: object,
    *,
    root: str,
    received_at: str,
    sha256: str,
    issues: Issues,
    raw_format: str | None = None,
    entry_index: int | None = None,
) -> tuple[str, tuple[AccessEvent, ...]]:
    """(version format, events) of one AuditEvent object; raises NOT_AN_AUDIT_RECORD.

    ``raw_format`` is the format of the received bytes (a Bundle's); by default the
    AuditEvent's own version format.
    """
    if not isinstance(doc, Mapping):
        raise IngestError(
            "NOT_AN_AUDIT_RECORD", f"{root} is not a JSON object", sha256=sha256, path=root
        )
    resource_type = doc.get("resourceType")
    if resource_type != "AuditEvent":
        if resource_type is None and _looks_like_audit_event(doc):
            issues.add("RESOURCE_TYPE_MISSING", "no resourceType: read as an AuditEvent", root)
        else:
            shown = (
                resource_type if isinstance(resource_type, str) else type(resource_type).__name__
            )
            raise IngestError(
                "NOT_AN_AUDIT_RECORD",
                f"{root} is a {shown[:64]!r}, not an AuditEvent",
                sha256=sha256,
                path=root,
            )
    mapper = _Mapper(doc, root, received_at, issues)
    fmt = mapper.version()
    events = build_events(
        mapper.draft(),
        raw_format=raw_format or fmt,
        raw_sha256=sha256,
        entry_index=entry_index,
        issues=issues,
        path=f"{root}.entity",
    )
    return fmt, events


def _audit_event_result(
    raw: bytes, sha256: str, doc: object, issues: Issues, received_at: str, transport: Any
) -> ParseResult:
    fmt, events = _map_audit_event(
        doc, root="AuditEvent", received_at=received_at, sha256=sha256, issues=issues
    )
    record = RawRecord(
        data=raw,
        sha256=sha256,
        format=fmt,
        received_at=received_at,
        transport=freeze_transport(transport),
    )
    return ParseResult(events=events, issues=issues.freeze(), raw=record)


def _bundle_result(
    raw: bytes, sha256: str, doc: object, issues: Issues, received_at: str, transport: Any
) -> ParseResult:
    if not isinstance(doc, Mapping) or doc.get("resourceType") != "Bundle":
        raise IngestError("NOT_AN_AUDIT_RECORD", "not a FHIR Bundle", sha256=sha256, size=len(raw))
    reader = _Reader(issues)
    bundle_type = reader.string(doc.get("type"), "Bundle.type")
    if bundle_type not in ("batch", "transaction"):
        issues.add(
            "BUNDLE_TYPE",
            f"Bundle type {str(bundle_type)[:32]!r}: entries read as a batch",
            "Bundle.type",
        )
    entries_value = reader.arr(doc.get("entry"), "Bundle.entry")
    if not entries_value:
        issues.add("BUNDLE_EMPTY", "the Bundle has no entries", "Bundle.entry")
    results: list[EntryResult] = []
    all_events: list[AccessEvent] = []
    seen_ids: dict[str, int] = {}
    for i, entry in enumerate(entries_value):
        where = f"Bundle.entry[{i}]"
        entry_issues = Issues()
        entry_reader = _Reader(entry_issues)
        entry_obj = entry_reader.obj(entry, where) or {}
        full_url = entry_reader.string(entry_obj.get("fullUrl"), f"{where}.fullUrl")
        request = entry_reader.obj(entry_obj.get("request"), f"{where}.request")
        if request is not None:
            method = entry_reader.string(request.get("method"), f"{where}.request.method")
            if (method or "").strip().upper() != "POST":
                entry_issues.add(
                    "ENTRY_METHOD",
                    f"request method {str(method)[:16]!r}, expected POST",
                    f"{where}.request.method",
                )
        try:
            fmt, events = _map_audit_event(
                entry_obj.get("resource"),
                root=f"{where}.resource",
                received_at=received_at,
                sha256=sha256,
                issues=entry_issues,
                raw_format=FORMAT_FHIR_BUNDLE,
                entry_index=i,
            )
        except IngestError as exc:
            results.append(
                EntryResult(
                    index=i,
                    full_url=full_url,
                    format=None,
                    events=(),
                    issues=entry_issues.freeze(),
                    error=exc,
                )
            )
            continue
        for event in events:
            first = seen_ids.setdefault(event.event_id, i)
            if first != i:
                entry_issues.add(
                    "DUPLICATE_EVENT_ID",
                    f"event id {event.event_id} also given by entry {first}",
                    f"{where}.resource.id",
                )
        frozen = entry_issues.freeze()
        results.append(
            EntryResult(index=i, full_url=full_url, format=fmt, events=events, issues=frozen)
        )
        all_events.extend(events)
        issues.extend(frozen)
    record = RawRecord(
        data=raw,
        sha256=sha256,
        format=FORMAT_FHIR_BUNDLE,
        received_at=received_at,
        transport=freeze_transport(transport),
    )
    return ParseResult(
        events=tuple(all_events), issues=issues.freeze(), raw=record, entries=tuple(results)
    )


# ============================================================================ public API
def parse_fhir_audit_event(
    data: bytes,
    *,
    received_at: str,
    transport: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ParseResult:
    """Parse one FHIR R4 or R5 AuditEvent (JSON bytes) into access events.

    ``received_at`` (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) is when the gateway received the
    bytes; it is the last fallback for a missing time. Raises :class:`IngestError` when
    the bytes are not a JSON AuditEvent at all; anything else is accepted and flagged.
    """
    check_received_at(received_at)
    issues = Issues()
    raw, sha256, doc = _load_json(data, max_bytes, issues)
    return _audit_event_result(raw, sha256, doc, issues, received_at, transport)


def parse_fhir_bundle(
    data: bytes,
    *,
    received_at: str,
    transport: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ParseResult:
    """Parse an ITI-20 Bundle (type batch or transaction) of AuditEvents.

    Each entry is parsed on its own: an entry that is not an AuditEvent gets an
    :class:`EntryResult` with its :class:`IngestError` while the others are accepted, so
    the HTTP layer can answer per entry. Every event's ``raw_ref`` names the whole
    Bundle's bytes (format ``fhir-bundle+json``); event ids derived from the bytes
    include the entry index.
    """
    check_received_at(received_at)
    issues = Issues()
    raw, sha256, doc = _load_json(data, max_bytes, issues)
    return _bundle_result(raw, sha256, doc, issues, received_at, transport)


def parse_fhir(
    data: bytes,
    *,
    received_at: str,
    transport: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ParseResult:
    """An AuditEvent or a Bundle of them, whichever the bytes are (ITI-20 takes both)."""
    check_received_at(received_at)
    issues = Issues()
    raw, sha256, doc = _load_json(data, max_bytes, issues)
    if isinstance(doc, Mapping) and doc.get("resourceType") == "Bundle":
        return _bundle_result(raw, sha256, doc, issues, received_at, transport)
    return _audit_event_result(raw, sha256, doc, issues, received_at, transport)
