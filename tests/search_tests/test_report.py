"""`search.report` and `search.final` on a finished smoke search."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
import torch

import spaces
from search.trainable import objective_metrics, objective_value, robust_shortfall
from search.vocab import FRESH_FINAL_ENV, OBJECTIVE
from tests.search_tests.conftest import FinishedSearch, run_module
from trainables.vocab import THREAT_PGD10


def test_masking_flags_zero_the_objective() -> None:
    space = spaces.load("smoke")
    clean = {"val/heldout/family_mean_acc": 0.4, "masking/any": 0.0}
    flagged = {"val/heldout/family_mean_acc": 0.7, "masking/any": 1.0}
    assert objective_value(clean, space) == 0.4
    assert objective_value(flagged, space) == 0.0
    lenient = spaces.load("smoke", ["search.penalize_flags=false"])
    assert objective_value(flagged, lenient) == 0.7
    assert OBJECTIVE == "val/objective"
    # its interval (ASHA's interval rule) is the metric's, or the zero point where flagged
    bounds = {"val/heldout/family_mean_acc_lo": 0.33, "val/heldout/family_mean_acc_hi": 0.47}
    assert objective_metrics({**clean, **bounds}, space) == {
        OBJECTIVE: 0.4, "val/objective_lo": 0.33, "val/objective_hi": 0.47}
    assert objective_metrics({**flagged, **bounds}, space) == {
        OBJECTIVE: 0.0, "val/objective_lo": 0.0, "val/objective_hi": 0.0}


def test_a_full_length_recipe_pays_a_point_per_point_below_the_robust_floor() -> None:
    space = spaces.load("smoke", ["search.robust_floor=0.5"])
    metrics = {"val/heldout/family_mean_acc": 0.6, "val/heldout/family_mean_acc_lo": 0.55,
               "val/heldout/family_mean_acc_hi": 0.65, "masking/any": 0.0,
               THREAT_PGD10: 0.4}
    assert robust_shortfall(metrics, space) == pytest.approx(0.1)
    got = objective_metrics(metrics, space)
    assert got == pytest.approx({OBJECTIVE: 0.5, "val/objective_lo": 0.45,
                                 "val/objective_hi": 0.55})
    # an early rung is compared with recipes at the same rung: no floor there
    assert objective_value(metrics, space, final=False) == 0.6
    # above the floor, or without one, nothing changes
    assert objective_value({**metrics, THREAT_PGD10: 0.7}, space) == 0.6
    assert objective_value(metrics, spaces.load("smoke")) == 0.6
    # a shortfall larger than the objective leaves zero, not a negative score
    assert objective_metrics({**metrics, THREAT_PGD10: 0.0, "val/heldout/family_mean_acc": 0.3},
                             space) == {OBJECTIVE: 0.0, "val/objective_lo": 0.0,
                                        "val/objective_hi": 0.0}
    # the evidence a trial reports carries the key the floor reads
    from trainables.attacks.threat import ThreatModel
    from trainables.scoring.masking import run_masking_checks
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    report = run_masking_checks(model, torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,)),
                                ThreatModel("Linf", {"Linf": 0.1, "L2": 0.5}),
                                num_classes=3, quick=True)
    assert THREAT_PGD10 in report.metrics()


@pytest.mark.parametrize(("raised", "zeroed"), [
    # a gradient-masking flag (UniG's adaptive white-box attack beats the plain one)
    ("adaptive_beats_plain", {"white-box"}),
    # a query-claim flag (asking adaptively beats asking plainly)
    ("adaptive_query_beats_plain", {"scores"}),
    ("randomized", set()),  # informational: zeroes nothing
])
def test_a_flag_zeroes_only_the_objective_of_the_claim_it_invalidates(
        raised: str, zeroed: set[str]) -> None:
    from trainables.scoring.masking import MaskingReport, check_claim, list_checks

    flags = {name: name == raised for name in list_checks()}
    masking = tuple(n for n, up in flags.items() if up and check_claim(n) is not None)
    metrics = MaskingReport(flags, {}, masking).metrics()
    assert metrics["masking/any"] == float(bool(masking))  # visible whatever the claim
    for name, objective in (("smoke", "val/heldout/family_mean_acc"),
                            ("mid-query", "val/heldout/mean_acc")):
        space = spaces.load(name)
        value = objective_value({**metrics, objective: 0.6}, space)
        assert value == (0.0 if space.access.value in zeroed else 0.6), (name, raised)


@pytest.mark.slow
def test_report_prints_the_leaderboard_and_logs_its_plots(smoke_search: FinishedSearch) -> None:
    proc = run_module("search.report", "--name", smoke_search.name, "--storage-path",
                      str(smoke_search.storage), cwd=smoke_search.cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "rank" in proc.stdout and "t01" in proc.stdout
    report = smoke_search.output / "report"
    for name in ("pareto.png", "heatmap.png", "parallel.png"):
        assert (report / name).stat().st_size > 10_000
    runs = smoke_search.client.search_runs([smoke_search.experiment_id],
                                           "tags.search_name = 'smoke-test'")
    logged = {a.path for a in smoke_search.client.list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/pareto.png", "report/heatmap.png", "report/parallel.png"} <= logged

    markdown = run_module("search.report", "--name", smoke_search.name, "--storage-path",
                          str(smoke_search.storage), "--format", "markdown", "--no-plots",
                          cwd=smoke_search.cwd, timeout=300)
    assert markdown.returncode == 0 and markdown.stdout.startswith("| rank | trial |")
    as_json = run_module("search.report", "--experiment", "smoke-test", "--mlflow-uri",
                         smoke_search.mlflow_uri, "--format", "json", "--no-plots",
                         cwd=smoke_search.cwd, timeout=300)
    rows = json.loads(as_json.stdout)
    assert len(rows) == 8 and {"masking_flags", "val/objective"} <= set(rows[0])
    # any MLflow experiment, no search folder: importance comes from the runs themselves
    out = smoke_search.cwd / "experiment-report"
    plots = run_module("search.report", "--experiment", "smoke-test", "--mlflow-uri",
                       smoke_search.mlflow_uri, "--out", str(out), cwd=smoke_search.cwd,
                       timeout=300)
    assert plots.returncode == 0, plots.stderr
    full = [r for r in rows if r.get("status") == "completed"]
    if len(full) >= 3:
        assert (out / "importance.png").stat().st_size > 10_000
    else:  # too few to fit fANOVA: said, not silently left out
        assert "fANOVA needs at least 3" in plots.stderr


@pytest.mark.slow
def test_sealed_cli_runs_the_final_comparison_again_with_another_baseline(
        smoke_search: FinishedSearch) -> None:
    """standard is not a baseline of the smoke space: the CLI trains it (2 seeds) beside the
    best searched recipe, reusing the search's seed-0 model of that one."""
    proc = run_module("search.final", "--name", smoke_search.name, "--storage-path",
                      str(smoke_search.storage), "--top-k", "1", "--seeds", "2",
                      "--baselines", "standard", "--format", "csv", cwd=smoke_search.cwd,
                      timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the search's seed-0 model is reused when the best searched trial ran to the end (an
    # early-stopped one is retrained full-length)
    # (unflagged trials first, then those that ran to the end)
    searched = [r for r in smoke_search.client.search_runs([smoke_search.experiment_id])
                if "mlflow.parentRunId" in r.data.tags and "baseline" not in r.data.tags
                and r.data.tags.get("trial_status") in ("completed", "early-stopped")]
    best = min((r.data.tags.get("masking_flags", "none") != "none"
                and not r.data.metrics.get("masking/answered"),
                r.data.tags["trial_status"] != "completed") for r in searched)
    summary = re.search(r"2 recipes x 2 seeds = 4 tasks \(0 started by the search; (\d) of "
                        r"them from a model the search trained\)", proc.stdout)
    assert summary is not None, proc.stdout[-3000:]
    # unless the search's own final comparison kept that task's answer (then nothing is
    # evaluated: the line says "kept by an earlier search")
    seed0 = next(line for line in proc.stdout.splitlines()
                 if re.match(r"final: t\d+ seed 0: ", line))
    assert int(summary[1]) == int(not best[1] and "(kept by" not in seed0), seed0
    rows = list(csv.DictReader(io.StringIO(proc.stdout[proc.stdout.index("recipe,"):])))
    assert [r["recipe"] for r in rows][1:] == ["standard"]
    for row in rows:
        for key in ("test/clean/acc", "test/heldout/mean_acc", "test/sealed/mean_acc",
                    "test/autoattack/acc"):
            assert 0.0 <= float(row[f"{key}_lo"]) <= float(row[key]) <= float(row[f"{key}_hi"])
    assert "minus each baseline" in proc.stdout and "| standard |" in proc.stdout
    assert "kept by an earlier search" not in proc.stdout  # the suite computes afresh


@pytest.mark.slow
def test_final_cli_takes_the_answers_an_earlier_run_kept(smoke_search: FinishedSearch) -> None:
    """Without --fresh-final, a second final comparison of the same setting and code trains
    and attacks nothing: every task's answer is the one the first run kept, so the table is
    the same."""
    args = ("search.final", "--name", smoke_search.name, "--storage-path",
            str(smoke_search.storage), "--seeds", "2", "--baselines", "pgd-at", "--format",
            "csv")
    runs = [run_module(*args, *extra, cwd=smoke_search.cwd, timeout=900,
                       drop_env=(FRESH_FINAL_ENV,)) for extra in (["--fresh-final"], [])]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kept by an earlier search" not in runs[0].stdout  # computed, and kept
    # pgd-at's trial ran to the end: its seed is evaluated on the trial's model, the other
    # trained (search/records.baseline_model)
    lines = {line.split(":")[1].strip(): line for line in runs[0].stdout.splitlines()
             if line.startswith("final: pgd-at seed")}
    assert "(model reused," in lines["pgd-at seed 0"], lines
    assert "(trained in " in lines["pgd-at seed 1"], lines
    second = runs[1].stdout
    assert "4 of 4 answers were kept by an earlier search" in second, second[-3000:]
    assert second.count("(kept by an earlier search: ") == 4
    tables = [proc.stdout[proc.stdout.index("recipe,"):] for proc in runs]
    assert tables[0] == tables[1]
