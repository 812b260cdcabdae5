"""The gateway's HTTP side (ASGI, Starlette): IHE ITI-20 "FHIR Feed".

    POST /AuditEvent   one FHIR R4 or R5 AuditEvent   -> 201, Location: AuditEvent/<event id>
    POST /             a Bundle (batch | transaction)  -> 200, batch-/transaction-response
    GET  /metadata     CapabilityStatement
    GET  /health       200 when Kafka answers and the topics exist, else 503

Order of checks: size (413, from Content-Length before reading, then while reading),
sender (401), media type (415), then the record itself. Errors are OperationOutcomes:
400 (not JSON / not UTF-8 / empty), 422 (JSON, but not an AuditEvent or Bundle), 413,
415, 401, and 503 when Kafka did not acknowledge (nothing is claimed; retry). A refused
record is dead-lettered with its bytes before the answer (if that fails: 503). The
answer to an accepted record is sent only after Kafka acknowledged its raw record and
every event (``publisher``).

``Prefer: return=minimal`` gives an empty 201, ``return=OperationOutcome`` an
OperationOutcome listing the conformance issues; the default echoes the AuditEvent.

mTLS: uvicorn does not put the client certificate into the ASGI scope, so
:class:`PeerCertH11Protocol` (the HTTP protocol of the HTTPS listener) copies it into
the connection's ``scope["state"]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, Final, Literal

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from producers.gateway import fhir
from producers.gateway.auth import AuthFailure, Identity, SenderRegistry
from producers.gateway.ingest import SYNTAX_ERRORS, Ingestor, received
from producers.gateway.publisher import Job, Publisher, PublishError

log = logging.getLogger("careledger.gateway.http")

__all__ = ["GatewayApp", "PeerCertH11Protocol", "create_app"]

PEER_CERT_STATE: Final = "careledger_peer_cert"
_JSON_TYPES: Final = frozenset(
    {"application/fhir+json", "application/json", "application/json+fhir"}
)
_RETRY_AFTER: Final = "5"


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that exposes the verified client certificate (DER)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app_state = {**self.app_state, PEER_CERT_STATE: der}


class _TooLarge(Exception):
    pass


def _fhir(
    status: int, doc: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
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
    ) -> None:
        self.publisher = publisher
        self.registry = registry
        self.max_bytes = max_bytes
        self.ingestor = Ingestor(max_bytes)
        self.software_version = software_version
        self.started_at = _now_fhir()

    # ------------------------------------------------------------ plumbing
    async def _body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
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

    async def _receive(self, request: Request) -> tuple[bytes, Identity] | Response:
        """Size, sender and media type checks; the body and the sender, or the refusal."""
        try:
            body = await self._body(request)
        except _TooLarge:
            return _error(
                413,
                f"the request body exceeds the limit of {self.max_bytes} bytes",
                "TOO_LARGE",
            )
        except ClientDisconnect:
            return Response(status_code=400)
        who = self._identify(request, body)
        if isinstance(who, AuthFailure):
            log.info("401 for %s %s: %s", request.method, request.url.path, who.reason)
            return _error(401, who.reason, "UNAUTHENTICATED", **{"WWW-Authenticate": "Careledger"})
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media and media not in _JSON_TYPES:
            return _error(
                415,
                f"media type {media!r} is not supported: send application/fhir+json",
                "UNSUPPORTED_MEDIA_TYPE",
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

    async def _publish(self, job: Job) -> str | None:
        try:
            await self.publisher.publish(job)
        except PublishError as exc:
            log.warning("not acknowledged by Kafka: %s", exc)
            return str(exc)
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
        outcome = self.ingestor.fhir_audit_event(rec, identity)
        failure = await self._publish(outcome.job)
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
        got = await self._receive(request)
        if isinstance(got, Response):
            return got
        body, identity = got
        rec = received(body, request.url.scheme, self._transport(request, identity))
        outcome = self.ingestor.fhir_bundle(rec, identity)
        failure = await self._publish(outcome.job)
        if failure is not None:
            return self._unavailable(failure)
        if outcome.error is not None:
            err = outcome.error
            status = 400 if err.code in SYNTAX_ERRORS else 422
            return _error(status, err.message, err.code)
        if outcome.refused_entries:
            issues = [
                fhir.Issue(
                    "error",
                    "processing",
                    f"entry {e.index}: {e.error.message}",
                    e.error.code,
                    f"Bundle.entry[{e.index}]",
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
        entries = []
        for e in outcome.result.entries:
            if e.error is not None:
                status = 400 if e.error.code in SYNTAX_ERRORS else 422
                entries.append(
                    fhir.EntryResponse(
                        status,
                        outcome=fhir.error_outcome(
                            status, e.error.message, e.error.code, f"Bundle.entry[{e.index}]"
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
            entries.append(fhir.EntryResponse(201, location=location, outcome=oo))
        kind: Literal["batch", "transaction"] = (
            "transaction" if outcome.kind == "transaction" else "batch"
        )
        headers = {"X-Careledger-Raw-Record": outcome.record_id or ""}
        return _fhir(200, fhir.batch_response(kind, entries), headers)

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
            doc = fhir.operation_outcome([fhir.Issue("information", "informational", detail)])
            return _fhir(200, doc)
        return _error(503, detail, "KAFKA_UNAVAILABLE", **{"Retry-After": _RETRY_AFTER})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return _error(404, f"no such endpoint: {request.method} {request.url.path}")

    async def not_allowed(self, request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not supported on {request.url.path}")


def create_app(gateway: GatewayApp) -> Starlette:
    return Starlette(
        routes=[
            Route("/AuditEvent", gateway.audit_event, methods=["POST"]),
            Route("/", gateway.bundle, methods=["POST"]),
            Route("/metadata", gateway.metadata, methods=["GET"]),
            Route("/health", gateway.health, methods=["GET"]),
        ],
        exception_handlers={404: gateway.not_found, 405: gateway.not_allowed},
    )


def _now_fhir() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
