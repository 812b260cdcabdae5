"""Single sign-on into the console (issue 13, point 2; ADR 0036) in a real browser
against a real OpenID Provider: the zitadel/oidc library's example provider
(deploy/oidc, built by deploy/bootstrap.sh) over TLS, Debian's headless Chromium, and
`careledger console serve` on the real stack.

A person whose identity the privacy office bound to an account signs in at the
provider and lands in the console with that account's role; a person the provider
knows but the console does not is refused with the command that would enrol them;
the provider's callback cannot be replayed; a console whose client secret is wrong
signs no one in. The console checks the provider's certificate against the test CA
(server to server); the browser trusts the provider's key only (an SPKI pin)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from careledger.config import PROJECT_ROOT, Settings
from careledger.processes import start_cli
from console.accounts import AccountStore
from tests.integration.browser import click, free_port, open_chromium
from tests.integration.pipeline import processor_settings, stop, wait_until, with_keys

pytestmark = pytest.mark.integration

TESTOP = PROJECT_ROOT / "deploy" / "oidc" / "bin" / "testop"
CLIENT_ID = "careledger-console"
USERS = {
    "u-dana-7f3a": ("dana@hospital.example", "dana's provider password"),
    "u-eve-0c11": ("eve@hospital.example", "eve's provider password"),
}


class Provider:
    def __init__(self, tmp_path: Path, redirect_uri: str, secret: str) -> None:
        assert TESTOP.exists(), f"{TESTOP} missing: run deploy/bootstrap.sh (needs Go)"
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = tmp_path / "idp-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert, key = tmp_path / "idp-cert.pem", tmp_path / "idp-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        spki = (
            x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
            .public_key()
            .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        self.spki_pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
        users = tmp_path / "idp-users.json"
        users.write_text(
            json.dumps(
                {
                    sub: {
                        "ID": sub,
                        "Username": name,
                        "Password": password,
                        "FirstName": name.split("@")[0].title(),
                        "LastName": "Example",
                        "Email": name,
                        "EmailVerified": True,
                        "PreferredLanguage": "en",
                    }
                    for sub, (name, password) in USERS.items()
                }
            )
        )
        self.port = free_port()
        self.issuer = f"https://localhost:{self.port}/"
        self.log = tmp_path / "testop.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(TESTOP)],
                env={
                    "PORT": str(self.port),
                    "TLS_CERT": str(cert),
                    "TLS_KEY": str(key),
                    "CLIENT_ID": CLIENT_ID,
                    "CLIENT_SECRET": secret,
                    "REDIRECT_URI": redirect_uri,
                    "USERS_FILE": str(users),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _STARTED.append(self.proc)
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca_file))

        def up() -> bool:
            try:
                url = self.issuer + ".well-known/openid-configuration"
                with urllib.request.urlopen(url, timeout=2, context=context) as r:
                    return bool(json.load(r)["issuer"] == self.issuer)
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                return False

        wait_until(up, 30, what="the OpenID Provider answering")


def _console(
    settings: Settings, tmp_path: Path, accounts: AccountStore, name: str
) -> tuple[str, subprocess.Popen[bytes]]:
    port = settings.console_public_url.rsplit(":", 1)[1]
    proc = start_cli(
        settings,
        tmp_path / f"{name}.log",
        "console",
        "--accounts",
        str(accounts.path),
        "serve",
        "--port",
        port,
    )
    _STARTED.append(proc)
    base = settings.console_public_url

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
            return False

    wait_until(up, 60, what="the console answering")
    return base, proc


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    try:
        yield _STARTED
    finally:
        while _STARTED:
            stop(_STARTED.pop())


def _sign_in_at_provider(browser: WebDriver, console: str, who: str) -> None:
    browser.get(f"{console}/login")
    click(browser, By.ID, "sso")  # off to the provider's own login page
    assert browser.current_url.startswith("https://localhost:"), browser.current_url
    name, password = USERS[who]
    browser.find_element(By.ID, "username").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(password)
    click(browser, By.CSS_SELECTOR, "button[type=submit]")


def test_single_sign_on_through_a_real_provider_in_a_real_browser(
    isolated: Settings, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    del started  # stops the provider and the consoles at the end
    console_port = free_port()
    public = f"http://localhost:{console_port}"
    secret = "the console's client secret at the provider"
    provider = Provider(tmp_path, public + "/login/oidc/callback", secret)
    secret_file = tmp_path / "oidc-client-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    settings = processor_settings(with_keys(isolated, tmp_path)).replace(
        console_oidc_issuer=provider.issuer,
        console_oidc_client_id=CLIENT_ID,
        console_oidc_client_secret_file=secret_file,
        console_oidc_ca_file=provider.ca_file,
        console_public_url=public,
        console_oidc_label="the hospital's sign-on",
    )
    accounts = AccountStore(tmp_path / "accounts.json")
    accounts.add_oidc("dana", "privacy-officer", provider.issuer, "u-dana-7f3a")
    accounts.add("lee", "analyst", "a long break-glass passphrase")
    console, first = _console(settings, tmp_path, accounts, "console")

    browser = open_chromium(
        tmp_path / "chromium", f"--ignore-certificate-errors-spki-list={provider.spki_pin}"
    )
    try:
        # -- a bound identity: signed in with the account's role -------------------------
        _sign_in_at_provider(browser, console, "u-dana-7f3a")
        if not browser.current_url.endswith("/alerts"):
            click(browser, By.ID, "continue")  # the meta refresh, by hand if it was slow
        assert browser.current_url == f"{console}/alerts", browser.current_url
        assert "dana (privacy-officer)" in browser.find_element(By.ID, "who").text
        assert "alert" in browser.find_element(By.ID, "count").text
        cookies = {c["name"]: c for c in browser.get_cookies()}
        assert cookies["careledger_console"]["sameSite"] == "Strict"
        assert cookies["careledger_console"]["httpOnly"] is True
        assert "careledger_oidc" not in cookies  # the attempt's binding is gone

        # -- the provider's callback, replayed: refused, and no new session --------------
        browser.delete_all_cookies()
        browser.get(f"{console}/login/oidc/callback?state=forged&code=stolen")
        assert "Single sign-on did not succeed" in browser.find_element(By.ID, "error").text
        browser.get(f"{console}/alerts")
        assert browser.current_url.endswith("/login")

        # -- an identity the provider knows and the console does not: refused -----------
        _sign_in_at_provider(browser, console, "u-eve-0c11")
        refusal = browser.find_element(By.ID, "error").text
        assert "no console account is bound" in refusal
        assert "--oidc-subject u-eve-0c11" in refusal
        browser.get(f"{console}/alerts")
        assert browser.current_url.endswith("/login")

        # -- local break-glass accounts still sign in beside single sign-on --------------
        assert browser.find_element(By.ID, "sso").text == "Sign in with the hospital's sign-on"
    finally:
        browser.quit()

    # -- a console whose client secret is wrong: the provider refuses the exchange -------
    stop(first)
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not the secret\n")
    wrong.chmod(0o600)
    console, _second = _console(
        settings.replace(console_oidc_client_secret_file=wrong), tmp_path, accounts, "console2"
    )
    browser = open_chromium(
        tmp_path / "chromium2", f"--ignore-certificate-errors-spki-list={provider.spki_pin}"
    )
    try:
        _sign_in_at_provider(browser, console, "u-dana-7f3a")
        assert "token response" in browser.find_element(By.ID, "error").text
        browser.get(f"{console}/alerts")
        assert browser.current_url.endswith("/login")
    finally:
        browser.quit()
    log = (tmp_path / "console.log").read_text() + (tmp_path / "console2.log").read_text()
    assert "via the hospital's sign-on" in log
    assert secret not in log and "not the secret" not in log
