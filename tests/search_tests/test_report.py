"""`search.report` and `search.sealed` on a finished smoke search."""

from __future__ import annotations

import json

import pytest

import spaces
from search.trainable import objective_value
from tests.search_tests.conftest import FinishedSearch, run_module
from trainables.vocab import OBJECTIVE


def test_masking_flags_zero_the_objective() -> None:
    space = spaces.load("smoke")
    clean = {"val/heldout/mean_acc": 0.4, "masking/any": 0.0}
    flagged = {"val/heldout/mean_acc": 0.7, "masking/any": 1.0}
    assert objective_value(clean, space) == 0.4
    assert objective_value(flagged, space) == 0.0
    lenient = spaces.load("smoke", ["search.penalize_flags=false"])
    assert objective_value(flagged, lenient) == 0.7
    assert OBJECTIVE == "val/objective"


@pytest.mark.slow
def test_report_prints_the_leaderboard_and_logs_its_plots(smoke_search: FinishedSearch) -> None:
    proc = run_module("search.report", "--name", smoke_search.name, "--storage-path",
                      str(smoke_search.storage), cwd=smoke_search.cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "rank" in proc.stdout and "t01" in proc.stdout
    report = smoke_search.output / "report"
    for name in ("pareto.png", "heatmap.png"):
        assert (report / name).stat().st_size > 10_000
    runs = smoke_search.client.search_runs([smoke_search.experiment_id],
                                           "tags.search_name = 'smoke-test'")
    logged = {a.path for a in smoke_search.client.list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/pareto.png", "report/heatmap.png"} <= logged

    markdown = run_module("search.report", "--name", smoke_search.name, "--storage-path",
                          str(smoke_search.storage), "--format", "markdown", "--no-plots",
                          cwd=smoke_search.cwd, timeout=300)
    assert markdown.returncode == 0 and markdown.stdout.startswith("| rank | trial |")
    as_json = run_module("search.report", "--experiment", "smoke-test", "--mlflow-uri",
                         smoke_search.mlflow_uri, "--format", "json", "--no-plots",
                         cwd=smoke_search.cwd, timeout=300)
    rows = json.loads(as_json.stdout)
    assert len(rows) == 8 and {"masking_flags", "val/objective"} <= set(rows[0])


@pytest.mark.slow
def test_sealed_cli_evaluates_the_best_trial_and_two_baselines(
        smoke_search: FinishedSearch) -> None:
    proc = run_module("search.sealed", "--name", smoke_search.name, "--storage-path",
                      str(smoke_search.storage), "--top-k", "1", "--baselines", "--format",
                      "json", cwd=smoke_search.cwd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout[proc.stdout.index("["):])
    assert [r["trial"] for r in rows][1:] == ["baseline standard", "baseline pgd-at"]
    for row in rows:
        for key in ("test/clean/acc", "test/heldout/mean_acc", "test/sealed/mean_acc",
                    "test/autoattack/acc"):
            assert 0.0 <= row[key] <= 1.0
    baselines = smoke_search.client.search_runs([smoke_search.experiment_id],
                                                "tags.baseline != ''")
    assert {r.data.tags["baseline"] for r in baselines} == {"standard", "pgd-at"}
    trial_keys = {frozenset(r.data.params) for r in smoke_search.client.search_runs(
        [smoke_search.experiment_id], "tags.trial_status = 'completed'")}
    assert {frozenset(r.data.params) for r in baselines} == trial_keys  # comparable in the UI
