"""Requests from other institutions: signed with a key of the source registry, or
refused with a clear error (attacks: unsigned, forged, unknown institution or key,
revoked key, replayed nonce, stale timestamp, swapped parts, hostile bodies), through
the HTTP endpoint (starlette's test client; the ledger is in memory here, Kafka in
tests/integration/test_decision_point_stack.py)."""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import pytest

with warnings.catch_warnings():  # starlette asks for httpx2; httpx is what is installed
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from careledger_core.reference import REFERENCE_SCHEMA, reference_from_dict
from careledger_core.signing import SigningKey
from careledger_core.source import KeyEventStatement, SourceRegistry, timestamp_of
from verifiers.auditor.decision_point import (
    DecisionPoint,
    LedgeredConsent,
    Refused,
    RequestAuthenticator,
    signed_request_headers,
)
from verifiers.auditor.decision_point.http import DECIDE_PATH, build_app
from verifiers.auditor.decision_point.ledger import MemoryDecisionLedger

NOW = 1_790_000_000.0  # 2026-09-21
REGISTRAR = SigningKey.from_seed(b"r" * 32)
KEY_A = SigningKey.from_seed(b"a" * 32)
KEY_B = SigningKey.from_seed(b"b" * 32)
KEY_REVOKED = SigningKey.from_seed(b"c" * 32)
STRANGER = SigningKey.from_seed(b"x" * 32)
BODY = json.dumps(
    {
        "patient_id": "p-1",
        "actor": {"id": "dr-a", "roles": ["doctor"]},
        "action": "R",
        "purposes": ["TREAT"],
    }
).encode()


def key_event(source: str, key: SigningKey, status: str, at: float) -> KeyEventStatement:
    return KeyEventStatement(
        source_id=source,
        key_id=key.key_id,
        public_key=base64.b64encode(key.public_key.raw).decode(),
        status=status,  # type: ignore[arg-type]
        valid_from=timestamp_of(at),
        registrar_key_id=REGISTRAR.key_id,
    )


REGISTRY = SourceRegistry(
    [
        key_event("hospital-a", KEY_A, "active", NOW - 86_400),
        key_event("hospital-b", KEY_B, "active", NOW - 86_400),
        key_event("hospital-a", KEY_REVOKED, "active", NOW - 86_400),
        key_event("hospital-a", KEY_REVOKED, "revoked", NOW - 3_600),
    ]
)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def authenticator(clock: Clock | None = None) -> RequestAuthenticator:
    return RequestAuthenticator(lambda: REGISTRY, max_skew_s=60, clock=clock or Clock())


def headers(
    institution: str = "hospital-a",
    key: SigningKey = KEY_A,
    body: bytes = BODY,
    nonce: str = "nonce-0000000000001",
    now: float = NOW,
    path: str = DECIDE_PATH,
) -> dict[str, str]:
    return signed_request_headers(institution, key, "POST", path, body, nonce=nonce, now=now)


def refused(auth: RequestAuthenticator, h: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(Refused) as info:
        auth.authenticate(h, "POST", DECIDE_PATH, body)
    assert info.value.status == 401
    return info.value.code


def test_a_signed_request_is_attributed_to_its_institution_and_key() -> None:
    got = authenticator().authenticate(headers(), "POST", DECIDE_PATH, BODY)
    assert (got.institution, got.key_id, got.auth) == ("hospital-a", KEY_A.key_id, "signed-request")
    assert got.signature and got.nonce == "nonce-0000000000001" and got.body_sha256


def test_unsigned_and_malformed_requests_are_refused() -> None:
    auth = authenticator()
    assert refused(auth, {}) == "UNSIGNED"
    h = headers()
    del h["x-careledger-nonce"]
    assert refused(auth, h) == "BAD_HEADER"
    for name, value in (
        ("x-careledger-nonce", "short"),
        ("x-careledger-nonce", "n" * 65),
        ("x-careledger-key", "not-a-key-id"),
        ("x-careledger-timestamp", "-5"),
        ("x-careledger-timestamp", "1e9"),
        ("x-careledger-signature", "!!!"),
        ("x-careledger-signature", base64.b64encode(b"short").decode()),
        ("x-careledger-institution", "a\nb"),
    ):
        assert refused(auth, {**headers(), name: value}) == "BAD_HEADER", (name, value)


def test_a_forged_signature_is_refused() -> None:
    auth = authenticator()
    # signed by a stranger's key but naming hospital-a's key id
    forged = headers(key=STRANGER)
    forged["x-careledger-key"] = KEY_A.key_id
    assert refused(auth, forged) == "BAD_SIGNATURE"
    # a real signature over another body, path or nonce
    assert refused(auth, headers(), body=BODY.replace(b"dr-a", b"dr-z")) == "BAD_SIGNATURE"
    other_path = headers(path="/consent/other")
    assert refused(auth, other_path) == "BAD_SIGNATURE"
    swapped = {**headers(), "x-careledger-nonce": "nonce-0000000000099"}
    assert refused(auth, swapped) == "BAD_SIGNATURE"


def test_unknown_institutions_keys_and_borrowed_keys_are_refused() -> None:
    auth = authenticator()
    assert refused(auth, headers(key=STRANGER)) == "UNKNOWN_KEY"
    assert refused(auth, headers(institution="nowhere")) == "KEY_NOT_FOR_SOURCE"
    # hospital-b's real key cannot speak for hospital-a
    assert refused(auth, headers(institution="hospital-a", key=KEY_B)) == "KEY_NOT_FOR_SOURCE"


def test_a_revoked_key_is_refused() -> None:
    assert refused(authenticator(), headers(key=KEY_REVOKED)) == "REVOKED_KEY"


def test_a_replayed_request_is_refused_and_a_forgery_burns_no_nonce() -> None:
    clock = Clock()
    auth = authenticator(clock)
    forged = headers(key=STRANGER, nonce="nonce-0000000000007")
    forged["x-careledger-key"] = KEY_A.key_id
    assert refused(auth, forged) == "BAD_SIGNATURE"
    h = headers(nonce="nonce-0000000000007")
    auth.authenticate(h, "POST", DECIDE_PATH, BODY)  # the real one still goes through
    assert refused(auth, h) == "REPLAYED"
    clock.now += 30
    assert refused(auth, h) == "REPLAYED"
    clock.now += 200  # the nonce is forgotten, and the request is stale by then
    auth.forget_expired()
    assert refused(auth, h) == "STALE"


def test_stale_and_future_timestamps_are_refused() -> None:
    auth = authenticator()
    assert refused(auth, headers(now=NOW - 61)) == "STALE"
    assert refused(auth, headers(now=NOW + 61)) == "STALE"
    auth.authenticate(headers(now=NOW - 59), "POST", DECIDE_PATH, BODY)


# --------------------------------------------------------------------------- HTTP

CHAIN = "careledger/careledger.consents/0"


def _point(sink: MemoryDecisionLedger) -> DecisionPoint:
    rec = reference_from_dict(
        {
            "schema": REFERENCE_SCHEMA,
            "kind": "consent",
            "record_id": "c-1",
            "version": 1,
            "recorded_at": "2026-01-01T00:00:00.000000Z",
            "effective_at": "2026-01-01T00:00:00.000000Z",
            "body": {
                "resourceType": "Consent",
                "id": "c-1",
                "status": "active",
                "subject": {"reference": "Patient/p-1"},
                "decision": "deny",
                "provision": [{"actor": [{"reference": {"reference": "Organization/hospital-a"}}]}],
            },
        }
    )
    point = DecisionPoint(sink, clock=lambda: NOW)
    point.load([LedgeredConsent(rec, CHAIN, 1, 0, "2026-01-01T00:00:01.000000Z")], {CHAIN: 1})
    return point


def client(sink: MemoryDecisionLedger) -> TestClient:
    return TestClient(build_app(_point(sink), authenticator()))


def post(c: TestClient, body: bytes, h: dict[str, str]) -> Any:
    return c.post(DECIDE_PATH, content=body, headers={**h, "content-type": "application/json"})


def test_the_endpoint_decides_ledgers_and_answers() -> None:
    sink = MemoryDecisionLedger()
    c = client(sink)
    r = post(c, BODY, headers())
    assert r.status_code == 200, r.text
    doc = r.json()
    decision = doc["decision"]
    assert decision["answer"]["outcome"] == "permit"  # hospital-a's staff are permitted
    assert decision["question"]["actor_organization"] == "hospital-a"
    assert decision["requester"]["institution"] == "hospital-a"
    assert decision["as_of"]["chains"] == {CHAIN: 1}
    assert doc["ledgered"] is True and sink.records[0][2] == doc["decision_sha256"]
    b_body = BODY.replace(b"dr-a", b"dr-b")
    rb = post(c, b_body, headers(institution="hospital-b", key=KEY_B, body=b_body))
    assert rb.json()["decision"]["answer"]["outcome"] == "deny"
    assert post(c, BODY, headers()).json()["error"] == "REPLAYED"
    assert len(sink.records) == 2


def test_the_endpoint_refuses_clearly() -> None:
    sink = MemoryDecisionLedger()
    c = client(sink)
    r = post(c, BODY, {})
    assert (r.status_code, r.json()["error"]) == (401, "UNSIGNED")
    other_org = json.dumps(
        {"patient_id": "p-1", "actor": {"id": "dr-a", "organization": "hospital-b"}, "action": "R"}
    ).encode()
    r = post(c, other_org, headers(body=other_org, nonce="nonce-0000000000002"))
    assert (r.status_code, r.json()["error"]) == (403, "ORGANIZATION_MISMATCH")
    bad = b'{"patient_id": null}'
    r = post(c, bad, headers(body=bad, nonce="nonce-0000000000003"))
    assert (r.status_code, r.json()["error"]) == (400, "QUESTION_INVALID")
    assert "patient_id" in r.json()["message"]
    huge = b"[" * 100_000
    r = post(c, huge, headers(body=huge, nonce="nonce-0000000000004"))
    assert r.status_code == 413
    assert sink.records == []
    down = MemoryDecisionLedger(fail=True)
    r = post(client(down), BODY, headers(nonce="nonce-0000000000005"))
    assert (r.status_code, r.json()["error"]) == (503, "DECISION_NOT_LEDGERED")
