"""The gateway under abuse (issue 12, ADR 0025): each attack against a real Gateway
object on loopback sockets (HTTP through uvicorn, syslog TCP and UDP), with a recording
publisher in place of Kafka (what it holds is what would have been published).

Replay, unauthenticated syslog peers, quadratic JSON, forged addresses, the generic
401 and the keys the gateway needs. Deadlines and connection caps:
``test_gateway_abuse_deadlines.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger.config import Settings
from careledger.keys import write_keypair
from careledger_core.signing import SigningKey
from producers.gateway.auth import AuthConfigError, SenderRegistry, signed_headers
from producers.gateway.framing import octet_counted
from producers.gateway.guard import ReplayCache
from producers.gateway.publisher import Job, PublishError
from producers.gateway.server import Gateway, GatewayConfigError

KEY = SigningKey.from_seed(hashlib.sha256(b"gateway abuse test").digest())


def literal(key: SigningKey) -> str:
    return "ed25519:" + base64.b64encode(key.public_key.raw).decode()


def audit_event(patient: str = "PAT-ABUSE-1") -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "action": "R",
        "recorded": "2026-11-29T09:15:01Z",
        "agent": [{"who": {"identifier": {"value": "dr.jones"}}, "requestor": True}],
        "source": {"observer": {"display": "ehr"}},
        "entity": [{"what": {"reference": f"Patient/{patient}"}}],
    }


def atna_frame(patient: str = "MRN-1") -> bytes:
    xml = (
        '<AuditMessage><EventIdentification EventActionCode="R" '
        'EventDateTime="2026-11-29T09:20:00Z" EventOutcomeIndicator="0">'
        '<EventID csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/>'
        '</EventIdentification><ActiveParticipant UserID="u1" UserIsRequestor="true"/>'
        '<AuditSourceIdentification AuditSourceID="pacs"/>'
        f'<ParticipantObjectIdentification ParticipantObjectID="{patient}" '
        'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">'
        '<ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
        'originalText="Patient Number"/></ParticipantObjectIdentification></AuditMessage>'
    )
    return (
        b"<85>1 2026-11-29T09:20:00Z pacs.hospital.example PACS 4711 IHE+RFC-3881 - " + xml.encode()
    )


class Recorder:
    """Stands in for the Kafka publisher: keeps every job handed to it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jobs: list[Job] = []
        self.fail_next = 0

    async def publish(self, job: Job) -> None:
        await self.publish_many([job])
        if job.error is not None:
            raise PublishError(job.error)

    async def publish_many(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            if self.fail_next:
                self.fail_next -= 1
                job.fail("not acknowledged (test)")
            else:
                self.jobs.append(job)

    def kafka_status(self, timeout: float = 3.0) -> tuple[bool, str]:
        return True, "Kafka answers (test)"

    def close(self) -> None:
        pass

    def raws(self) -> list[dict[str, Any]]:
        return [json.loads(j.raw[1]) for j in self.jobs if j.raw is not None]

    def dead_letter_bytes(self) -> int:
        return sum(len(d.value) for j in self.jobs for d in j.dead_letters)


def settings_for(tmp_path: Path, **changes: Any) -> Settings:
    key = tmp_path / "keys" / "gateway-source.key"
    if not key.exists():
        write_keypair(key)
    base = dict(
        run_dir=tmp_path,
        source_id="gateway-test",
        source_key=key,
        gateway_host="127.0.0.1",
        gateway_http_port=0,
        gateway_https_port=-1,
        gateway_syslog_tcp_port=0,
        gateway_syslog_tls_port=-1,
        gateway_syslog_udp_port=0,
    )
    base.update(changes)
    return Settings().replace(**base)


def registry(*, open_pacs: str | None = "127.0.0.1/32") -> SenderRegistry:
    sources: list[dict[str, Any]] = [{"id": "ehr", "request_keys": [literal(KEY)]}]
    if open_pacs is not None:
        sources.append({"id": "pacs", "open": True, "addresses": [open_pacs]})
    return SenderRegistry.from_dict({"source": sources})


def run(
    tmp_path: Path,
    scenario: Callable[[Gateway, Recorder], Awaitable[None]],
    *,
    reg: SenderRegistry | None = None,
    **changes: Any,
) -> None:
    async def main() -> None:
        settings = settings_for(tmp_path, **changes)
        recorder = Recorder(settings)
        gateway = Gateway(settings, registry=reg or registry(), publisher=recorder)  # type: ignore[arg-type]
        await gateway.start()
        try:
            await asyncio.wait_for(scenario(gateway, recorder), 60)
        finally:
            await gateway.stop()

    asyncio.run(main())


def url(gateway: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gateway.ports['http']}{path}"


def signed(body: bytes, source: str = "ehr") -> dict[str, str]:
    headers = signed_headers(source, KEY, "POST", "/AuditEvent", body)
    headers["Content-Type"] = "application/fhir+json"
    return headers


# ------------------------------------------------------------------------ 1. replay
def test_a_replayed_signed_request_is_refused_and_nothing_is_published(tmp_path: Path) -> None:
    body = json.dumps(audit_event()).encode()
    headers = signed(body)

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        async with httpx.AsyncClient() as client:
            first = await client.post(url(gateway, "/AuditEvent"), content=body, headers=headers)
            assert first.status_code == 201, first.text
            published = len(recorder.jobs)
            for _ in range(2):  # the captured request, sent again as is
                again = await client.post(
                    url(gateway, "/AuditEvent"), content=body, headers=headers
                )
                assert again.status_code == 401, again.text
                assert again.json()["issue"][0]["code"] == "login"
            assert len(recorder.jobs) == published == 1
            assert len(recorder.raws()) == 1

    run(tmp_path, scenario)


def test_a_signed_request_kafka_did_not_take_may_be_sent_again(tmp_path: Path) -> None:
    body = json.dumps(audit_event()).encode()
    headers = signed(body)

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        recorder.fail_next = 1
        async with httpx.AsyncClient() as client:
            first = await client.post(url(gateway, "/AuditEvent"), content=body, headers=headers)
            assert first.status_code == 503, first.text
            retry = await client.post(url(gateway, "/AuditEvent"), content=body, headers=headers)
            assert retry.status_code == 201, retry.text
            replay = await client.post(url(gateway, "/AuditEvent"), content=body, headers=headers)
            assert replay.status_code == 401
        assert len(recorder.raws()) == 1

    run(tmp_path, scenario)


def test_a_full_replay_cache_refuses_for_now_rather_than_forget(tmp_path: Path) -> None:
    bodies = [json.dumps(audit_event(f"PAT-{i}")).encode() for i in range(3)]

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        async with httpx.AsyncClient() as client:
            answers = [
                await client.post(url(gateway, "/AuditEvent"), content=b, headers=signed(b))
                for b in bodies
            ]
        assert [a.status_code for a in answers] == [201, 201, 503]
        assert "retry-after" in answers[2].headers
        assert len(recorder.raws()) == 2

    run(tmp_path, scenario, gateway_replay_cache_entries=2)


def test_the_replay_cache_is_bounded_and_forgets_what_the_window_refuses_anyway() -> None:
    cache = ReplayCache(2, window_s=300)
    a, b, c = (hashlib.sha256(x).digest() for x in (b"a", b"b", b"c"))
    assert cache.claim(a, 1000, now=1000.0) is True
    assert cache.claim(a, 1000, now=1299.0) is False  # a copy within the window
    assert cache.claim(b, 1000, now=1000.0) is True
    assert cache.claim(c, 1100, now=1100.0) is None  # full: refused for now
    assert len(cache) == 2
    # past ts + window the signature check refuses the request: its entries go
    assert cache.claim(c, 1100, now=1301.0) is True
    assert len(cache) == 1
    cache.release(c, 1100)
    assert len(cache) == 0


# ------------------------------------------------- 2. unauthenticated syslog peers
def test_unauthenticated_syslog_peers_are_counted_never_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = octet_counted(atna_frame() + b"X" * 100_000)

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["syslog-tcp"])
            with contextlib.suppress(ConnectionError):
                writer.write(frame)
                await writer.drain()
                await asyncio.wait_for(reader.read(), 10)  # the gateway closes it
            writer.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for _ in range(10):
                udp.sendto(atna_frame(), ("127.0.0.1", gateway.ports["syslog-udp"]))
        counts = gateway.refusals.counts
        for _ in range(100):
            if counts.get("syslog-udp/unauthenticated") == 10:
                break
            await asyncio.sleep(0.05)
        assert counts["syslog-tcp/unauthenticated"] == 10
        assert counts["syslog-udp/unauthenticated"] == 10
        assert recorder.jobs == []  # no dead letter, no raw record: no bytes kept
        assert recorder.dead_letter_bytes() == 0
        async with httpx.AsyncClient() as client:
            health = (await client.get(url(gateway, "/health"))).json()
        shown = " ".join(i.get("diagnostics", "") for i in health["issue"])
        assert "syslog-tcp/unauthenticated 10" in shown
        assert "syslog-udp/unauthenticated 10" in shown

    with caplog.at_level(logging.INFO, logger="careledger.gateway"):
        run(tmp_path, scenario, reg=registry(open_pacs=None))
    samples = [r for r in caplog.records if "refused (unauthenticated)" in r.getMessage()]
    assert 1 <= len(samples) <= 2  # rate-limited: one per listener per interval
    udp_sample = [r.getMessage() for r in samples if "syslog-udp" in r.getMessage()]
    assert udp_sample and hashlib.sha256(atna_frame()).hexdigest() in udp_sample[0]
    assert all("AuditMessage" not in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------- 3. quadratic JSON
def test_sixteen_thousand_repeated_names_are_tracked_in_linear_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set-like tracker (a list made this quadratic), and the record parsed in a worker
    thread, not on the event loop that serves every listener."""
    from producers.adapters.fhir import _DuplicateTracker
    from producers.gateway.ingest import Ingestor

    parsed_in: list[str] = []
    original = Ingestor.fhir_audit_event

    def spy(self: Ingestor, rec: Any, identity: Any) -> Any:
        parsed_in.append(threading.current_thread().name)
        return original(self, rec, identity)

    monkeypatch.setattr(Ingestor, "fhir_audit_event", spy)

    assert not isinstance(_DuplicateTracker().names, list)
    doc = audit_event()
    members = ",".join(f'"x{i}":1,"x{i}":2' for i in range(16_000))
    body = (json.dumps(doc)[:-1] + "," + members + "}").encode()

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        headers = {**signed(body), "Prefer": "return=OperationOutcome"}
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.post(url(gateway, "/AuditEvent"), content=body, headers=headers)
        assert answer.status_code == 201, answer.text
        issues = answer.json()["issue"]
        dup = [
            i
            for i in issues
            if i.get("details", {}).get("coding", [{}])[0].get("code") == "DUPLICATE_KEY"
        ]
        assert dup and "'x0'" in dup[0]["diagnostics"]
        (raw,) = recorder.raws()
        assert any(i["code"] == "DUPLICATE_KEY" for i in raw["issues"])
        loop_thread = threading.current_thread().name
        assert parsed_in and loop_thread not in parsed_in

    run(tmp_path, scenario, gateway_max_record_bytes=1048576)


# ---------------------------------------------------------------- 4. address spoofing
def test_a_forged_forwarded_for_passes_no_allowlist_and_is_not_the_peer(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        body = json.dumps(audit_event()).encode()
        async with httpx.AsyncClient() as client:
            forged = await client.post(
                url(gateway, "/AuditEvent"),
                content=body,
                headers={
                    "X-Careledger-Source": "pacs",
                    "X-Forwarded-For": "10.20.0.5",
                    "Content-Type": "application/fhir+json",
                },
            )
            assert forged.status_code == 401, forged.text
            ok = await client.post(
                url(gateway, "/AuditEvent"),
                content=body,
                headers={**signed(body), "X-Forwarded-For": "10.9.9.9"},
            )
            assert ok.status_code == 201, ok.text
        (raw,) = recorder.raws()
        assert raw["transport"]["peer"].startswith("127.0.0.1:")

    run(tmp_path, scenario, reg=registry(open_pacs="10.20.0.0/16"))


def test_forwarded_for_is_read_from_a_configured_proxy_only(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        body = json.dumps(audit_event()).encode()
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                url(gateway, "/AuditEvent"),
                content=body,
                headers={
                    "X-Careledger-Source": "pacs",
                    "X-Forwarded-For": "10.20.0.5",
                    "Content-Type": "application/fhir+json",
                },
            )
        assert answer.status_code == 201, answer.text
        (raw,) = recorder.raws()
        assert raw["transport"]["peer"].startswith("10.20.0.5:")

    run(
        tmp_path,
        scenario,
        reg=registry(open_pacs="10.20.0.0/16"),
        gateway_trusted_proxies=("127.0.0.1",),
    )


def test_an_open_source_without_addresses_is_refused_at_load() -> None:
    with pytest.raises(AuthConfigError, match="addresses"):
        SenderRegistry.from_dict({"source": [{"id": "lab", "open": True}]})


def test_udp_never_identifies_an_open_source(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(atna_frame("MRN-UDP"), ("127.0.0.1", gateway.ports["syslog-udp"]))
        # the same open source over TCP is accepted (its address is its credential)
        _reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["syslog-tcp"])
        writer.write(octet_counted(atna_frame("MRN-TCP")))
        await writer.drain()
        for _ in range(200):
            if recorder.raws() and gateway.refusals.counts.get("syslog-udp/unauthenticated"):
                break
            await asyncio.sleep(0.05)
        writer.close()
        (raw,) = recorder.raws()
        assert raw["transport"]["protocol"] == "syslog-tcp"
        assert raw["transport"]["source_id"] == "pacs"
        assert gateway.refusals.counts["syslog-udp/unauthenticated"] == 1

    run(tmp_path, scenario)


# ------------------------------------------------------- 5. one 401, keys it needs
def test_every_unauthenticated_request_gets_the_same_401(tmp_path: Path) -> None:
    body = json.dumps(audit_event()).encode()
    other = SigningKey.from_seed(hashlib.sha256(b"not a source key").digest())
    attempts = [
        {"Content-Type": "application/fhir+json"},  # no credentials
        {"X-Careledger-Source": "ehr", "Content-Type": "application/fhir+json"},  # exists
        {"X-Careledger-Source": "nobody", "Content-Type": "application/fhir+json"},
        {**signed(body, "nobody")},  # unknown source, signed
        {
            **signed_headers("ehr", other, "POST", "/AuditEvent", body),
            "Content-Type": "application/fhir+json",
        },  # known source, wrong key
        {**signed(body), "X-Careledger-Timestamp": "1"},  # stale
    ]

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        async with httpx.AsyncClient() as client:
            answers = [
                await client.post(url(gateway, "/AuditEvent"), content=body, headers=h)
                for h in attempts
            ]
        assert {a.status_code for a in answers} == {401}
        assert len({a.content for a in answers}) == 1
        assert recorder.jobs == []

    run(tmp_path, scenario)


def test_the_gateway_refuses_to_start_without_its_source_key(tmp_path: Path) -> None:
    settings = settings_for(tmp_path).replace(source_key=None)
    with pytest.raises(GatewayConfigError, match="source key"):
        Gateway(settings, registry=registry(), publisher=Recorder(settings))  # type: ignore[arg-type]


def test_certificate_sources_need_the_client_ca(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    reg = SenderRegistry.from_dict({"source": [{"id": "ehr", "certificate_sha256": ["ab" * 32]}]})
    with pytest.raises(GatewayConfigError, match="client certificate"):
        Gateway(settings, registry=reg, publisher=Recorder(settings))  # type: ignore[arg-type]
