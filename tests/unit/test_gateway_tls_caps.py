"""Connections stuck in the TLS handshake (issue 12): counted in the listener's caps
from the moment they are accepted, and cut off at the header deadline. Before, asyncio
ran the handshake (30 s for syslog, 60 s for HTTPS) before the gateway saw the
connection, so any number of peers that never send a ClientHello escaped every cap.
Real sockets on loopback, a real TLS client for the good path."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path

from producers.gateway.devcerts import write_dev_certs
from producers.gateway.framing import octet_counted
from producers.gateway.server import Gateway
from tests.unit.test_gateway_abuse import Recorder, atna_frame, run
from tests.unit.test_gateway_abuse_deadlines import closed_by_peer


def _tls(tmp_path: Path, **changes: object) -> dict[str, object]:
    certs = write_dev_certs(tmp_path / "certs")
    return dict(
        gateway_tls_cert=certs.server,
        gateway_tls_key=certs.server,
        gateway_https_port=0,
        gateway_syslog_tls_port=0,
        **changes,
    )


def test_silent_tls_peers_count_against_the_per_peer_cap(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        for listener in ("syslog-tls", "https"):
            port = gateway.ports[listener]
            # three peers that connect and never start the handshake
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await asyncio.sleep(0.2)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await closed_by_peer(reader, within=5), f"{listener}: a fourth was let in"
            writer.close()
            assert gateway.refusals.counts[f"{listener}/peer-connection-limit"] >= 1
            for _r, w in held:
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()
            await asyncio.sleep(0.3)

    run(
        tmp_path,
        scenario,
        **_tls(
            tmp_path,
            gateway_max_connections_per_peer=3,
            gateway_idle_timeout_s=30.0,
            gateway_header_timeout_s=30.0,
        ),
    )


def test_a_handshake_not_finished_by_the_header_deadline_is_cut(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        for listener in ("syslog-tls", "https"):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports[listener])
            started = time.monotonic()
            assert await closed_by_peer(reader, within=10), f"{listener}: never cut"
            assert time.monotonic() - started < 8, f"{listener}: not cut at the deadline"
            writer.close()

    run(tmp_path, scenario, **_tls(tmp_path, gateway_header_timeout_s=1.0))


def test_a_real_tls_client_still_delivers_and_frees_its_slot(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        client = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.pem"))
        client.check_hostname = False
        for round_ in range(3):  # with a cap of 1, each round needs the last slot freed
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", gateway.ports["syslog-tls"], ssl=client), 10
            )
            writer.write(octet_counted(atna_frame(f"MRN-TLS-{round_}")))
            await writer.drain()
            for _ in range(100):
                if len(recorder.raws()) > round_:
                    break
                await asyncio.sleep(0.05)
            assert len(recorder.raws()) == round_ + 1
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 10)
            await asyncio.sleep(0.2)
        https = gateway.ports["https"]
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", https, ssl=client), 10
        )
        writer.write(b"GET /metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
        assert response.startswith(b"HTTP/1.1 200"), response[:80]
        writer.close()

    run(
        tmp_path,
        scenario,
        **_tls(tmp_path, gateway_max_connections_per_peer=1, gateway_max_connections=1),
    )


async def _tls_request_in_one_segment(port: int, cafile: Path, request: bytes) -> bytes:
    """A TLS client whose last handshake flight (Finished) and first request arrive in
    one TCP segment, as they do from fast clients and on a busy server: the application
    data is then decrypted in the same read that completes the handshake."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                await writer.drain()
                data = await asyncio.wait_for(reader.read(65536), 10)
                assert data, "the server closed during the handshake"
                incoming.write(data)
        tls.write(request)
        writer.write(outgoing.read())  # Finished and the request together
        await writer.drain()
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                break
            incoming.write(data)
            with contextlib.suppress(ssl.SSLWantReadError):
                while chunk := tls.read(65536):
                    answer += chunk
        return answer
    finally:
        writer.close()


def test_a_request_in_the_same_segment_as_the_handshake_end_is_answered(
    tmp_path: Path,
) -> None:
    # Found by the fresh-clone CI: a request sent right behind the client's Finished was
    # decrypted before the application protocol was connected, and never answered.
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        for _ in range(5):
            answer = await _tls_request_in_one_segment(
                gateway.ports["https"],
                tmp_path / "certs" / "ca.pem",
                b"GET /metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 200"), answer[:80]

    run(tmp_path, scenario, **_tls(tmp_path))
