"""Received bytes -> a raw record and its events, or a dead letter (no I/O here).

Every path starts the same way: the bytes exactly as received are hashed (SHA-256)
before anything parses them, with the receive time and the transport metadata. Then:

* **parsed** (possibly with conformance issues): a :class:`~producers.gateway.publisher.Job`
  with the ``careledger.raw-record/1`` envelope (bytes, hash, format, transport, issues)
  for ``Settings.topic_raw`` and the access events the adapters made, each carrying
  ``raw_ref.sha256`` = the record's hash;
* **not parseable / not authenticated**: a Job with one dead-letter record (original
  bytes, the processor's dead-letter headers with the reason) and no raw record.

The transport metadata of a raw record names the authenticated sender (``source_id``,
``auth``, ``credential``), the protocol and peer, and for syslog the header fields.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from careledger.raw_record import build_envelope
from careledger_core.event import AccessEvent, RawRef
from producers.adapters import (
    EntryResult,
    IngestError,
    ParseResult,
    parse_dicom_audit_xml,
    parse_fhir_audit_event,
    parse_fhir_bundle,
)
from producers.adapters._values import uuid4_from_bits
from producers.gateway.auth import Identity
from producers.gateway.framing import FrameError
from producers.gateway.publisher import DeadLetter, Job
from producers.gateway.syslog import SyslogError, parse_syslog

__all__ = [
    "BundleIngest",
    "Ingestor",
    "Received",
    "dead_letter_job",
    "received",
    "utc_now",
]

#: Prefix of the raw format of a syslog frame: ``syslog+<format of its MSG>``.
SYSLOG_FORMAT_PREFIX: Final = "syslog+"
#: Ingest error codes that are the sender's syntax (HTTP 400); others are 422.
SYNTAX_ERRORS: Final = frozenset({"EMPTY", "NOT_UTF8", "NOT_JSON", "NOT_XML", "XML_FORBIDDEN"})


_second: tuple[int, str] = (-1, "")  # the last whole second, and its text


def utc_now() -> str:
    """Now as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the second's text is formatted once)."""
    global _second
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached = _second
    if cached[0] != seconds:
        text = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached = _second = (seconds, text)
    return f"{cached[1]}.{nanos // 1000:06d}Z"


class _UuidPool(threading.local):
    """Random bytes for record ids, one pool per thread: no lock (a lock shared by the
    parsing threads convoyed with the GIL: a thread that got the lock then waited for
    the GIL while the others queued on the lock)."""

    def __init__(self) -> None:
        self.pool = b""
        self.pos = 0


_uuid_pool = _UuidPool()


def random_uuid() -> str:
    """``str(uuid.uuid4())``, from random bytes fetched 4 KiB at a time (one system call
    per 256 ids instead of one per id); each byte is used once."""
    local = _uuid_pool
    pos = local.pos
    if pos + 16 > len(local.pool):
        local.pool, pos = os.urandom(4096), 0
    local.pos = pos + 16
    return uuid4_from_bits(int.from_bytes(local.pool[pos : pos + 16], "big"))


@dataclass(frozen=True)
class Received:
    """Bytes as received, hashed before any parsing."""

    data: bytes
    sha256: str
    received_at: str
    protocol: str  # http, https, syslog-tcp, syslog-tls, syslog-udp
    transport: Mapping[str, str] = field(default_factory=dict)


def received(data: bytes, protocol: str, transport: Mapping[str, str]) -> Received:
    return Received(
        data=bytes(data),
        sha256=hashlib.sha256(data).hexdigest(),
        received_at=utc_now(),
        protocol=protocol,
        transport={"protocol": protocol, **transport},
    )


def dead_letter(
    rec: Received,
    code: str,
    reason: str,
    *,
    field: str = "$",
    value: bytes | None = None,
    key: bytes | None = None,
    extra: Mapping[str, str] | None = None,
) -> DeadLetter:
    """A dead-letter record in the processor's format (``careledger dead-letters``).

    ``careledger-source-topic`` is ``gateway/<protocol>`` (no Kafka position: -1); the
    gateway adds when and from whom it was received and the SHA-256 of the whole
    received record.
    """
    headers: list[tuple[str, str | bytes | None]] = [
        ("careledger-error-code", code.encode()),
        ("careledger-error", reason.encode("utf-8", errors="replace")),
        ("careledger-error-field", field.encode("utf-8", errors="replace")),
        ("careledger-source-topic", f"gateway/{rec.protocol}".encode()),
        ("careledger-source-partition", b"-1"),
        ("careledger-source-offset", b"-1"),
        ("careledger-received-at", rec.received_at.encode()),
        ("careledger-raw-sha256", rec.sha256.encode()),
        (
            "careledger-transport",
            json.dumps(dict(rec.transport), sort_keys=True).encode("utf-8", errors="replace"),
        ),
    ]
    for name, text in (extra or {}).items():
        headers.append((name, text.encode("utf-8", errors="replace")))
    return DeadLetter(value=rec.data if value is None else value, key=key, headers=headers)


def dead_letter_job(rec: Received, code: str, reason: str, **kwargs: Any) -> Job:
    return Job(dead_letters=[dead_letter(rec, code, reason, **kwargs)])


def frame_error_job(rec: Received, error: FrameError) -> Job:
    """A frame the decoder could not take whole: its first bytes, dead-lettered."""
    return dead_letter_job(
        rec,
        error.code,
        error.reason,
        extra={"careledger-original-size": str(error.size)},
    )


def _issue_dicts(items: Sequence[Any]) -> list[dict[str, str]]:
    return [i.to_dict() for i in items]


def raw_job(
    rec: Received,
    fmt: str,
    events: Sequence[AccessEvent],
    issues: Sequence[Mapping[str, str]],
    identity: Identity | None,
    record_id: str | None = None,
) -> tuple[Job, str]:
    """The Job of an accepted record; returns it and the raw record id (``record_id``,
    else a new one)."""
    record_id = record_id or random_uuid()
    transport = dict(rec.transport)
    if identity is not None:
        transport.update(identity.transport())
    _envelope, canonical = build_envelope(
        record_id=record_id,
        data=rec.data,
        sha256=rec.sha256,
        format=fmt,
        received_at=rec.received_at,
        transport=transport,
        issues=issues,
    )
    key = (identity.source_id if identity is not None else rec.sha256).encode()
    return (
        Job(
            raw=(key, canonical),
            events=tuple(events),
            on_behalf_of=identity.source_id if identity is not None else None,
        ),
        record_id,
    )


# ----------------------------------------------------------------------------- HTTP
@dataclass(frozen=True)
class SingleIngest:
    """POST /AuditEvent: accepted (``job`` has the raw record) or refused."""

    job: Job
    result: ParseResult | None = None
    error: IngestError | None = None
    record_id: str | None = None

    @property
    def event_id(self) -> str | None:
        if self.result is None or not self.result.events:
            return None
        return self.result.events[0].event_id


@dataclass(frozen=True)
class BundleIngest:
    """POST / with a Bundle: per-entry results, or the whole Bundle refused."""

    job: Job
    kind: str  # "batch" | "transaction"
    result: ParseResult | None = None
    error: IngestError | None = None
    #: a transaction with failed entries is refused as a whole: their results
    refused_entries: tuple[EntryResult, ...] = ()
    record_id: str | None = None
    #: Consent entries (``producers.consents.ingest.ConsentEntry``) by entry index
    consents: Mapping[int, Any] = field(default_factory=dict)


class _BundleHead(msgspec.Struct):
    type: str | None = None
    entry: list[msgspec.Raw] = []


def _bundle_head(data: bytes) -> _BundleHead:
    try:
        return msgspec.json.decode(data.removeprefix(b"\xef\xbb\xbf"), type=_BundleHead)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _BundleHead()


class Ingestor:
    """Turns received records into Jobs; one per gateway (holds only settings)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def fhir_audit_event(self, rec: Received, identity: Identity) -> SingleIngest:
        try:
            result = parse_fhir_audit_event(
                rec.data,
                received_at=rec.received_at,
                transport=rec.transport,
                max_bytes=self.max_bytes,
            )
        except IngestError as exc:
            return SingleIngest(
                dead_letter_job(rec, exc.code, exc.message, key=identity.source_id.encode()),
                error=exc,
            )
        job, record_id = raw_job(
            rec, result.raw.format, result.events, _issue_dicts(result.issues), identity
        )
        return SingleIngest(job, result=result, record_id=record_id)

    def fhir_bundle(self, rec: Received, identity: Identity) -> BundleIngest:
        head = _bundle_head(rec.data)
        kind = "transaction" if head.type == "transaction" else "batch"
        key = identity.source_id.encode()
        try:
            result = parse_fhir_bundle(
                rec.data,
                received_at=rec.received_at,
                transport=rec.transport,
                max_bytes=self.max_bytes,
            )
        except IngestError as exc:
            return BundleIngest(
                dead_letter_job(rec, exc.code, exc.message, key=key), kind, error=exc
            )
        failed = tuple(e for e in result.entries if e.error is not None)
        if kind == "transaction" and failed:
            reasons = "; ".join(
                f"entry {e.index}: {e.error.code}" for e in failed if e.error is not None
            )
            job = dead_letter_job(
                rec, "TRANSACTION_REFUSED", f"transaction refused ({reasons})", key=key
            )
            return BundleIngest(job, kind, result=result, refused_entries=failed)
        issues = _issue_dicts(result.issues)
        letters = []
        for e in failed:
            assert e.error is not None
            issues.append(
                {
                    "code": "ENTRY_REFUSED",
                    "message": f"entry {e.index} not accepted: {e.error.code}",
                    "path": f"Bundle.entry[{e.index}]",
                }
            )
            entry_bytes = bytes(head.entry[e.index]) if e.index < len(head.entry) else None
            letters.append(
                dead_letter(
                    rec,
                    e.error.code,
                    f"Bundle entry {e.index}: {e.error.message}",
                    field=f"Bundle.entry[{e.index}]",
                    value=entry_bytes,
                    key=key,
                    extra={"careledger-bundle-entry": str(e.index)},
                )
            )
        job, record_id = raw_job(rec, result.raw.format, result.events, issues, identity)
        job.dead_letters = letters
        return BundleIngest(job, kind, result=result, record_id=record_id)

    # ------------------------------------------------------------------- syslog
    def syslog_frame(self, rec: Received, identity: Identity | None) -> tuple[Job, str | None]:
        """One syslog frame; returns the Job and, if it was refused, the error code."""
        if identity is None:
            return (
                dead_letter_job(
                    rec,
                    "UNAUTHENTICATED",
                    "the sender is not a configured source (no client certificate of a "
                    "source, and the peer address belongs to no open source)",
                ),
                "UNAUTHENTICATED",
            )
        key = identity.source_id.encode()
        try:
            message = parse_syslog(rec.data)
        except SyslogError as exc:
            return dead_letter_job(rec, exc.code, exc.reason, key=key), exc.code
        transport = {**rec.transport, **message.transport()}
        try:
            result = parse_dicom_audit_xml(
                message.msg,
                received_at=rec.received_at,
                transport=transport,
                max_bytes=self.max_bytes,
            )
        except IngestError as exc:
            rec2 = Received(rec.data, rec.sha256, rec.received_at, rec.protocol, transport)
            return (
                dead_letter_job(rec2, exc.code, exc.message, key=key, field="MSG"),
                exc.code,
            )
        fmt = SYSLOG_FORMAT_PREFIX + result.raw.format
        # The raw record is the whole frame: the events point at its hash, not at the MSG's.
        ref = RawRef(format=fmt, sha256=rec.sha256)
        events = [msgspec.structs.replace(e, raw_ref=ref) for e in result.events]
        issues = [i.to_dict() for i in message.issues] + _issue_dicts(result.issues)
        rec2 = Received(rec.data, rec.sha256, rec.received_at, rec.protocol, transport)
        job, _record_id = raw_job(rec2, fmt, events, issues, identity)
        return job, None
