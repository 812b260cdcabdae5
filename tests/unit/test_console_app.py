"""The console's pages over a real (in-process) ClickHouse engine holding an audited
ledger (tests/audit_ledger.py), through Starlette's test client: sign-in and cookies,
CSRF, roles, risk order and filters, no page without its ledger entry, no case action
without its ledgered change, re-identification only with a reason. The console's
ledger stands in here (it records what it is asked to ledger, or refuses); the browser
test (tests/integration/test_console_browser.py) runs the real one on Kafka."""

from __future__ import annotations

import base64
import io
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from careledger.config import Settings
from console.accounts import AccountStore, totp
from console.app import Console, create_app
from console.ledger import ConsoleLedger, LedgerUnavailable, Viewed
from tests.audit_ledger import SALT, AuditedLedger, chdb_audited

PASSWORD = "correct horse battery staple"


class StandInLedger(ConsoleLedger):
    """Records what the console asks to ledger; refuses when ``down``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.recorded: list[tuple[str, str, Viewed]] = []
        self.down = False

    def record(self, user: str, role: str, viewed: Viewed, client: str | None = None) -> str:
        if self.down:
            raise LedgerUnavailable("Kafka is down in this test")
        self.recorded.append((user, role, viewed))
        return str(uuid.uuid4())


@pytest.fixture(scope="module")
def audited() -> Iterator[AuditedLedger]:
    with chdb_audited("console") as ledger:
        yield ledger


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Site:
    client: TestClient
    console: Console
    ledger: StandInLedger
    accounts: AccountStore
    audited: AuditedLedger
    clock: Clock

    def sign_in(self, name: str) -> None:
        account = self.accounts.get(name)
        assert account is not None
        self.clock.now += 30  # each sign-in in a step of its own: a code is accepted once
        code = totp(base64.b32decode(account.totp_secret), self.clock.now)
        r = self.client.post(
            "/login",
            data={"name": name, "password": PASSWORD, "code": code},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text

    def csrf(self, path: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.client.get(path).text)
        assert found
        return found.group(1)


@pytest.fixture
def site(audited: AuditedLedger, tmp_path: Path) -> Site:
    settings = Settings(
        run_dir=tmp_path,
        clickhouse_database=audited.db,
        audit_salt=SALT,
        kafka_port=_closed_port(),
        require_source_signatures=True,
    )
    clock = Clock()
    accounts = AccountStore(tmp_path / "accounts.json", clock=clock)
    for name, role in (
        ("dana", "privacy-officer"),
        ("ana", "analyst"),
        ("aud", "auditor"),
        ("ops", "operator"),
    ):
        accounts.add(name, role, PASSWORD)
    ledger = StandInLedger(settings)
    console = Console(settings, accounts, ledger=ledger, backend=lambda _writes: audited.backend)
    client = TestClient(create_app(console), base_url="https://testserver")
    return Site(client, console, ledger, accounts, audited, clock)


def test_every_page_but_sign_in_and_health_needs_a_session(site: Site) -> None:
    for path in ("/alerts", "/alerts/x", "/patients/x", "/history", "/actors/x", "/pipeline"):
        r = site.client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    assert site.client.get("/health").json()["status"] == "ok"
    assert site.client.get("/login").status_code == 200
    assert site.ledger.recorded == []


def test_a_sign_in_sets_a_strict_httponly_secure_cookie_with_a_new_id(site: Site) -> None:
    site.sign_in("ana")
    first = site.client.cookies.get("careledger_console")
    r = site.client.get("/alerts")
    assert r.status_code == 200
    site.sign_in("ana")
    assert site.client.cookies.get("careledger_console") != first  # no session fixation
    assert site.console.sessions.get(first) is None
    raw = site.client.post(
        "/login", data={"name": "ana", "password": "wrong password!!", "code": "123456"}
    )
    assert raw.status_code == 401 and "not right" in raw.text


def test_the_cookie_flags(site: Site) -> None:
    account = site.accounts.get("ana")
    assert account is not None
    site.clock.now += 30
    code = totp(base64.b32decode(account.totp_secret), site.clock.now)
    r = site.client.post(
        "/login",
        data={"name": "ana", "password": PASSWORD, "code": code},
        follow_redirects=False,
    )
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie


def test_every_answer_carries_the_security_headers(site: Site) -> None:
    for path in ("/login", "/health"):
        h = site.client.get(path).headers
        assert "default-src 'none'" in h["content-security-policy"]
        assert "script-src" not in h["content-security-policy"]  # no script at all
        assert h["x-content-type-options"] == "nosniff"
        assert h["cache-control"] == "no-store" and h["x-frame-options"] == "DENY"


def test_the_queue_is_in_risk_order_with_the_ledgered_status_and_filters(site: Site) -> None:
    site.sign_in("ana")
    page = site.client.get("/alerts").text
    ids = re.findall(r'class="alert-link" href="/alerts/([0-9a-f]+)"', page)
    alerts = {a["alert_id"]: a for a in site.audited.book.alerts()}
    assert set(ids) == set(alerts)
    scores = [alerts[i]["score"] for i in ids]
    assert scores == sorted(scores, reverse=True)
    snoop = site.audited.alert_of("snoop")
    resolved = site.client.get("/alerts?status=resolved").text
    assert re.findall(r'href="/alerts/([0-9a-f]+)"', resolved) == [snoop]
    none = site.client.get("/alerts?rule=NO_SUCH_RULE").text
    assert "No alert matches" in none
    assert site.client.get("/alerts?from=2026-13-01").status_code == 400


def test_a_case_is_shown_only_once_its_view_is_ledgered(site: Site) -> None:
    site.sign_in("ana")
    vip = site.audited.alert_of("vip")  # acknowledged by the ledger's build
    site.ledger.down = True
    refused = site.client.get(f"/alerts/{vip}")
    assert refused.status_code == 503 and "could not be ledgered" in refused.text
    assert "NO_EXPLANATION" not in refused.text and vip not in refused.text
    site.ledger.down = False
    shown = site.client.get(f"/alerts/{vip}")
    assert shown.status_code == 200 and "NO_EXPLANATION" in shown.text
    assert 'id="status">acknowledged<' in shown.text
    user, role, viewed = site.ledger.recorded[-1]
    assert (user, role, viewed.what, viewed.id) == ("ana", "analyst", "alert", vip)


def test_a_post_without_the_session_s_csrf_token_changes_nothing(site: Site) -> None:
    site.sign_in("ana")
    btg = next(a["alert_id"] for a in site.audited.book.alerts() if a["rule"] == "BREAK_THE_GLASS")
    before = site.audited.book.history([btg])
    for token in ("", "forged"):
        r = site.client.post(f"/alerts/{btg}/action", data={"csrf": token, "action": "ack"})
        assert r.status_code == 403 and "expired" in r.text
    assert site.audited.book.history([btg]) == before


def test_an_action_that_cannot_be_ledgered_is_not_made(site: Site) -> None:
    site.sign_in("ana")
    btg = next(a["alert_id"] for a in site.audited.book.alerts() if a["rule"] == "BREAK_THE_GLASS")
    before = site.audited.book.history([btg])
    r = site.client.post(
        f"/alerts/{btg}/action", data={"csrf": site.csrf(f"/alerts/{btg}"), "action": "ack"}
    )
    assert r.status_code == 200  # the case again, saying why
    assert "not done" in r.text and "could not be sent" in r.text
    assert site.audited.book.history([btg]) == before


def test_a_forged_alert_row_with_markup_is_shown_as_text(site: Site) -> None:
    """Someone with write access to ClickHouse plants markup in an alert's actor id and
    patient pseudonym: the pages show it as text (and the CSP allows no script anyway)."""
    a = site.audited
    cols = (
        "alert_id, rule, severity, score, actor_id, patient_ref, patient_refs, event_ids, "
        "evidence, explanations_searched, first_at, last_at, created_at, audit_run, version"
    )
    a.backend.execute(
        f"INSERT INTO {a.db}.alerts ({cols}) SELECT 'forged0000', rule, severity, 99999, "
        "'<script>alert(1)</script>', '\"><img src=x onerror=alert(2)>', '[]', "
        "'[\"forged-event\"]', evidence, explanations_searched, first_at, last_at, created_at, "
        f"audit_run, version FROM {a.db}.alerts LIMIT 1"
    )
    try:
        site.sign_in("ana")
        page = site.client.get("/alerts").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<script>" not in page and "<img src=x" not in page
        case = site.client.get("/alerts/forged0000").text
        assert "<script>" not in case and "<img src=x" not in case
    finally:
        a.backend.execute(f"ALTER TABLE {a.db}.alerts DELETE WHERE alert_id = 'forged0000'")
        for _ in range(100):  # mutations are asynchronous: gone before the next test
            count = a.backend.execute(
                f"SELECT count() FROM {a.db}.alerts WHERE alert_id = 'forged0000'"
            )
            if not count[0][0]:
                break
            time.sleep(0.05)


def test_roles_limit_pages_and_actions(site: Site) -> None:
    site.sign_in("ops")
    assert site.client.get("/alerts").status_code == 403
    site.sign_in("aud")  # read-only
    vip = site.audited.alert_of("vip", "VIP_OR_SENSITIVE_UNEXPLAINED")
    page = site.client.get(f"/alerts/{vip}").text
    assert 'id="do-' not in page  # no action offered
    r = site.client.post(
        f"/alerts/{vip}/action", data={"csrf": site.csrf("/alerts"), "action": "resolve"}
    )
    assert r.status_code == 403
    site.sign_in("ana")  # analysts work alerts but do not re-identify
    r = site.client.post(
        "/patients/abc/reidentify", data={"csrf": site.csrf("/alerts"), "reason": "x" * 20}
    )
    assert r.status_code == 403


def test_re_identification_needs_a_reason_and_is_ledgered_with_the_patient(site: Site) -> None:
    site.sign_in("dana")
    vip = site.audited.book.alert(site.audited.alert_of("vip", "VIP_OR_SENSITIVE_UNEXPLAINED"))
    assert vip is not None
    ref = vip["patient_ref"]
    patient = site.audited.cases["vip"].patient.id
    page = site.client.get(f"/patients/{ref}").text
    assert patient not in page and 'id="do-reidentify"' in page
    token = site.csrf(f"/patients/{ref}")
    count = len(site.ledger.recorded)
    short = site.client.post(f"/patients/{ref}/reidentify", data={"csrf": token, "reason": "why"})
    assert short.status_code == 400 and len(site.ledger.recorded) == count
    r = site.client.post(
        f"/patients/{ref}/reidentify",
        data={"csrf": token, "reason": "patient complaint, ticket 4711"},
    )
    assert r.status_code == 200 and f"patient <strong>{patient}</strong>" in r.text
    user, _role, viewed = next(v for v in site.ledger.recorded if v[2].what == "reidentification")
    assert user == "dana" and viewed.patient_id == patient and "ticket 4711" in (viewed.note or "")


def test_a_patient_s_page_shows_who_looked_their_consents_and_their_alerts(site: Site) -> None:
    site.sign_in("ana")
    patient = site.audited.cases["vip"].patient.id
    r = site.client.get(f"/history?patient={patient}")
    assert r.status_code == 200
    assert "Consents" in r.text and 'id="history-count"' in r.text
    assert int(re.search(r'id="history-count">(\d+) access', r.text).group(1)) >= 1
    vip = site.audited.alert_of("vip")
    assert f'href="/alerts/{vip}"' in r.text  # found by the patient's pseudonym
    user, _role, viewed = site.ledger.recorded[-1]
    assert (user, viewed.what, viewed.patient_id) == ("ana", "patient-history", patient)
    csv = site.client.get(f"/history.csv?patient={patient}")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "leaf_hash" in csv.text.splitlines()[0]
    pdf = site.client.get(f"/history.pdf?patient={patient}")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    from pypdf import PdfReader

    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    assert f"patient {patient}" in text and "proof:" in text


def test_sign_out_ends_the_session(site: Site) -> None:
    site.sign_in("ana")
    sid = site.client.cookies.get("careledger_console")
    site.client.post("/logout", data={"csrf": site.csrf("/alerts")})
    assert site.console.sessions.get(sid) is None
    assert site.client.get("/alerts", follow_redirects=False).status_code == 303
