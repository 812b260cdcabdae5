"""Sender authentication: mTLS certificates, signed requests, open legacy sources."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from careledger_core.signing import SigningKey
from producers.gateway.auth import (
    AuthConfigError,
    AuthFailure,
    Identity,
    SenderRegistry,
    signed_headers,
)

KEY = SigningKey.from_seed(hashlib.sha256(b"gateway auth test").digest())
OTHER = SigningKey.from_seed(hashlib.sha256(b"someone else").digest())
CERT = b"not really DER, but fingerprints do not care"
NOW = 1_800_000_000.0


def literal(key: SigningKey) -> str:
    import base64

    return "ed25519:" + base64.b64encode(key.public_key.raw).decode()


@pytest.fixture
def registry() -> SenderRegistry:
    return SenderRegistry.from_dict(
        {
            "source": [
                {
                    "id": "ehr",
                    "certificate_sha256": [hashlib.sha256(CERT).hexdigest()],
                    "request_keys": [literal(KEY)],
                },
                {"id": "old-pacs", "open": True, "addresses": ["10.20.0.0/16"]},
                {"id": "lab", "open": True, "addresses": ["127.0.0.0/8"]},
            ]
        }
    )


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def identify(registry: SenderRegistry, headers: dict[str, str], body: bytes = b"{}", **kw: object):  # type: ignore[no-untyped-def]
    return registry.identify_http(
        lower(headers),
        "POST",
        "/AuditEvent",
        body,
        der=kw.get("der"),  # type: ignore[arg-type]
        address=kw.get("address", "127.0.0.1"),  # type: ignore[arg-type]
        now=NOW,
    )


def test_signed_request_identifies_the_source(registry: SenderRegistry) -> None:
    body = b'{"resourceType":"AuditEvent"}'
    headers = signed_headers("ehr", KEY, "POST", "/AuditEvent", body, now=NOW)
    who = identify(registry, headers, body)
    assert isinstance(who, Identity)
    assert (who.source_id, who.method, who.credential) == ("ehr", "signature", KEY.key_id)
    assert who.transport() == {"source_id": "ehr", "auth": "signature", "credential": KEY.key_id}


@pytest.mark.parametrize(
    "tamper",
    ["body", "path", "key", "stale", "source", "garbage"],
)
def test_bad_signatures_are_refused(registry: SenderRegistry, tamper: str) -> None:
    body = b'{"resourceType":"AuditEvent"}'
    key, path, now, source = KEY, "/AuditEvent", NOW, "ehr"
    if tamper == "path":
        path = "/"
    if tamper == "key":
        key = OTHER
    if tamper == "stale":
        now = NOW - 3600
    headers = signed_headers(source, key, "POST", path, body, now=now)
    if tamper == "body":
        body = body + b" "
    if tamper == "source":
        headers["X-Careledger-Source"] = "lab"
    if tamper == "garbage":
        headers["X-Careledger-Signature"] = "%%%"
    assert isinstance(identify(registry, headers, body), AuthFailure)


def test_client_certificate_identifies_the_source(registry: SenderRegistry) -> None:
    who = identify(registry, {}, der=CERT)
    assert isinstance(who, Identity) and (who.source_id, who.method) == ("ehr", "mtls")
    assert who.credential == "sha256:" + hashlib.sha256(CERT).hexdigest()
    # a certificate of one source cannot claim another
    assert isinstance(identify(registry, {"X-Careledger-Source": "lab"}, der=CERT), AuthFailure)
    # an unknown certificate is no credential
    assert isinstance(identify(registry, {}, der=b"other cert", address="192.0.2.1"), AuthFailure)


def test_open_sources(registry: SenderRegistry) -> None:
    who = identify(registry, {"X-Careledger-Source": "lab"})
    assert isinstance(who, Identity) and (who.source_id, who.method) == ("lab", "open")
    # restricted to its addresses
    assert isinstance(
        identify(registry, {"X-Careledger-Source": "old-pacs"}, address="192.0.2.1"), AuthFailure
    )
    # over HTTP an open source names itself: an address alone is no identification
    assert isinstance(identify(registry, {}, address="10.20.3.4"), AuthFailure)
    # a source that must sign cannot claim to be open
    assert isinstance(identify(registry, {"X-Careledger-Source": "ehr"}), AuthFailure)


def test_no_credentials_is_refused(registry: SenderRegistry) -> None:
    failure = identify(registry, {}, address="192.0.2.1")
    assert isinstance(failure, AuthFailure) and "credentials" in failure.reason
    assert isinstance(
        SenderRegistry().identify_http({}, "POST", "/", b"", der=None, address=None), AuthFailure
    )


def test_syslog_identification(registry: SenderRegistry) -> None:
    assert registry.identify_syslog(CERT, "192.0.2.1") == Identity(
        "ehr", "mtls", "sha256:" + hashlib.sha256(CERT).hexdigest()
    )
    assert registry.identify_syslog(None, "10.20.0.9") == Identity("old-pacs", "open", "10.20.0.9")
    # an address of no open source identifies nobody
    assert registry.identify_syslog(None, "192.0.2.1") is None
    # over UDP an address is forgeable: no open source, ever (issue 12)
    assert registry.identify_syslog(None, "10.20.0.9", datagram=True) is None


def test_a_signed_request_is_accepted_once(registry: SenderRegistry) -> None:
    body = b'{"resourceType":"AuditEvent"}'
    headers = signed_headers("ehr", KEY, "POST", "/AuditEvent", body, now=NOW)
    first = identify(registry, headers, body)
    assert isinstance(first, Identity)
    again = identify(registry, headers, body)
    assert isinstance(again, AuthFailure) and "replayed" in again.reason
    # released (nothing was recorded): the same request may be sent again, once
    registry.release(first)
    assert isinstance(identify(registry, headers, body), Identity)
    assert isinstance(identify(registry, headers, body), AuthFailure)


def test_config_file(tmp_path: Path) -> None:
    pub = tmp_path / "ehr.pub"
    pub.write_text(literal(KEY) + "\n")
    cfg = tmp_path / "senders.toml"
    cfg.write_text(
        '[[source]]\nid = "ehr"\nrequest_keys = ["ehr.pub"]\n'
        'certificate_subjects = ["CN=ehr,O=Hospital"]\n'
    )
    registry = SenderRegistry.load(cfg)
    assert registry.sources["ehr"].request_keys[0].key_id == KEY.key_id
    assert any("signed requests" in m for m in registry.methods())
    for bad in (
        '[[source]]\nid = ""\n',
        '[[source]]\nid = "a"\nopen = "yes"\n',
        '[[source]]\nid = "a"\nopen = true\n',  # an open source needs its addresses
        '[[source]]\nid = "a"\naddresses = ["not an ip"]\n',
        '[[source]]\nid = "a"\ncolour = "red"\n',
        '[[source]]\nid = "a"\n[[source]]\nid = "a"\n',
        '[[source]]\nid = "a"\ncertificate_sha256 = ["abc"]\n',
        "[other]\n",
    ):
        cfg.write_text(bad)
        with pytest.raises(AuthConfigError):
            SenderRegistry.load(cfg)
    with pytest.raises(AuthConfigError):
        SenderRegistry.load(tmp_path / "missing.toml")
