"""The decision point over HTTP (starlette; served by uvicorn).

``POST /consent/decide`` with a question (``careledger.consent-question/1`` JSON) and
the signature headers of :mod:`.auth`:

* 200 and the decision record (``decision``) with its SHA-256, once it is ledgered;
* 400 a question that cannot be read (``QUESTION_INVALID``, the path at fault);
* 401 not authenticated (``UNSIGNED``, ``BAD_HEADER``, ``STALE``, ``UNKNOWN_KEY``,
  ``KEY_NOT_FOR_SOURCE``, ``REVOKED_KEY``, ``BAD_SIGNATURE``, ``REPLAYED``);
* 403 an institution asking about an actor of another organisation
  (``ORGANIZATION_MISMATCH``): an institution asks for its own staff; the actor's
  organisation defaults to the institution;
* 413 a body over 16 KiB; 503 the decision could not be ledgered (not given).

``GET /health``: the consent chains' heights the decision point has read.
Errors are JSON ``{"error": code, "message": ...}``; no patient identifier is logged.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .auth import Refused, RequestAuthenticator
from .model import MAX_QUESTION_BYTES, QuestionError, parse_question
from .service import DecisionPoint, NotLedgered

__all__ = ["DECIDE_PATH", "build_app"]

DECIDE_PATH = "/consent/decide"
log = logging.getLogger("careledger.decision_point")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _body(request: Request) -> bytes | None:
    """The body, or None when it is larger than a question may be."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_QUESTION_BYTES):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_QUESTION_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(point: DecisionPoint, auth: RequestAuthenticator) -> Starlette:
    async def decide(request: Request) -> JSONResponse:
        body = await _body(request)
        if body is None:
            return _error(413, "TOO_LARGE", f"a question is at most {MAX_QUESTION_BYTES} bytes")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            requester = auth.authenticate(headers, request.method, request.url.path, body)
        except Refused as exc:
            log.info("decision request refused: %s", exc.code)
            return _error(exc.status, exc.code, exc.message)
        try:
            question = parse_question(body)
        except QuestionError as exc:
            return _error(400, exc.code, exc.message)
        org = question.actor_organization
        if org is None:
            question = dataclasses.replace(question, actor_organization=requester.institution)
        elif org != requester.institution:
            return _error(
                403,
                "ORGANIZATION_MISMATCH",
                f"institution {requester.institution} may ask about its own staff only "
                f"(the actor's organization is {org})",
            )
        try:
            record, sha = await run_in_threadpool(point.decide, question, requester)
        except NotLedgered as exc:
            return _error(503, exc.code, exc.message)
        out: dict[str, Any] = {"decision": record, "decision_sha256": sha, "ledgered": True}
        return JSONResponse(out)

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "as_of": point.ledger.as_of()})

    return Starlette(
        routes=[
            Route(DECIDE_PATH, decide, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
