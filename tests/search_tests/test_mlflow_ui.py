"""What the MLflow UI shows: where it opens on a search, and the compare view.

A real headless Chromium (tests/search_tests/browser.py) opens the pages of the smoke search
on its real MLflow server; the screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from search.ui import view_columns
from tests.search_tests.browser import chromium, page_text, screenshot, wait_for
from tests.search_tests.conftest import FinishedSearch

# the line `search.run` ends with: "mlflow       http://.../#/experiments/1/runs?...&viewStateShareKey=..."
PRINTED_URL = re.compile(r"^mlflow\s+(http\S+viewStateShareKey=\S+)$", re.MULTILINE)


@pytest.mark.slow
def test_default_url_opens_genai_overview_and_printed_url_opens_the_search(
        smoke_search: FinishedSearch, tmp_path: Path) -> None:
    """MLflow 3.17 opens an experiment where the browser's GenAI / Model-training switch says
    (GenAI for a new user): the default URL shows the GenAI Overview, none of the search.
    The URL the search printed shows the runs page with this search's trials only, best
    val/objective first, and the columns that say what the search was for."""
    client, experiment_id = smoke_search.client, smoke_search.experiment_id
    found = PRINTED_URL.search(smoke_search.proc.stdout)
    assert found, f"search.run printed no view URL:\n{smoke_search.proc.stdout[-2000:]}"
    printed = found.group(1)
    assert printed.startswith(f"{smoke_search.mlflow_uri}/#/experiments/{experiment_id}/runs?")
    parent = client.search_runs([experiment_id], f"tags.search_name = '{smoke_search.name}'")[0]
    children = client.search_runs([experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = {r.info.run_name: r.data.metrics.get("val/objective") for r in children}
    driver = chromium(tmp_path / "profile", size="2400,1400")
    try:
        driver.get(f"{smoke_search.mlflow_uri}/#/experiments/{experiment_id}")
        wait_for(driver, lambda: re.search(r"/experiments/\d+/\w", driver.current_url)
                 is not None, "the experiment's first tab")
        wait_for(driver, lambda: "Overview" in page_text(driver), "the first tab's page")
        screenshot(driver, "mlflow-default-url.png")
        default_route, default_text = driver.current_url, page_text(driver)
        driver.get(printed)
        wait_for(driver, lambda: all(n in page_text(driver) for n in names),
                 "every trial of the search on the printed URL's page")
        screenshot(driver, "mlflow-printed-url.png")
        printed_text, rows = page_text(driver), _rows(driver, list(names))
    finally:
        driver.quit()
    # the default URL: the GenAI Overview (its first sub-tab), the switch on GenAI, and no
    # trial of the search
    assert f"/experiments/{experiment_id}/overview" in default_route.split("?")[0]
    assert "GenAI" in default_text and "Model training" in default_text
    assert not any(name in default_text for name in names)
    # the printed URL: this search's view, its trials only, sorted, with the useful columns
    assert f"search {smoke_search.name}" in printed_text
    assert parent.info.run_name not in rows and sorted(rows) == sorted(names)
    shown = [names[r] for r in rows]
    scored = [v for v in shown if v is not None]
    assert scored == sorted(scored, reverse=True) and shown[:len(scored)] == scored, shown
    for column in view_columns("val/heldout/family_mean_acc"):
        header = column.split(".", 1)[1].strip("`")
        assert header in printed_text, f"column {header!r} is not on the page"


def _rows(driver: Any, names: list[str]) -> list[str]:
    """The run names of the runs table's rows, top to bottom (the grid keeps rows in the DOM
    in creation order and places them by their `row-index`)."""
    cells = driver.execute_script(
        "return [...document.querySelectorAll('[row-index]')].map("
        "e => [Number(e.getAttribute('row-index')), e.innerText]);")
    order: dict[int, str] = {}
    for index, text in cells:
        for name in names:
            if name in text.splitlines():
                order[index] = name
    return [order[i] for i in sorted(order)]


@pytest.mark.slow
def test_compare_page_shows_heldout_metrics_and_searched_params(
        smoke_search: FinishedSearch, tmp_path: Path) -> None:
    runs = smoke_search.client.search_runs(
        [smoke_search.experiment_id], "tags.trial_status = 'completed'", max_results=3)
    assert len(runs) >= 2
    query = urllib.parse.urlencode({
        "runs": json.dumps([r.info.run_id for r in runs]),
        "experiments": json.dumps([smoke_search.experiment_id])})
    url = f"{smoke_search.mlflow_uri}/#/compare-runs?{query}"
    driver = chromium(tmp_path / "profile")
    wanted = ["val/heldout/mean_acc", "val/heldout/union_acc", "w_feat", "pcl_margin", "unig"]
    try:
        driver.get(url)
        wait_for(driver, lambda: "Parameters" in page_text(driver), "the compare page's tables",
                 timeout=60)
        screenshot(driver, "mlflow-compare.png")
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
