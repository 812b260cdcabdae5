"""Debian's headless Chromium driven by Selenium, for the console's browser tests
(both paths given, so Selenium Manager downloads nothing)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_chromium(profile: Path, *extra_args: str) -> WebDriver:
    """A headless Chromium with its own profile directory; the caller quits it."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.access(path, os.X_OK), f"{path} missing: deploy/bootstrap.sh installs it"
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager: no telemetry
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
        *extra_args,
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(5)
    return driver


def click(driver: WebDriver, by: str, value: str) -> None:
    """Click and wait for the next page (a click returns before the navigation ends)."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, value).click()
    WebDriverWait(driver, 20).until(staleness_of(page))
