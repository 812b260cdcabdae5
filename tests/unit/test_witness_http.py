"""The witness over HTTP: C2SP tlog-witness status codes and media types in process, then
hostile bytes against a real ``careledger witness`` process on a real socket (it must
answer or close, and keep serving)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from careledger_core.witness import format_add_checkpoint, read_add_checkpoint_response
from tests.witness_support import (
    TestLog,
    WitnessProcess,
    careledger_witness,
    get,
    leaves,
    post,
    seeded_key,
)
from witness.config import WitnessConfig
from witness.http import create_app
from witness.service import WitnessService

ORIGIN = "careledger.test/careledger.access-events/2"
NAME = "partner.example/witness"


@pytest.fixture
def lg() -> TestLog:
    log = TestLog(ORIGIN)
    log.grow(50)
    return log


class Client:
    """Requests to the ASGI app in process (httpx over ASGI, one event loop per call)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://w") as c:
                return await c.request(method, path, content=content)

        return asyncio.run(go())

    def post(self, path: str, content: bytes) -> httpx.Response:
        return self.request("POST", path, content)

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)


@pytest.fixture
def client(tmp_path: Path, lg: TestLog) -> Client:
    config = WitnessConfig(
        name=NAME,
        key=seeded_key("http witness"),
        logs={ORIGIN: {ORIGIN: lg.key.public_key}},
        state_dir=tmp_path / "state",
        host="127.0.0.1",
        port=0,
        max_request_bytes=8192,
    )
    return Client(create_app(WitnessService(config)))


def test_status_codes_and_media_types(client: Client, lg: TestLog) -> None:
    ok = client.post("/add-checkpoint", content=lg.request(0, 10))
    assert ok.status_code == 200 and ok.text.startswith(f"\u2014 {NAME} ")
    answer = read_add_checkpoint_response(200, ok.headers["content-type"], ok.content)
    assert len(answer.cosignatures) == 1
    conflict = client.post("/add-checkpoint", content=lg.request(0, 20))
    assert (conflict.status_code, conflict.text) == (409, "10\n")
    assert conflict.headers["content-type"] == "text/x.tlog.size"
    bad_proof = format_add_checkpoint(10, lg.proof(9, 20), lg.note(20))
    assert client.post("/add-checkpoint", content=bad_proof).status_code == 422
    other = TestLog("unknown.example/log", key=lg.key, leaves=lg.leaves)
    assert client.post("/add-checkpoint", content=other.request(0, 3)).status_code == 404
    forged = TestLog(ORIGIN, key=seeded_key("forger"), leaves=lg.leaves)
    assert client.post("/add-checkpoint", content=forged.request(10, 20)).status_code == 403
    assert client.post("/add-checkpoint", content=b"old 1\n\nx").status_code == 400
    assert client.post("/add-checkpoint", content=b"x" * 9000).status_code == 413
    assert client.get("/add-checkpoint").status_code == 405


def test_monitoring_evidence_and_index(client: Client, lg: TestLog) -> None:
    path = f"/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint"
    assert client.get(path).status_code == 404
    line = client.post("/add-checkpoint", content=lg.request(0, 10)).text[:-1]
    served = client.get(path)
    assert served.status_code == 200 and served.text == lg.note(10) + line + "\n"
    fork = lg.leaves[:5] + leaves("fork", 5)
    client.post("/add-checkpoint", content=format_add_checkpoint(10, (), lg.note(10, fork)))
    [evidence] = client.get("/evidence").json()
    assert evidence["kind"] == "fork" and evidence["status"] == "open"
    index = client.get("/").text
    assert NAME in index and f"{ORIGIN}  size 10" in index and "evidence: 1 open" in index
    assert client.get("/health").text == "ok\n"
    assert client.get("/not-a-hash/checkpoint").status_code == 404


# --------------------------------------------------------------- a real socket


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WitnessProcess, TestLog]]:
    log = TestLog(ORIGIN)
    log.grow(50)
    directory = tmp_path_factory.mktemp("live-witness")
    with careledger_witness(directory, NAME, seeded_key("live witness"), [log]) as w:
        yield w, log


def _raw(port: int, payload: bytes, *, wait: float = 2.0) -> bytes:
    """Send ``payload`` and read what comes back until the server closes or ``wait``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with contextlib.suppress(OSError):  # the server may close on a flood first
            s.sendall(payload)
        s.settimeout(wait)
        chunks = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):  # a status line and headers: enough
                break
    return b"".join(chunks)


def _http(body: bytes, *, headers: str = "") -> bytes:
    return (
        f"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


HOSTILE = {
    "garbage": b"\x00\xff\x13\x37" * 1000,
    "not-http": b"GET\r\n\r\n",
    "header-flood": b"POST /add-checkpoint HTTP/1.1\r\nX: " + b"a" * 200_000 + b"\r\n\r\n",
    "negative-length": b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "huge-length": (
        b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nold"
    ),
    "chunked-oversize": (
        b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"4000\r\n" + b"o" * 0x4000 + b"\r\n" for _ in range(8))
        + b"0\r\n\r\n"
    ),
    "bad-chunk": (
        b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    ),
    "not-utf8-body": _http(b"old 0\n\n\xff\xfe\xfd\n"),
    "nul-in-note": _http(b"old 0\n\nlog\x00\n1\nAAAA\n\n\xe2\x80\x94 a b\n"),
    "64-proof-lines": _http(b"old 1\n" + b"A" * 43 + b"=\n" * 64 + b"\nx\n"),
    "truncated-body": (
        b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nold 0\n\n"
    ),
}


#: the status each hostile input gets (None: no answer within 2 s, the request is not
#: complete; the server answers 408 after BODY_TIMEOUT_S or when the client goes away)
EXPECTED = {
    "garbage": 400,
    "not-http": 400,
    "header-flood": 400,
    "negative-length": 400,
    "huge-length": 413,
    "chunked-oversize": 413,
    "bad-chunk": 400,
    "not-utf8-body": 400,
    "nul-in-note": 400,
    "64-proof-lines": 400,
    "truncated-body": None,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_bytes_on_a_real_socket_never_take_it_down(
    live: tuple[WitnessProcess, TestLog], name: str
) -> None:
    witness, log = live
    answer = _raw(witness.port, HOSTILE[name])
    status = int(answer.split(b" ", 2)[1]) if answer else None
    assert status == EXPECTED[name], answer[:200]
    assert witness.proc is not None and witness.proc.poll() is None
    assert get(witness.port, "/health").status == 200
    # and it still does its job
    assert post(witness.port, format_add_checkpoint(0, (), log.note(0))).status in (200, 409)


def test_many_hostile_connections_at_once(live: tuple[WitnessProcess, TestLog]) -> None:
    witness, log = live
    socks = []
    for _ in range(100):  # half-open requests that never finish their body
        s = socket.create_connection(("127.0.0.1", witness.port), timeout=5)
        s.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nold")
        socks.append(s)
    try:
        assert get(witness.port, "/health").status == 200
        first = post(witness.port, log.request(0, 1))
        assert first.status in (200, 409)
    finally:
        for s in socks:
            s.close()
