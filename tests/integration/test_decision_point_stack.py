"""The consent decision point on the real stack: a consent is ledgered through Kafka
and the real processor; ``careledger consent decide`` answers from it, and each
decision is ledgered (raw record + signed event, chained by the processor) and replays
identically; a later consent version changes new answers but not the replay of old
ones; a rewritten decision or a rewritten consent is found by ``consent replay``;
other institutions are authenticated by their registered key over HTTP."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import ADMIN
from careledger.keys import load_registrar_key
from careledger.processes import run_cli, start_cli
from careledger.raw_record import build_envelope
from careledger.sources import (
    load_registrar_keys,
    read_registry,
    read_sources,
    register_key,
    revoke_key,
    summarize_keys,
)
from careledger_core.jcs import canonicalize
from careledger_core.reference import (
    REFERENCE_SCHEMA,
    canonical_reference_bytes,
    reference_from_dict,
)
from careledger_core.signing import SigningKey
from tests.integration.pipeline import (
    processor_settings,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)
from verifiers.auditor.decision_point import signed_request_headers
from verifiers.auditor.decision_point.http import DECIDE_PATH
from verifiers.auditor.runner.store import AuditStore

pytestmark = pytest.mark.integration

T_V1 = "2026-01-01T00:00:00.000000Z"


def consent_record(version: int, status: str, effective: str) -> tuple[bytes, bytes]:
    """Overall deny, except dr-a for treatment and the staff of hospital-b (R5)."""
    body = {
        "resourceType": "Consent",
        "id": "c-1",
        "status": status,
        "subject": {"reference": "Patient/p-1"},
        "decision": "deny",
        "provision": [
            {
                "actor": [{"reference": {"reference": "Practitioner/dr-a"}}],
                "purpose": [{"code": "TREAT"}],
            },
            {"actor": [{"reference": {"reference": "Organization/hospital-b"}}]},
        ],
    }
    rec = reference_from_dict(
        {
            "schema": REFERENCE_SCHEMA,
            "kind": "consent",
            "record_id": "c-1",
            "version": version,
            "recorded_at": effective,
            "effective_at": effective,
            "body": body,
        }
    )
    return b"c-1", canonical_reference_bytes(rec)


def ledger_consent(settings: Settings, version: int, status: str, effective: str) -> None:
    key, value = consent_record(version, status, effective)
    with AccessEventProducer(settings, topic=settings.topic_consents) as producer:
        producer.send_raw(value, key=key)
        producer.flush()
    store = store_for(settings)

    def committed() -> bool:
        rows = store.backend.execute(
            f"SELECT count() FROM {store.db}.reference_records WHERE kind = 'consent' "
            f"AND version = %(v)s AND (chain_id, height) IN "
            f"(SELECT chain_id, height FROM {store.db}.blocks)",
            {"v": version},
        )
        return int(rows[0][0]) == 1

    wait_until(committed, 90, what=f"consent v{version} chained")


def decide(settings: Settings, actor: str, *extra: str) -> dict[str, Any]:
    result = run_cli(
        settings,
        "consent",
        "decide",
        "--patient",
        "p-1",
        "--actor",
        actor,
        "--action",
        "R",
        "--json",
        *extra,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    decision: dict[str, Any] = doc["decision"]
    return decision


def replay_all(settings: Settings) -> dict[str, Any]:
    result = run_cli(settings, "consent", "replay", "--all", "--json")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    doc: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert (result.returncode == 0) == doc["intact"]
    return doc


def wait_replayed(settings: Settings, n: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def ready() -> bool:
        seen.update(replay_all(settings))
        pending = [p for p in seen["problems"] if p["code"] == "DECISION_PENDING"]
        return seen["decisions"] == n and not pending

    try:
        wait_until(ready, 120, interval=1.0, what=f"{n} decisions ledgered")
    except AssertionError as exc:  # say what was there instead
        problems = [p["code"] for p in seen.get("problems", [])]
        raise AssertionError(f"{exc}: {seen.get('decisions')} decisions, {problems}") from None
    return seen


def test_decide_ledger_replay_new_version_and_tamper(isolated: Settings, tmp_path: Path) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path))
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        ledger_consent(settings, 1, "active", T_V1)
        permit = decide(settings, "dr-a", "--purpose", "TREAT", "--role", "doctor")
        deny = decide(settings, "dr-b", "--purpose", "TREAT")
        assert permit["answer"]["outcome"] == "permit"
        assert permit["answer"]["provision_path"] == [0]
        assert permit["answer"]["consent"]["record_id"] == "c-1"
        assert permit["answer"]["consent"]["version"] == 1
        assert deny["answer"]["outcome"] == "deny"
        assert deny["answer"]["fallback"] == "consent-base"
        chain = settings.chain_id(settings.topic_consents, 0)
        assert set(permit["as_of"]["chains"]) == {chain}
        assert permit["as_of"]["known_at"] is not None

        # both are ledgered (raw record + signed event, chained) and replay identically
        doc = wait_replayed(settings, 2)
        assert doc["intact"] and doc["identical"] == 2, doc
        one = run_cli(settings, "consent", "replay", permit["decision_id"], "--json")
        assert one.returncode == 0, one.stdout + one.stderr
        replayed = json.loads(one.stdout.strip().splitlines()[-1])["replayed_answer"]
        assert replayed == permit["answer"]

        # a later version withdraws the consent: new questions get another answer ...
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - 1))
        ledger_consent(settings, 2, "inactive", now)
        after = decide(settings, "dr-a", "--purpose", "TREAT", "--role", "doctor")
        assert after["answer"]["outcome"] == "no-consent"
        assert after["answer"]["fallback"] == "no-consent-on-file"
        assert after["as_of"]["chains"][chain] > permit["as_of"]["chains"][chain]
        # ... and the old decisions still replay as they were decided
        doc = wait_replayed(settings, 3)
        assert doc["intact"] and doc["identical"] == 3, doc
        # the ledger holding the decisions verifies intact
        clean = run_cli(settings, "verify", "--json")
        assert clean.returncode == 0, clean.stdout + clean.stderr
        summary = json.loads(clean.stdout.strip().splitlines()[-1])["audit"]
        assert summary["consent_decisions"] == {"records": 3, "replayed": 3, "identical": 3}

        _tamper_decision(settings, permit)
        _tamper_consent(settings, deny)
        # and `careledger verify` finds both rewritten rows against their blocks
        tampered = run_cli(settings, "verify", "--json")
        assert tampered.returncode == 1, tampered.stdout + tampered.stderr
        found = json.loads(tampered.stdout.strip().splitlines()[-1])
        text = json.dumps(found)
        assert "raw-records" in text and "consents" in text, text[:2000]
        # ... and replays every answer: the edited one and the one whose consent changed
        codes = {
            (f["details"].get("decision_id"), f["code"])
            for f in found["findings"]
            if f["code"].startswith("CONSENT_DECISION_")
        }
        assert (permit["decision_id"], "CONSENT_DECISION_TAMPERED") in codes, codes
        assert (deny["decision_id"], "CONSENT_DECISION_REPLAY_MISMATCH") in codes, codes
    finally:
        stop(proc)


def _mutate(settings: Settings, sql: str, params: dict[str, Any]) -> None:
    store = AuditStore(store_for(settings).backend, settings.clickhouse_database)
    store.backend.execute(sql.format(db=store.db), params)
    store.wait_mutations(120.0)


def _tamper_decision(settings: Settings, permit: dict[str, Any]) -> None:
    """Rewrite a stored decision into a deny, consistently re-hashed in its envelope."""
    forged = json.loads(json.dumps(permit))
    forged["answer"]["outcome"] = "deny"
    data = canonicalize(forged)
    import hashlib

    _env, envelope = build_envelope(
        record_id=permit["decision_id"],
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format="careledger.consent-decision/1",
        received_at=permit["decided_at"],
        transport={"protocol": "decision-point", "source_id": "x", "auth": "local"},
    )
    _mutate(
        settings,
        "ALTER TABLE {db}.raw_records UPDATE canonical = %(c)s WHERE record_id = %(id)s",
        {"c": envelope.decode(), "id": permit["decision_id"]},
    )
    doc = replay_all(settings)
    codes = {(p["decision_id"], p["code"]) for p in doc["problems"]}
    assert (permit["decision_id"], "DECISION_TAMPERED") in codes, doc
    assert (permit["decision_id"], "DECISION_REPLAY_MISMATCH") in codes, doc
    assert not doc["intact"]


def _tamper_consent(settings: Settings, deny: dict[str, Any]) -> None:
    """Rewrite the consent v1 the deny relied on into a blanket permit."""
    _key, value = consent_record(1, "active", T_V1)
    doc = json.loads(value)
    doc["body"]["decision"] = "permit"
    doc["body"]["provision"] = []
    _mutate(
        settings,
        "ALTER TABLE {db}.reference_records UPDATE canonical = %(c)s "
        "WHERE kind = 'consent' AND record_id = 'c-1' AND version = 1",
        {"c": canonicalize(doc).decode()},
    )
    got = replay_all(settings)
    codes = {(p["decision_id"], p["code"]) for p in got["problems"]}
    assert (deny["decision_id"], "DECISION_REPLAY_MISMATCH") in codes, got


# --------------------------------------------------------------------------- HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_signed_requests_from_a_registered_institution(isolated: Settings, tmp_path: Path) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path))
    registrar = load_registrar_key(settings)
    hospital = SigningKey.from_seed(uuid.uuid4().bytes + uuid.uuid4().bytes)
    register_key(settings, registrar, "hospital-b", hospital.public_key, principal=ADMIN)
    proc = start_processor(settings, tmp_path / "processor.log")
    port = _free_port()
    server = start_cli(
        settings,
        tmp_path / "serve.log",
        "consent",
        "serve",
        "--port",
        str(port),
        "--refresh-s",
        "0.2",
        "--registry-refresh-s",
        "1",
    )
    url = f"http://127.0.0.1:{port}{DECIDE_PATH}"
    try:
        ledger_consent(settings, 1, "active", T_V1)
        body = json.dumps(
            {"patient_id": "p-1", "actor": {"id": "dr-x", "roles": ["doctor"]}, "action": "R"}
        ).encode()

        def ask(nonce: str, key: SigningKey = hospital) -> httpx.Response:
            h = signed_request_headers("hospital-b", key, "POST", DECIDE_PATH, body, nonce=nonce)
            return httpx.post(url, content=body, headers=h, timeout=30)

        def up() -> bool:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            except httpx.HTTPError:
                return False
            return bool(health["as_of"]["chains"])

        wait_until(up, 60, what="decision point serving with the consent read")
        r = ask("nonce-aaaaaaaaaaaaaaa1")
        assert r.status_code == 200, r.text
        decision = r.json()["decision"]
        assert decision["answer"]["outcome"] == "permit"  # hospital-b's staff
        assert decision["answer"]["provision_path"] == [1]
        assert decision["requester"]["institution"] == "hospital-b"
        assert decision["requester"]["key_id"] == hospital.key_id
        # replayed, unsigned, forged: refused with a clear error
        assert ask("nonce-aaaaaaaaaaaaaaa1").json()["error"] == "REPLAYED"
        assert httpx.post(url, content=body, timeout=30).json()["error"] == "UNSIGNED"
        stranger = SigningKey.from_seed(b"s" * 32)
        assert ask("nonce-aaaaaaaaaaaaaaa2", stranger).json()["error"] == "UNKNOWN_KEY"
        # revoked: refused once the registry is re-read
        registrars = load_registrar_keys(settings)
        snapshot = read_sources(settings, registrars, principal=ADMIN)
        [summary] = [k for k in summarize_keys(snapshot.key_events) if k.key_id == hospital.key_id]
        revoke_key(settings, registrar, summary, principal=ADMIN)
        assert read_registry(settings, registrars, principal=ADMIN)[0]
        n, answered = [0], [1]

        def refused() -> bool:
            # until the decision point re-reads the registry (every second, plus the read)
            # the key is still valid to it: those answers are decisions, ledgered too
            n[0] += 1
            reply = ask(f"nonce-revoked-{n[0]:08d}").json()
            answered[0] += "decision" in reply
            return bool(reply.get("error") == "REVOKED_KEY")

        wait_until(refused, 30, interval=1.0, what="revoked key refused")
        doc = wait_replayed(settings, answered[0])
        assert doc["intact"] and doc["identical"] == answered[0], doc
    finally:
        stop(server)
        stop(proc)
