"""Deadlines and connection caps of the gateway's listeners (issue 12, ADR 0025), with
real sockets on loopback and short configured deadlines: an idle syslog connection, a
half-sent HTTP header and a slow body are cut off; a peer over its connection cap is
closed at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from producers.gateway.framing import octet_counted
from producers.gateway.server import Gateway
from tests.unit.test_gateway_abuse import Recorder, atna_frame, audit_event, run, signed

SHORT: dict[str, Any] = dict(
    gateway_idle_timeout_s=0.5,
    gateway_header_timeout_s=0.5,
    gateway_body_timeout_s=0.5,
)


async def closed_by_peer(reader: asyncio.StreamReader, within: float = 10.0) -> bool:
    """Whether the other side closes the connection within ``within`` seconds."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


def test_idle_syslog_connections_are_closed(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        port = gateway.ports["syslog-tcp"]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        # one sends a frame first: it is recorded, then it idles too
        conns[0][1].write(octet_counted(atna_frame()))
        await conns[0][1].drain()
        closed = await asyncio.gather(*(closed_by_peer(r) for r, _w in conns))
        assert all(closed)
        for _r, w in conns:
            w.close()
        assert len(recorder.raws()) == 1

    run(tmp_path, scenario, **SHORT)


def test_a_trickled_syslog_frame_is_cut_off(tmp_path: Path) -> None:
    frame = octet_counted(atna_frame())

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["syslog-tcp"])

        async def trickle() -> None:  # one byte every 0.1 s: never idle, never done
            with contextlib.suppress(ConnectionError):
                for i in range(len(frame) - 1):
                    writer.write(frame[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0.1)

        sender = asyncio.create_task(trickle())
        assert await closed_by_peer(reader)
        sender.cancel()
        writer.close()
        assert recorder.raws() == []  # the partial frame was not taken as a record

    run(
        tmp_path,
        scenario,
        gateway_idle_timeout_s=30.0,
        gateway_body_timeout_s=0.5,
    )


def test_a_half_sent_http_header_is_timed_out(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["http"])
        writer.write(b"POST /AuditEvent HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        await writer.drain()
        assert await closed_by_peer(reader)
        writer.close()
        # a keep-alive connection whose second request stalls in its header, too
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["http"])
        writer.write(b"GET /metadata HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /meta")
        await writer.drain()
        assert await closed_by_peer(reader)
        writer.close()

    run(tmp_path, scenario, **SHORT)


def test_a_body_that_does_not_arrive_is_408(tmp_path: Path) -> None:
    body = json.dumps(audit_event()).encode()
    headers = signed(body)

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["http"])
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            (
                f"POST /AuditEvent HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body[:10]
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"code":"timeout"' in answer
        writer.close()
        assert recorder.jobs == []

    run(tmp_path, scenario, **SHORT)


def test_connections_over_the_per_peer_cap_are_closed_at_once(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        for listener in ("syslog-tcp", "http"):
            port = gateway.ports[listener]
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await closed_by_peer(reader, within=5)
            writer.close()
            assert gateway.refusals.counts[f"{listener}/peer-connection-limit"] >= 1
            for _r, w in held:
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()
            await asyncio.sleep(0.2)
            # the slots are free again
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if listener == "syslog-tcp":
                writer.write(octet_counted(atna_frame("MRN-AFTER")))
                await writer.drain()
                for _ in range(100):
                    if recorder.raws():
                        break
                    await asyncio.sleep(0.05)
                assert len(recorder.raws()) == 1
            writer.close()

    run(
        tmp_path,
        scenario,
        gateway_max_connections_per_peer=3,
        gateway_idle_timeout_s=30.0,
        gateway_header_timeout_s=30.0,
    )


def test_connections_over_the_listener_cap_are_closed_at_once(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        port = gateway.ports["syslog-tcp"]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_peer(reader, within=5)
        writer.close()
        assert gateway.refusals.counts["syslog-tcp/connection-limit"] == 1
        for _r, w in held:
            w.close()

    run(tmp_path, scenario, gateway_max_connections=2)


def test_stopping_with_open_syslog_connections_logs_no_traceback(tmp_path: Path) -> None:
    """``stop()`` ends open connections; Python 3.11's ``start_server`` callback called
    ``task.exception()`` on a cancelled handler and logged "Exception in callback ...
    streams.py:248" with a traceback (seen in the gateway benchmark's output). Every
    connection ends quietly, and what it sent before is kept."""
    from tests.unit.test_gateway_abuse import registry, settings_for

    problems: list[dict[str, Any]] = []

    async def main() -> int:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: problems.append(ctx))
        settings = settings_for(tmp_path, gateway_idle_timeout_s=30.0)
        recorder = Recorder(settings)
        gateway = Gateway(settings, registry=registry(), publisher=recorder)  # type: ignore[arg-type]
        await gateway.start()
        conns = [
            await asyncio.open_connection("127.0.0.1", gateway.ports["syslog-tcp"])
            for _ in range(5)
        ]
        for _r, writer in conns:
            writer.write(octet_counted(atna_frame()))
            await writer.drain()
        for _ in range(100):
            if len(recorder.raws()) == len(conns):
                break
            await asyncio.sleep(0.05)
        await gateway.stop()
        await asyncio.sleep(0.2)  # the handlers' done-callbacks run
        for _r, writer in conns:
            writer.close()
        return len(recorder.raws())

    assert asyncio.run(main()) == 5
    assert problems == [], [p.get("message") for p in problems]
