"""The witness's HTTP side (ASGI, Starlette).

    POST /add-checkpoint           C2SP tlog-witness (see ``service``)
    GET  /<origin hash>/checkpoint  the latest cosigned checkpoint of a log (monitoring)
    GET  /evidence                 the evidence kept, JSON
    GET  /                         name, vkey, logs and their cosigned sizes (text)
    GET  /health                   200 "ok"

Bounded: a body larger than the configured bound is 413 (from Content-Length before
reading, then while reading), a body not received within ``BODY_TIMEOUT_S`` is 408. The
state transaction runs in a worker thread, one at a time (the store's lock).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Final

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from witness.service import TEXT, Reply, WitnessService
from witness.store import WitnessStoreError

log = logging.getLogger("careledger.witness.http")

__all__ = ["BODY_TIMEOUT_S", "create_app"]

BODY_TIMEOUT_S: Final = 10.0
_ORIGIN_HASH = re.compile(r"\A[0-9a-f]{64}\Z")


class _TooLarge(Exception):
    pass


class _BadLength(Exception):
    pass


def _response(reply: Reply) -> Response:
    # the Content-Type exactly (Starlette would add "; charset=utf-8" to text/x.tlog.size)
    return Response(
        reply.body, status_code=reply.status, headers={"content-type": reply.content_type}
    )


def _text(status: int, message: str) -> Response:
    return Response(message + "\n", status_code=status, media_type=TEXT)


async def _body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise _BadLength
    if length is not None and int(length) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: WitnessService) -> Starlette:
    limit = service.config.max_request_bytes

    async def add_checkpoint(request: Request) -> Response:
        try:
            data = await asyncio.wait_for(_body(request, limit), BODY_TIMEOUT_S)
        except _TooLarge:
            return _text(413, f"request body larger than {limit} bytes")
        except _BadLength:
            return _text(400, "Content-Length is not a number")
        except TimeoutError:
            return _text(408, "request body not received in time")
        except ClientDisconnect:
            return _text(400, "client went away")
        try:
            reply = await asyncio.to_thread(service.add_checkpoint, data)
        except WitnessStoreError as exc:
            log.error("witness state unavailable: %s", exc)
            return _text(503, "witness state unavailable; nothing was cosigned")
        return _response(reply)

    async def checkpoint(request: Request) -> Response:
        origin_hash = str(request.path_params["origin_hash"])
        if not _ORIGIN_HASH.match(origin_hash):
            return _text(404, "not found")
        return _response(await asyncio.to_thread(service.checkpoint, origin_hash))

    async def evidence(request: Request) -> Response:
        documents = await asyncio.to_thread(service.store.evidence)
        return Response(
            json.dumps(documents, ensure_ascii=False, indent=1) + "\n",
            media_type="application/json",
        )

    async def index(request: Request) -> Response:
        return Response(await asyncio.to_thread(service.index), media_type=TEXT)

    async def health(request: Request) -> Response:
        return _text(200, "ok")

    return Starlette(
        routes=[
            Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
            Route("/evidence", evidence, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/{origin_hash}/checkpoint", checkpoint, methods=["GET"]),
            Route("/", index, methods=["GET"]),
        ]
    )
