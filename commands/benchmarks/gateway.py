"""`careledger benchmark-gateway`: records/s per transport, gateway + real Kafka.

Starts a gateway child process (`careledger gateway`, loopback, ports chosen by the
OS) on topics of its own (``<topic>-gwbench<tag>``, deleted afterwards) of the Kafka
broker in the settings (``careledger up``), with throw-away TLS certificates, then for
each transport sends for ``--seconds`` from ``--concurrency`` concurrent senders in
this process:

* ``http-single``: signed ``POST /AuditEvent`` (one FHIR R4 AuditEvent), keep-alive;
* ``http-bundle``: signed ``POST /`` with a batch Bundle of ``--bundle-size`` entries;
* ``syslog-tcp`` / ``syslog-tls``: octet-counted ATNA frames (TLS with a client
  certificate), written as fast as the gateway reads them (its back-pressure), then
  the connection is closed and the time runs until the gateway closed it too;

UDP is not measured: the gateway records no UDP datagram (it cannot authenticate its
sender, ADR 0025).

"Records" are those Kafka acknowledged: the growth of the raw topic's end offsets
during the phase (one raw record per AuditEvent, Bundle and syslog frame), so nothing
is counted that Kafka does not have. The senders
share the machine with the gateway and Kafka: the figures are for the whole box,
whose cores and load are printed. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from careledger.config import PROJECT_ROOT, Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.keys import write_keypair
from careledger.stack.model import StackError
from careledger_core.signing import SigningKey
from producers.gateway.auth import signed_headers
from producers.gateway.devcerts import write_dev_certs
from producers.gateway.framing import octet_counted

__all__ = ["command_benchmark_gateway", "configure_benchmark_gateway"]

TRANSPORTS = ("http-single", "http-bundle", "syslog-tcp", "syslog-tls")


def configure_benchmark_gateway(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="sending time per transport")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent senders")
    parser.add_argument("--bundle-size", type=int, default=20, help="entries per Bundle")
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help=f"comma-separated subset of {', '.join(TRANSPORTS)}",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


# ----------------------------------------------------------------------------- records
def _audit_event(n: int) -> dict[str, Any]:
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
        "agent": [{"who": {"identifier": {"value": f"user-{n % 500}"}}, "requestor": True}],
        "source": {"observer": {"display": "benchmark"}, "type": [{"code": "4"}]},
        "entity": [
            {
                "what": {"reference": f"Patient/P{n % 100_000}"},
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


def _syslog_frame(n: int) -> bytes:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
        '<EventIdentification EventActionCode="R" EventDateTime="2026-11-29T09:20:00Z" '
        'EventOutcomeIndicator="0"><EventID csd-code="110110" codeSystemName="DCM" '
        'originalText="Patient Record"/></EventIdentification>'
        f'<ActiveParticipant UserID="user-{n % 500}" UserIsRequestor="true"/>'
        '<AuditSourceIdentification AuditSourceID="benchmark-pacs"/>'
        f'<ParticipantObjectIdentification ParticipantObjectID="P{n % 100_000}" '
        'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">'
        '<ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
        'originalText="Patient Number"/></ParticipantObjectIdentification></AuditMessage>'
    )
    header = f"<85>1 2026-11-29T09:20:01Z bench.example PACS {n} IHE+RFC-3881 - "
    return octet_counted(header.encode() + xml.encode())


# ----------------------------------------------------------------------------- HTTP
class _Http:
    """A minimal keep-alive HTTP/1.1 client (cheaper than a full client library, so
    the benchmark's own CPU use stays small)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length:
            await self.reader.readexactly(length)
        return int(status_line.split()[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Phase:
    transport: str
    records: int
    seconds: float
    sent: int
    events: int
    note: str = ""

    @property
    def per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.per_s, 1),
            "events": self.events,
            "events_per_s": round(self.events / self.seconds, 1) if self.seconds else 0.0,
            "sent": self.sent,
            "note": self.note,
        }


class _Bench:
    def __init__(
        self,
        settings: Settings,
        ports: dict[str, int],
        key: SigningKey,
        client_tls: ssl.SSLContext,
        args: argparse.Namespace,
    ) -> None:
        self.s = settings
        self.ports = ports
        self.key = key
        self.client_tls = client_tls
        self.seconds = args.seconds
        self.concurrency = max(1, args.concurrency)
        self.bundle_size = max(1, args.bundle_size)
        self.counter = 0
        from confluent_kafka import Consumer

        self._consumer = Consumer(
            kafka_config(
                settings,
                ADMIN,
                {
                    "group.id": f"careledger-gwbench-{uuid.uuid4().hex[:8]}",
                },
            )
        )

    def raw_count(self) -> int:
        from confluent_kafka import TopicPartition

        from careledger.kafka.offsets import watermark_offsets

        md = self._consumer.list_topics(self.s.topic_raw, timeout=10)
        total = 0
        for p in md.topics[self.s.topic_raw].partitions:
            _low, high = watermark_offsets(
                self._consumer, TopicPartition(self.s.topic_raw, p), time.monotonic() + 10
            )
            total += high
        return total

    def close(self) -> None:
        self._consumer.close()

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    async def _timed(
        self, transport: str, run: Callable[[], Awaitable[tuple[int, int, int]]]
    ) -> Phase:
        before = self.raw_count()
        started = time.perf_counter()
        sent, events_per_record, bad = await run()
        elapsed = time.perf_counter() - started
        recorded = self.raw_count() - before
        note = f"{bad} refused" if bad else ""
        return Phase(transport, recorded, elapsed, sent, recorded * events_per_record, note)

    async def http(self, bundle: bool) -> Phase:
        path = "/" if bundle else "/AuditEvent"
        per = self.bundle_size if bundle else 1
        deadline = time.perf_counter() + self.seconds
        counts = {"sent": 0, "bad": 0}

        async def worker() -> None:
            client = _Http(self.ports["http"])
            try:
                while time.perf_counter() < deadline:
                    if bundle:
                        doc: dict[str, Any] = {
                            "resourceType": "Bundle",
                            "type": "batch",
                            "entry": [
                                {
                                    "resource": _audit_event(self._next()),
                                    "request": {"method": "POST", "url": "AuditEvent"},
                                }
                                for _ in range(per)
                            ],
                        }
                    else:
                        doc = _audit_event(self._next())
                    body = json.dumps(doc).encode()
                    headers = signed_headers("benchmark", self.key, "POST", path, body)
                    headers["Content-Type"] = "application/fhir+json"
                    status = await client.post(path, body, headers)
                    counts["sent"] += 1
                    if status not in (200, 201):
                        counts["bad"] += 1
            finally:
                await client.close()

        async def run() -> tuple[int, int, int]:
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
            return counts["sent"], per, counts["bad"]

        return await self._timed("http-bundle" if bundle else "http-single", run)

    async def stream(self, tls: bool) -> Phase:
        name = "syslog-tls" if tls else "syslog-tcp"
        port = self.ports[name]
        connections = max(1, self.concurrency // 2)
        before = self.raw_count()
        started = time.perf_counter()
        deadline = started + self.seconds
        counts = {"sent": 0}
        writers: list[asyncio.StreamWriter] = []

        async def worker() -> None:
            if tls:
                _reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=self.client_tls, server_hostname="127.0.0.1"
                )
            else:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            while time.perf_counter() < deadline:
                writer.write(b"".join(_syslog_frame(self._next()) for _ in range(50)))
                await writer.drain()  # waits while the gateway is not reading (Kafka)
                counts["sent"] += 50

        await asyncio.gather(*(worker() for _ in range(connections)))
        # syslog has no acknowledgement: done when Kafka has a raw record per frame
        recorded = self.raw_count() - before
        wait_until = time.perf_counter() + 120
        while recorded < counts["sent"] and time.perf_counter() < wait_until:
            await asyncio.sleep(0.05)
            recorded = self.raw_count() - before
        elapsed = time.perf_counter() - started
        for writer in writers:
            writer.close()
        note = "" if recorded >= counts["sent"] else f"{counts['sent'] - recorded} not recorded"
        return Phase(name, recorded, elapsed, counts["sent"], recorded, note)


class GatewayDidNotStart(Exception):
    """The gateway child exited or never became ready; the message is its last log line."""


def _start_gateway(
    settings: Settings, workdir: Path
) -> tuple[subprocess.Popen[bytes], dict[str, int], Path]:
    from careledger.processes import child_env

    ready = workdir / "ready.json"
    log_path = workdir / "gateway.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "commands.cli", "gateway", "--ready-file", str(ready)],
            cwd=PROJECT_ROOT,
            env=child_env(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            last = (log_path.read_text(errors="replace").strip().splitlines() or ["?"])[-1]
            raise GatewayDidNotStart(f"the gateway did not start: {last[:500]}")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())["ports"], log_path


def command_benchmark_gateway(args: argparse.Namespace, settings: Settings) -> int:
    from careledger import stack
    from careledger.processes import stop

    wanted = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = set(wanted) - set(TRANSPORTS)
    if unknown:
        print(f"careledger benchmark-gateway: unknown transports {sorted(unknown)}")
        return 2
    if not stack.kafka_ready(settings):
        print(f"careledger benchmark-gateway: Kafka at {settings.kafka_bootstrap} is not up")
        return 2
    tag = uuid.uuid4().hex[:8]
    s = settings.with_topic_suffix(f"-gwbench{tag}")
    topics = stack.default_topics(s)
    stack.ensure_topics(s, topics)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="careledger-gwbench-") as tmp:
            work = Path(tmp)
            certs = write_dev_certs(work / "tls", client_name="benchmark")
            key = write_keypair(work / "request.key")
            auth = work / "senders.toml"
            auth.write_text(
                '[[source]]\nid = "benchmark"\n'
                f'certificate_sha256 = ["{certs.client_sha256}"]\n'
                f'request_keys = ["{work / "request.key.pub"}"]\n'
                '\n[[source]]\nid = "benchmark-syslog"\nopen = true\n'
                'addresses = ["127.0.0.1/32"]\n',
                encoding="utf-8",
            )
            # the gateway signs what it relays and will not start without its key
            # (ADR 0025); a throw-away one: nothing chains the benchmark's topics
            write_keypair(work / "gateway-source.key")
            gs = s.replace(
                source_key=work / "gateway-source.key",
                gateway_host="127.0.0.1",
                gateway_http_port=0,
                gateway_https_port=0,
                gateway_syslog_tcp_port=0,
                gateway_syslog_tls_port=0,
                gateway_syslog_udp_port=0,
                gateway_tls_cert=certs.server,
                gateway_tls_key=certs.server,
                gateway_tls_client_ca=certs.ca,
                gateway_auth_file=auth,
                # the gateway's capacity, not a source's rate limit (ADR 0025)
                gateway_source_bytes_per_s=0,
            )
            try:
                proc, ports, log_path = _start_gateway(gs, work)
            except GatewayDidNotStart as exc:
                print(f"careledger benchmark-gateway: {exc}", file=sys.stderr)
                return 2
            client_tls = ssl.create_default_context(cafile=str(certs.ca))
            client_tls.load_cert_chain(str(certs.client))
            bench = _Bench(gs, ports, key, client_tls, args)
            try:
                phases = asyncio.run(_run_all(bench, wanted))
            finally:
                bench.close()
                stop(proc)
                proc = None
            if "Traceback" in log_path.read_text(errors="replace"):
                print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
    finally:
        if proc is not None:
            stop(proc)
        try:
            stack.delete_topics(s, list(topics))
        except (KafkaException, StackError) as exc:
            print(f"could not delete the benchmark topics: {exc}", file=sys.stderr)
    machine = {
        "cores": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "kafka": settings.kafka_bootstrap,
        "seconds_per_transport": args.seconds,
        "concurrency": args.concurrency,
        "bundle_size": args.bundle_size,
    }
    if args.json:
        print(json.dumps({"machine": machine, "transports": [p.as_dict() for p in phases]}))
        return 0
    print(
        f"gateway benchmark: {machine['cores']} cores, load {machine['load_avg']}, "
        f"{args.concurrency} concurrent senders (syslog: {max(1, args.concurrency // 2)} "
        f"connections), {args.seconds:g} s each, Kafka {settings.kafka_bootstrap}"
    )
    print(f"{'transport':<12} {'records/s':>10} {'events/s':>10} {'records':>9}  note")
    for p in phases:
        d = p.as_dict()
        print(
            f"{p.transport:<12} {d['records_per_s']:>10.1f} {d['events_per_s']:>10.1f} "
            f"{p.records:>9}  {p.note}"
        )
    return 0


async def _run_all(bench: _Bench, wanted: list[str]) -> list[Phase]:
    phases = []
    for transport in TRANSPORTS:
        if transport not in wanted:
            continue
        if transport == "http-single":
            phases.append(await bench.http(bundle=False))
        elif transport == "http-bundle":
            phases.append(await bench.http(bundle=True))
        elif transport == "syslog-tcp":
            phases.append(await bench.stream(tls=False))
        else:
            phases.append(await bench.stream(tls=True))
    return phases
