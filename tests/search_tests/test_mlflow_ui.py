"""The MLflow UI's compare view shows what a user compares: held-out metrics, searched values.

A real headless Chromium (Debian's package, driven by Selenium and Debian's chromedriver) opens
the compare page of the smoke search's child runs; the screenshot is kept in test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.search_tests.conftest import REPO, FinishedSearch

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.mark.slow
def test_compare_page_shows_heldout_metrics_and_searched_params(
        smoke_search: FinishedSearch, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "the browser test needs Debian's chromium and chromium-driver: `make system-deps`")
    runs = smoke_search.client.search_runs(
        [smoke_search.experiment_id], "tags.trial_status = 'completed'", max_results=3)
    assert len(runs) >= 2
    query = urllib.parse.urlencode({
        "runs": json.dumps([r.info.run_id for r in runs]),
        "experiments": json.dumps([smoke_search.experiment_id])})
    url = f"{smoke_search.mlflow_uri}/#/compare-runs?{query}"

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run",
                 "--window-size=1600,2400", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wanted = ["val/heldout/mean_acc", "val/heldout/union_acc", "w_feat", "pcl_margin", "unig"]
    try:
        driver.get(url)
        deadline = time.time() + 60
        while "Parameters" not in driver.find_element("tag name", "body").text:
            assert time.time() < deadline, "the compare page never showed its tables"
            time.sleep(1)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "mlflow-compare.png"))
        text = _scroll_and_read(driver)
    finally:
        driver.quit()
    for word in wanted:
        assert word in text, f"{word!r} is not on the compare page:\n{text[:2000]}"
    for run in runs:  # every compared run is on the page, by its descriptive name
        assert run.info.run_name in text


def _scroll_and_read(driver: object) -> str:
    """All text the page shows while each scrollable table is scrolled through, as a user
    would (the parameter and metric tables only render the rows in view)."""
    count = driver.execute_script(  # type: ignore[attr-defined]
        "window._scrollables = [...document.querySelectorAll('*')].filter(e => "
        "e.scrollHeight > e.clientHeight + 5 && /auto|scroll/.test(getComputedStyle(e)."
        "overflowY)); return window._scrollables.length;")
    seen = [driver.find_element("tag name", "body").text]  # type: ignore[attr-defined]
    for index in range(count):
        position = 0
        while True:
            done = driver.execute_script(  # type: ignore[attr-defined]
                "const e = window._scrollables[arguments[0]]; e.scrollTop = arguments[1];"
                "return e.scrollTop + e.clientHeight >= e.scrollHeight - 2;", index, position)
            time.sleep(0.15)  # let the table render the rows now in view
            seen.append(driver.find_element("tag name", "body").text)  # type: ignore[attr-defined]
            if done or position > 20000:
                break
            position += 150
    return "\n".join(seen)
