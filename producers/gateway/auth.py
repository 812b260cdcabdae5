"""Who sent a record: per-source sender authentication for the gateway.

Sources are configured in a TOML file (``Settings.gateway_auth_file``)::

    [[source]]
    id = "ehr-east"                                  # the source id recorded
    certificate_sha256 = ["5f1c...e0"]               # mTLS: SHA-256 of the DER cert
    certificate_subjects = ["CN=ehr-east,O=General Hospital"]   # mTLS: RFC 4514
    request_keys = ["ed25519:<base64>", "keys/ehr-east.pub"]    # signed HTTP requests

    [[source]]
    id = "old-pacs"
    open = true                      # legacy: accepted without credentials ...
    addresses = ["10.20.0.0/16"]     # ... from these addresses only (required)

How a sender is identified, strongest first:

1. **mTLS** (HTTPS and syslog over TLS): the client certificate, verified against
   ``Settings.gateway_tls_client_ca`` during the handshake, whose SHA-256 fingerprint
   or subject is listed for a source.
2. **Signed requests** (HTTP): headers ``X-Careledger-Source``,
   ``X-Careledger-Timestamp`` (Unix seconds, within :data:`MAX_SKEW_S` of the
   gateway's clock) and ``X-Careledger-Signature`` (base64 Ed25519 signature by one of
   the source's ``request_keys`` over :func:`request_message`: the method, path,
   timestamp and SHA-256 of the body). See :func:`signed_headers`.
3. **Open (legacy) sources**: no credentials. Over HTTP the request names the source
   in ``X-Careledger-Source``; over syslog TCP, the peer address picks the source (the
   first open source whose ``addresses`` contain it). The record says ``auth = open``.
   An open source must list its ``addresses`` (refused at load otherwise) and is never
   identified over UDP (a datagram's source address is forgeable).

Anything else is unauthenticated: HTTP answers one generic 401 (the reason is logged,
not told: different answers would reveal which source ids exist); a syslog peer is
refused at accept time and only counted (ADR 0025). A signed request is accepted once:
the SHA-256 of what its signature covers is remembered for the skew window
(:class:`~producers.gateway.guard.ReplayCache`) and a second copy is refused.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import ipaddress
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from careledger.keys import load_public_keys
from careledger_core.errors import CareledgerError
from careledger_core.signing import PublicKey, SigningKey
from producers.gateway.guard import ClaimStore, ReplayCache

__all__ = [
    "HEADER_SIGNATURE",
    "HEADER_SOURCE",
    "HEADER_TIMESTAMP",
    "MAX_SKEW_S",
    "NOT_AUTHENTICATED",
    "AuthConfigError",
    "AuthFailure",
    "Identity",
    "SenderRegistry",
    "Source",
    "request_message",
    "signed_headers",
]

HEADER_SOURCE: Final = "x-careledger-source"
HEADER_TIMESTAMP: Final = "x-careledger-timestamp"
HEADER_SIGNATURE: Final = "x-careledger-signature"
#: How far a signed request's timestamp may be from the gateway's clock.
MAX_SKEW_S: Final = 300
_DOMAIN: Final = b"careledger-gateway-request/1\n"
#: The one answer to every unauthenticated request (the reason is only logged).
NOT_AUTHENTICATED: Final = (
    "not authenticated: present a client certificate of a configured source or sign the "
    "request (X-Careledger-Source, X-Careledger-Timestamp, X-Careledger-Signature)"
)

#: ``operator``: ``careledger consent load`` (whoever may write to Kafka), never HTTP
Method = Literal["mtls", "signature", "open", "operator"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AuthConfigError(ValueError):
    """The sender configuration file is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """An identified sender: the source id and how it was established."""

    source_id: str
    method: Method
    #: certificate fingerprint, request key id, or the peer address (open sources)
    credential: str
    #: signed requests: the replay-cache entry (released if nothing was recorded)
    replay_key: tuple[bytes, int] | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    def transport(self) -> dict[str, str]:
        return {"source_id": self.source_id, "auth": self.method, "credential": self.credential}


@dataclasses.dataclass(frozen=True)
class AuthFailure:
    """Why a sender is not authenticated (logged, never answered; never patient data)."""

    reason: str
    #: the request may be valid but cannot be checked now (replay cache full): 503
    retry: bool = False


@dataclasses.dataclass(frozen=True)
class Source:
    id: str
    certificate_sha256: frozenset[str] = frozenset()
    certificate_subjects: frozenset[str] = frozenset()
    request_keys: tuple[PublicKey, ...] = ()
    open: bool = False
    addresses: tuple[IpNetwork, ...] = ()

    def allows_address(self, address: str | None) -> bool:
        if not self.addresses:
            return False
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in net for net in self.addresses)


def request_message(source_id: str, timestamp: str, method: str, path: str, body: bytes) -> bytes:
    """What a signed request's signature covers."""
    digest = hashlib.sha256(body).hexdigest()
    return _DOMAIN + "\n".join((source_id, timestamp, method.upper(), path, digest)).encode()


def signed_headers(
    source_id: str,
    key: SigningKey,
    method: str,
    path: str,
    body: bytes,
    now: float | None = None,
) -> dict[str, str]:
    """The headers that authenticate a request as ``source_id`` (for senders and tests)."""
    timestamp = str(int(time.time() if now is None else now))
    signature = key.sign(request_message(source_id, timestamp, method, path, body))
    return {
        "X-Careledger-Source": source_id,
        "X-Careledger-Timestamp": timestamp,
        "X-Careledger-Signature": base64.b64encode(signature).decode("ascii"),
    }


def certificate_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def certificate_subject(der: bytes) -> str | None:
    """The RFC 4514 subject of a DER certificate (None if it cannot be read)."""
    try:
        from cryptography import x509

        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:  # not a readable DER certificate
        return None


def _normalise_subject(subject: str) -> str:
    return ",".join(part.strip() for part in subject.split(","))


class SenderRegistry:
    """The configured sources and the rules that identify a sender."""

    def __init__(self, sources: Sequence[Source] = (), replay: ClaimStore | None = None) -> None:
        self.replay: ClaimStore = replay or ReplayCache(1_000_000, MAX_SKEW_S)
        ids = [s.id for s in sources]
        if len(set(ids)) != len(ids):
            raise AuthConfigError("a source id is listed twice")
        self.sources = {s.id: s for s in sources}
        self._by_fingerprint = {fp: s for s in sources for fp in s.certificate_sha256}
        self._by_subject = {
            _normalise_subject(subj): s for s in sources for subj in s.certificate_subjects
        }

    @classmethod
    def load(cls, path: Path | None) -> SenderRegistry:
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AuthConfigError(f"cannot read sender configuration {path}: {exc}") from exc
        return cls.from_dict(data, base=Path(path).parent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> SenderRegistry:
        unknown = set(data) - {"source"}
        if unknown:
            raise AuthConfigError(f"unknown sections {sorted(unknown)} (expected [[source]])")
        sources = []
        for i, entry in enumerate(data.get("source", [])):
            sources.append(_source(entry, f"source[{i}]", base))
        return cls(sources)

    # --------------------------------------------------------------- identify
    def methods(self) -> list[str]:
        """Human-readable list of the methods in use (CapabilityStatement)."""
        found = []
        if self._by_fingerprint or self._by_subject:
            found.append("mutual TLS (client certificate -> source)")
        if any(s.request_keys for s in self.sources.values()):
            found.append(
                "signed requests (X-Careledger-Source, X-Careledger-Timestamp, "
                "X-Careledger-Signature: Ed25519 over method, path, timestamp and the "
                "body's SHA-256)"
            )
        if any(s.open for s in self.sources.values()):
            found.append("open legacy sources (X-Careledger-Source or peer address)")
        return found or ["none configured: every request is refused"]

    def by_certificate(self, der: bytes | None) -> Identity | None:
        """The source a (handshake-verified) client certificate belongs to."""
        if not der:
            return None
        fingerprint = certificate_fingerprint(der)
        source = self._by_fingerprint.get(fingerprint)
        if source is None and self._by_subject:
            subject = certificate_subject(der)
            if subject is not None:
                source = self._by_subject.get(_normalise_subject(subject))
        if source is None:
            return None
        return Identity(source.id, "mtls", f"sha256:{fingerprint}")

    def open_by_address(self, address: str | None) -> Identity | None:
        for source in self.sources.values():
            if source.open and source.addresses and source.allows_address(address):
                return Identity(source.id, "open", address or "")
        return None

    def identify_syslog(
        self, der: bytes | None, address: str | None, *, datagram: bool = False
    ) -> Identity | None:
        """The sender of a syslog connection or datagram; UDP: never an open source."""
        if datagram:
            return None  # no certificate over UDP, and its address is forgeable
        return self.by_certificate(der) or self.open_by_address(address)

    def release(self, identity: Identity) -> None:
        """The request of ``identity`` was not recorded: its signature may be sent again."""
        if identity.replay_key is not None:
            self.replay.release(*identity.replay_key)

    def identify_http(
        self,
        headers: Mapping[str, str],
        method: str,
        path: str,
        body: bytes,
        *,
        der: bytes | None,
        address: str | None,
        now: float | None = None,
    ) -> Identity | AuthFailure:
        """Identify an HTTP sender (``headers`` with lower-case names)."""
        claimed = headers.get(HEADER_SOURCE)
        by_cert = self.by_certificate(der)
        if by_cert is not None:
            if claimed and claimed != by_cert.source_id:
                return AuthFailure(
                    f"the client certificate belongs to source {by_cert.source_id!r}, "
                    f"not {claimed!r}"
                )
            return by_cert
        if headers.get(HEADER_SIGNATURE) is not None:
            return self._signed(headers, method, path, body, now)
        if claimed:
            source = self.sources.get(claimed)
            if source is not None and source.open:
                if source.allows_address(address):
                    return Identity(source.id, "open", address or "")
                return AuthFailure(f"open source {claimed!r} is not allowed from this address")
            return AuthFailure(
                f"source {claimed!r} must authenticate (client certificate or signed request)"
            )
        return AuthFailure(
            "no credentials: present a client certificate or sign the request "
            "(X-Careledger-Source, X-Careledger-Timestamp, X-Careledger-Signature)"
        )

    def _signed(
        self,
        headers: Mapping[str, str],
        method: str,
        path: str,
        body: bytes,
        now: float | None,
    ) -> Identity | AuthFailure:
        claimed = headers.get(HEADER_SOURCE, "")
        timestamp = headers.get(HEADER_TIMESTAMP, "")
        source = self.sources.get(claimed)
        if source is None or not source.request_keys:
            return AuthFailure(f"no request keys are configured for source {claimed!r}")
        if not timestamp.isdigit():
            return AuthFailure("X-Careledger-Timestamp must be Unix seconds")
        clock = time.time() if now is None else now
        if abs(int(timestamp) - clock) > MAX_SKEW_S:
            return AuthFailure(
                f"X-Careledger-Timestamp is more than {MAX_SKEW_S} s from the gateway's clock"
            )
        try:
            signature = base64.b64decode(headers.get(HEADER_SIGNATURE, ""), validate=True)
        except (binascii.Error, ValueError):
            return AuthFailure("X-Careledger-Signature is not base64")
        message = request_message(claimed, timestamp, method, path, body)
        for key in source.request_keys:
            try:
                key.verify(message, signature)
            except CareledgerError:
                continue
            digest = hashlib.sha256(message).digest()
            fresh = self.replay.claim(digest, int(timestamp), clock)
            if fresh is None:
                return AuthFailure("the replay cache is full: retry later", retry=True)
            if not fresh:
                return AuthFailure(f"replayed signed request of {claimed!r}")
            return Identity(source.id, "signature", key.key_id, replay_key=(digest, int(timestamp)))
        return AuthFailure(f"the signature does not verify with any request key of {claimed!r}")


def _source(entry: Any, where: str, base: Path | None) -> Source:
    if not isinstance(entry, Mapping):
        raise AuthConfigError(f"{where}: expected a table")
    allowed = {
        "id",
        "certificate_sha256",
        "certificate_subjects",
        "request_keys",
        "open",
        "addresses",
    }
    unknown = set(entry) - allowed
    if unknown:
        raise AuthConfigError(f"{where}: unknown keys {sorted(unknown)}")
    source_id = entry.get("id")
    if not isinstance(source_id, str) or not source_id or len(source_id) > 256:
        raise AuthConfigError(f"{where}: id must be a non-empty string")

    def strings(name: str) -> list[str]:
        value = entry.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AuthConfigError(f"{where}.{name}: expected a list of strings")
        return value

    fingerprints = set()
    for fp in strings("certificate_sha256"):
        clean = fp.lower().removeprefix("sha256:").replace(":", "")
        if len(clean) != 64 or any(c not in "0123456789abcdef" for c in clean):
            raise AuthConfigError(f"{where}.certificate_sha256: {fp!r} is not a SHA-256")
        fingerprints.add(clean)
    keys: list[PublicKey] = []
    for literal in strings("request_keys"):
        entry_text = literal
        if not literal.startswith("ed25519:") and base is not None:
            candidate = Path(literal)
            entry_text = str(candidate if candidate.is_absolute() else base / candidate)
        try:
            keys.extend(load_public_keys([entry_text]))
        except CareledgerError as exc:
            raise AuthConfigError(f"{where}.request_keys: {exc}") from exc
    networks: list[IpNetwork] = []
    for text in strings("addresses"):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise AuthConfigError(f"{where}.addresses: {exc}") from exc
    is_open = entry.get("open", False)
    if not isinstance(is_open, bool):
        raise AuthConfigError(f"{where}.open: expected true or false")
    if is_open and not networks:
        raise AuthConfigError(
            f"{where}: an open source needs its addresses (it has no other credential)"
        )
    return Source(
        id=source_id,
        certificate_sha256=frozenset(fingerprints),
        certificate_subjects=frozenset(strings("certificate_subjects")),
        request_keys=tuple(keys),
        open=is_open,
        addresses=tuple(networks),
    )
