"""Talking to a witness over HTTP: the client side of C2SP tlog-witness (ADR 0018).

* :func:`add_checkpoint` POSTs an ``add-checkpoint`` body and reads the answer with
  ``careledger_core.witness.read_add_checkpoint_response`` (200: cosignature lines,
  409: the witness's latest size, anything else: refused);
* :func:`latest_checkpoint` GETs the latest checkpoint a witness cosigned for an origin
  (``/<sha256(origin) hex>/checkpoint``, served by ``careledger witness``; a witness
  that does not serve it, such as litewitness, answers 404: None).

A witness that cannot be reached, times out or answers garbage raises
:class:`WitnessUnreachable` (an infrastructure error: "cannot tell", never
"tampered"). Bounded: answers larger than ``MAX_ANSWER_BYTES`` are refused.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from careledger_core.errors import CareledgerError, InfrastructureError
from careledger_core.witness import WitnessAnswer, read_add_checkpoint_response

__all__ = ["MAX_ANSWER_BYTES", "WitnessUnreachable", "add_checkpoint", "latest_checkpoint"]

MAX_ANSWER_BYTES: Final = 1 << 20
_USER_AGENT: Final = "careledger-witness-client/1"


class WitnessUnreachable(InfrastructureError):
    """A witness could not be asked (connection, timeout, malformed answer)."""

    code = "WITNESS_UNREACHABLE"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    content_type: str | None
    body: bytes


def _request(url: str, method: str, path: str, body: bytes | None, timeout: float) -> _Answer:
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    headers = {"User-Agent": _USER_AGENT}
    if body is not None:
        headers["Content-Type"] = "text/plain; charset=utf-8"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read(MAX_ANSWER_BYTES + 1)
        if len(data) > MAX_ANSWER_BYTES:
            raise WitnessUnreachable(f"witness {url}: answer larger than {MAX_ANSWER_BYTES}")
        return _Answer(response.status, response.getheader("content-type"), data)
    except (OSError, http.client.HTTPException) as exc:
        raise WitnessUnreachable(
            f"witness {url}: {type(exc).__name__}: {exc}", details={"url": url}
        ) from exc
    finally:
        conn.close()


def add_checkpoint(url: str, body: bytes, *, timeout: float = 5.0) -> WitnessAnswer:
    """POST ``body`` (see ``careledger_core.witness.format_add_checkpoint``) to
    ``<url>/add-checkpoint``."""
    answer = _request(url, "POST", "/add-checkpoint", body, timeout)
    try:
        return read_add_checkpoint_response(answer.status, answer.content_type, answer.body)
    except CareledgerError as exc:
        raise WitnessUnreachable(f"witness {url}: {exc.message}", details={"url": url}) from exc


def latest_checkpoint(url: str, origin: str, *, timeout: float = 5.0) -> str | None:
    """The latest cosigned checkpoint note the witness at ``url`` serves for ``origin``
    (not verified here), or None if it has none or does not serve one (404)."""
    path = f"/{hashlib.sha256(origin.encode('utf-8')).hexdigest()}/checkpoint"
    answer = _request(url, "GET", path, None, timeout)
    if answer.status == 404:
        return None
    if answer.status != 200:
        raise WitnessUnreachable(f"witness {url}: GET checkpoint answered {answer.status}")
    try:
        return answer.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WitnessUnreachable(f"witness {url}: checkpoint is not UTF-8") from exc
