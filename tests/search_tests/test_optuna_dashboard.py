"""optuna-dashboard (installed by `make install`) serves a search's optuna.db: a real headless
Chromium sees the study and every trial of it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.processes import free_port, stop_process
from tests.search_tests.browser import chromium, page_text, screenshot, wait_for
from tests.search_tests.conftest import FinishedSearch


def _serve(storage: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`optuna-dashboard STORAGE` on 127.0.0.1, once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("optuna-dashboard")), storage,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/studies", timeout=2):
                return proc, base
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.time() > deadline:
                stop_process(proc)
                raise RuntimeError(f"optuna-dashboard did not start: {log.read_text()}"
                                   ) from None
            time.sleep(0.5)


@pytest.mark.slow
def test_the_dashboard_shows_the_study_and_its_trials(smoke_search: FinishedSearch,
                                                       tmp_path: Path) -> None:
    storage = f"sqlite:///{smoke_search.output / 'optuna.db'}"
    trials = optuna.load_study(study_name=smoke_search.name, storage=storage).trials
    assert len(trials) >= 8
    proc, base = _serve(storage, tmp_path / "dashboard.log")
    try:
        with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as reply:
            studies = json.loads(reply.read())["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == smoke_search.name)
        driver = chromium(tmp_path / "profile", size="1600,1400")
        try:
            driver.get(f"{base}/dashboard")
            wait_for(driver, lambda: smoke_search.name in page_text(driver), "the study's name")
            screenshot(driver, "optuna-dashboard-studies.png")
            driver.get(f"{base}/dashboard/studies/{study_id}/trials")
            wait_for(driver, lambda: f"{len(trials)} Trials" in page_text(driver),
                     "the study's trial count")
            screenshot(driver, "optuna-dashboard-trials.png")
            lines = page_text(driver).splitlines()
        finally:
            driver.quit()
    finally:
        stop_process(proc)
    for trial in trials:  # every trial listed, with its state
        assert f"Trial {trial.number}" in lines, f"trial {trial.number} is not listed"
    states = {t.state.name.capitalize() for t in trials}
    assert states <= set(lines), (states, lines[:40])
