"""A real headless Chromium for the UI tests (Debian's chromium and chromium-driver, driven by
Selenium: `make system-deps`), and what they share: waiting for a page, screenshots kept in
test-artifacts/."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.search_tests.conftest import REPO

__all__ = ["ARTIFACTS", "chromium", "page_text", "screenshot", "wait_for"]

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium(profile: Path, *, size: str = "1600,2400") -> Any:
    """A new browser with an empty profile (a first-time user: nothing in localStorage)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "the browser tests need Debian's chromium and chromium-driver: `make system-deps`")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run",
                 f"--window-size={size}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def page_text(driver: Any) -> str:
    return str(driver.find_element("tag name", "body").text)


def wait_for(driver: Any, ready: Callable[[], bool], what: str, *, timeout: float = 90) -> None:
    """Polls `ready` until it holds; fails naming `what` and showing the page's text."""
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline, (f"{what}: not seen within {timeout:g}s at "
                                        f"{driver.current_url}\n{page_text(driver)[:2000]}")
        time.sleep(1)
    time.sleep(2)  # let what arrived with it render too


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path
