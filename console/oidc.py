"""Single sign-on for the console with an OpenID Provider (ADR 0036).

OpenID Connect Core 1.0's authorization code flow for a confidential web client, with
PKCE (RFC 7636, S256):

1. ``begin`` makes a state, a nonce and a PKCE verifier for one attempt, keeps them
   here (never in the browser) under the state, bound to a random value the browser
   gets in a cookie, and returns the provider's authorization URL.
2. The provider signs the person in and sends the browser back with a code and the
   state. ``finish`` takes the attempt of that state once (a replayed or foreign state
   is refused), checks the browser's binding, exchanges the code with the verifier and
   the client secret at the token endpoint (server to server, TLS verified), and
   checks the ID token: signature by a key of the provider's JWKS with an asymmetric
   algorithm of our list (never ``none``, never HMAC), ``iss`` exactly the issuer,
   ``aud`` containing the client (and ``azp`` the client when present or when several
   audiences), ``exp``/``iat`` within a minute of skew, the attempt's ``nonce``, and
   the required ``acr`` when configured.
3. What comes back is an identity, (issuer, subject). The console's account file
   decides what it may do (``AccountStore.by_oidc``); the provider grants no role.

The discovery document is read from ``<issuer>/.well-known/openid-configuration``
and must name the same issuer (mix-up defence); its endpoints must be https. The keys
are read again when a token names a key id we do not have, at most every ten seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote_plus, urlencode, urlsplit

import httpx
import jwt

from careledger.config import Settings
from careledger.credentials import secret_from_env_or_file
from careledger.keys import KeyFileError

__all__ = ["BINDING_COOKIE", "CALLBACK", "Identity", "OidcClient", "OidcConfig", "OidcError"]

CALLBACK: Final = "/login/oidc/callback"
BINDING_COOKIE: Final = "careledger_oidc"
#: signature algorithms an ID token may use: asymmetric only
ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)
ATTEMPT_S: Final = 600.0
MAX_ATTEMPTS: Final = 10_000
LEEWAY_S: Final = 60
#: the JWKS is read again for an unknown key id at most this often (key rotation)
KEYS_REFRESH_S: Final = 10.0
DISCOVERY_TTL_S: Final = 3600.0
MAX_RESPONSE_BYTES: Final = 1024 * 1024
SECRET_ENV: Final = "CARELEDGER_CONSOLE_OIDC_CLIENT_SECRET"


class OidcError(Exception):
    """A sign-in through the provider that did not succeed; ``message`` says why in
    words fit for the person at the browser (no token, no secret)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _https_or_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str
    ca_file: Path | None = None
    label: str = "single sign-on"
    acr: str = ""
    scopes: tuple[str, ...] = ("openid", "profile", "email")

    def __post_init__(self) -> None:
        if not self.issuer.startswith("https://") or not urlsplit(self.issuer).hostname:
            raise OidcError("console_oidc_issuer must be an https:// URL")
        if not self.client_id:
            raise OidcError("console_oidc_client_id is not set")
        if not self.client_secret:
            raise OidcError("the OIDC client secret is empty")
        if not _https_or_loopback(self.redirect_uri) or not self.redirect_uri.endswith(CALLBACK):
            raise OidcError(
                "console_public_url must be an https:// URL (http only on loopback): "
                f"the redirect URI is <console_public_url>{CALLBACK}"
            )

    @classmethod
    def from_settings(
        cls, settings: Settings, env: Mapping[str, str] | None = None
    ) -> OidcConfig | None:
        """The configuration, or None when single sign-on is off (no issuer)."""
        if not settings.console_oidc_issuer:
            return None
        try:
            secret = secret_from_env_or_file(
                SECRET_ENV,
                settings.console_oidc_client_secret_file,
                "the OIDC client secret file",
                env,
            )
        except KeyFileError as exc:  # unreadable, empty or readable by others
            raise OidcError(str(exc)) from None
        if not secret:
            raise OidcError(
                f"single sign-on needs the client secret: set "
                f"console_oidc_client_secret_file (mode 0600) or {SECRET_ENV}"
            )
        if not settings.console_public_url:
            raise OidcError(
                "single sign-on needs console_public_url, the URL browsers reach the "
                "console at (the provider sends them back to it)"
            )
        return cls(
            issuer=settings.console_oidc_issuer,
            client_id=settings.console_oidc_client_id,
            client_secret=secret,
            redirect_uri=settings.console_public_url.rstrip("/") + CALLBACK,
            ca_file=settings.console_oidc_ca_file,
            label=settings.console_oidc_label or "single sign-on",
            acr=settings.console_oidc_acr,
        )


@dataclass(frozen=True, slots=True)
class Identity:
    issuer: str
    subject: str
    #: a name to show while no account is bound (preferred_username, email or name)
    shown_as: str


@dataclass(frozen=True, slots=True)
class _Attempt:
    binding: str
    nonce: str
    verifier: str
    started: float


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcClient:
    """One console's client of one provider (thread-safe: handlers run on a pool)."""

    def __init__(
        self,
        config: OidcConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        verify: Any = str(config.ca_file) if config.ca_file else True
        self._http = httpx.Client(
            verify=verify,
            timeout=10.0,
            follow_redirects=False,
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self._lock = threading.Lock()
        self._attempts: dict[str, _Attempt] = {}
        self._provider: dict[str, Any] | None = None
        self._provider_at = 0.0
        self._keys: dict[str, Any] = {}
        self._keys_at = -KEYS_REFRESH_S

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ the provider
    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            with self._http.stream("GET", url) as response:
                body = self._read(response, what)
        except httpx.HTTPError as exc:
            raise OidcError(f"cannot reach the identity provider for {what}: {exc}") from None
        return body

    def _read(self, response: httpx.Response, what: str) -> dict[str, Any]:
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_RESPONSE_BYTES:
                raise OidcError(f"the identity provider's {what} is larger than 1 MiB")
        if response.status_code != 200:
            raise OidcError(
                f"the identity provider answered {response.status_code} for {what}"
                + _provider_error(bytes(body))
            )
        try:
            doc = json.loads(bytes(body))
        except (UnicodeDecodeError, ValueError):
            raise OidcError(f"the identity provider's {what} is not JSON") from None
        if not isinstance(doc, dict):
            raise OidcError(f"the identity provider's {what} is not a JSON object")
        return doc

    def provider(self) -> dict[str, Any]:
        """The discovery document (cached), checked."""
        with self._lock:
            if self._provider is not None and self._clock() - self._provider_at < DISCOVERY_TTL_S:
                return self._provider
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = self._get_json(url, "discovery document")
        if doc.get("issuer") != self.config.issuer:
            raise OidcError(
                "the identity provider's discovery document names another issuer "
                f"({str(doc.get('issuer'))[:200]!r}, configured {self.config.issuer!r})"
            )
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or not value.startswith("https://"):
                raise OidcError(f"the identity provider's {name} is missing or not https")
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise OidcError("the identity provider does not support PKCE with S256")
        with self._lock:
            self._provider, self._provider_at = doc, self._clock()
        return doc

    def _key(self, kid: str | None, alg: str) -> Any:
        """The verification key of ``kid`` (re-reading the JWKS, at most every
        ``KEYS_REFRESH_S``, when it is unknown)."""
        for attempt in range(2):
            with self._lock:
                keys = dict(self._keys)
                stale = self._clock() - self._keys_at >= KEYS_REFRESH_S
            chosen = self._pick(keys, kid, alg)
            if chosen is not None:
                return chosen
            if attempt or not stale:
                break
            doc = self._get_json(self.provider()["jwks_uri"], "signing keys (JWKS)")
            fresh: dict[str, Any] = {}
            for i, jwk in enumerate(doc.get("keys") or []):
                if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                    continue
                fresh[str(jwk.get("kid", f"#{i}"))] = jwk
            with self._lock:
                self._keys, self._keys_at = fresh, self._clock()
        raise OidcError("the ID token is signed by a key the identity provider does not publish")

    @staticmethod
    def _pick(keys: dict[str, Any], kid: str | None, alg: str) -> Any:
        if kid is not None:
            jwk = keys.get(kid)
        else:
            candidates = [k for k in keys.values() if k.get("alg", alg) == alg]
            jwk = candidates[0] if len(candidates) == 1 else None
        if jwk is None:
            return None
        if jwk.get("alg", alg) != alg:
            raise OidcError("the ID token's algorithm is not its key's")
        try:
            return jwt.PyJWK(jwk, algorithm=alg).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise OidcError("the identity provider published a key we cannot use") from None

    # ------------------------------------------------------------------ the flow
    def begin(self) -> tuple[str, str]:
        """(the provider's authorization URL, the binding for the browser's cookie)."""
        provider = self.provider()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier, binding = secrets.token_urlsafe(64), secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            for old in [s for s, a in self._attempts.items() if now - a.started > ATTEMPT_S]:
                del self._attempts[old]
            if len(self._attempts) >= MAX_ATTEMPTS:
                raise OidcError("too many sign-ins are under way: try again in a few minutes")
            self._attempts[state] = _Attempt(binding, nonce, verifier, now)
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": _challenge(verifier),
            "code_challenge_method": "S256",
        }
        if self.config.acr:
            query["acr_values"] = self.config.acr
        endpoint = provider["authorization_endpoint"]
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query), binding

    def finish(self, state: str, code: str, binding: str | None, error: str = "") -> Identity:
        """The identity the provider vouches for, or OidcError."""
        with self._lock:
            attempt = self._attempts.pop(state, None) if state else None
        if attempt is None:
            raise OidcError("this sign-in was not started here, was already used, or expired")
        if binding is None or not hmac.compare_digest(attempt.binding, binding):
            raise OidcError("this sign-in was started in another browser")
        if self._clock() - attempt.started > ATTEMPT_S:
            raise OidcError("this sign-in took more than ten minutes: start again")
        if error:
            shown = "".join(c for c in error[:64] if c.isalnum() or c in "_-.")
            raise OidcError(f"the identity provider did not sign you in ({shown})")
        if not code:
            raise OidcError("the identity provider sent no code")
        tokens = self._exchange(code, attempt.verifier)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the identity provider's token response has no ID token")
        claims = self.check_id_token(id_token, attempt.nonce)
        shown_as = next(
            (
                str(claims[k])
                for k in ("preferred_username", "email", "name")
                if isinstance(claims.get(k), str)
            ),
            claims["sub"],
        )
        return Identity(self.config.issuer, claims["sub"], shown_as[:128])

    def _exchange(self, code: str, verifier: str) -> dict[str, Any]:
        provider = self.provider()
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.config.redirect_uri,
            "code_verifier": verifier,
        }
        methods = provider.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        auth: httpx.BasicAuth | None = None
        if "client_secret_basic" in methods:
            # RFC 6749 2.3.1: id and secret form-urlencoded before Basic
            auth = httpx.BasicAuth(
                _form_part(self.config.client_id), _form_part(self.config.client_secret)
            )
        elif "client_secret_post" in methods:
            data |= {"client_id": self.config.client_id, "client_secret": self.config.client_secret}
        else:
            raise OidcError("the identity provider offers no client secret authentication")
        try:
            with self._http.stream(
                "POST", provider["token_endpoint"], data=data, auth=auth
            ) as response:
                return self._read(response, "token response")
        except httpx.HTTPError as exc:
            raise OidcError(f"cannot reach the identity provider's token endpoint: {exc}") from None

    def check_id_token(self, token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims when every check passes (see the module's text)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise OidcError("the ID token is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise OidcError(f"the ID token's algorithm {str(alg)[:20]!r} is not accepted")
        kid = header.get("kid")
        key = self._key(kid if isinstance(kid, str) else None, str(alg))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[str(alg)],
                audience=self.config.client_id,
                issuer=self.config.issuer,
                leeway=LEEWAY_S,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise OidcError("the ID token has expired") from None
        except jwt.InvalidAudienceError:
            raise OidcError("the ID token is for another client") from None
        except jwt.InvalidIssuerError:
            raise OidcError("the ID token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise OidcError("the ID token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise OidcError(f"the ID token is not valid: {exc}") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise OidcError("the ID token was not issued for this sign-in (nonce)")
        aud = claims["aud"]
        azp = claims.get("azp")
        if ((isinstance(aud, list) and len(aud) > 1) or azp is not None) and (
            azp != self.config.client_id
        ):
            raise OidcError("the ID token was issued to another party (azp)")
        if self.config.acr and claims.get("acr") != self.config.acr:
            raise OidcError(
                f"the identity provider did not sign you in with {self.config.acr!r} "
                "(the console requires it)"
            )
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 255 or not sub.isprintable():
            raise OidcError("the ID token's subject is not a usable identifier")
        return claims


def _form_part(text: str) -> str:
    return quote_plus(text)


def _provider_error(body: bytes) -> str:
    """The OAuth error code of a refusal, when there is one (never its free text)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return ""
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        shown = "".join(c for c in doc["error"][:64] if c.isalnum() or c in "_-.")
        return f" ({shown})"
    return ""
