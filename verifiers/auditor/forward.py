"""``careledger alerts forward``: alerts into the tools security teams already run.

Every record of the alerts topic (the auditor's alerts and the verifier's findings) is
delivered to each configured sink, then its offset is committed: at least once, in
order, the position kept by Kafka (consumer group ``careledger-alert-forwarder-<name>``).
A sink that fails is retried with backoff, never skipped; a forwarder stopped or
killed before its commit delivers the record again on restart, so receivers dedupe by
the delivery id (``<topic>/<partition>/<offset>``, also the alert id for alerts).

Sinks (ADR 0034):

* **syslog**: RFC 5424 messages over TLS with RFC 5425 octet-counting framing, the
  payload ArcSight CEF (facility 13, log audit; the severity mapped from the alert's).
  The server's certificate is checked against a CA; a client certificate is presented
  when one is configured.
* **webhook**: an HTTPS ``POST`` of ``{"delivery": ..., "record": ...}`` (the record as
  published), signed with HMAC-SHA256 over ``<timestamp>.<body>`` under a shared secret
  read from a file only its owner may read (``X-Careledger-Signature: v1=<hex>``,
  ``X-Careledger-Timestamp``); any 2xx is delivery.

A record that is not a JSON object is not dropped: it is forwarded as a
``BAD_ALERT_RECORD`` event naming its position, size and SHA-256 (never its bytes).
Patients appear only as the pseudonyms the alerts carry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from careledger import version
from careledger.safe_text import display
from verifiers.auditor.alerts_view import RULE_MEANINGS

log = logging.getLogger("careledger.alerts.forward")

#: syslog facility 13: log audit (RFC 5424 table 1)
FACILITY_LOG_AUDIT: Final = 13
#: alert or finding severity -> (syslog severity, CEF severity 0..10)
SEVERITIES: Final[Mapping[str, tuple[int, int]]] = {
    "critical": (2, 10),
    "high": (3, 8),
    "medium": (4, 5),
    "warning": (4, 5),
    "low": (5, 3),
    "info": (6, 1),
}
VENDOR: Final = "careledger"
PRODUCT: Final = "careledger"
#: retries of a failed delivery wait this long, doubling, at most RETRY_MAX_S
RETRY_FIRST_S: Final = 0.5
RETRY_MAX_S: Final = 30.0
#: the shortest webhook secret accepted (bytes of the file's text)
MIN_SECRET_BYTES: Final = 32
_HOSTNAME: Final = re.compile(r"[!-~]{1,255}")


class ForwardError(Exception):
    """A sink did not take a record (retried by the forwarder)."""


@dataclass(frozen=True)
class Delivery:
    """One record of the alerts topic, as the sinks get it."""

    topic: str
    partition: int
    offset: int
    value: bytes

    @property
    def delivery_id(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    def record(self) -> dict[str, Any]:
        """The published record, or a BAD_ALERT_RECORD event standing for it."""
        try:
            doc = json.loads(self.value)
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if isinstance(doc, dict):
            return doc
        return {
            "code": "BAD_ALERT_RECORD",
            "severity": "high",
            "message": (
                f"record {self.delivery_id} of {len(self.value)} bytes is not a JSON object "
                f"(sha256 {hashlib.sha256(self.value).hexdigest()})"
            ),
        }


# --- CEF ------------------------------------------------------------------------------


def _cef_header(value: object) -> str:
    return display(value).replace("\\", "\\\\").replace("|", "\\|")


def _cef_value(value: object) -> str:
    # display() has already turned CR, LF and every other control into visible escapes
    return display(value).replace("\\", "\\\\").replace("=", "\\=")


def _epoch_ms(timestamp: object) -> str | None:
    try:
        moment = dt.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return str(int(moment.timestamp() * 1000))


def cef_event(record: Mapping[str, Any], delivery_id: str) -> str:
    """The record as one CEF:0 line: an alert (it has a ``rule``) or a finding."""
    severity = str(record.get("severity", "info"))
    cef_severity = SEVERITIES.get(severity, (6, 1))[1]
    ext: list[tuple[str, object]] = [("externalId", record.get("alert_id") or delivery_id)]
    if "rule" in record:
        rule = str(record["rule"])
        class_id, name = rule, RULE_MEANINGS.get(rule, rule)
        evidence = record.get("evidence") or {}
        refs = record.get("patient_refs") or []
        patient = record.get("patient_ref") or f"{len(refs)} patients"
        ext += [
            ("cat", "alert"),
            ("suser", record.get("actor_id", "")),
            ("cs1Label", "patientPseudonym"),
            ("cs1", patient),
            ("cnt", evidence.get("flagged_events", len(record.get("event_ids") or []))),
            ("cs2Label", "score"),
            ("cs2", record.get("score", "")),
            ("cs3Label", "status"),
            ("cs3", record.get("status", "open")),
        ]
        for key, at in (("rt", record.get("first_at")), ("end", record.get("last_at"))):
            ms = _epoch_ms(at)
            if ms is not None:
                ext.append((key, ms))
    else:
        class_id = str(record.get("code", "FINDING"))
        name = str(record.get("message", class_id))[:512]
        ext.append(("cat", "integrity"))
        for label, key, value in (
            ("cs4", "chain", record.get("chain_id")),
            ("cn1", "height", record.get("height")),
            ("cn2", "index", record.get("index")),
        ):
            if value is not None:
                ext += [(f"{label}Label", key), (label, value)]
    ext.append(("cs5Label", "delivery"))
    ext.append(("cs5", delivery_id))
    header = "|".join(
        _cef_header(v) for v in ("CEF:0", VENDOR, PRODUCT, version(), class_id, name, cef_severity)
    )
    return header + "|" + " ".join(f"{k}={_cef_value(v)}" for k, v in ext)


# --- RFC 5424 over TLS (RFC 5425) -------------------------------------------------------


def syslog_frame(
    record: Mapping[str, Any], delivery_id: str, *, hostname: str, now: dt.datetime
) -> bytes:
    """One octet-counted RFC 5424 message (RFC 5425 framing) carrying the CEF line."""
    severity = SEVERITIES.get(str(record.get("severity", "info")), (6, 1))[0]
    pri = FACILITY_LOG_AUDIT * 8 + severity
    host = hostname if _HOSTNAME.fullmatch(hostname) else "-"
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    msgid = "alert" if "rule" in record else "finding"
    message = f"<{pri}>1 {stamp} {host} careledger - {msgid} - " + cef_event(record, delivery_id)
    data = message.encode("utf-8")
    return f"{len(data)} ".encode("ascii") + data


class Sink(Protocol):
    name: str

    def deliver(self, delivery: Delivery, record: Mapping[str, Any]) -> None:
        """Raise ForwardError unless the record was taken."""

    def close(self) -> None: ...


class SyslogTlsSink:
    """RFC 5425: one TLS connection, kept open, made again after a failure."""

    name = "syslog"

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        timeout_s: float = 10.0,
        hostname: str | None = None,
    ) -> None:
        self.host, self.port, self.context, self.timeout_s = host, port, context, timeout_s
        self.hostname = hostname or socket.gethostname()
        self._sock: ssl.SSLSocket | None = None

    def deliver(self, delivery: Delivery, record: Mapping[str, Any]) -> None:
        frame = syslog_frame(
            record, delivery.delivery_id, hostname=self.hostname, now=dt.datetime.now(dt.UTC)
        )
        try:
            if self._sock is None:
                raw = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
                self._sock = self.context.wrap_socket(raw, server_hostname=self.host)
            self._sock.sendall(frame)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise ForwardError(f"syslog {self.host}:{self.port}: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``: what a receiver recomputes
    (with ``hmac.compare_digest``) before trusting a delivery."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


class WebhookSink:
    """HTTPS POST, HMAC-signed; any 2xx is delivery."""

    name = "webhook"

    def __init__(
        self, url: str, secret: bytes, context: ssl.SSLContext, *, timeout_s: float = 10.0
    ) -> None:
        if not url.startswith("https://"):
            raise ValueError(f"webhook URL {url!r} is not https://")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the webhook secret has fewer than {MIN_SECRET_BYTES} bytes")
        self.url, self.secret, self.context, self.timeout_s = url, secret, context, timeout_s

    def deliver(self, delivery: Delivery, record: Mapping[str, Any]) -> None:
        body = json.dumps(
            {"delivery": delivery.delivery_id, "record": record},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
        stamp = str(int(time.time()))
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"careledger/{version()}",
                "X-Careledger-Delivery": delivery.delivery_id,
                "X-Careledger-Timestamp": stamp,
                "X-Careledger-Signature": webhook_signature(self.secret, stamp, body),
            },
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout_s, context=self.context
            ) as answer:
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
        except (OSError, ssl.SSLError) as exc:
            raise ForwardError(f"webhook {self.url}: {exc}") from exc
        if not 200 <= status < 300:
            raise ForwardError(f"webhook {self.url}: HTTP {status}")

    def close(self) -> None:
        pass


# --- the forwarder ----------------------------------------------------------------------


@dataclass
class ForwardStats:
    forwarded: int = 0
    retries: int = 0
    bad_records: int = 0
    #: monotonic time since when a record waits for a sink that refuses it (None: none)
    retrying_since: float | None = None
    #: monotonic time the forwarder last polled Kafka or delivered
    last_turn: float = field(default_factory=time.monotonic)


def deliver_all(
    delivery: Delivery,
    sinks: Sequence[Sink],
    stop: threading.Event,
    stats: ForwardStats,
    sleep: Callable[[float], bool] | None = None,
) -> bool:
    """Deliver to every sink, each retried with backoff until it takes the record;
    False if stopped first (then nothing is committed). A sink that took the record
    is not asked again when another one is retried."""
    wait = sleep or stop.wait
    record = delivery.record()
    if record.get("code") == "BAD_ALERT_RECORD":
        stats.bad_records += 1
        log.error("%s", record["message"])
    pending = list(sinks)
    backoff = RETRY_FIRST_S
    while pending:
        if stop.is_set():
            return False
        failed = []
        for sink in pending:
            try:
                sink.deliver(delivery, record)
            except ForwardError as exc:
                failed.append(sink)
                log.warning("%s; retrying in %.1f s", exc, backoff)
        pending = failed
        if pending:
            stats.retries += 1
            if stats.retrying_since is None:
                stats.retrying_since = time.monotonic()
            if wait(backoff):
                return False
            backoff = min(backoff * 2, RETRY_MAX_S)
    stats.forwarded += 1
    stats.retrying_since = None
    stats.last_turn = time.monotonic()
    return True


def read_webhook_secret(path: Path) -> bytes:
    """The shared secret, from a file only its owner may read (like a key)."""
    from careledger.credentials import read_secret_file

    secret = read_secret_file(path, "webhook secret file").encode("utf-8")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"webhook secret file {path}: fewer than {MIN_SECRET_BYTES} bytes")
    return secret
