"""The gateway's HTTP side (ASGI, Starlette): IHE ITI-20 "FHIR Feed".

    POST /AuditEvent   one FHIR R4 or R5 AuditEvent   -> 201, Location: AuditEvent/<event id>
    POST /Consent      one FHIR R4 or R5 Consent (JSON or XML) -> 201,
                       Location: Consent/<id>/_history/<version>
    PUT  /Consent/{id} a new version of that Consent   -> 200, the same Location
    POST /             a Bundle (batch | transaction) of AuditEvents and Consents (XML:
                       Consents only)                  -> 200, batch-/transaction-response
    GET  /metadata     CapabilityStatement
    GET  /health       200 when Kafka answers and the topics exist, else 503

Order of checks: size (413, from Content-Length before reading, then while reading),
sender (401), media type (415), then the record itself. Errors are OperationOutcomes:
400 (not JSON / not UTF-8 / empty), 422 (JSON, but not an AuditEvent or Bundle), 413,
415, 401, 403 (a consent from an open source), and 503 when Kafka did not acknowledge
(nothing is claimed; retry). A refused record is dead-lettered with its bytes before
the answer (if that fails: 503). The answer to an accepted record is sent only after
Kafka acknowledged its raw record and every event and consent record (``publisher``).

``Prefer: return=minimal`` gives an empty 201, ``return=OperationOutcome`` an
OperationOutcome listing the conformance issues; the default echoes the AuditEvent.

mTLS: uvicorn does not put the client certificate into the ASGI scope, so
:class:`PeerCertH11Protocol` (the HTTP protocol of the HTTPS listener) copies it into
the connection's ``scope["state"]``.

Abuse (ADR 0025): every unauthenticated request gets the same 401 (the reason is only
logged); a replayed signed request is one of them. The protocol closes a connection
over its listener's or its peer's connection cap at once and one whose request header
is not complete within ``gateway_header_timeout_s``; a body not received within
``gateway_body_timeout_s`` is answered 408. Records are parsed in a worker thread, so
one large record does not stall the other listeners.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import msgspec
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from careledger_core.reference import ReferenceRecord, thaw
from producers.consents.ingest import ConsentEntry, ingest_bundle, ingest_consent
from producers.consents.intake import PROCESS_CLOCK, ConsentProblem, VersionClock
from producers.gateway import fhir
from producers.gateway.auth import NOT_AUTHENTICATED, AuthFailure, Identity, SenderRegistry
from producers.gateway.guard import ConnectionLimits, SourceRates
from producers.gateway.ingest import SYNTAX_ERRORS, Ingestor, received
from producers.gateway.publisher import Job, Publisher, PublishError

log = logging.getLogger("careledger.gateway.http")

__all__ = ["GatewayApp", "PeerCertH11Protocol", "create_app"]

PEER_CERT_STATE: Final = "careledger_peer_cert"
_JSON_TYPES: Final = frozenset(
    {"application/fhir+json", "application/json", "application/json+fhir"}
)
_XML_TYPES: Final = frozenset({"application/fhir+xml", "application/xml", "text/xml"})
_RETRY_AFTER: Final = "5"


def _media(request: Request) -> tuple[str, dict[str, str]]:
    """The media type (lower case) and its parameters (names lower case)."""
    parts = request.headers.get("content-type", "").split(";")
    params = {}
    for part in parts[1:]:
        name, _, value = part.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return parts[0].strip().lower(), params


def _fhir_version(params: Mapping[str, str]) -> str | None:
    value = params.get("fhirversion", "")
    return "R4" if value.startswith("4.") else "R5" if value.startswith("5.") else None


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that exposes the verified client certificate (DER), caps
    connections (:attr:`limits`) and times out request headers (:attr:`header_timeout_s`).
    ``guarded`` makes a subclass with a listener's limits."""

    limits: ConnectionLimits | None = None
    header_timeout_s: float | None = None
    _peer_key: str | None = None
    _header_timer: asyncio.TimerHandle | None = None

    @classmethod
    def guarded(
        cls, limits: ConnectionLimits, header_timeout_s: float
    ) -> type[PeerCertH11Protocol]:
        return type(
            "GuardedH11Protocol",
            (cls,),
            {"limits": limits, "header_timeout_s": header_timeout_s},
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.limits is not None and self._peer_key is None:  # else counted at accept
            peer = transport.get_extra_info("peername") or ("", 0)
            if not self.limits.acquire(str(peer[0])):
                transport.abort()
                return
            self._peer_key = str(peer[0])
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app_state = {**self.app_state, PEER_CERT_STATE: der}

    def counted(self, peer: str) -> None:
        """This connection was counted in ``limits`` when it was accepted (before its
        TLS handshake, ``tls_after_accept``): ``connection_lost`` releases it."""
        self._peer_key = peer

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self.limits is not None and self._peer_key is not None:
            self.limits.release(self._peer_key)
            self._peer_key = None
        if self.transport is not None:  # else refused in connection_made
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and self._header_timer is None and self.header_timeout_s:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_late)
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._cancel_header_timer()  # the header is complete: a request runs

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_late(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            log.info("closing a connection whose request header was not complete in time")
            self.transport.abort()


class _TooLarge(Exception):
    pass


_JSON: Final = msgspec.json.Encoder()


class _TooSlow(Exception):
    pass


def _fhir(
    status: int, doc: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        # the bytes of json.dumps(doc, ensure_ascii=False, separators=(",", ":")) in UTF-8,
        # at a fraction of the cost
        _JSON.encode(doc),
        status_code=status,
        media_type=fhir.FHIR_JSON,
        headers=dict(headers or {}),
    )


def _error(status: int, diagnostics: str, code: str | None = None, **headers: str) -> Response:
    return _fhir(status, fhir.error_outcome(status, diagnostics, code), headers)


def _issues_outcome(issues: Any, info: str) -> dict[str, Any]:
    listed = [fhir.Issue("information", "informational", info)]
    listed += [
        fhir.Issue("warning", "business-rule", i.message, i.code, i.path or None) for i in issues
    ]
    return fhir.operation_outcome(listed)


class GatewayApp:
    """State shared by the handlers: settings, senders, the publisher."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        registry: SenderRegistry,
        max_bytes: int,
        software_version: str = "0.1.0",
        clock: VersionClock | None = None,
        body_timeout_s: float = 30.0,
        refusals_summary: Callable[[], str] | None = None,
        rates: SourceRates | None = None,
        on_record: Callable[[], None] | None = None,
    ) -> None:
        self.publisher = publisher
        #: called once per record Kafka acknowledged (the gateway's /metrics counts)
        self.on_record = on_record
        self.registry = registry
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        #: the gateway's counts of refused peers, frames and connections (for /health)
        self.refusals_summary = refusals_summary
        #: each source's byte rate (ADR 0025): over it, 429 with Retry-After
        self.rates = rates
        self.ingestor = Ingestor(max_bytes)
        # shared by every listener of the process (versions per consent must increase)
        self.clock = clock or PROCESS_CLOCK
        self.software_version = software_version
        self.started_at = _now_fhir()

    # ------------------------------------------------------------ plumbing
    async def _body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise _TooLarge
                    chunks.append(chunk)
        except TimeoutError:
            raise _TooSlow from None
        return b"".join(chunks)

    def _identify(self, request: Request, body: bytes) -> Identity | AuthFailure:
        der = request.scope.get("state", {}).get(PEER_CERT_STATE)
        client = request.client
        return self.registry.identify_http(
            {k.lower(): v for k, v in request.headers.items()},
            request.method,
            request.url.path,
            body,
            der=der,
            address=client.host if client else None,
        )

    async def _receive(
        self, request: Request, xml: bool = False
    ) -> tuple[bytes, Identity] | Response:
        """Size, sender and media type checks; the body and the sender, or the refusal.
        ``xml``: FHIR XML is accepted too (Consents and their Bundles)."""
        try:
            body = await self._body(request)
        except _TooLarge:
            return _error(
                413,
                f"the request body exceeds the limit of {self.max_bytes} bytes",
                "TOO_LARGE",
            )
        except _TooSlow:
            return _error(
                408,
                f"the request body did not arrive within {self.body_timeout_s:g} s",
                "TIMEOUT",
                Connection="close",
            )
        except ClientDisconnect:
            return Response(status_code=400)
        if self.registry.replay.remote:  # a claim in ZooKeeper: a network round trip
            who = await asyncio.get_running_loop().run_in_executor(
                None, self._identify, request, body
            )
        else:
            who = self._identify(request, body)
        if isinstance(who, AuthFailure):
            log.info("refused %s %s: %s", request.method, request.url.path, who.reason)
            if who.retry:
                return _error(
                    503,
                    "the gateway cannot check signed requests now: retry later",
                    "BUSY",
                    **{"Retry-After": _RETRY_AFTER},
                )
            return _error(
                401, NOT_AUTHENTICATED, "UNAUTHENTICATED", **{"WWW-Authenticate": "Careledger"}
            )
        media = _media(request)[0]
        if media and media not in _JSON_TYPES and not (xml and media in _XML_TYPES):
            self.registry.release(who)
            wanted = (
                "application/fhir+json or application/fhir+xml"
                if xml
                else ("application/fhir+json")
            )
            return _error(
                415,
                f"media type {media[:64]!r} is not supported: send {wanted}",
                "UNSUPPORTED_MEDIA_TYPE",
            )
        wait = self.rates.try_take(who.source_id, len(body)) if self.rates is not None else 0.0
        if wait > 0:  # nothing recorded: the sender retries after the wait
            self.registry.release(who)
            log.info("throttled %s %s: source over its rate", request.method, request.url.path)
            return _error(
                429,
                "this source is sending faster than its rate: retry after the Retry-After seconds",
                "THROTTLED",
                **{"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return body, who

    def _transport(self, request: Request, identity: Identity) -> dict[str, str]:
        client = request.client
        out = {
            "peer": f"{client.host}:{client.port}" if client else "",
            "http_method": request.method,
            "http_path": request.url.path,
            "content_type": request.headers.get("content-type", ""),
        }
        for header, name in (("user-agent", "user_agent"), ("x-request-id", "request_id")):
            value = request.headers.get(header)
            if value:
                out[name] = value
        out.update(identity.transport())
        return out

    async def _publish(self, job: Job, identity: Identity) -> str | None:
        try:
            await self.publisher.publish(job)
        except PublishError as exc:
            log.warning("not acknowledged by Kafka: %s", exc)
            self.registry.release(identity)  # nothing recorded: the sender may retry
            return str(exc)
        if self.on_record is not None:
            self.on_record()
        return None

    def _unavailable(self, reason: str) -> Response:
        return _error(
            503,
            f"not recorded: {reason}; nothing was accepted, retry later",
            "KAFKA_UNAVAILABLE",
            **{"Retry-After": _RETRY_AFTER},
        )

    # ------------------------------------------------------------ handlers
    async def audit_event(self, request: Request) -> Response:
        got = await self._receive(request)
        if isinstance(got, Response):
            return got
        body, identity = got
        protocol = request.url.scheme
        rec = received(body, protocol, self._transport(request, identity))
        outcome = await asyncio.to_thread(self.ingestor.fhir_audit_event, rec, identity)
        failure = await self._publish(outcome.job, identity)
        if failure is not None:
            return self._unavailable(failure)
        if outcome.error is not None:
            err = outcome.error
            status = 413 if err.code == "TOO_LARGE" else 400 if err.code in SYNTAX_ERRORS else 422
            return _error(status, err.message, err.code)
        assert outcome.result is not None
        event_id = outcome.event_id or outcome.record_id or rec.sha256
        headers = {"Location": f"AuditEvent/{event_id}", "ETag": 'W/"1"'}
        if outcome.record_id:
            headers["X-Careledger-Raw-Record"] = outcome.record_id
        prefer = request.headers.get("prefer", "").replace(" ", "").lower()
        if "return=minimal" in prefer:
            return Response(status_code=201, headers=headers)
        if "return=operationoutcome" in prefer:
            info = (
                f"recorded as {len(outcome.result.events)} access event(s), raw record "
                f"{outcome.record_id} (sha256 {rec.sha256})"
            )
            return _fhir(201, _issues_outcome(outcome.result.issues, info), headers)
        try:
            resource = json.loads(body.removeprefix(b"\xef\xbb\xbf"))
        except ValueError:
            resource = None
        if isinstance(resource, dict):
            resource.setdefault("id", event_id)
            return _fhir(201, resource, headers)
        return Response(status_code=201, headers=headers)

    async def bundle(self, request: Request) -> Response:
        got = await self._receive(request, xml=True)
        if isinstance(got, Response):
            return got
        body, identity = got
        rec = received(body, request.url.scheme, self._transport(request, identity))
        media, params = _media(request)
        outcome = await asyncio.to_thread(
            ingest_bundle,
            self.ingestor,
            rec,
            identity,
            syntax="xml" if media in _XML_TYPES else "json" if media else None,
            fhir_version=_fhir_version(params),
            clock=self.clock,
            topic=self.publisher.settings.topic_consents,
        )
        failure = await self._publish(outcome.job, identity)
        if failure is not None:
            return self._unavailable(failure)
        if outcome.error is not None:
            err = outcome.error
            status = 400 if err.code in SYNTAX_ERRORS else 422
            return _error(status, err.message, err.code)
        if outcome.refused_entries:
            codes = {c.index: c.error for c in outcome.consents.values() if c.error}
            issues = [
                fhir.Issue(
                    "error",
                    "processing",
                    f"entry {e.index}: {e.error.message}",
                    e.error.code,
                    codes[e.index].path if e.index in codes else f"Bundle.entry[{e.index}]",
                )
                for e in outcome.refused_entries
                if e.error is not None
            ]
            return _fhir(
                400,
                fhir.operation_outcome(
                    [
                        fhir.Issue(
                            "error",
                            "processing",
                            "transaction refused: nothing was recorded",
                            "TRANSACTION_REFUSED",
                        ),
                        *issues,
                    ]
                ),
            )
        assert outcome.result is not None
        entries: list[tuple[int, fhir.EntryResponse]] = [
            (c.index, _consent_entry(c)) for c in outcome.consents.values()
        ]
        for e in outcome.result.entries:
            if e.error is not None:
                status = 400 if e.error.code in SYNTAX_ERRORS else 422
                entries.append(
                    (
                        e.index,
                        fhir.EntryResponse(
                            status,
                            outcome=fhir.error_outcome(
                                status, e.error.message, e.error.code, f"Bundle.entry[{e.index}]"
                            ),
                        ),
                    )
                )
                continue
            location = f"AuditEvent/{e.events[0].event_id}" if e.events else None
            oo = (
                _issues_outcome(e.issues, f"recorded as {len(e.events)} access event(s)")
                if e.issues
                else None
            )
            entries.append((e.index, fhir.EntryResponse(201, location=location, outcome=oo)))
        kind: Literal["batch", "transaction"] = (
            "transaction" if outcome.kind == "transaction" else "batch"
        )
        headers = {"X-Careledger-Raw-Record": outcome.record_id or ""}
        ordered = [r for _i, r in sorted(entries, key=lambda x: x[0])]
        return _fhir(200, fhir.batch_response(kind, ordered), headers)

    async def consent(self, request: Request) -> Response:
        """POST /Consent and PUT /Consent/{id}: one Consent, JSON or XML."""
        got = await self._receive(request, xml=True)
        if isinstance(got, Response):
            return got
        body, identity = got
        url_id: str | None = request.path_params.get("id")
        rec = received(body, request.url.scheme, self._transport(request, identity))
        media, params = _media(request)
        outcome = await asyncio.to_thread(
            ingest_consent,
            rec,
            identity,
            url_id=url_id,
            syntax="xml" if media in _XML_TYPES else "json" if media else None,
            fhir_version=_fhir_version(params),
            clock=self.clock,
            topic=self.publisher.settings.topic_consents,
        )
        failure = await self._publish(outcome.job, identity)
        if failure is not None:
            return self._unavailable(failure)
        if outcome.error is not None:
            return _problem(outcome.error)
        record = outcome.record
        assert record is not None
        consent_id = record.record_id.split("/", 1)[1]
        location = f"Consent/{consent_id}/_history/{record.version}"
        headers = {
            "Location": location,
            "Content-Location": location,
            "ETag": f'W/"{record.version}"',
            "X-Careledger-Raw-Record": outcome.raw_record_id or "",
        }
        status = 200 if url_id is not None else 201
        prefer = request.headers.get("prefer", "").replace(" ", "").lower()
        if "return=minimal" in prefer:
            return Response(status_code=status, headers=headers)
        if "return=operationoutcome" in prefer:
            info = (
                f"recorded as version {record.version} of consent {record.record_id}, raw "
                f"record {outcome.raw_record_id} (sha256 {rec.sha256})"
            )
            return _fhir(status, _issues_outcome([], info), headers)
        return _fhir(status, _ledgered(record, consent_id), headers)

    async def metadata(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return _fhir(
            200,
            fhir.capability_statement(
                software_version=self.software_version,
                base_url=base,
                date=self.started_at,
                max_record_bytes=self.max_bytes,
                auth_methods=self.registry.methods(),
            ),
        )

    async def health(self, request: Request) -> Response:
        ok, detail = await asyncio.get_running_loop().run_in_executor(
            None, self.publisher.kafka_status
        )
        if ok:
            issues = [fhir.Issue("information", "informational", detail)]
            if self.refusals_summary is not None:
                refused = f"refused peers, frames and connections: {self.refusals_summary()}"
                issues.append(fhir.Issue("information", "informational", refused))
            if self.rates is not None:
                throttled = f"sources over their rate: {self.rates.summary()}"
                issues.append(fhir.Issue("information", "informational", throttled))
            return _fhir(200, fhir.operation_outcome(issues))
        return _error(503, detail, "KAFKA_UNAVAILABLE", **{"Retry-After": _RETRY_AFTER})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return _error(404, f"no such endpoint: {request.method} {request.url.path}")

    async def not_allowed(self, request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not supported on {request.url.path}")


def _problem(problem: ConsentProblem) -> Response:
    status = 403 if problem.code == "NOT_AUTHENTICATED" else problem.status
    return _fhir(status, fhir.error_outcome(status, problem.message, problem.code, problem.path))


def _ledgered(record: ReferenceRecord, consent_id: str) -> dict[str, Any]:
    """The resource as ledgered (with the intake extension), its id and version."""
    body = dict(thaw(record.body))
    body.setdefault("id", consent_id)
    meta = dict(body.get("meta") or {})
    meta["versionId"] = str(record.version)
    meta["lastUpdated"] = record.recorded_at
    body["meta"] = meta
    return body


def _consent_entry(entry: ConsentEntry) -> fhir.EntryResponse:
    if entry.error is not None:
        err = entry.error
        status = 403 if err.code == "NOT_AUTHENTICATED" else err.status
        return fhir.EntryResponse(
            status, outcome=fhir.error_outcome(status, err.message, err.code, err.path)
        )
    assert entry.record is not None
    consent_id = entry.record.record_id.split("/", 1)[1]
    return fhir.EntryResponse(201, location=f"Consent/{consent_id}/_history/{entry.record.version}")


def create_app(gateway: GatewayApp) -> Starlette:
    return Starlette(
        routes=[
            Route("/AuditEvent", gateway.audit_event, methods=["POST"]),
            Route("/Consent", gateway.consent, methods=["POST"]),
            Route("/Consent/{id}", gateway.consent, methods=["PUT"]),
            Route("/", gateway.bundle, methods=["POST"]),
            Route("/metadata", gateway.metadata, methods=["GET"]),
            Route("/health", gateway.health, methods=["GET"]),
        ],
        exception_handlers={404: gateway.not_found, 405: gateway.not_allowed},
    )


def _now_fhir() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _HeldUntilConnected(asyncio.Protocol):
    """The TLS layer's application protocol until the handshake's end has been seen by
    ``tls_after_accept``. asyncio decrypts any application data that came with the
    client's last handshake flight in the same read that completes the handshake, before
    the awaiting task resumes: handed to the real protocol, it would arrive before
    ``connection_made`` and the request would never be answered. It is kept here and
    replayed, in order, once the real protocol is connected."""

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self._data.append(data)

    def eof_received(self) -> bool | None:
        self._eof = True
        return True  # keep the transport open until the real protocol has spoken

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)

    def hand_over(self, app: asyncio.Protocol) -> None:
        for data in self._data:
            app.data_received(data)
        self._data.clear()
        if self._eof and not app.eof_received():
            transport = getattr(app, "transport", None)
            if transport is not None:
                transport.close()
        if self._lost is not None:
            app.connection_lost(self._lost[0])


def tls_after_accept(
    protocol: type[PeerCertH11Protocol], context: ssl.SSLContext, handshake_timeout_s: float
) -> Any:
    """A protocol class for uvicorn's HTTPS listener that counts a connection in the
    listener's limits when it is accepted and only then runs the TLS handshake, bounded
    by ``handshake_timeout_s``. With the TLS context given to uvicorn instead, asyncio
    completes the handshake (up to 60 s) before the protocol sees the connection, so
    connections stuck in the handshake escape every cap (issue 12)."""

    class TlsAfterAccept(asyncio.Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._app = protocol(*args, **kwargs)
            self._task: asyncio.Task[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            limits = protocol.limits
            peer = str((transport.get_extra_info("peername") or ("", 0))[0])
            if limits is not None and not limits.acquire(peer):
                transport.abort()
                return
            self._app.counted(peer)
            self._task = asyncio.get_running_loop().create_task(self._handshake(transport))

        async def _handshake(self, transport: asyncio.Transport) -> None:
            loop = asyncio.get_running_loop()
            held = _HeldUntilConnected()
            try:
                tls = await loop.start_tls(
                    transport,
                    held,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=handshake_timeout_s,
                )
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
                transport.abort()
                self._app.connection_lost(None)  # releases the count
                return
            if tls is None:  # the peer went away during the handshake
                self._app.connection_lost(None)
                return
            self._app.connection_made(tls)
            tls.set_protocol(self._app)
            held.hand_over(self._app)

        def connection_lost(self, exc: Exception | None) -> None:
            # only before the handshake completed: afterwards the TLS transport talks
            # to the application protocol directly
            if self._task is not None and not self._task.done():
                self._task.cancel()

    return TlsAfterAccept
