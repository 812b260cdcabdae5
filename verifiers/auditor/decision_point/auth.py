"""Authenticating a question from another institution (pure, given a clock).

An institution is a *source* of the source registry (ADR 0010: registrar-signed key
events on the sources topic, ``careledger source register/revoke``). It signs each
request with one of its registered Ed25519 keys; the headers are

    X-Careledger-Institution   the institution's source id
    X-Careledger-Key           the key id (16 hex digits)
    X-Careledger-Timestamp     Unix seconds (an integer)
    X-Careledger-Nonce         16 to 64 characters of [A-Za-z0-9_-], never reused
    X-Careledger-Signature     base64 Ed25519 signature over :func:`request_message`

The signature covers a domain prefix, the institution, key id, timestamp, nonce,
method, path and the SHA-256 of the body, so no part can be swapped. A request is
refused (:class:`Refused`, with an HTTP status and a code) when it is unsigned
(``UNSIGNED``), malformed (``BAD_HEADER``), outside ``max_skew_s`` of the decision
point's clock (``STALE``), signed with a key the registry does not know for that
institution (``UNKNOWN_KEY``, ``KEY_NOT_FOR_SOURCE``) or that was revoked at that time
(``REVOKED_KEY``), with a signature that does not verify (``BAD_SIGNATURE``), or with a
nonce already seen within the skew window (``REPLAYED``). A nonce is remembered only
once its signature verified, so forged requests cannot burn a real sender's nonces;
nonces older than the window are forgotten (a replay of one is ``STALE`` by then).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from careledger_core.errors import CareledgerError, SignatureError
from careledger_core.signing import SigningKey
from careledger_core.source import SourceAuthError, SourceRegistry, timestamp_of

from .model import Requester

__all__ = [
    "HEADER_INSTITUTION",
    "HEADER_KEY",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_SKEW_S",
    "Refused",
    "RequestAuthenticator",
    "request_message",
    "signed_request_headers",
]

HEADER_INSTITUTION: Final = "x-careledger-institution"
HEADER_KEY: Final = "x-careledger-key"
HEADER_TIMESTAMP: Final = "x-careledger-timestamp"
HEADER_NONCE: Final = "x-careledger-nonce"
HEADER_SIGNATURE: Final = "x-careledger-signature"
MAX_SKEW_S: Final = 60
_DOMAIN: Final = b"careledger.decision-request/1\n"
_NONCE: Final = re.compile(r"\A[A-Za-z0-9_-]{16,64}\Z")
_SOURCE: Final = re.compile(r"\A[A-Za-z0-9._:/-]{1,128}\Z")
_KEY_ID: Final = re.compile(r"\A[0-9a-f]{16}\Z")
_TIMESTAMP: Final = re.compile(r"\A[0-9]{1,12}\Z")
#: remembered nonces at most (a flood of valid requests beyond it is refused, not
#: forgotten: forgetting would let a replay through)
MAX_NONCES: Final = 1_000_000


class Refused(CareledgerError):
    """A request that is not authenticated: HTTP ``status`` and a ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status


def request_message(
    institution: str, key_id: str, timestamp: str, nonce: str, method: str, path: str, body: bytes
) -> bytes:
    """What a request's signature covers."""
    digest = hashlib.sha256(body).hexdigest()
    fields = (institution, key_id, timestamp, nonce, method.upper(), path, digest)
    return _DOMAIN + "\n".join(fields).encode()


def signed_request_headers(
    institution: str,
    key: SigningKey,
    method: str,
    path: str,
    body: bytes,
    *,
    nonce: str,
    now: float | None = None,
) -> dict[str, str]:
    """The headers that authenticate a request as ``institution`` (for clients, tests)."""
    timestamp = str(int(time.time() if now is None else now))
    message = request_message(institution, key.key_id, timestamp, nonce, method, path, body)
    return {
        HEADER_INSTITUTION: institution,
        HEADER_KEY: key.key_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: base64.b64encode(key.sign(message)).decode("ascii"),
    }


@dataclass(frozen=True, slots=True)
class _Signed:
    institution: str
    key_id: str
    timestamp: str
    nonce: str
    signature: bytes
    signature_text: str


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else value.strip()


def _read(headers: Mapping[str, str]) -> _Signed:
    names = (HEADER_INSTITUTION, HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
    values = [_header(headers, n) for n in names]
    if all(v is None for v in values):
        raise Refused(401, "UNSIGNED", "the request is not signed: sign it with a registered key")
    missing = [n for n, v in zip(names, values, strict=True) if not v]
    if missing:
        raise Refused(401, "BAD_HEADER", f"missing header(s): {', '.join(missing)}")
    institution, key_id, ts, nonce, sig = (v or "" for v in values)
    for name, value, pattern in (
        (HEADER_INSTITUTION, institution, _SOURCE),
        (HEADER_KEY, key_id, _KEY_ID),
        (HEADER_TIMESTAMP, ts, _TIMESTAMP),
        (HEADER_NONCE, nonce, _NONCE),
    ):
        if pattern.match(value) is None:
            raise Refused(401, "BAD_HEADER", f"malformed {name}")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(401, "BAD_HEADER", f"malformed {HEADER_SIGNATURE}") from None
    if len(raw) != 64:
        raise Refused(401, "BAD_HEADER", f"malformed {HEADER_SIGNATURE}")
    return _Signed(institution, key_id, ts, nonce, raw, sig)


class RequestAuthenticator:
    """Checks signed requests against the source registry; remembers nonces.

    ``registry`` returns the current registry (refreshed by the caller as key events
    arrive); ``clock`` returns Unix seconds. Thread-safe."""

    def __init__(
        self,
        registry: Callable[[], SourceRegistry],
        *,
        max_skew_s: int = MAX_SKEW_S,
        clock: Callable[[], float] = time.time,
        max_nonces: int = MAX_NONCES,
    ) -> None:
        self._registry = registry
        self.max_skew_s = max_skew_s
        self._clock = clock
        self._max_nonces = max_nonces
        self._nonces: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def authenticate(
        self, headers: Mapping[str, str], method: str, path: str, body: bytes
    ) -> Requester:
        """The requester, or :class:`Refused`. ``headers``: lower-case names."""
        s = _read(headers)
        now = self._clock()
        sent = int(s.timestamp)
        if abs(now - sent) > self.max_skew_s:
            raise Refused(
                401,
                "STALE",
                f"timestamp {s.timestamp} is more than {self.max_skew_s} s from the decision "
                "point's clock (stale, replayed or a wrong clock)",
            )
        at = timestamp_of(float(sent))
        try:
            key = self._registry().authorize(s.institution, s.key_id, at)
        except SourceAuthError as exc:
            raise Refused(401, exc.code, f"{exc.message} (institution {s.institution})") from None
        message = request_message(s.institution, s.key_id, s.timestamp, s.nonce, method, path, body)
        try:
            key.verify(message, s.signature)
        except SignatureError:
            raise Refused(401, "BAD_SIGNATURE", "the signature does not verify") from None
        self._remember(s.institution, s.nonce, now)
        return Requester(
            institution=s.institution,
            auth="signed-request",
            key_id=s.key_id,
            nonce=s.nonce,
            timestamp=s.timestamp,
            body_sha256=hashlib.sha256(body).hexdigest(),
            signature=s.signature_text,
        )

    def _remember(self, institution: str, nonce: str, now: float) -> None:
        key = (institution, nonce)
        with self._lock:
            if key in self._nonces:
                raise Refused(401, "REPLAYED", "this nonce was already used: a replayed request")
            if len(self._nonces) >= self._max_nonces:
                horizon = now - 2 * self.max_skew_s - 2
                for k in [k for k, t in self._nonces.items() if t < horizon]:
                    del self._nonces[k]
                if len(self._nonces) >= self._max_nonces:
                    raise Refused(503, "BUSY", "too many requests in the replay window")
            self._nonces[key] = now

    def forget_expired(self) -> int:
        """Drop nonces older than twice the skew window (their replay is STALE)."""
        horizon = self._clock() - 2 * self.max_skew_s - 2
        with self._lock:
            old = [k for k, t in self._nonces.items() if t < horizon]
            for k in old:
                del self._nonces[k]
        return len(old)
