"""Alerts into the security team's tools (issue 13 point 4): CEF over RFC 5424/5425
syslog on TLS, and HMAC-signed HTTPS webhooks, at least once.

The formats are checked against their specifications' rules (CEF escaping, RFC 5424
header fields, RFC 5425 octet counting) with hostile values (pipes, equals signs, CR
LF, ANSI escapes in an actor id); the sinks run against real TLS listeners on loopback
(a syslog receiver, an HTTPS webhook) with certificates of a CA made here; the retry
rule (each sink until it takes the record, never one that took it again) is driven
directly. The Kafka side, with its commit order, is tests/integration/test_alert_forward.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.server
import json
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from careledger import tls
from careledger.keys import KeyFileError
from verifiers.auditor.forward import (
    FACILITY_LOG_AUDIT,
    Delivery,
    ForwardError,
    ForwardStats,
    SyslogTlsSink,
    WebhookSink,
    cef_event,
    deliver_all,
    read_webhook_secret,
    syslog_frame,
    webhook_signature,
)

ALERT: dict[str, Any] = {
    "alert_id": "a1b2",
    "rule": "NO_EXPLANATION",
    "severity": "high",
    "score": 7.5,
    "actor_id": "E1|x=y\r\nCEF:0|forged|\x1b[2J",
    "patient_ref": "3f2a9c",
    "patient_refs": ["3f2a9c"],
    "event_ids": ["e1", "e2"],
    "first_at": "2026-11-02T08:15:00.000000Z",
    "last_at": "2026-11-02T08:20:00.000000Z",
    "evidence": {"flagged_events": 2},
    "status": "open",
}
SECRET = b"s" * 40


def _ext(line: str) -> dict[str, str]:
    """CEF extension pairs (values may hold escaped '=' and spaces)."""
    ext = line.split("|", 7)[7]
    pairs = re.findall(r"(\w+)=((?:\\.|[^\\=])*?)(?= \w+=|$)", ext)
    return dict(pairs)


def test_a_cef_alert_line_escapes_what_the_sources_wrote() -> None:
    line = cef_event(ALERT, "alerts/0/7")
    assert "\r" not in line and "\n" not in line and "\x1b" not in line
    # the first seven unescaped pipes end the header (pipes in the extension need no
    # escape, CEF's rule): the actor id cannot add a header field
    header = re.split(r"(?<!\\)\|", line, maxsplit=7)
    assert len(header) == 8 and header[7].startswith("externalId=a1b2 "), header
    assert header[:3] == ["CEF:0", "careledger", "careledger"]
    assert header[4] == "NO_EXPLANATION" and header[6] == "8"
    ext = _ext(line)
    assert ext["externalId"] == "a1b2"
    assert ext["cs1Label"] == "patientPseudonym" and ext["cs1"] == "3f2a9c"
    assert ext["suser"].startswith("E1|x\\=y\\\\r\\\\nCEF:0|forged|")  # '=' and '\' escaped
    moment = dt.datetime(2026, 11, 2, 8, 15, tzinfo=dt.UTC)
    assert ext["rt"] == str(int(moment.timestamp() * 1000))
    assert ext["cs5"] == "alerts/0/7" and ext["cnt"] == "2"


def test_a_finding_and_an_unreadable_record_are_forwarded_too() -> None:
    finding = {
        "code": "HEIGHT_FORK",
        "severity": "critical",
        "message": "two blocks at 4",
        "chain_id": "org/events/1",
        "height": 4,
    }
    line = cef_event(finding, "alerts/1/3")
    assert line.split("|")[4] == "HEIGHT_FORK" and line.split("|")[6] == "10"
    assert "cs4=org/events/1" in line and "cn1=4" in line
    bad = Delivery("alerts", 0, 9, b"\xff\x00 not json")
    record = bad.record()
    assert record["code"] == "BAD_ALERT_RECORD"
    assert hashlib.sha256(b"\xff\x00 not json").hexdigest() in record["message"]
    assert "not json" not in record["message"]  # its bytes are never forwarded


def test_a_syslog_frame_is_rfc5424_in_rfc5425_octet_counting() -> None:
    now = dt.datetime(2026, 12, 5, 5, 0, 1, 250000, tzinfo=dt.UTC)
    frame = syslog_frame(ALERT, "alerts/0/7", hostname="ward-7", now=now)
    length, _, message = frame.partition(b" ")
    assert int(length) == len(message)
    text = message.decode("utf-8")
    pri = FACILITY_LOG_AUDIT * 8 + 3  # high -> error
    assert text.startswith(f"<{pri}>1 2026-12-05T05:00:01.250000Z ward-7 careledger - alert - ")
    assert text.endswith(cef_event(ALERT, "alerts/0/7"))
    spaced = syslog_frame(ALERT, "x", hostname="two words", now=now)
    assert b" - careledger - alert - " in spaced  # an unusable host name is the nil value


def test_the_webhook_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(SECRET, b"1733374800." + body, hashlib.sha256).hexdigest()
    assert webhook_signature(SECRET, "1733374800", body) == "v1=" + expected
    assert webhook_signature(SECRET, "1733374801", body) != "v1=" + expected


class _Flaky:
    name = "flaky"

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.got: list[str] = []

    def deliver(self, delivery: Delivery, record: Any) -> None:
        if self.fails:
            self.fails -= 1
            raise ForwardError("down")
        self.got.append(delivery.delivery_id)

    def close(self) -> None:
        pass


def test_each_sink_is_retried_until_it_takes_the_record_and_no_other_twice() -> None:
    steady, flaky = _Flaky(0), _Flaky(2)
    waits: list[float] = []
    stats = ForwardStats()
    delivery = Delivery("alerts", 0, 1, json.dumps(ALERT).encode())
    assert deliver_all(delivery, [steady, flaky], threading.Event(), stats, waits.append)
    assert steady.got == ["alerts/0/1"] and flaky.got == ["alerts/0/1"]
    assert waits == [0.5, 1.0] and stats.retries == 2 and stats.forwarded == 1


def test_a_stop_while_retrying_commits_nothing() -> None:
    stop = threading.Event()

    def wait(_s: float) -> bool:
        stop.set()
        return True

    stats = ForwardStats()
    delivery = Delivery("alerts", 0, 1, b"{}")
    assert not deliver_all(delivery, [_Flaky(5)], stop, stats, wait)
    assert stats.forwarded == 0


# --- real TLS listeners -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    home = tmp_path_factory.mktemp("pki")
    server = tls.server_cert(home / "ca", "siem", ("localhost", "127.0.0.1"))
    other = tls.server_cert(home / "other", "siem", ("localhost", "127.0.0.1"))
    return {
        "ca": server.ca,
        "cert": server.cert,
        "key": server.key,
        "other_cert": other.cert,
        "other_key": other.key,
    }


def _client(pki: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca"]))


@pytest.fixture
def syslog_server(pki: dict[str, Path]) -> Iterator[tuple[int, list[bytes]]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["cert"], pki["key"])
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with context.wrap_socket(conn, server_side=True) as tls_conn:
            data = b""
            while chunk := tls_conn.recv(65536):
                data += chunk
            while data:
                length, _, rest = data.partition(b" ")
                n = int(length)
                received.append(rest[:n])
                data = rest[n:]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], received
    listener.close()
    thread.join(5)


def test_the_syslog_sink_speaks_rfc5425_over_verified_tls(
    pki: dict[str, Path], syslog_server: tuple[int, list[bytes]]
) -> None:
    port, received = syslog_server
    sink = SyslogTlsSink("localhost", port, _client(pki), hostname="h")
    for offset in (1, 2):
        sink.deliver(Delivery("alerts", 0, offset, b"{}"), dict(ALERT, alert_id=f"a{offset}"))
    sink.close()
    threading.Event().wait(0.5)
    assert len(received) == 2
    assert all(m.startswith(b"<107>1 ") for m in received)  # 13*8+3
    assert b"externalId=a2" in received[1]


def test_a_syslog_receiver_of_another_ca_is_refused(pki: dict[str, Path]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["other_cert"], pki["other_key"])
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    sink = SyslogTlsSink("localhost", listener.getsockname()[1], _client(pki))
    with pytest.raises(ForwardError):
        sink.deliver(Delivery("alerts", 0, 1, b"{}"), ALERT)
    listener.close()


class _Hook(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    got: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((dict(self.headers), body))
        self.send_response(self.answers.pop(0) if self.answers else 204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def webhook(pki: dict[str, Path]) -> Iterator[tuple[str, type[_Hook]]]:
    class Hook(_Hook):
        answers: ClassVar[list[int]] = [503]
        got: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["cert"], pki["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}/careledger", Hook
    server.shutdown()
    server.server_close()


def test_the_webhook_is_signed_and_a_5xx_is_not_delivery(
    pki: dict[str, Path], webhook: tuple[str, type[_Hook]]
) -> None:
    url, hook = webhook
    sink = WebhookSink(url, SECRET, _client(pki))
    delivery = Delivery("alerts", 2, 11, b"{}")
    with pytest.raises(ForwardError, match="HTTP 503"):
        sink.deliver(delivery, ALERT)
    sink.deliver(delivery, ALERT)  # 204 the second time
    headers, body = hook.got[-1]
    assert headers["X-Careledger-Delivery"] == "alerts/2/11"
    stamp = headers["X-Careledger-Timestamp"]
    assert hmac.compare_digest(
        headers["X-Careledger-Signature"], webhook_signature(SECRET, stamp, body)
    )
    assert json.loads(body) == {"delivery": "alerts/2/11", "record": ALERT}


def test_a_webhook_without_tls_or_with_a_short_secret_is_refused(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="https"):
        WebhookSink("http://siem.example/hook", SECRET, _client(pki))
    with pytest.raises(ValueError, match="32 bytes"):
        WebhookSink("https://siem.example/hook", b"short", _client(pki))
    secret = tmp_path / "secret"
    secret.write_text("x" * 40)
    os.chmod(secret, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_webhook_secret(secret)
    os.chmod(secret, 0o600)
    assert read_webhook_secret(secret) == b"x" * 40
