"""The privacy office's console in a real browser (issue 13, point 3): Debian's headless
Chromium driven by Selenium, against the real stack (Kafka, ClickHouse, the processor,
the auditor's alerts): sign in with a password and a TOTP code, work an alert from open
to resolved, re-identify a patient with a reason and open who looked at the record,
see the charts render, sign out; then find every one of those accesses in signed
blocks, the status changes ledgered, the patient's own access report naming the
privacy officer, and `verify` intact.

Screenshots of the main pages go to the test's directory, and to
``$CARELEDGER_CONSOLE_SCREENSHOTS`` when set (how docs/console/ is made).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from careledger import stack as stack_mod
from careledger.config import Settings
from console.accounts import AccountStore, totp
from console.ledger import CONSOLE_SOURCE_SYSTEM
from tests.integration.browser import click, free_port, open_chromium, wait_for_next_page
from tests.integration.pipeline import (
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)
from tests.integration.test_audit_end_to_end import _high_watermarks
from tests.integration.test_pipeline import accounted_records

pytestmark = pytest.mark.integration

PASSWORD = "a long privacy office passphrase"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = open_chromium(tmp_path / "chromium")
    try:
        yield driver
    finally:
        driver.quit()


def _shoot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1400, min(max(height + 40, 600), 3000))  # the whole page
    driver.save_screenshot(str(tmp_path / f"{name}.png"))
    driver.set_window_size(1400, 1000)
    keep = os.environ.get("CARELEDGER_CONSOLE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", Path(keep) / f"{name}.png")


def _ledgered(settings: Settings) -> list[dict[str, str]]:
    """The console's and the alert workflow's events in committed blocks."""
    store = store_for(settings)
    try:
        rows = store.backend.execute(
            f"SELECT canonical FROM {store.db}.access_events WHERE source_system IN "
            "(%(console)s, 'careledger-alerts') AND (chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {store.db}.blocks)",
            {"console": CONSOLE_SOURCE_SYSTEM},
        )
    finally:
        store.backend.close()
    out = []
    for (canonical,) in rows:
        e = json.loads(bytes(canonical))
        out.append(
            {
                "system": e["source"]["system"],
                "actor": e["actor"]["id"],
                "patient": e["patient"]["id"],
                "object": (e.get("object") or {}).get("type", ""),
                "id": (e.get("object") or {}).get("id", ""),
                "desc": e.get("outcome_desc", ""),
            }
        )
    return out


def test_an_analyst_works_an_alert_and_a_patient_s_history_in_a_real_browser(
    isolated: Settings, tmp_path: Path, browser: WebDriver
) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path)).replace(
        audit_salt="console-browser-salt", topic_alert_status=f"{isolated.topic_alerts}-status"
    )
    sim = run_cli(
        settings,
        "simulate",
        "--count",
        "1500",
        "--seed",
        "13",
        "--patients",
        "300",
        "--staff",
        "60",
        "--with-reference",
        "--ground-truth",
        str(tmp_path / "truth.jsonl"),
        "--inappropriate-rate",
        "0.05",
        "--quiet",
    )
    assert sim.returncode == 0, sim.stdout + sim.stderr
    chained_topics = [
        settings.topic_events,
        settings.topic_consents,
        settings.topic_care_relationships,
        settings.topic_workforce,
        settings.topic_patients,
    ]
    expected = _high_watermarks(settings, chained_topics)
    store = store_for(settings)
    proc = start_processor(settings, tmp_path / "processor.log")
    console = None
    try:
        wait_until(
            lambda: (
                accounted_records(
                    store,
                    " WHERE chain_id NOT LIKE %(sources)s",
                    {"sources": f"%/{settings.topic_sources}/%"},
                )
                >= expected
            ),
            240,
            what="the simulated traffic chained",
        )
        audited = run_cli(
            settings, "audit", "--from", "2026-11-01", "--to", "2026-11-05", "--json", timeout=600
        )
        assert audited.returncode == 0, audited.stdout + audited.stderr
        assert json.loads(audited.stdout)["alerts"] > 0
        verified = run_cli(settings, "verify", "--json")  # a run for the history chart
        assert verified.returncode == 0, verified.stdout + verified.stderr

        accounts = AccountStore(tmp_path / "accounts.json")
        officer = accounts.add("dana", "privacy-officer", PASSWORD)
        port = free_port()
        from careledger.processes import start_cli

        console = start_cli(
            settings,
            tmp_path / "console.log",
            "console",
            "--accounts",
            str(accounts.path),
            "serve",
            "--port",
            str(port),
        )
        base = f"http://localhost:{port}"

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(up, 60, what="the console answering")

        # -- sign in (password + TOTP) -------------------------------------------------
        browser.get(f"{base}/alerts")
        assert browser.current_url.endswith("/login")  # no session: the sign-in page
        browser.find_element(By.ID, "name").send_keys("dana")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        code = totp(base64.b32decode(officer.totp_secret), time.time())
        browser.find_element(By.ID, "code").send_keys(code)
        _shoot(browser, tmp_path, "sign-in")
        click(browser, By.ID, "signin")
        assert "dana (privacy-officer)" in browser.find_element(By.ID, "who").text
        assert browser.current_url.endswith("/alerts"), browser.current_url

        # -- the queue, then one open alert worked to resolved ------------------------
        count = browser.find_element(By.ID, "count").text
        assert "alert" in count
        _shoot(browser, tmp_path, "alerts")
        status = browser.find_element(By.ID, "status-filter")
        status.find_element(By.CSS_SELECTOR, "option[value='open']").click()
        click(browser, By.ID, "filter")
        links = browser.find_elements(By.CSS_SELECTOR, "a.alert-link")
        assert links, "an open alert to work"
        page = browser.find_element(By.TAG_NAME, "html")
        links[0].click()
        wait_for_next_page(browser, page)
        alert_id = browser.current_url.rsplit("/", 1)[1]
        assert browser.find_element(By.ID, "status").text == "open"
        assert "fired" in browser.find_element(By.ID, "story").text
        _shoot(browser, tmp_path, "case")

        click(browser, By.ID, "do-ack")
        assert browser.find_element(By.ID, "status").text == "acknowledged"
        assert "acknowledged by dana" in browser.find_element(By.ID, "notice").text
        browser.find_element(By.ID, "to").send_keys("lee")
        click(browser, By.ID, "do-assign")
        assert browser.find_element(By.ID, "assignee").text == "lee"
        browser.find_element(By.ID, "note").send_keys("asked the ward manager")
        click(browser, By.ID, "do-comment")
        browser.find_element(By.ID, "note").send_keys("confirmed: no care role, HR informed")
        click(browser, By.ID, "do-resolve")
        assert browser.find_element(By.ID, "status").text == "resolved"
        history = browser.find_element(By.ID, "history").text
        for step in ("acknowledged by dana", "assigned by dana", "resolved by dana"):
            assert step in history, history
        assert "asked the ward manager" in history
        assert browser.find_elements(By.ID, "do-reopen"), "a resolved alert can be reopened"

        # -- a patient: re-identify with a reason, then who looked at the record -------
        patient_links = browser.find_elements(By.CSS_SELECTOR, "#story a[href^='/patients/']")
        patient_links += browser.find_elements(By.CSS_SELECTOR, "a.patient-link")
        assert patient_links, "the case names its patient(s) by pseudonym"
        pseudonym = patient_links[0].get_attribute("href").rsplit("/", 1)[1]
        page = browser.find_element(By.TAG_NAME, "html")
        patient_links[0].click()
        wait_for_next_page(browser, page)
        browser.find_element(By.ID, "reason").send_keys("patient complaint, ticket 4711")
        click(browser, By.ID, "do-reidentify")
        shown = browser.find_element(By.ID, "reidentified").text
        patient_id = shown.split("patient ", 1)[1].split(" ", 1)[0]
        assert patient_id and patient_id != pseudonym
        click(browser, By.ID, "history-link")
        lines = browser.find_element(By.ID, "history-count").text
        assert int(lines.split(" ", 1)[0]) > 0, lines
        assert browser.find_elements(By.CSS_SELECTOR, "table.history details")  # proofs
        assert "Consents" in browser.page_source  # the patient's consents, or none
        assert f"/alerts/{alert_id}" in browser.page_source  # the alert that led here
        _shoot(browser, tmp_path, "history")

        # -- the pipeline page and its charts ------------------------------------------
        browser.get(f"{base}/pipeline")
        for chart in ("chart-alerts", "chart-hours", "chart-runs"):
            svg = browser.find_element(By.CSS_SELECTOR, f"#{chart} svg")
            assert svg.size["width"] > 100 and svg.size["height"] > 100, chart
            assert svg.find_elements(By.CSS_SELECTOR, "rect title"), f"{chart} has no bar"
        assert "intact" in browser.find_element(By.ID, "last-verification").text
        assert "no witness policy" in browser.find_element(By.ID, "witnessing").text
        _shoot(browser, tmp_path, "pipeline")

        # -- sign out: the session is gone -----------------------------------------------
        click(browser, By.CSS_SELECTOR, "form.signout button")
        browser.get(f"{base}/alerts")
        assert browser.current_url.endswith("/login")

        # -- the console's own accesses, chained and signed ------------------------------
        def seen() -> list[dict[str, str]]:
            return _ledgered(settings)

        def complete() -> bool:
            got = seen()
            kinds = {(e["system"], e["object"]) for e in got}
            return {
                (CONSOLE_SOURCE_SYSTEM, "alert"),
                (CONSOLE_SOURCE_SYSTEM, "pseudonym"),
                (CONSOLE_SOURCE_SYSTEM, "reidentification"),
                (CONSOLE_SOURCE_SYSTEM, "patient-history"),
            } <= kinds and sum(1 for e in got if e["system"] == "careledger-alerts") >= 4

        wait_until(complete, 120, what="the console's accesses in signed blocks")
        got = seen()
        assert all(e["actor"] == "dana" for e in got)
        reid = [e for e in got if e["object"] == "reidentification"]
        assert reid[0]["patient"] == patient_id and "ticket 4711" in reid[0]["desc"]
        assert any(e["object"] == "patient-history" and e["patient"] == patient_id for e in got)
        assert proc.poll() is None
    finally:
        if console is not None:
            stop(console)
        stop(proc)
        stack_mod.delete_topics(settings, [settings.topic_alert_status])

    # the status changes are the ledgered ones, the patient's own report names the
    # privacy office's look at it, and the whole ledger verifies
    shown_alert = run_cli(settings, "alerts", "show", alert_id, "--json")
    doc = json.loads(shown_alert.stdout)
    assert doc["status"] == "resolved" and doc["status_history_intact"] is True
    assert doc["status_history_ledgered"] is True
    report = run_cli(
        settings,
        "access-report",
        "--patient",
        patient_id,
        "--from",
        "2026-01-01",
        "--to",
        "2100-01-01",
        "--format",
        "json",
    )
    assert report.returncode in (0, 1), report.stdout + report.stderr
    lines = json.loads(report.stdout)["lines"]
    assert any(line["actor_id"] == "dana" for line in lines), "the officer's look is reported"
    final = run_cli(settings, "verify", "--json")
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
