"""A received FHIR Consent (R4 or R5, JSON or XML) -> a ledgered reference record.

Pure (no I/O). Used by the gateway (``POST /Consent``, ``PUT /Consent/{id}``, Consent
entries of a Bundle) and by ``careledger consent load``. See docs/adr/0022.

* The resource is read as sent: JSON as is, XML by the FHIR XML rules (``fhir_xml``).
* It must be a ``Consent`` naming a ``Patient`` (R4 ``patient``, R5 ``subject``) and
  pass the reference-record checks (``careledger_core.reference``); else a
  :class:`ConsentProblem` (422, with the FHIR path).
* What the patient signed (``sourceAttachment``: R4 one, R5 several) is hashed:
  SHA-256 of the base64-decoded ``data``; an attachment with only a ``url`` is not
  fetched (the gateway fetches nothing), its url and declared ``hash`` are kept.
* The record: ``record_id`` = ``<source id>/<consent id>`` (a source versions only its
  own consents), ``version`` = the receive time in seconds since the epoch, strictly
  increasing per consent (:class:`VersionClock`), ``retracted`` when the status is
  ``entered-in-error``; the body is the resource plus one ``meta.extension``
  (:data:`INTAKE_URL`) naming the sender, the raw record and the attachment hashes.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from careledger_core.errors import ReferenceValidationError
from careledger_core.reference import REFERENCE_SCHEMA, ReferenceRecord, reference_from_dict
from producers.consents.fhir_xml import MAX_DEPTH, FhirXmlError, read_fhir_xml

__all__ = [
    "INTAKE_URL",
    "PROCESS_CLOCK",
    "SYNTAX_CODES",
    "AttachmentHash",
    "ConsentProblem",
    "DecodedDocument",
    "IntakeContext",
    "VersionClock",
    "attachment_hashes",
    "build_consent_record",
    "check_consent",
    "consent_id_for",
    "decode_document",
    "own_date",
    "raw_format",
]

INTAKE_URL: Final = "urn:careledger:consent-intake"
#: Problems with the bytes themselves (HTTP 400); every other problem is 422.
SYNTAX_CODES: Final = frozenset(
    {"EMPTY", "NOT_UTF8", "NOT_JSON", "NOT_XML", "XML_FORBIDDEN", "TOO_DEEP", "NOT_FHIR_XML"}
)
_FHIR_ID_RE: Final = re.compile(r"\A[A-Za-z0-9\-.]{1,64}\Z")
_BASE64_SPACE: Final = re.compile(rb"[ \t\r\n]+")
_BASE64_RE: Final = re.compile(
    rb"\A(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z"
)
_PATIENT_RE: Final = re.compile(r"(?:\A|/)Patient/[^/]+(?:/_history/[^/]+)?\Z")


class ConsentProblem(Exception):
    """Why a Consent is refused: ``code`` (careledger ingest code), FHIR ``path``."""

    def __init__(self, code: str, message: str, path: str = "Consent") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path

    @property
    def status(self) -> int:
        return 400 if self.code in SYNTAX_CODES else 422


# ------------------------------------------------------------------ bytes -> JSON
@dataclass(frozen=True)
class DecodedDocument:
    resource: dict[str, Any]
    syntax: str  # "json" | "xml"
    #: XML paths whose JSON shape was guessed (elements the Consent table lacks)
    guessed: tuple[str, ...] = ()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConsentProblem("NOT_JSON", f"duplicate member name {key[:64]!r}", "$")
        out[key] = value
    return out


def _depth(value: Any, limit: int) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ConsentProblem("TOO_DEEP", f"JSON nested deeper than {limit}", "$")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _constant(name: str) -> Any:
    raise ConsentProblem("NOT_JSON", f"{name} is not JSON", "$")


def decode_document(
    data: bytes, syntax: str | None = None, fhir_version: str | None = None
) -> DecodedDocument:
    """The FHIR JSON of ``data`` (JSON or XML; ``syntax`` None: sniffed from the first
    character). Raises ConsentProblem (EMPTY, NOT_UTF8, NOT_JSON, NOT_XML, XML_FORBIDDEN,
    TOO_DEEP, NOT_FHIR_XML, FHIR_XML_INVALID)."""
    body = data.removeprefix(b"\xef\xbb\xbf")
    if not body.strip():
        raise ConsentProblem("EMPTY", "the request body is empty", "$")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConsentProblem("NOT_UTF8", "the body is not UTF-8", "$") from None
    if syntax is None:
        syntax = "xml" if text.lstrip().startswith("<") else "json"
    if syntax == "xml":
        try:
            result = read_fhir_xml(body, fhir_version=fhir_version)
        except FhirXmlError as exc:
            raise ConsentProblem(exc.code, exc.message, exc.path) from None
        return DecodedDocument(result.resource, "xml", tuple(result.guessed))
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_constant)
    except RecursionError:
        raise ConsentProblem("TOO_DEEP", "JSON nested too deeply", "$") from None
    except ValueError as exc:
        raise ConsentProblem("NOT_JSON", f"not JSON: {exc}"[:200], "$") from None
    _depth(doc, MAX_DEPTH)
    if not isinstance(doc, dict):
        raise ConsentProblem("NOT_A_RESOURCE", "the JSON is not a FHIR resource (an object)", "$")
    return DecodedDocument(doc, "json")


# ------------------------------------------------------------------ checks
@dataclass(frozen=True)
class AttachmentHash:
    """One ``sourceAttachment``: the SHA-256 of its decoded ``data`` (None: url only)."""

    path: str
    sha256: str | None
    size: int | None
    content_type: str | None
    url: str | None
    #: the sender's own Attachment.hash (base64 SHA-1), and whether the data matches it
    declared_sha1: str | None
    matches_declared: bool | None

    def to_extension(self) -> dict[str, Any]:
        ext: list[dict[str, Any]] = [{"url": "path", "valueString": self.path}]
        if self.sha256 is not None:
            ext.append({"url": "sha256", "valueString": self.sha256})
        if self.size is not None:
            ext.append({"url": "size", "valueInteger": self.size})
        if self.content_type:
            ext.append({"url": "contentType", "valueString": self.content_type})
        if self.url:
            ext.append({"url": "url", "valueString": self.url})
            if self.sha256 is None:
                ext.append({"url": "not-fetched", "valueBoolean": True})
        elif self.sha256 is None:  # a title only (as in HL7's examples): nothing to hash
            ext.append({"url": "no-content", "valueBoolean": True})
        if self.declared_sha1 is not None:
            ext.append({"url": "declared-sha1", "valueString": self.declared_sha1})
        if self.matches_declared is not None:
            ext.append({"url": "declared-sha1-matches", "valueBoolean": self.matches_declared})
        return {"url": "attachment", "extension": ext}


def _attachments(resource: Mapping[str, Any], path: str) -> list[tuple[str, Any]]:
    value = resource.get("sourceAttachment")
    if value is None:
        return []
    if isinstance(value, list):
        return [(f"{path}.sourceAttachment[{i}]", a) for i, a in enumerate(value)]
    return [(f"{path}.sourceAttachment", value)]


def attachment_hashes(resource: Mapping[str, Any], path: str = "Consent") -> list[AttachmentHash]:
    """Hash what the patient signed; a ``data`` that is not base64 is a ConsentProblem."""
    out = []
    for apath, att in _attachments(resource, path):
        if not isinstance(att, Mapping):
            raise ConsentProblem("CONSENT_INVALID", "an Attachment must be an object", apath)
        data = att.get("data")
        url = att.get("url")
        declared = att.get("hash")
        sha256 = size = matches = None
        if data is not None:
            if not isinstance(data, str):
                raise ConsentProblem("BAD_ATTACHMENT", "data must be base64 text", f"{apath}.data")
            try:
                packed = _BASE64_SPACE.sub(b"", data.encode("ascii"))
                if not _BASE64_RE.match(packed):
                    raise ValueError("not canonical base64")
                decoded = base64.b64decode(packed, validate=True)
            except (binascii.Error, ValueError, UnicodeEncodeError):
                raise ConsentProblem(
                    "BAD_ATTACHMENT", "data is not valid base64", f"{apath}.data"
                ) from None
            sha256 = hashlib.sha256(decoded).hexdigest()
            size = len(decoded)
            if isinstance(declared, str):
                sha1 = base64.b64encode(hashlib.sha1(decoded).digest()).decode()
                matches = sha1 == declared.strip()
        out.append(
            AttachmentHash(
                path=apath,
                sha256=sha256,
                size=size,
                content_type=att.get("contentType")
                if isinstance(att.get("contentType"), str)
                else None,
                url=url if isinstance(url, str) else None,
                declared_sha1=declared if isinstance(declared, str) else None,
                matches_declared=matches,
            )
        )
    return out


def _has_patient(resource: Mapping[str, Any]) -> bool:
    for name in ("patient", "subject"):
        ref = resource.get(name)
        reference = ref.get("reference") if isinstance(ref, Mapping) else None
        if isinstance(reference, str) and _PATIENT_RE.search(reference):
            return True
    return False


def _mentions_intake(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("url") == INTAKE_URL:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_consent(resource: Mapping[str, Any], path: str = "Consent") -> list[AttachmentHash]:
    """Refuse what is not a Consent for a Patient (ConsentProblem); the attachment hashes."""
    rtype = resource.get("resourceType")
    if rtype != "Consent":
        shown = rtype[:64] if isinstance(rtype, str) else type(rtype).__name__
        raise ConsentProblem(
            "NOT_A_CONSENT",
            f"resourceType is {shown!r}: only Consent resources are accepted here",
            f"{path}.resourceType",
        )
    if not _has_patient(resource):
        raise ConsentProblem(
            "NO_PATIENT",
            "the Consent names no Patient: R4 patient.reference or R5 subject.reference "
            "must be Patient/<id>",
            f"{path}.subject" if "subject" in resource else f"{path}.patient",
        )
    if _mentions_intake(resource):
        raise ConsentProblem(
            "RESERVED_EXTENSION",
            f"the extension {INTAKE_URL} is written by careledger, not by the sender",
            f"{path}.meta.extension",
        )
    return attachment_hashes(resource, path)


# ------------------------------------------------------------------ versions
class VersionClock:
    """Versions of a consent: the receive time in whole seconds since the epoch, and
    strictly increasing per consent (``max(now, last + 1)``); ``recorded_at`` is the
    receive time in microseconds (strictly increasing too).

    Seconds, not microseconds: the store keeps reference versions as UInt32 (up to
    2106). Only versions of the *same* consent within one second are bumped ahead of
    the clock, so across a restart a version can only collide with one issued a
    second or two earlier.
    """

    #: consents remembered (the last version of each); the oldest are forgotten first
    MAX_KEYS: Final = 100_000

    def __init__(self, *, backfill: bool = False) -> None:
        #: a back-fill (``careledger consent load``): each version is effective from the
        #: consent's own date (R4 ``dateTime``, R5 ``date``) when it has one in the past,
        #: not from when it was loaded; ``recorded_at`` stays the load time, so the
        #: bitemporal auditor still knows what was known when (ADR 0022)
        self.backfill = backfill
        self._last_us = 0
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def next(self, key: str = "") -> tuple[int, str]:
        """(version, recorded_at) for a new version of consent ``key``."""
        with self._lock:
            now = time.time_ns() // 1000
            self._last_us = max(now, self._last_us + 1)
            micros = self._last_us
            version = max(micros // 1_000_000, self._versions.pop(key, 0) + 1)
            self._versions[key] = version
            if len(self._versions) > self.MAX_KEYS:
                del self._versions[next(iter(self._versions))]
        when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
        return version, when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: One clock per process: every listener (HTTP, HTTPS) of a gateway shares it, so the
#: versions of a consent increase whichever listener received them.
PROCESS_CLOCK: Final = VersionClock()

#: The store's reference version column is UInt32.
MAX_VERSION: Final = 2**32 - 1

_FHIR_DATE_TIME = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<H>[0-9]{2}):(?P<M>[0-9]{2}):(?P<S>[0-9]{2})(?P<f>\.[0-9]{1,9})?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2}))?)?)?"
)


def own_date(resource: Mapping[str, Any]) -> dt.datetime | None:
    """When the consent says it was given: R4 ``dateTime``, R5 ``date`` (a partial date
    is its first instant, UTC); None when absent or not a FHIR date/dateTime."""
    value = resource.get("dateTime", resource.get("date"))
    if not isinstance(value, str):
        return None
    m = _FHIR_DATE_TIME.fullmatch(value)
    if m is None:
        return None
    try:
        when = dt.datetime(
            int(m["y"]),
            int(m["m"] or 1),
            int(m["d"] or 1),
            int(m["H"] or 0),
            int(m["M"] or 0),
            int(m["S"] or 0),
            int(((m["f"] or ".")[1:] + "000000")[:6]),
            tzinfo=dt.UTC,
        )
    except ValueError:
        return None
    tz = m["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        when -= sign * dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    return when


def _effective_at(resource: Mapping[str, Any], recorded_at: str, backfill: bool) -> str:
    if not backfill:
        return recorded_at
    given = own_date(resource)
    if given is None or given.year < 1900:
        return recorded_at
    recorded = dt.datetime.strptime(recorded_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return min(given, recorded).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def raw_format(fhir_version: str, syntax: str) -> str:
    return f"fhir-{fhir_version.lower()}-consent+{syntax}"


@dataclass(frozen=True)
class IntakeContext:
    """Who sent a consent and in which raw record (named in the ledgered body)."""

    source_id: str
    auth: str  # mtls | signature | operator
    raw_record_id: str
    raw_sha256: str
    raw_format: str
    received_at: str
    entry: int | None = None  # the Bundle entry index


def consent_id_for(resource: Mapping[str, Any], url_id: str | None, path: str) -> str:
    """The consent's id: the URL's (PUT), else the resource's, else a new UUID (POST)."""
    body_id = resource.get("id")
    if url_id is not None:
        if not _FHIR_ID_RE.match(url_id):
            raise ConsentProblem("BAD_ID", "the id in the URL is not a FHIR id", path)
        if body_id is not None and body_id != url_id:
            raise ConsentProblem(
                "ID_MISMATCH",
                "the resource's id differs from the id in the URL",
                f"{path}.id",
            )
        return url_id
    if body_id is None:
        return str(uuid.uuid4())
    if not isinstance(body_id, str) or not _FHIR_ID_RE.match(body_id):
        raise ConsentProblem("BAD_ID", "id is not a FHIR id", f"{path}.id")
    return body_id


def _intake_extension(ctx: IntakeContext, hashes: Sequence[AttachmentHash]) -> dict[str, Any]:
    ext: list[dict[str, Any]] = [
        {"url": "source", "valueString": ctx.source_id},
        {"url": "auth", "valueCode": ctx.auth},
        {"url": "raw-record", "valueString": ctx.raw_record_id},
        {"url": "raw-sha256", "valueString": ctx.raw_sha256},
        {"url": "raw-format", "valueString": ctx.raw_format},
        {"url": "received", "valueInstant": ctx.received_at},
    ]
    if ctx.entry is not None:
        ext.append({"url": "bundle-entry", "valueInteger": ctx.entry})
    ext.extend(h.to_extension() for h in hashes)
    return {"url": INTAKE_URL, "extension": ext}


def build_consent_record(
    resource: Mapping[str, Any],
    *,
    consent_id: str,
    ctx: IntakeContext,
    hashes: Sequence[AttachmentHash],
    clock: VersionClock,
    path: str = "Consent",
) -> ReferenceRecord:
    """The ``consent`` reference record of one received version (ConsentProblem if the
    reference checks refuse it, with the FHIR path)."""
    body = copy.deepcopy(dict(resource))
    meta = body.get("meta")
    if meta is None:
        meta = body["meta"] = {}
    if not isinstance(meta, dict):
        raise ConsentProblem("CONSENT_INVALID", "meta must be an object", f"{path}.meta")
    extensions = meta.get("extension", [])
    if not isinstance(extensions, list):
        raise ConsentProblem("CONSENT_INVALID", "meta.extension must be an array", path)
    meta["extension"] = [*extensions, _intake_extension(ctx, hashes)]
    record_id = f"{ctx.source_id}/{consent_id}"
    version, recorded_at = clock.next(record_id)
    if version > MAX_VERSION:  # pragma: no cover - year 2106
        raise ConsentProblem("CLOCK", "the clock is beyond the version range", path)
    try:
        return reference_from_dict(
            {
                "schema": REFERENCE_SCHEMA,
                "kind": "consent",
                "record_id": record_id,
                "version": version,
                "recorded_at": recorded_at,
                "effective_at": _effective_at(resource, recorded_at, clock.backfill),
                "body": body,
                **({"retracted": True} if body.get("status") == "entered-in-error" else {}),
            }
        )
    except ReferenceValidationError as exc:
        field = str(exc.details.get("field", "")).removeprefix("body").lstrip(".")
        where = f"{path}.{field}" if field else path
        if not field.startswith(("resourceType", "status", "patient", "subject")) and field:
            where = f"{path}.{field}"
        raise ConsentProblem("CONSENT_INVALID", str(exc.message)[:300], where) from None
