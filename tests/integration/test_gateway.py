"""The ingest gateway against the real broker (and, end to end, the processor and verifier).

The gateway runs as a child process (`careledger gateway`, ports chosen by the OS and
reported through --ready-file) with TLS certificates from trustme; senders talk to it
over real sockets. Nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.keys import write_keypair
from careledger.processes import child_env
from producers.gateway.auth import signed_headers
from producers.gateway.framing import octet_counted
from tests.integration.pipeline import (
    REPO,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
    with_source,
)

pytestmark = pytest.mark.integration

T_EVENT = "2026-11-29T09:15:00.000000Z"


# --------------------------------------------------------------------------- records
def r4_event(patient: str = "PAT-R4-1") -> dict[str, Any]:
    """A FHIR R4 AuditEvent (BALP-style patient read)."""
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R",
        "period": {"start": "2026-11-29T09:15:00Z"},
        "recorded": "2026-11-29T09:15:01Z",
        "outcome": "0",
        "purposeOfEvent": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "TREAT",
                    }
                ]
            }
        ],
        "agent": [
            {
                "who": {"identifier": {"value": "dr.jones"}},
                "name": "Dr Jones",
                "requestor": True,
            }
        ],
        "source": {"observer": {"display": "ehr-east"}, "type": [{"code": "4"}]},
        "entity": [
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                },
            }
        ],
    }


def r5_event(patient: str = "PAT-R5-1") -> dict[str, Any]:
    """A FHIR R5 AuditEvent (category/code, occurredDateTime, patient, outcome.code)."""
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                        "code": "rest",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}]},
        "action": "R",
        "occurredDateTime": "2026-11-29T09:16:00Z",
        "recorded": "2026-11-29T09:16:01Z",
        "outcome": {
            "code": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-outcome",
                "code": "0",
            }
        },
        "patient": {"reference": f"Patient/{patient}"},
        "agent": [{"who": {"identifier": {"value": "nurse.kim"}}, "requestor": True}],
        "source": {"observer": {"display": "ehr-west"}},
    }


def bundle(kind: str, resources: list[Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": r,
                "request": {"method": "POST", "url": "AuditEvent"},
            }
            for r in resources
        ],
    }


def atna_xml(patients: list[str], filler: int = 0) -> bytes:
    """A DICOM PS3.15 audit message naming ``patients`` (``filler`` bytes of padding
    in a ParticipantObjectName, to make it large)."""
    objects = "".join(
        f'<ParticipantObjectIdentification ParticipantObjectID="{p}^^^&amp;1.2.3&amp;ISO" '
        'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">'
        '<ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
        'originalText="Patient Number"/>'
        + (f"<ParticipantObjectName>{'x' * filler}</ParticipantObjectName>" if filler else "")
        + "</ParticipantObjectIdentification>"
        for p in patients
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<AuditMessage><EventIdentification EventActionCode="R" '
        'EventDateTime="2026-11-29T09:20:00.000Z" EventOutcomeIndicator="0">'
        '<EventID csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/>'
        "</EventIdentification>"
        '<ActiveParticipant UserID="radiologist.lee" UserIsRequestor="true">'
        '<RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source"/>'
        "</ActiveParticipant>"
        '<AuditSourceIdentification AuditSourceID="pacs-1"/>' + objects + "</AuditMessage>"
    ).encode()


def syslog_message(xml: bytes, pri: int = 85, bom: bool = False) -> bytes:
    header = f"<{pri}>1 2026-11-29T09:20:01.000Z pacs.hospital.example PACS 4711 IHE+RFC-3881 - "
    return header.encode() + (b"\xef\xbb\xbf" if bom else b"") + xml


# --------------------------------------------------------------------------- gateway
def start_cli(settings: Settings, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """``careledger ARGS`` in its own process group, output to ``log_path``."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "commands.cli", *args],
            cwd=REPO,
            env=child_env(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class Running:
    settings: Settings
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path
    ca: trustme.CA
    client_cert: trustme.LeafCert
    request_key: Any
    workdir: Path

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.ports[scheme]}{path}"

    def client_context(self, with_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if with_cert:
            self.client_cert.configure_cert(ctx)
        return ctx


def _tls_files(tmp_path: Path) -> tuple[trustme.CA, trustme.LeafCert, Path, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server_pem = tmp_path / "tls" / "server.pem"
    server_pem.parent.mkdir(parents=True, exist_ok=True)
    server.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca_pem = tmp_path / "tls" / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    client = ca.issue_cert("ehr-east.hospital.example")
    return ca, client, server_pem, ca_pem


def _fingerprint(cert: trustme.LeafCert) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return hashlib.sha256(der).hexdigest()


def start_gateway(settings: Settings, tmp_path: Path, **changes: Any) -> Running:
    if settings.source_key is None:  # the gateway refuses to start without one (issue 12)
        source_key = tmp_path / "keys" / "gateway-unregistered.key"
        if not source_key.exists():
            write_keypair(source_key)
        settings = settings.replace(source_key=source_key)
    ca, client, server_pem, ca_pem = _tls_files(tmp_path)
    key = write_keypair(tmp_path / "keys" / "ehr-request.key")
    auth = tmp_path / "senders.toml"
    auth.write_text(
        "[[source]]\n"
        'id = "ehr-east"\n'
        f'certificate_sha256 = ["{_fingerprint(client)}"]\n'
        'request_keys = ["keys/ehr-request.key.pub"]\n'
        # syslog: the first open source listing the peer's address is the sender
        "\n[[source]]\n"
        'id = "pacs-net"\n'
        "open = true\n"
        'addresses = ["127.0.0.1/32"]\n'
        "\n[[source]]\n"
        'id = "legacy-lab"\n'
        "open = true\n"
        'addresses = ["127.0.0.1/32", "::1/128"]\n',
        encoding="utf-8",
    )
    s = settings.replace(
        gateway_http_port=0,
        gateway_https_port=0,
        gateway_syslog_tcp_port=0,
        gateway_syslog_tls_port=0,
        gateway_syslog_udp_port=0,
        gateway_tls_cert=server_pem,
        gateway_tls_key=server_pem,
        gateway_tls_client_ca=ca_pem,
        gateway_auth_file=auth,
        **changes,
    )
    ready = tmp_path / f"gateway-{uuid.uuid4().hex[:6]}.json"
    log = tmp_path / "gateway.log"
    proc = start_cli(s, log, "gateway", "--ready-file", str(ready))
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError("gateway did not start:\n" + log.read_text(errors="replace"))
        time.sleep(0.1)
    ports = json.loads(ready.read_text())["ports"]
    return Running(s, proc, ports, log, ca, client, key, tmp_path)


@contextmanager
def relaying_gateway(isolated: Settings, tmp_path: Path, **changes: Any) -> Iterator[Running]:
    """A gateway that signs what it relays (ADR 0010) with a key registered to sign for
    the senders it authenticates; stopped afterwards, its log free of tracebacks."""
    relaying = with_source(
        isolated, tmp_path, "gateway-test", signs_for=("ehr-east", "legacy-lab", "pacs-net")
    )
    running = start_gateway(relaying, tmp_path, **changes)
    try:
        yield running
    finally:
        stop(running.proc)
        text = running.log.read_text(errors="replace")
        assert "Traceback" not in text, text[-4000:]


@pytest.fixture
def gateway(isolated: Settings, tmp_path: Path) -> Iterator[Running]:
    with relaying_gateway(isolated, tmp_path) as running:
        yield running


# --------------------------------------------------------------------------- Kafka
def read_topic(
    settings: Settings,
    topic: str,
    want: int,
    timeout: float = 30.0,
    weight: Callable[[Any], int] = lambda _m: 1,
) -> list[Any]:
    """Messages of ``topic`` from the beginning (all partitions) until their ``weight``
    (default: one per message) adds up to at least ``want``."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"gateway-test-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 16 * 1024 * 1024,
            },
        )
    )
    consumer.subscribe([topic])
    got: list[Any] = []
    total = 0
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if total >= want:
                    if quiet_until is None:
                        quiet_until = time.monotonic() + 1.0
                    elif time.monotonic() > quiet_until:
                        break
                continue
            if msg.error():
                continue
            got.append(msg)
            total += weight(msg)
    finally:
        consumer.close()
    assert total >= want, f"{topic}: {total} of {want} messages"
    return got


def raw_records(settings: Settings, want: int) -> list[dict[str, Any]]:
    return [json.loads(m.value()) for m in read_topic(settings, settings.topic_raw, want)]


def events_in(msg: Any) -> list[dict[str, Any]]:
    """The events of one record of the events topic: a batch record carries several, a
    signed-event envelope or a plain event one."""
    doc = json.loads(msg.value())
    if doc.get("schema") == "careledger.signed-batch/1":
        return list(doc["events"])
    return [doc.get("event", doc)]


def event_records(settings: Settings, want: int) -> list[Any]:
    """The records of the events topic, until they carry at least ``want`` events."""
    return read_topic(settings, settings.topic_events, want, weight=lambda m: len(events_in(m)))


def events_of(settings: Settings, want: int) -> list[dict[str, Any]]:
    return [e for m in event_records(settings, want) for e in events_in(m)]


def headers_of(msg: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in (msg.headers() or [])}


# --------------------------------------------------------------------------- senders
def post(
    running: Running,
    path: str,
    doc: Any,
    *,
    scheme: str = "http",
    sign: bool = True,
    cert: bool = False,
    headers: dict[str, str] | None = None,
    now: float | None = None,
) -> httpx.Response:
    """POST ``doc``, signed as ehr-east at ``now`` (a signed request is accepted once:
    to send the same body again within a second, sign it at another ``now``)."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    h = {"Content-Type": "application/fhir+json", **(headers or {})}
    if sign:
        h.update(signed_headers("ehr-east", running.request_key, "POST", path, body, now=now))
    verify: ssl.SSLContext | bool = running.client_context(cert) if scheme == "https" else True
    with httpx.Client(verify=verify, timeout=30) as client:
        return client.post(running.url(path, scheme), content=body, headers=h)


def send_stream(running: Running, protocol: str, data: bytes, *, cert: bool = True) -> None:
    """Write ``data`` to a syslog TCP or TLS listener, then wait until the gateway has
    processed it and closed the connection (it reads on only after Kafka's ack)."""
    port = running.ports[protocol]
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock: socket.socket = raw
    if protocol == "syslog-tls":
        sock = running.client_context(cert).wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        sock.sendall(data)
        if isinstance(sock, ssl.SSLSocket):
            sock = sock.unwrap()  # close_notify: the gateway sees the end of the stream
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    finally:
        sock.close()


def health_text(running: Running) -> str:
    with httpx.Client(timeout=30) as c:
        doc = c.get(running.url("/health")).json()
    return " ".join(i.get("diagnostics", "") for i in doc["issue"])


def send_udp(running: Running, message: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(message, ("127.0.0.1", running.ports["syslog-udp"]))


# =========================================================================== tests
def test_http_sender_checks_and_fhir_documents(gateway: Running) -> None:
    doc = r4_event()
    # no credentials
    r = post(gateway, "/AuditEvent", doc, sign=False)
    assert r.status_code == 401
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["code"] == "login"
    refusals = [r.content]
    # a signature by the wrong key / over another body
    body = json.dumps(doc).encode()
    h = signed_headers("ehr-east", gateway.request_key, "POST", "/AuditEvent", body + b" ")
    with httpx.Client(timeout=30) as c:
        r = c.post(gateway.url("/AuditEvent"), content=body, headers=h)
    assert r.status_code == 401
    refusals.append(r.content)
    # a source id that exists and one that does not: the same answer (issue 12)
    for claimed in ("ehr-east", "no-such-source"):
        r = post(gateway, "/AuditEvent", doc, sign=False, headers={"X-Careledger-Source": claimed})
        assert r.status_code == 401
        refusals.append(r.content)
    assert len(set(refusals)) == 1
    # HTTPS without a client certificate and without a signature
    assert post(gateway, "/AuditEvent", doc, scheme="https", sign=False).status_code == 401
    # an open legacy source names itself
    r = post(
        gateway,
        "/AuditEvent",
        r4_event(),
        sign=False,
        headers={"X-Careledger-Source": "legacy-lab"},
    )
    assert r.status_code == 201, r.text
    # too large (Content-Length checked before reading) and wrong media type
    big = b"{" + b" " * (gateway.settings.gateway_max_record_bytes + 10) + b"}"
    r = post(gateway, "/AuditEvent", big)
    assert r.status_code == 413 and r.json()["issue"][0]["code"] == "too-long"
    r = post(gateway, "/AuditEvent", doc, headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415 and r.json()["issue"][0]["code"] == "not-supported"
    # metadata and health
    with httpx.Client(timeout=30) as c:
        meta = c.get(gateway.url("/metadata")).json()
        health = c.get(gateway.url("/health"))
    assert meta["resourceType"] == "CapabilityStatement"
    assert meta["rest"][0]["resource"][0]["type"] == "AuditEvent"
    assert health.status_code == 200, health.text
    # only the accepted record was ledgered
    (raw,) = raw_records(gateway.settings, 1)
    assert raw["transport"]["source_id"] == "legacy-lab" and raw["transport"]["auth"] == "open"


def test_a_captured_signed_request_is_accepted_once(gateway: Running) -> None:
    """Replay (issue 12): the same signed request sent three times within the signature
    window is recorded once; the copies get the generic 401."""
    body = json.dumps(r4_event("PAT-REPLAY")).encode()
    h = {
        **signed_headers("ehr-east", gateway.request_key, "POST", "/AuditEvent", body),
        "Content-Type": "application/fhir+json",
    }
    with httpx.Client(timeout=30) as c:
        codes = [c.post(gateway.url("/AuditEvent"), content=body, headers=h) for _ in range(3)]
    assert [r.status_code for r in codes] == [201, 401, 401], codes[-1].text
    raws = raw_records(gateway.settings, 1)
    assert len(raws) == 1
    assert len(events_of(gateway.settings, 1)) == 1


def test_fhir_records_end_in_verified_blocks(isolated: Settings, tmp_path: Path) -> None:
    # ADR 0010: the gateway signs with its own source key on behalf of the senders it
    # authenticated, and the processor accepts signed events only.
    signing = with_source(
        with_keys(isolated, tmp_path),
        tmp_path,
        "gateway-test",
        signs_for=("ehr-east", "legacy-lab", "pacs-net"),
    )
    gateway = start_gateway(signing, tmp_path)
    try:
        _fhir_end_to_end(gateway, tmp_path)
    finally:
        stop(gateway.proc)
    assert "Traceback" not in gateway.log.read_text(errors="replace")


def _fhir_end_to_end(gateway: Running, tmp_path: Path) -> None:
    s = gateway.settings
    r4 = r4_event("PAT-A")
    r = post(gateway, "/AuditEvent", r4)
    assert r.status_code == 201, r.text
    loc_r4 = r.headers["location"]
    assert loc_r4.startswith("AuditEvent/")
    # R5 over HTTPS, identified by its client certificate (mTLS), minimal answer
    r = post(
        gateway,
        "/AuditEvent",
        r5_event("PAT-B"),
        scheme="https",
        sign=False,
        cert=True,
        headers={"Prefer": "return=minimal"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"].startswith("AuditEvent/") and r.content == b""
    # a batch with a bad entry: per-entry answers
    batch = bundle(
        "batch", [r4_event("PAT-C"), {"resourceType": "Patient", "id": "x"}, r5_event("PAT-D")]
    )
    r = post(gateway, "/", batch)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["resourceType"] == "Bundle" and answer["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses[0].startswith("201") and statuses[2].startswith("201")
    assert statuses[1].startswith(("400", "422"))
    assert answer["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert answer["entry"][0]["response"]["location"].startswith("AuditEvent/")
    # a transaction with a bad entry is refused whole, nothing recorded
    r = post(gateway, "/", bundle("transaction", [r4_event("PAT-E"), {"resourceType": "Basic"}]))
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    # a good transaction
    r = post(gateway, "/", bundle("transaction", [r4_event("PAT-F")]))
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"

    raws = raw_records(s, 4)
    assert len(raws) == 4
    by_sha = {x["sha256"]: x for x in raws}
    for x in raws:
        data = base64.b64decode(x["data"])
        assert hashlib.sha256(data).hexdigest() == x["sha256"]
        assert x["transport"]["source_id"] == "ehr-east"
    auths = sorted(x["transport"]["auth"] for x in raws)
    assert auths == ["mtls", "signature", "signature", "signature"]
    # ADR 0020: the gateway relays in batch records (statement, signature, events once)
    signed = [json.loads(m.value()) for m in event_records(s, 5)]
    assert sum(len(doc["events"]) for doc in signed) == 5
    for doc in signed:
        assert doc["schema"] == "careledger.signed-batch/1"
        statement = doc["statement"]
        assert statement["signed_by"] == "gateway-test"
        assert statement["source_id"] == "ehr-east"  # the authenticated sender
        assert statement["size"] == len(doc["events"])
    seqs = sorted(d["statement"]["first_seq"] + i for d in signed for i in range(len(d["events"])))
    assert seqs == [1, 2, 3, 4, 5], "the sender's sequence numbers, contiguous"
    events = events_of(s, 5)
    assert len(events) == 5
    assert {e["patient"]["id"] for e in events} == {"PAT-A", "PAT-B", "PAT-C", "PAT-D", "PAT-F"}
    for e in events:
        assert e["raw_ref"]["sha256"] in by_sha  # every event names its raw record
    assert (
        loc_r4
        == f"AuditEvent/{next(e['event_id'] for e in events if e['patient']['id'] == 'PAT-A')}"
    )
    # the refused batch entry and the refused transaction are dead letters
    letters = read_topic(s, s.topic_dead_letter, 2)
    codes = sorted(headers_of(m)["careledger-error-code"] for m in letters)
    assert "TRANSACTION_REFUSED" in codes and len(codes) == 2

    # chained and verified: raw records in chains of their own, signed events only
    ps = processor_settings(s, require_source_signatures=True)
    proc = start_processor(ps, tmp_path / "processor.log")
    try:
        store = store_for(ps)

        def stored() -> bool:
            raw_rows = store.backend.execute(f"SELECT count() FROM {store.db}.raw_records")
            ev_rows = store.backend.execute(f"SELECT count() FROM {store.db}.access_events")
            return int(raw_rows[0][0]) == 4 and int(ev_rows[0][0]) == 5

        wait_until(stored, 90, what="raw records and events chained")
    finally:
        stop(proc)
    result = run_cli(ps, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    chains = {c["chain_id"] for c in report["chains"]}
    assert any(f"/{s.topic_raw}/" in c for c in chains)
    assert report["result"] == "intact"
    assert not read_topic(s, s.topic_quarantine, 0, timeout=3)


def test_a_bundle_is_relayed_as_one_batch_record(isolated: Settings, tmp_path: Path) -> None:
    # ADR 0020: the events of one group leave as one signed batch record per sender,
    # acknowledged to the sender only once Kafka acknowledged that record.
    from careledger_core.batch_record import open_batch_record

    relaying = with_source(isolated, tmp_path, "gateway-test", signs_for=("ehr-east",))
    # batches close at the group's flush only (not after 50 ms), so the count is exact
    running = start_gateway(relaying, tmp_path, source_batch_max_ms=60_000)
    try:
        s = running.settings
        first = [r4_event(f"PAT-{i}") for i in range(40)]
        r = post(running, "/", bundle("batch", first))
        assert r.status_code == 200, r.text
        assert all(e["response"]["status"].startswith("201") for e in r.json()["entry"])
        records = event_records(s, 40)
        assert len(records) == 1, "40 events, one record"
        opened = open_batch_record(records[0].value())  # the root covers the 40 events
        st = opened.statement
        assert (st.source_id, st.signed_by, st.first_seq, st.size) == (
            "ehr-east",
            "gateway-test",
            1,
            40,
        )
        assert records[0].key() == f"ehr-east/{st.epoch}/1".encode()
        r = post(running, "/", bundle("batch", [r4_event(f"PAT-B{i}") for i in range(30)]))
        assert r.status_code == 200, r.text
        records = event_records(s, 70)
        assert len(records) == 2
        second = open_batch_record(
            next(m.value() for m in records if m.key() != f"ehr-east/{st.epoch}/1".encode())
        )
        assert (second.statement.first_seq, second.statement.size) == (41, 30)
        assert second.statement.epoch == st.epoch
        assert {json.loads(e)["patient"]["id"] for e in opened.events} == {
            f"PAT-{i}" for i in range(40)
        }
    finally:
        stop(running.proc)
    assert "Traceback" not in running.log.read_text(errors="replace")


def test_syslog_tcp_tls_udp_and_a_64_kib_message(gateway: Running, tmp_path: Path) -> None:
    s = gateway.settings
    small = atna_xml(["MRN-1"])
    four = atna_xml(["MRN-2", "MRN-3", "MRN-4", "MRN-5"])
    large = atna_xml(["MRN-6"], filler=70 * 1024)
    # TCP: octet counting, then non-transparent, one connection
    send_stream(
        gateway,
        "syslog-tcp",
        octet_counted(syslog_message(small, pri=13)) + syslog_message(four, pri=191) + b"\n",
    )
    # TLS with a client certificate (source by mTLS), octet counting, BOM, and 64+ KiB
    big_frame = syslog_message(large, pri=85, bom=True)
    assert len(big_frame) > 64 * 1024
    send_stream(gateway, "syslog-tls", octet_counted(big_frame))
    # UDP: a datagram's address is forgeable, so UDP identifies no source (issue 12):
    # refused and counted, nothing recorded
    udp_message = syslog_message(atna_xml(["MRN-7"]), pri=0)
    send_udp(gateway, udp_message)

    raws = raw_records(s, 3)
    assert len(raws) == 3
    by_proto = {}
    for x in raws:
        by_proto.setdefault(x["transport"]["protocol"], []).append(x)
    assert {k: len(v) for k, v in by_proto.items()} == {"syslog-tcp": 2, "syslog-tls": 1}
    wait_until(lambda: "syslog-udp/unauthenticated 1" in health_text(gateway), 10, what="count")
    tls = by_proto["syslog-tls"][0]
    assert tls["transport"]["source_id"] == "ehr-east" and tls["transport"]["auth"] == "mtls"
    assert base64.b64decode(tls["data"]) == big_frame
    assert tls["sha256"] == hashlib.sha256(big_frame).hexdigest()
    tcp = sorted(by_proto["syslog-tcp"], key=lambda x: x["transport"]["pri"])
    assert [x["transport"]["pri"] for x in tcp] == ["13", "191"]
    assert [x["transport"]["framing"] for x in tcp] == ["octet-counting", "non-transparent"]
    for x in tcp:
        t = x["transport"]
        assert (t["hostname"], t["app_name"], t["procid"], t["msgid"]) == (
            "pacs.hospital.example",
            "PACS",
            "4711",
            "IHE+RFC-3881",
        )
        assert t["source_id"] == "pacs-net" and t["auth"] == "open"
        assert x["format"].startswith("syslog+")
    events = events_of(s, 6)
    assert {e["patient"]["id"].split("^")[0] for e in events} == {f"MRN-{i}" for i in range(1, 7)}
    assert not [
        m for m in read_topic(s, s.topic_dead_letter, 0, timeout=3) if m.value() == udp_message
    ]
    shas = {x["sha256"] for x in raws}
    assert all(e["raw_ref"]["sha256"] in shas for e in events)

    ps = processor_settings(with_keys(s, tmp_path))
    proc = start_processor(ps, tmp_path / "processor.log")
    try:
        store = store_for(ps)
        wait_until(
            lambda: (
                int(store.backend.execute(f"SELECT count() FROM {store.db}.raw_records")[0][0]) == 3
            ),
            90,
            what="raw records chained",
        )
    finally:
        stop(proc)
    result = run_cli(ps, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_xml_is_dead_lettered_and_the_gateway_keeps_running(gateway: Running) -> None:
    s = gateway.settings
    malformed = syslog_message(b"<?xml version='1.0'?><AuditMessage><EventIdentification>")
    bomb = syslog_message(
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        b"<AuditMessage>&lol3;</AuditMessage>"
    )
    not_syslog = b"this is not syslog at all"
    good = syslog_message(atna_xml(["MRN-OK"]))
    send_stream(
        gateway,
        "syslog-tcp",
        b"".join(octet_counted(m) for m in (malformed, bomb, not_syslog, good)),
    )
    # unauthenticated (UDP identifies no source): counted, never dead-lettered (issue 12)
    send_udp(gateway, malformed)
    letters = read_topic(s, s.topic_dead_letter, 3)
    by_sha = {hashlib.sha256(m.value()).hexdigest(): headers_of(m) for m in letters}
    for original, code in (
        (malformed, "NOT_XML"),
        (bomb, "XML_FORBIDDEN"),
        (not_syslog, "SYSLOG_NO_PRI"),
    ):
        h = by_sha[hashlib.sha256(original).hexdigest()]  # original bytes kept
        assert h["careledger-error-code"] == code
        assert h["careledger-error"]
        assert h["careledger-source-topic"].startswith("gateway/syslog-")
        assert h["careledger-raw-sha256"] == hashlib.sha256(original).hexdigest()
    assert len(letters) == 3  # not the UDP copy of `malformed`
    # the good frame after them went through, and the gateway still runs
    assert gateway.proc.poll() is None
    (raw,) = raw_records(s, 1)
    assert base64.b64decode(raw["data"]) == good
    send_stream(gateway, "syslog-tcp", octet_counted(good))
    assert len(raw_records(s, 2)) == 2
    # `careledger dead-letters` lists them
    listed = run_cli(s, "dead-letters", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert {"NOT_XML", "XML_FORBIDDEN", "SYSLOG_NO_PRI"} <= {r["code"] for r in rows}
    assert gateway.proc.poll() is None


def test_kafka_unavailable_is_503_and_nothing_is_claimed(
    isolated: Settings, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    running = start_gateway(isolated, tmp_path, kafka_port=dead_port, gateway_ack_timeout_s=2.0)
    try:
        started = time.monotonic()
        r = post(running, "/AuditEvent", r4_event())
        assert r.status_code == 503, r.text
        assert r.json()["issue"][0]["code"] == "transient"
        assert "retry-after" in r.headers
        assert time.monotonic() - started < 20
        with httpx.Client(timeout=30) as c:
            assert c.get(running.url("/health")).status_code == 503
    finally:
        stop(running.proc)
