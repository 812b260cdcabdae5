"""The gateway's listeners and the ``careledger gateway`` command.

One asyncio loop serves everything: HTTP and HTTPS (uvicorn, see ``http``), syslog
over TCP and TLS (``asyncio.start_server``) and over UDP; one thread talks to Kafka
(``publisher``).

Syslog acknowledgement. Syslog has no application-level acknowledgement, so over
TCP and TLS the gateway acknowledges by back-pressure: it reads from a connection,
frames what it read, and reads again only after Kafka acknowledged every record of
those frames (raw record and events, or the dead letter). A sender is therefore never
more than one read buffer (plus the kernel's socket buffers) ahead of what Kafka has.
If Kafka does not acknowledge, the frames are retried (:data:`SYSLOG_ATTEMPTS` times);
after that the connection is closed (the sender sees a reset and, per RFC 5425,
reconnects) and the frames' SHA-256s are logged. A UDP datagram (RFC 5426) is one
message; UDP has no flow control, so at most :data:`UDP_IN_FLIGHT` datagrams are
processed at once and the kernel's receive buffer holds the rest (what overflows it is
lost, as UDP allows: use TCP or TLS where that matters).

Log lines about refused frames name the code, size, SHA-256 and peer, never content.

Abuse (ADR 0025): a syslog peer that is no configured source is refused when it
connects (a datagram: when it arrives) and only counted, with a rate-limited log sample
(peer, size, SHA-256), never its bytes; UDP identifies no source at all (an open
source's address is forgeable there). Every listener has a connection cap, in total and
per peer address; a syslog connection idle for ``gateway_idle_timeout_s``, or whose
frame is not complete within ``gateway_body_timeout_s`` of its first byte, is closed.
The gateway refuses to start without its source key (it signs what it relays) or
without the client CA its certificate sources need.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from careledger.config import Settings
from careledger.keys import KeyFileError, load_source_key
from careledger.raw_record import MAX_RECORD_BYTES
from careledger.service_health import ServiceHealth
from producers.adapters import MIN_MAX_BYTES
from producers.gateway.auth import MAX_SKEW_S, AuthConfigError, SenderRegistry
from producers.gateway.framing import Frame, FrameDecoder, FrameError, datagram
from producers.gateway.guard import ConnectionLimits, Refusals, ReplayCache, SourceRates
from producers.gateway.ingest import Ingestor, Received, frame_error_job, received
from producers.gateway.publisher import Job, Publisher, PublishError

log = logging.getLogger("careledger.gateway")

__all__ = ["Gateway", "command_gateway", "configure_gateway"]

#: How often a syslog frame is offered to Kafka before its connection is closed.
SYSLOG_ATTEMPTS: Final = 3
#: Datagrams processed at once; more wait in the kernel's receive buffer.
UDP_IN_FLIGHT: Final = 1024
_READ_CHUNK: Final = 256 * 1024
_UDP_MAX: Final = 65535


class GatewayConfigError(ValueError):
    pass


@dataclass
class Counters:
    records: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)

    def add(self, protocol: str, refused_code: str | None) -> None:
        self.records[protocol] = self.records.get(protocol, 0) + 1
        if refused_code:
            self.refused[refused_code] = self.refused.get(refused_code, 0) + 1


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Server-side TLS (1.2+, RFC 5425) with optional client certificates, or None."""
    if settings.gateway_tls_cert is None or settings.gateway_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.gateway_tls_cert), str(settings.gateway_tls_key))
    if settings.gateway_tls_client_ca is not None:
        context.load_verify_locations(cafile=str(settings.gateway_tls_client_ca))
        # A certificate is optional (open sources need none) but verified when given.
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def check_settings(settings: Settings) -> None:
    if settings.seal_events and settings.ingest_public_key is None:
        # ADR 0037: it seals what it sends (raw records, events, consents) to the ingest key
        raise GatewayConfigError(
            "this ledger is sealed (seal_events): set ingest_public_key, so the gateway "
            "seals the records it receives"
        )
    bound = settings.gateway_max_record_bytes
    if not MIN_MAX_BYTES <= bound <= MAX_RECORD_BYTES:
        raise GatewayConfigError(
            f"gateway_max_record_bytes must be between {MIN_MAX_BYTES} and {MAX_RECORD_BYTES}"
        )
    if (settings.gateway_tls_cert is None) != (settings.gateway_tls_key is None):
        raise GatewayConfigError("set both gateway_tls_cert and gateway_tls_key, or neither")
    if settings.gateway_ack_timeout_s <= 0:
        raise GatewayConfigError("gateway_ack_timeout_s must be positive")
    for name in (
        "gateway_idle_timeout_s",
        "gateway_header_timeout_s",
        "gateway_body_timeout_s",
        "gateway_max_connections",
        "gateway_max_connections_per_peer",
        "gateway_replay_cache_entries",
    ):
        if not getattr(settings, name) > 0:
            raise GatewayConfigError(f"{name} must be positive")
    if settings.gateway_source_bytes_per_s < 0:
        raise GatewayConfigError("gateway_source_bytes_per_s must be 0 (no limit) or positive")
    if settings.gateway_source_bytes_per_s and (
        settings.gateway_source_burst_bytes < settings.gateway_max_record_bytes
    ):
        raise GatewayConfigError(
            "gateway_source_burst_bytes must be at least gateway_max_record_bytes"
        )


def check_keys(settings: Settings, registry: SenderRegistry) -> None:
    """The keys the configuration needs: the gateway's source key (it signs every event
    it relays; without it events would go unsigned and be quarantined) and the client
    CA when a source is identified by its certificate."""
    try:
        key = load_source_key(settings)
    except KeyFileError as exc:
        raise GatewayConfigError(f"the gateway's source key: {exc}") from exc
    if key is None:
        raise GatewayConfigError(
            "no source key: the gateway signs what it relays; set CARELEDGER_SOURCE_KEY "
            "(create one with `careledger source keygen`) or CARELEDGER_SOURCE_KEY_TEXT"
        )
    certified = [
        s.id for s in registry.sources.values() if s.certificate_sha256 or s.certificate_subjects
    ]
    if certified and (settings.gateway_tls_client_ca is None or tls_context(settings) is None):
        raise GatewayConfigError(
            f"sources {certified} are identified by client certificate: set "
            "gateway_tls_cert, gateway_tls_key and gateway_tls_client_ca"
        )


def _bind(host: str, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections (else
    # Nagle and delayed ACKs add ~40 ms to every HTTP answer)
    proto = socket.IPPROTO_TCP if kind == socket.SOCK_STREAM else socket.IPPROTO_UDP
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if kind == socket.SOCK_DGRAM:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sock.bind((host, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


class Gateway:
    """All listeners of one gateway process (or of one test)."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: SenderRegistry | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        check_settings(settings)
        self.settings = settings
        self.registry = registry or SenderRegistry.load(settings.gateway_auth_file)
        if settings.gateway_replay_zookeeper:  # several gateways: one cache (ADR 0025)
            from producers.gateway.shared_replay import ZooKeeperReplayCache

            self.shared_replay: ZooKeeperReplayCache | None = ZooKeeperReplayCache.from_settings(
                settings, MAX_SKEW_S
            )
            self.registry.replay = self.shared_replay
        else:
            self.shared_replay = None
            self.registry.replay = ReplayCache(settings.gateway_replay_cache_entries, MAX_SKEW_S)
        check_keys(settings, self.registry)
        self.refusals = Refusals()
        self.rates = SourceRates(
            settings.gateway_source_bytes_per_s, settings.gateway_source_burst_bytes
        )
        self.tls = tls_context(settings)
        self.publisher = publisher or Publisher(settings)
        self.ingestor = Ingestor(settings.gateway_max_record_bytes)
        self.counters = Counters()
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._uvicorn: list[Any] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._udp: socket.socket | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------------ /health, /metrics
    def metrics(self) -> dict[str, Any]:
        return {
            "records_by_transport": dict(self.counters.records),
            "refused_by_code": dict(self.counters.refused),
            "refusals": dict(self.refusals.counts),
            "listeners": len(self.ports),
        }

    def health(self) -> tuple[bool, str]:
        """Kafka answers and the topics exist (as ``GET /health`` on the HTTP port)."""
        return self.publisher.kafka_status()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> dict[str, int]:
        """Bind and start every enabled listener; returns {listener: bound port}."""
        s = self.settings
        host = s.gateway_host
        if self.shared_replay is not None:  # ConnectionError (one line) when unreachable
            await asyncio.get_running_loop().run_in_executor(None, self.shared_replay.start)
            log.info("replay cache shared in ZooKeeper (%s)", s.gateway_replay_zookeeper_root)
        await self._start_http("http", s.gateway_http_port, None)
        if self.tls is not None:
            await self._start_http("https", s.gateway_https_port, self.tls)
            if s.gateway_syslog_tls_port >= 0:
                await self._start_syslog_stream("syslog-tls", s.gateway_syslog_tls_port, self.tls)
        else:
            log.info("no gateway_tls_cert/gateway_tls_key: HTTPS and syslog TLS are off")
        if s.gateway_syslog_tcp_port >= 0:
            await self._start_syslog_stream("syslog-tcp", s.gateway_syslog_tcp_port, None)
        if s.gateway_syslog_udp_port >= 0:
            self._udp = _bind(host, s.gateway_syslog_udp_port, socket.SOCK_DGRAM)
            self.ports["syslog-udp"] = self._udp.getsockname()[1]
            self._tasks.append(asyncio.create_task(self._udp_loop(self._udp)))
        for name, port in sorted(self.ports.items()):
            log.info("gateway listening: %s on %s:%d", name, host, port)
        return dict(self.ports)

    async def _start_http(self, name: str, port: int, context: ssl.SSLContext | None) -> None:
        if port < 0:
            return
        import uvicorn

        from producers.gateway.http import (
            GatewayApp,
            PeerCertH11Protocol,
            create_app,
            tls_after_accept,
        )

        s = self.settings
        app = create_app(
            GatewayApp(
                publisher=self.publisher,
                registry=self.registry,
                max_bytes=s.gateway_max_record_bytes,
                body_timeout_s=s.gateway_body_timeout_s,
                refusals_summary=self.refusals.summary,
                rates=self.rates,
                on_record=lambda: self.counters.add(name, None),
            )
        )
        limits = self._limits(name)
        http: Any = PeerCertH11Protocol.guarded(limits, s.gateway_header_timeout_s)
        if context is not None:  # counted at accept, then the handshake (bounded)
            http = tls_after_accept(http, context, s.gateway_header_timeout_s)
        config = uvicorn.Config(
            app,
            http=http,
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_keep_alive=max(1, round(s.gateway_idle_timeout_s)),
            server_header=False,
            # X-Forwarded-For only from a configured proxy (uvicorn's default trusts
            # 127.0.0.1, so any local process could choose its address)
            proxy_headers=bool(s.gateway_trusted_proxies),
            forwarded_allow_ips=list(s.gateway_trusted_proxies) or None,
        )
        config.load()
        sock = _bind(self.settings.gateway_host, port, socket.SOCK_STREAM)
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)  # as Server.serve() does
        await server.startup(sockets=[sock])
        self._uvicorn.append((server, sock))
        self._tasks.append(asyncio.create_task(server.main_loop()))
        self.ports[name] = sock.getsockname()[1]

    def _limits(self, name: str) -> ConnectionLimits:
        s = self.settings
        return ConnectionLimits(
            name, s.gateway_max_connections, s.gateway_max_connections_per_peer, self.refusals
        )

    async def _start_syslog_stream(
        self, name: str, port: int, context: ssl.SSLContext | None
    ) -> None:
        sock = _bind(self.settings.gateway_host, port, socket.SOCK_STREAM)
        limits = self._limits(name)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            address = str((writer.get_extra_info("peername") or ("", 0))[0])
            if not limits.acquire(address):  # counted at accept, before any TLS handshake
                writer.transport.abort()
                return
            task = asyncio.current_task()
            if task is not None:
                self._connections.add(task)
            try:
                if context is not None:
                    try:
                        await writer.start_tls(
                            context, ssl_handshake_timeout=self.settings.gateway_header_timeout_s
                        )
                    except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
                        self.refusals.refuse(name, "tls-handshake", address)
                        writer.transport.abort()
                        return
                await self._syslog_connection(name, reader, writer)
            except asyncio.CancelledError:
                # stop() ends open connections by cancelling their handler; ending it
                # here keeps Python 3.11's start_server callback, which calls
                # task.exception() on a cancelled task, from logging a traceback
                writer.transport.abort()
            finally:
                limits.release(address)
                if task is not None:
                    self._connections.discard(task)

        server = await asyncio.start_server(on_connect, sock=sock, limit=_READ_CHUNK)
        self._servers.append(server)
        self.ports[name] = sock.getsockname()[1]

    async def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.close()
        for server, _sock in self._uvicorn:
            server.should_exit = True
        for task in list(self._connections):
            task.cancel()
        for server, sock in self._uvicorn:
            with contextlib.suppress(Exception):
                await server.shutdown(sockets=[sock])
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._connections, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
        await asyncio.get_running_loop().run_in_executor(None, self.publisher.close)
        if self.shared_replay is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.shared_replay.close)

    # ------------------------------------------------------------------ syslog
    async def _syslog_connection(
        self, protocol: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        identity = self.registry.identify_syslog(der, str(peer[0]))
        base = {"peer": f"{peer[0]}:{peer[1]}"}
        if identity is None:  # refused at accept time: nothing is read, nothing kept
            self.refusals.refuse(protocol, "unauthenticated", base["peer"])
            writer.transport.abort()
            return
        decoder = FrameDecoder(self.settings.gateway_max_record_bytes)
        clock = asyncio.get_running_loop().time
        started: float | None = None  # when the frame now in the buffer began
        try:
            while True:
                if decoder.buffered:  # a frame must complete in time, not trickle
                    started = clock() if started is None else started
                    wait = self.settings.gateway_body_timeout_s - (clock() - started)
                else:
                    started, wait = None, self.settings.gateway_idle_timeout_s
                try:
                    data = await asyncio.wait_for(reader.read(_READ_CHUNK), max(0.0, wait))
                except TimeoutError:
                    log.info(
                        "%s %s: %s, closing",
                        protocol,
                        base["peer"],
                        "idle" if started is None else "a frame did not complete in time",
                    )
                    data = b""
                if data:  # over the source's rate: read nothing for a while
                    delay = self.rates.reserve(identity.source_id, len(data))
                    if delay > 0:
                        await asyncio.sleep(delay)
                        if started is not None:  # our wait, not the sender's
                            started += delay
                items = decoder.feed(data) if data else decoder.close()
                if items:
                    started = None  # frames completed: the rest is a new frame
                if items and not await self._frames(protocol, base, identity, items):
                    log.error(
                        "%s %s: closing the connection, Kafka did not acknowledge",
                        protocol,
                        base["peer"],
                    )
                    break
                if not data:
                    break
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("%s %s: connection ended: %s", protocol, base["peer"], exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _syslog_jobs(
        self,
        protocol: str,
        base: dict[str, str],
        identity: Any,
        items: list[Frame | FrameError],
    ) -> list[tuple[Received, Job, str | None]]:
        jobs: list[tuple[Received, Job, str | None]] = []
        for item in items:
            if isinstance(item, FrameError):
                rec = received(item.prefix, protocol, {**base, "framing": item.framing})
                jobs.append((rec, frame_error_job(rec, item), item.code))
                continue
            rec = received(item.data, protocol, {**base, "framing": item.framing})
            job, refused = self.ingestor.syslog_frame(rec, identity)
            jobs.append((rec, job, refused))
        return jobs

    async def _frames(
        self,
        protocol: str,
        base: dict[str, str],
        identity: Any,
        items: list[Frame | FrameError],
    ) -> bool:
        """Publish the records of ``items`` (together) and wait for Kafka; False if
        some were still not acknowledged after the retries."""
        # parsed in a worker thread: one large frame does not stall the other listeners
        jobs = await asyncio.to_thread(self._syslog_jobs, protocol, base, identity, items)
        return await self._publish_frames(protocol, base, jobs)

    async def _publish_frames(
        self, protocol: str, base: dict[str, str], jobs: list[tuple[Received, Job, str | None]]
    ) -> bool:
        results = await self._publish_syslog([(rec, job) for rec, job, _ in jobs])
        for (rec, _job, refused), ok in zip(jobs, results, strict=True):
            if ok:
                self.counters.add(protocol, refused)
                if refused:
                    log.warning(
                        "%s %s: frame refused (%s), %d bytes, sha256 %s: dead-lettered",
                        protocol,
                        base["peer"],
                        refused,
                        len(rec.data),
                        rec.sha256,
                    )
        return all(results)

    async def _publish_syslog(self, items: list[tuple[Received, Job]]) -> list[bool]:
        """Publish the jobs together (one group, one wait); offer the ones Kafka did not
        acknowledge again, up to SYSLOG_ATTEMPTS times. Whether each was recorded."""
        done = [False] * len(items)
        todo = list(range(len(items)))
        for attempt in range(1, SYSLOG_ATTEMPTS + 1):
            try:
                await self.publisher.publish_many([items[i][1] for i in todo])
            except PublishError as exc:  # the gateway is stopping
                for i in todo:
                    items[i][1].fail(str(exc))
            failed = []
            for i in todo:
                rec, job = items[i]
                if job.error is None:
                    done[i] = True
                    continue
                log.warning(
                    "%s frame sha256 %s not acknowledged (attempt %d/%d): %s",
                    rec.protocol,
                    rec.sha256,
                    attempt,
                    SYSLOG_ATTEMPTS,
                    job.error,
                )
                failed.append(i)
            todo = failed
            if not todo or self._stopping.is_set() or attempt == SYSLOG_ATTEMPTS:
                break
            for i in todo:
                items[i][1].error = None
                items[i][1]._pending = 0
            await asyncio.sleep(min(2.0 * attempt, 5.0))
        for i in todo:
            log.error("%s frame sha256 %s NOT recorded", items[i][0].protocol, items[i][0].sha256)
        return done

    async def _udp_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(UDP_IN_FLIGHT)
        pending: set[asyncio.Task[None]] = set()
        while True:
            await slots.acquire()
            try:
                data, addr = await loop.sock_recvfrom(sock, _UDP_MAX)
            except OSError as exc:
                slots.release()
                log.warning("syslog-udp receive failed: %s", exc)
                await asyncio.sleep(0.1)
                continue

            async def handle(data: bytes = data, addr: Any = addr) -> None:
                try:
                    identity = self.registry.identify_syslog(None, str(addr[0]), datagram=True)
                    base = {"peer": f"{addr[0]}:{addr[1]}"}
                    if identity is None:  # counted, sampled (hash, size), never kept
                        self.refusals.refuse("syslog-udp", "unauthenticated", base["peer"], data)
                        return
                    await self._frames("syslog-udp", base, identity, [datagram(data)])
                finally:
                    slots.release()

            task = asyncio.create_task(handle())
            pending.add(task)
            task.add_done_callback(pending.discard)


# ----------------------------------------------------------------------------- CLI
def configure_gateway(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write the bound ports as JSON here once every listener is up (for tests, "
        "scripts and port 0)",
    )


async def _serve(settings: Settings, ready_file: Path | None) -> int:
    gateway = Gateway(settings)
    try:
        ports = await gateway.start()
    except BaseException:
        await gateway.stop()  # the Kafka producer and whatever did start, closed
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "ports": ports}), encoding="utf-8")
        os.replace(tmp, ready_file)
    log.info("gateway ready (Kafka %s)", settings.kafka_bootstrap)
    health = ServiceHealth.for_settings(settings, "gateway", gateway.metrics, gateway.health)
    await stop.wait()
    log.info("gateway stopping: finishing what Kafka has not acknowledged yet")
    if health is not None:
        health.stop()
    await gateway.stop()
    log.info(
        "gateway stopped: %s records, refused %s; refused peers: %s",
        gateway.counters.records,
        gateway.counters.refused,
        gateway.refusals.summary(),
    )
    return 0


#: how long the gateway tries to reach the shared replay cache before it says it cannot
PREFLIGHT_S: Final = 5.0


def command_gateway(args: argparse.Namespace, settings: Settings) -> int:
    try:
        check_settings(settings)
        check_keys(settings, SenderRegistry.load(settings.gateway_auth_file))
    except (GatewayConfigError, AuthConfigError) as exc:
        print(f"careledger gateway: {exc}")
        return 2
    if settings.gateway_replay_zookeeper:  # say it now, before any Kafka client exists
        from producers.gateway.shared_replay import ZooKeeperReplayCache

        cache = ZooKeeperReplayCache.from_settings(settings, MAX_SKEW_S)
        try:
            cache.start(timeout=PREFLIGHT_S)
        except ConnectionError as exc:
            print(f"careledger gateway: {exc}")
            return 2
        cache.close()
    try:
        return asyncio.run(_serve(settings, args.ready_file))
    except (OSError, ssl.SSLError) as exc:
        print(f"careledger gateway: {exc}")
        return 2
