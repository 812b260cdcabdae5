"""Single sign-on (console/oidc.py, ADR 0036): the checks on the flow and the ID token,
each as the attack it stops. The provider here is a stand-in behind httpx's transport
(keys, codes and tokens made in the test); the real provider, a zitadel/oidc OP in a
real browser, is tests/integration/test_console_sso_browser.py."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from starlette.testclient import TestClient

from careledger.config import Settings
from console.accounts import AccountError, AccountStore
from console.app import Console, create_app
from console.oidc import BINDING_COOKIE, CALLBACK, OidcClient, OidcConfig, OidcError
from console.sessions import COOKIE

ISSUER = "https://idp.example.org/"
CLIENT = "careledger-console"
SECRET = "client secret with spaces & symbols"
REDIRECT = "https://console.example.org" + CALLBACK


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Provider:
    """An OpenID Provider's three endpoints, as data the test can turn hostile."""

    key: Any = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    kid: str = "k1"
    issuer_in_discovery: str = ISSUER
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    claims_patch: dict[str, Any] = field(default_factory=dict)
    token_maker: Callable[[dict[str, Any]], str] | None = None
    jwks_reads: int = 0

    def jwk(self) -> dict[str, Any]:
        pub = self.key.public_key().public_numbers()
        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                "n": _b64(pub.n), "e": _b64(pub.e)}  # fmt: skip

    def authorize(self, url: str, subject: str = "u-1") -> tuple[str, str]:
        """What the provider does at its authorization endpoint: (state, code)."""
        q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert q["response_type"] == "code" and q["client_id"] == CLIENT
        assert q["code_challenge_method"] == "S256" and "openid" in q["scope"].split()
        code = f"code-{len(self.codes)}"
        self.codes[code] = {**q, "sub": subject}
        return q["state"], code

    def id_token(self, grant: dict[str, str]) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER, "sub": grant["sub"], "aud": CLIENT, "iat": now, "exp": now + 300,
            "nonce": grant["nonce"], "preferred_username": "dana@hospital",
        }  # fmt: skip
        claims |= self.claims_patch
        claims = {k: v for k, v in claims.items() if v is not None}
        if self.token_maker is not None:
            return self.token_maker(claims)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={
                "issuer": self.issuer_in_discovery,
                "authorization_endpoint": "https://idp.example.org/authorize",
                "token_endpoint": "https://idp.example.org/token",
                "jwks_uri": "https://idp.example.org/keys",
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            })  # fmt: skip
        if path == "/keys":
            self.jwks_reads += 1
            return httpx.Response(200, json={"keys": [self.jwk()]})
        if path == "/token":
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            basic = base64.b64decode(request.headers["authorization"].split()[1]).decode()
            from urllib.parse import unquote_plus

            cid, secret = (unquote_plus(p) for p in basic.split(":", 1))
            if (cid, secret) != (CLIENT, SECRET):
                return httpx.Response(401, json={"error": "invalid_client"})
            grant = self.codes.pop(form.get("code", ""), None)
            if grant is None or grant["redirect_uri"] != form["redirect_uri"]:
                return httpx.Response(400, json={"error": "invalid_grant"})
            verifier = form["code_verifier"].encode()
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
            if challenge.decode() != grant["code_challenge"]:
                return httpx.Response(400, json={"error": "invalid_grant"})
            return httpx.Response(
                200,
                json={
                    "access_token": "at",
                    "token_type": "Bearer",
                    "id_token": self.id_token(grant),
                },
            )
        return httpx.Response(404)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _client(
    provider: Provider, clock: Callable[[], float] = time.time, acr: str = ""
) -> OidcClient:
    config = OidcConfig(ISSUER, CLIENT, SECRET, REDIRECT, acr=acr)
    return OidcClient(config, transport=httpx.MockTransport(provider.handle), clock=clock)


def _sign_in(provider: Provider, client: OidcClient, subject: str = "u-1") -> Any:
    url, binding = client.begin()
    state, code = provider.authorize(url, subject)
    return client.finish(state, code, binding)


def test_a_sign_in_through_the_provider_gives_its_identity() -> None:
    provider = Provider()
    identity = _sign_in(provider, _client(provider))
    assert (identity.issuer, identity.subject, identity.shown_as) == (
        ISSUER,
        "u-1",
        "dana@hospital",
    )


def test_a_replayed_callback_is_refused() -> None:
    provider = Provider()
    client = _client(provider)
    url, binding = client.begin()
    state, code = provider.authorize(url)
    client.finish(state, code, binding)
    with pytest.raises(OidcError, match="already used"):
        client.finish(state, code, binding)


def test_a_callback_in_another_browser_is_refused() -> None:
    """Login CSRF: an attacker's own code and state, sent to a victim's browser (whose
    binding cookie is another attempt's, or absent)."""
    provider = Provider()
    client = _client(provider)
    _victims_url, victims_binding = client.begin()
    url, _attackers_binding = client.begin()
    state, code = provider.authorize(url, "attacker")
    with pytest.raises(OidcError, match="another browser"):
        client.finish(state, code, victims_binding)
    url, _attackers_binding = client.begin()
    state, code = provider.authorize(url, "attacker")
    with pytest.raises(OidcError, match="another browser"):
        client.finish(state, code, None)


def test_a_state_never_issued_is_refused() -> None:
    provider = Provider()
    with pytest.raises(OidcError, match="not started here"):
        _client(provider).finish("forged", "code-0", "x")


def test_a_sign_in_older_than_ten_minutes_is_refused() -> None:
    provider, clock = Provider(), Clock()
    client = _client(provider, clock)
    url, binding = client.begin()
    state, code = provider.authorize(url)
    clock.now += 601
    with pytest.raises(OidcError):
        client.finish(state, code, binding)


def test_a_token_signed_by_another_key_under_the_provider_s_key_id_is_refused() -> None:
    provider = Provider()
    forger = rsa.generate_private_key(65537, 2048)
    provider.token_maker = lambda c: jwt.encode(c, forger, "RS256", headers={"kid": "k1"})
    with pytest.raises(OidcError, match="signature does not verify"):
        _sign_in(provider, _client(provider))


def test_an_unsigned_token_alg_none_is_refused() -> None:
    provider = Provider()
    provider.token_maker = lambda c: jwt.encode(c, "", "none")
    with pytest.raises(OidcError, match="not accepted"):
        _sign_in(provider, _client(provider))


def test_an_hmac_token_keyed_with_the_provider_s_public_key_is_refused() -> None:
    """Algorithm confusion: HS256 with the public key's bytes as the shared secret."""
    provider = Provider()
    provider.token_maker = lambda c: _hs256(c, json.dumps(provider.jwk()).encode())
    with pytest.raises(OidcError, match="not accepted"):
        _sign_in(provider, _client(provider))


def _hs256(claims: dict[str, Any], secret: bytes) -> str:
    import hmac as hmac_mod

    def part(obj: Any) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=")

    signing = part({"alg": "HS256", "kid": "k1"}) + b"." + part(claims)
    mac = hmac_mod.new(secret, signing, hashlib.sha256).digest()
    return (signing + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


def test_a_token_for_another_client_is_refused() -> None:
    provider = Provider(claims_patch={"aud": "another-app"})
    with pytest.raises(OidcError, match="another client"):
        _sign_in(provider, _client(provider))


def test_a_token_for_several_audiences_without_our_azp_is_refused() -> None:
    provider = Provider(claims_patch={"aud": [CLIENT, "another-app"]})
    with pytest.raises(OidcError, match="azp"):
        _sign_in(provider, _client(provider))
    provider = Provider(claims_patch={"aud": [CLIENT, "another-app"], "azp": "another-app"})
    with pytest.raises(OidcError, match="azp"):
        _sign_in(provider, _client(provider))
    provider = Provider(claims_patch={"aud": [CLIENT, "another-app"], "azp": CLIENT})
    assert _sign_in(provider, _client(provider)).subject == "u-1"


def test_a_token_from_another_issuer_is_refused() -> None:
    provider = Provider(claims_patch={"iss": "https://evil.example/"})
    with pytest.raises(OidcError, match="another issuer"):
        _sign_in(provider, _client(provider))


def test_a_provider_whose_discovery_names_another_issuer_is_refused() -> None:
    """Mix-up: a discovery document that speaks for another provider."""
    provider = Provider(issuer_in_discovery="https://evil.example/")
    with pytest.raises(OidcError, match="names another issuer"):
        _client(provider).begin()


def test_an_expired_token_is_refused() -> None:
    now = int(time.time())
    provider = Provider(claims_patch={"iat": now - 900, "exp": now - 600})
    with pytest.raises(OidcError, match="expired"):
        _sign_in(provider, _client(provider))


def test_a_token_issued_in_the_future_is_refused() -> None:
    now = int(time.time())
    provider = Provider(claims_patch={"iat": now + 3600, "exp": now + 7200})
    with pytest.raises(OidcError, match="not valid"):
        _sign_in(provider, _client(provider))


def test_a_token_minted_for_another_sign_in_is_refused() -> None:
    """Token injection: a valid ID token of another attempt (its nonce)."""
    provider = Provider(claims_patch={"nonce": "another attempt's nonce"})
    with pytest.raises(OidcError, match="nonce"):
        _sign_in(provider, _client(provider))
    provider = Provider(claims_patch={"nonce": None})
    with pytest.raises(OidcError, match="nonce"):
        _sign_in(provider, _client(provider))


def test_a_code_stolen_without_its_verifier_is_useless() -> None:
    """PKCE: the stand-in refuses a verifier that does not match the challenge."""
    provider = Provider()
    client = _client(provider)
    url, binding = client.begin()
    state, code = provider.authorize(url)
    provider.codes[code]["code_challenge"] = "another-challenge"
    with pytest.raises(OidcError, match="400 for token response \\(invalid_grant\\)"):
        client.finish(state, code, binding)


def test_a_provider_error_is_reported_by_its_code_only() -> None:
    provider = Provider()
    client = _client(provider)
    url, binding = client.begin()
    state, _code = provider.authorize(url)
    with pytest.raises(OidcError) as raised:
        client.finish(state, "", binding, error="access_denied<script>\x1b[31m")
    assert "(access_deniedscript31m)" in raised.value.message


def test_the_required_authentication_context_is_checked() -> None:
    provider = Provider(claims_patch={"acr": "pwd"})
    client = _client(provider, acr="mfa")
    url, binding = client.begin()
    assert parse_qs(urlsplit(url).query)["acr_values"] == ["mfa"]
    state, code = provider.authorize(url)
    with pytest.raises(OidcError, match="mfa"):
        client.finish(state, code, binding)
    provider = Provider(claims_patch={"acr": "mfa"})
    assert _sign_in(provider, _client(provider, acr="mfa")).subject == "u-1"


def test_a_rotated_key_is_fetched_once_and_an_unknown_one_is_refused() -> None:
    provider, clock = Provider(), Clock()
    client = _client(provider, clock)
    _sign_in(provider, client)
    _sign_in(provider, client)
    assert provider.jwks_reads == 1  # kept
    clock.now += 11
    provider.key, provider.kid = rsa.generate_private_key(65537, 2048), "k2"
    _sign_in(provider, client)  # a new key id: the keys are read again
    assert provider.jwks_reads == 2
    stranger = rsa.generate_private_key(65537, 2048)
    provider.token_maker = lambda c: jwt.encode(c, stranger, "RS256", headers={"kid": "k9"})
    with pytest.raises(OidcError, match="does not publish"):
        _sign_in(provider, client)  # within ten seconds of the last read: not read again
    assert provider.jwks_reads == 2
    clock.now += 11
    with pytest.raises(OidcError, match="does not publish"):
        _sign_in(provider, client)  # read again, and still not there
    assert provider.jwks_reads == 3


@pytest.mark.parametrize("kind", ["ec", "ed25519"])
def test_ec_and_eddsa_keys_verify(kind: str) -> None:
    provider = Provider()
    if kind == "ec":
        key: Any = ec.generate_private_key(ec.SECP256R1())
        alg, jwk = "ES256", json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        alg, jwk = "EdDSA", json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    provider.jwk = lambda: jwk | {"kid": "k1", "use": "sig"}  # type: ignore[method-assign]
    provider.token_maker = lambda c: jwt.encode(c, key, alg, headers={"kid": "k1"})
    assert _sign_in(provider, _client(provider)).subject == "u-1"


def test_the_configuration_refuses_plain_http_and_reads_the_secret_safely(tmp_path: Path) -> None:
    with pytest.raises(OidcError, match="https"):
        OidcConfig("http://idp.example.org/", CLIENT, SECRET, REDIRECT)
    with pytest.raises(OidcError, match="console_public_url"):
        OidcConfig(ISSUER, CLIENT, SECRET, "http://console.example.org" + CALLBACK)
    OidcConfig(ISSUER, CLIENT, SECRET, "http://127.0.0.1:8443" + CALLBACK)  # loopback
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o644)
    settings = Settings(
        console_oidc_issuer=ISSUER,
        console_oidc_client_id=CLIENT,
        console_oidc_client_secret_file=secret,
        console_public_url="https://console.example.org/",
    )
    with pytest.raises(OidcError, match="accessible by group or others"):
        OidcConfig.from_settings(settings, env={})
    secret.chmod(0o600)
    config = OidcConfig.from_settings(settings, env={})
    assert config is not None and config.client_secret == SECRET
    assert config.redirect_uri == REDIRECT and SECRET not in repr(config)
    assert OidcConfig.from_settings(Settings(), env={}) is None


# ---------------------------------------------------------------- through the console


@pytest.fixture
def site(tmp_path: Path) -> tuple[TestClient, Provider, AccountStore]:
    accounts = AccountStore(tmp_path / "accounts.json")
    accounts.add_oidc("dana", "privacy-officer", ISSUER, "u-1")
    accounts.add("lee", "analyst", "a long local password")
    provider = Provider()
    console = Console(
        Settings(), accounts, secure_cookies=False, oidc=_client(provider), backend=lambda _w: None
    )
    return (
        TestClient(create_app(console), base_url="https://console.example.org"),
        provider,
        accounts,
    )


def test_the_console_signs_in_a_bound_identity_with_a_strict_session(
    site: tuple[TestClient, Provider, AccountStore],
) -> None:
    client, provider, _accounts = site
    assert 'href="/login/oidc"' in client.get("/login").text
    started = client.get("/login/oidc", follow_redirects=False)
    assert started.status_code == 303
    binding = started.headers["set-cookie"]
    assert BINDING_COOKIE in binding and "samesite=lax" in binding.lower()
    assert "httponly" in binding.lower() and "path=/login/oidc" in binding.lower()
    state, code = provider.authorize(started.headers["location"], "u-1")
    back = client.get(CALLBACK, params={"state": state, "code": code}, follow_redirects=False)
    assert back.status_code == 200, back.text
    assert 'http-equiv="refresh"' in back.text and "/alerts" in back.text
    assert "dana (privacy-officer)" in back.text
    session_cookie = [c for c in back.headers.get_list("set-cookie") if c.startswith(COOKIE)]
    assert session_cookie and "samesite=strict" in session_cookie[0].lower()


def test_the_console_refuses_an_identity_no_account_is_bound_to(
    site: tuple[TestClient, Provider, AccountStore],
) -> None:
    client, provider, _accounts = site
    started = client.get("/login/oidc", follow_redirects=False)
    state, code = provider.authorize(started.headers["location"], "someone-else")
    back = client.get(CALLBACK, params={"state": state, "code": code}, follow_redirects=False)
    assert back.status_code == 403
    assert "--oidc-subject someone-else" in back.text
    assert not any(c.startswith(COOKIE) for c in back.headers.get_list("set-cookie"))


def test_a_single_sign_on_account_has_no_password_to_guess(
    site: tuple[TestClient, Provider, AccountStore],
) -> None:
    accounts = site[2]
    assert accounts.sign_in("dana", "", "000000") is None
    assert accounts.sign_in("dana", "anything at all", "000000") is None
    reread = AccountStore(accounts.path)  # the binding survives the file
    bound = reread.by_oidc(ISSUER, "u-1")
    assert bound is not None and bound.name == "dana" and bound.password_hash == ""
    assert reread.by_oidc("https://evil.example/", "u-1") is None  # another issuer
    with pytest.raises(AccountError, match="already bound"):
        reread.add_oidc("mallory", "analyst", ISSUER, "u-1")


def test_a_provider_that_cannot_be_reached_leaves_local_sign_in_working(tmp_path: Path) -> None:
    accounts = AccountStore(tmp_path / "accounts.json")
    accounts.add("lee", "analyst", "a long local password")

    def down(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    config = OidcConfig(ISSUER, CLIENT, SECRET, REDIRECT)
    oidc = OidcClient(config, transport=httpx.MockTransport(down))
    console = Console(
        Settings(), accounts, secure_cookies=False, oidc=oidc, backend=lambda _w: None
    )
    client = TestClient(create_app(console), base_url="https://console.example.org")
    page = client.get("/login/oidc", follow_redirects=False)
    assert page.status_code == 503 and "can still sign in" in page.text
    assert client.get("/login").status_code == 200


def test_the_cli_binds_an_account_to_a_subject_and_lists_how_each_signs_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import commands.cli
    from commands.cli import main

    # main() would put its log handler on capsys's stream, closed after this test
    monkeypatch.setattr(commands.cli, "configure_logging", lambda *_a, **_k: None)
    monkeypatch.setenv("CARELEDGER_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("CARELEDGER_CONSOLE_OIDC_ISSUER", raising=False)
    path = str(tmp_path / "accounts.json")
    base = ["console", "--accounts", path, "add-user", "dana", "--role", "privacy-officer"]
    assert main([*base, "--oidc-subject", "248289761001"]) == 2  # which issuer?
    assert "--oidc-issuer" in capsys.readouterr().err
    assert main([*base, "--oidc-subject", "248289761001", "--oidc-issuer", ISSUER]) == 0
    assert "signs in through" in capsys.readouterr().out
    monkeypatch.setenv("CARELEDGER_CONSOLE_OIDC_ISSUER", ISSUER)  # the setting's issuer
    assert main([*base[:4], "eve", "--role", "analyst", "--oidc-subject", "248289761001"]) == 2
    assert "already bound to the account dana" in capsys.readouterr().err
    assert main(["console", "--accounts", path, "users"]) == 0
    assert capsys.readouterr().out == f"dana\tprivacy-officer\tsingle sign-on at {ISSUER}\n"
    assert AccountStore(Path(path)).by_oidc(ISSUER, "248289761001") is not None
