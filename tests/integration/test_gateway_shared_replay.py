"""Several gateways, one replay cache (issue 12 point 4; ADR 0025 addendum): the signed
requests are claimed in ZooKeeper, docker-compose.yml's own (mutual TLS only, run by
tests/integration/zookeeper_support.py on the pinned jars).

The attacks: a captured signed request sent to a second gateway behind the same load
balancer; the same request sent to two gateways at the same moment; ZooKeeper lost
while requests arrive (refused for now, never accepted unchecked, and the cache still
holds after ZooKeeper comes back); a gateway without a client certificate. The
gateways' publishers are stand-ins (what is published is not the point here);
tests/integration/test_gateway.py runs the single-gateway replay against Kafka."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger.tls import member_cert
from producers.gateway.server import Gateway, command_gateway
from producers.gateway.shared_replay import ZooKeeperReplayCache
from tests.integration.zookeeper_support import compose_zookeeper, prepare, running
from tests.unit.test_gateway_abuse import Recorder, audit_event, registry, settings_for, signed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with compose_zookeeper(tmp_path_factory.mktemp("replay-zookeeper")) as zk:
        yield zk


def _tls(home: Path) -> dict[str, Any]:
    """A gateway's client certificate from the compose CA, and that CA."""
    cert = member_cert(home / "ca", "gateway", ("gateway",))
    return {
        "gateway_replay_zookeeper_ca": home / "ca" / "ca.pem",
        "gateway_replay_zookeeper_cert": cert.cert,
        "gateway_replay_zookeeper_key": cert.key,
    }


def _shared(zk: dict[str, Any], root: str) -> dict[str, Any]:
    return {
        "gateway_replay_zookeeper": f"localhost:{zk['port']}",
        "gateway_replay_zookeeper_root": root,
        **_tls(zk["home"]),
    }


def _two_gateways(
    tmp_path: Path,
    shared: dict[str, Any],
    scenario: Callable[[list[Gateway], list[Recorder]], Awaitable[None]],
) -> None:
    async def main() -> None:
        gateways, recorders = [], []
        try:
            for name in ("a", "b"):
                settings = settings_for(tmp_path / name, **shared)
                recorder = Recorder(settings)
                gateway = Gateway(settings, registry=registry(), publisher=recorder)  # type: ignore[arg-type]
                await gateway.start()
                gateways.append(gateway)
                recorders.append(recorder)
            await asyncio.wait_for(scenario(gateways, recorders), 90)
        finally:
            for gateway in gateways:
                await gateway.stop()

    asyncio.run(main())


def _url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.ports['http']}/AuditEvent"


def test_a_signed_request_one_gateway_took_is_refused_by_another(
    zookeeper: dict[str, Any], tmp_path: Path
) -> None:
    body = json.dumps(audit_event("PAT-SHARED-1")).encode()
    headers = signed(body)

    async def scenario(gateways: list[Gateway], recorders: list[Recorder]) -> None:
        a, b = gateways
        async with httpx.AsyncClient(timeout=30) as client:
            first = await client.post(_url(a), content=body, headers=headers)
            assert first.status_code == 201, first.text
            for gateway in (b, a, b):  # the captured request, at either gateway
                again = await client.post(_url(gateway), content=body, headers=headers)
                assert again.status_code == 401, again.text
            fresh = signed(json.dumps(audit_event("PAT-SHARED-2")).encode())
            other = await client.post(
                _url(b), content=json.dumps(audit_event("PAT-SHARED-2")).encode(), headers=fresh
            )
            assert other.status_code == 201, other.text  # a new request is welcome anywhere
        assert [len(r.raws()) for r in recorders] == [1, 1]

    _two_gateways(tmp_path, _shared(zookeeper, f"/test/{uuid.uuid4().hex}"), scenario)


def test_one_signed_request_at_two_gateways_at_once_is_taken_once(
    zookeeper: dict[str, Any], tmp_path: Path
) -> None:
    body = json.dumps(audit_event("PAT-RACE-1")).encode()
    headers = signed(body)

    async def scenario(gateways: list[Gateway], recorders: list[Recorder]) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(_url(gateways[i % 2]), content=body, headers=headers)
                    for i in range(12)
                )
            )
        codes = sorted(a.status_code for a in answers)
        assert codes == [201] + [401] * 11, codes
        assert sum(len(r.raws()) for r in recorders) == 1

    _two_gateways(tmp_path, _shared(zookeeper, f"/test/{uuid.uuid4().hex}"), scenario)


def test_a_request_kafka_did_not_take_may_be_sent_again_to_the_other_gateway(
    zookeeper: dict[str, Any], tmp_path: Path
) -> None:
    body = json.dumps(audit_event("PAT-RETRY-1")).encode()
    headers = signed(body)

    async def scenario(gateways: list[Gateway], recorders: list[Recorder]) -> None:
        recorders[0].fail_next = 1
        async with httpx.AsyncClient(timeout=30) as client:
            first = await client.post(_url(gateways[0]), content=body, headers=headers)
            assert first.status_code == 503, first.text  # not acknowledged: claim released
            retry = await client.post(_url(gateways[1]), content=body, headers=headers)
            assert retry.status_code == 201, retry.text
        assert [len(r.raws()) for r in recorders] == [0, 1]

    _two_gateways(tmp_path, _shared(zookeeper, f"/test/{uuid.uuid4().hex}"), scenario)


def test_zookeeper_lost_refuses_signed_requests_for_now_and_the_claims_outlive_it(
    tmp_path: Path,
) -> None:
    home = tmp_path / "zk"
    home.mkdir()
    zk = prepare(home)
    taken = json.dumps(audit_event("PAT-OUTAGE-1")).encode()
    taken_headers = signed(taken)
    later = json.dumps(audit_event("PAT-OUTAGE-2")).encode()
    later_headers = signed(later)
    with running(home, zk["port"]) as server:

        async def scenario(gateways: list[Gateway], recorders: list[Recorder]) -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                first = await client.post(_url(gateways[0]), content=taken, headers=taken_headers)
                assert first.status_code == 201, first.text
                server.terminate()
                server.wait(20)
                started = time.monotonic()
                down = await client.post(_url(gateways[1]), content=later, headers=later_headers)
                assert down.status_code == 503, down.text  # cannot be checked: not taken
                assert down.headers["Retry-After"]
                assert time.monotonic() - started < 15
                with running(home, zk["port"]):  # the same data directory
                    deadline = time.monotonic() + 60
                    while True:
                        back = await client.post(
                            _url(gateways[1]), content=later, headers=later_headers
                        )
                        if back.status_code != 503 or time.monotonic() > deadline:
                            break
                        await asyncio.sleep(1)
                    assert back.status_code == 201, back.text
                    replay = await client.post(
                        _url(gateways[1]), content=taken, headers=taken_headers
                    )
                    assert replay.status_code == 401  # the claim made before the outage
            assert sum(len(r.raws()) for r in recorders) == 2

        _two_gateways(tmp_path, _shared(zk, "/careledger/gateway-replay"), scenario)


def test_claims_outside_the_window_are_swept(zookeeper: dict[str, Any]) -> None:
    root = f"/test/{uuid.uuid4().hex}"
    tls = _tls(zookeeper["home"])
    cache = ZooKeeperReplayCache(
        f"localhost:{zookeeper['port']}",
        300,
        root=root,
        ca=str(tls["gateway_replay_zookeeper_ca"]),
        certfile=str(tls["gateway_replay_zookeeper_cert"]),
        keyfile=str(tls["gateway_replay_zookeeper_key"]),
        sweep=False,
    )
    cache.start()
    try:
        now = time.time()
        old, recent = int(now) - 250, int(now)
        assert cache.claim(b"\x01" * 32, old, now) is True
        assert cache.claim(b"\x02" * 32, recent, now) is True
        assert cache.claim(b"\x01" * 32, old, now) is False
        assert cache.sweep(now) == 0  # both still inside the window
        assert cache.sweep(now + 100) == 1  # the old second is outside it now
        assert cache.claim(b"\x02" * 32, recent, now + 100) is False  # kept
        zk = cache._zk
        assert sorted(zk.get_children(root)) == [str(recent)]
    finally:
        cache.close()


def test_a_gateway_without_a_client_certificate_cannot_use_the_cache(
    zookeeper: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = zookeeper["home"]
    settings = settings_for(
        tmp_path,
        gateway_replay_zookeeper=f"localhost:{zookeeper['port']}",
        gateway_replay_zookeeper_ca=home / "ca" / "ca.pem",  # and no certificate
        gateway_auth_file=_auth_file(tmp_path),
    )
    code = command_gateway(argparse.Namespace(ready_file=None), settings)
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "careledger gateway: cannot reach ZooKeeper for the shared replay cache"
    ), lines


def _auth_file(tmp_path: Path) -> Path:
    from tests.unit.test_gateway_abuse import KEY, literal

    path = tmp_path / "senders.toml"
    path.write_text(f'[[source]]\nid = "ehr"\nrequest_keys = ["{literal(KEY)}"]\n')
    return path
