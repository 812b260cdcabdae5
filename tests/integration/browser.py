"""Debian's headless Chromium driven by Selenium, for the console's browser tests
(both paths given, so Selenium Manager downloads nothing)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
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


def wait_for_next_page(driver: WebDriver, old_page: WebElement) -> None:
    """Wait until `old_page` (the former `html`) is gone and the new page is loaded.

    While Chromium swaps documents, touching the old element may fail with ChromeDriver's
    "Node with given id does not belong to the document" (a plain WebDriverException,
    not a stale-element one) and the new document may still be parsing: both mean "not
    yet", never "done". Reading the page before both settle raced on slow machines.
    """

    def replaced(d: WebDriver) -> bool:
        try:
            old_page.is_enabled()
        except StaleElementReferenceException:
            return bool(d.execute_script("return document.readyState") == "complete")
        except WebDriverException:  # mid-swap: the node is in neither document yet
            return False
        return False

    WebDriverWait(driver, 20).until(replaced)


def click(driver: WebDriver, by: str, value: str) -> None:
    """Click and wait for the next page (a click returns before the navigation ends)."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, value).click()
    wait_for_next_page(driver, page)
