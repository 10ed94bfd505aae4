"""`python -m search.run` against a real MLflow server: runs, statuses, Optuna states, errors."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import spaces
from search.vocab import TAG
from tests.search_tests.conftest import FinishedSearch
from trainables.vocab import THREAT_PGD10

REPO = Path(__file__).resolve().parents[2]


def run_search(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "search.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_search_logs_every_trial_to_mlflow(smoke_search: FinishedSearch) -> None:
    assert "leaderboard" in smoke_search.proc.stdout and "mlflow" in smoke_search.proc.stdout
    client = smoke_search.client
    runs = client.search_runs([smoke_search.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["space"] == "smoke"
    assert parent.data.tags["heldout_attacks"] == "PGDL2+Elastic@medium"
    experiment = client.get_experiment(smoke_search.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 8
    keys = {frozenset(r.data.params) for r in children}
    assert len(keys) == 1  # the same param keys on every child run, baselines included
    assert {"w_feat", "w_trades", "pcl_margin", "unig", "unig_delta", "pool",
            "pool.PGD"} <= next(iter(keys))
    statuses = [r.data.tags["trial_status"] for r in children]
    assert set(statuses) <= {"completed", "early-stopped"}
    assert "early-stopped" in statuses and "completed" in statuses
    baselines = {r.data.tags["baseline"]: r for r in children if "baseline" in r.data.tags}
    assert set(baselines) == {"pgd-at", "trades"}
    for run in baselines.values():  # never stopped early: the reference runs to the end
        assert run.data.tags["trial_status"] == "completed"
        assert run.info.run_name.split(maxsplit=1)[1] == f"baseline={run.data.tags['baseline']}"
    assert baselines["pgd-at"].data.params["w_trades"] == "0.0"
    assert baselines["trades"].data.params["w_trades"] == "6.0"
    for run in children:
        metrics = run.data.metrics
        for name in ("val/heldout/mean_acc", "val/heldout/union_acc", "val/heldout/PGDL2/acc",
                     "val/heldout/Elastic.medium/acc", "val/heldout/family_mean_acc",
                     "val/heldout/family_mean_acc_lo", "val/heldout/family_mean_acc_hi",
                     "val/clean/acc", "val/transfer/mean_acc", "val/objective"):
            assert 0.0 <= metrics[name] <= 1.0
        assert (metrics["val/heldout/union_acc_lo"] <= metrics["val/heldout/union_acc"]
                <= metrics["val/heldout/union_acc_hi"])
        assert not any(k.startswith(("config/", "pid", "timestamp", "points")) for k in metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "robustness.csv"} <= artifacts
    completed = [r for r in children if r.data.tags["trial_status"] == "completed"]
    for run in completed:  # full-length trials carry their masking checks and penalty
        metrics = run.data.metrics
        # of the checks' evidence only the PGD-10 a robust floor reads is a metric
        assert not any(k.startswith("masking/")
                       and k not in ("masking/any", "masking/answered", THREAT_PGD10)
                       for k in metrics)
        assert 0.0 <= metrics[THREAT_PGD10] <= 1.0
        checks = json.loads(Path(client.download_artifacts(
            run.info.run_id, "masking.json", str(smoke_search.cwd))).read_text())
        assert len(checks["flags"]) == 15 and "pgd10_acc" in checks["evidence"]
        assert "Elastic_medium_random_acc" in checks["evidence"]
        raised = run.data.tags["masking_flags"]
        assert (raised == "none") == (metrics["masking/any"] == 0)
        # smoke's held-out PGDL2 gets no margin pass: no flag is met by it, any one zeroes
        assert metrics["masking/answered"] == 0.0 and checks["answered"] is False
        expected = 0.0 if metrics["masking/any"] else metrics["val/heldout/family_mean_acc"]
        assert metrics["val/objective"] == pytest.approx(expected)
        if "baseline" not in run.data.tags:  # each searched one against the best baseline
            assert run.data.tags["vs_best_baseline"].split(":")[0].endswith(
                ("pgd-at", "trades"))
            assert (run.data.metrics["val/vs_best_baseline_lo"]
                    <= run.data.metrics["val/vs_best_baseline"]
                    <= run.data.metrics["val/vs_best_baseline_hi"])
    history = client.get_metric_history(completed[0].info.run_id, "val/heldout/mean_acc")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]  # one value per epoch, with step
    # each report names its fidelity in MLflow (smoke evaluates fully every time; the trial
    # tests check cheaper rungs name theirs)
    points = {m.step: m.value for m in client.get_metric_history(completed[0].info.run_id,
                                                                  "fidelity/points")}
    assert points == {1: 64.0, 2: 64.0, 3: 64.0, 4: 64.0}
    # the final comparison: the best searched recipe and both baselines, 2 seeds each
    final = [r for r in children if r.data.tags.get(TAG.FINAL) == "true"]
    assert len(final) == 3 and {r.data.tags.get("baseline") for r in final} == {
        None, "pgd-at", "trades"}
    for run in final:
        for name in ("test/clean/acc", "test/heldout/mean_acc", "test/sealed/mean_acc",
                     "test/autoattack/acc"):
            value = run.data.metrics[f"final/{name}"]
            assert (run.data.metrics[f"final/{name}_lo"] <= value
                    <= run.data.metrics[f"final/{name}_hi"])
    assert "final/delta/pgd-at/test/sealed/mean_acc_lo" in parent.data.metrics
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "best_config.yaml", "best", "sealed.csv", "final.md",
            "final.json", "space.yaml", "report"} <= parent_artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/pareto.png", "report/heatmap.png", "report/parallel.png"} <= plots
    # the table the search printed and logged (search.final, run by test_report, may log a
    # later one over final.md: compare with the table as the search printed it)
    printed = smoke_search.proc.stdout
    table = printed[printed.rindex("Test split, mean over"):printed.index("wall time:")]
    assert "| pgd-at (baseline) |" in table and "Difference, " in table
    assert "Per family (test split" in table and "Per family, " in table  # and each family's Δ
    assert any(k.startswith("final/delta/pgd-at/test/sealed/") and k.count("/") == 6
               for k in parent.data.metrics)
    # the baselines' final tasks started while the search ran (search/headstart.py)
    assert "final: pgd-at's 2 seeds started while the search runs" in printed
    assert "(4 started by the search;" in printed
    # ... seed 0 on the model the baseline's trial trained (the same weights), seed 1 trained
    lines = {line.split(":")[1].strip(): line for line in printed.splitlines()
             if line.startswith("final: pgd-at seed")}
    assert "(model reused," in lines["pgd-at seed 0"], lines
    assert "(trained in " in lines["pgd-at seed 1"], lines
    # the summary counts every model the search trained that a task evaluates, the head
    # start's too (a kept answer evaluates none)
    summary = re.search(r"(\d+) of them from a model the search trained", printed)
    assert summary is not None
    seed_lines = [line for line in printed.splitlines()
                  if re.match(r"final: \S+ seed \d+: ", line)]
    assert int(summary[1]) == sum("(model reused," in line for line in seed_lines) >= 2

    # The Optuna study beside the results: ASHA-stopped trials are PRUNED, not COMPLETE
    storage = f"sqlite:///{smoke_search.output / 'optuna.db'}"
    study = optuna.load_study(study_name="smoke-test", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == statuses.count("early-stopped")
    assert states.count(optuna.trial.TrialState.COMPLETE) == statuses.count("completed")
    # the first trials are the papers' defaults, then the baselines' recipes, marked so
    assert {"default", "baseline:pgd-at", "baseline:trades"} <= {
        r.data.tags.get(TAG.ORIGIN) for r in children}
    space = spaces.load("smoke")
    first = sorted(study.trials, key=lambda t: t.number)[:3]
    assert first[0].params == space.point(space.default_values())
    assert first[1].params == space.point(space.baseline_values("pgd-at"))
    assert first[2].params == space.point(space.baseline_values("trades"))

    # The exported best recipe runs again as a space file
    best = smoke_search.output / "best_config.yaml"
    check = run_search("--space", str(best), "--dry-run", cwd=smoke_search.cwd, timeout=120)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--space", "nope"], "unknown space 'nope'"),
    (["--space", "BAD_YAML"], "is not valid YAML at line"),
    (["--space", "smoke", "--set", "attacks.heldout=[PGD]"], "both pool candidates and heldout"),
    (["--space", "smoke", "--set", "attacks.heldout=[APGD-DLR]"],
     "family Linf (FGSM in pool candidates, APGD-DLR in heldout)"),
    (["--space", "smoke", "--set", "attacks.heldout=[Elastic@extreme]"],
     "level 'extreme' does not exist"),
    (["--space", "smoke", "--set", "attacks.heldout=[Elastic]"], "needs a distortion level"),
    (["--space", "smoke", "--set", "attacks.heldout=[Kaleidoscope@medium]"],
     "unknown attack 'Kaleidoscope'"),
    (["--space", "smoke", "--mlflow-uri", "http://127.0.0.1:9"], "--mlflow-uri http://127.0.0.1:9"),
    (["--space", "smoke", "--address", "127.0.0.1:9"], "--address 127.0.0.1:9"),
    (["--space", "smoke", "--address", "not-an-address"], "must be HOST:PORT"),
    (["--space", "smoke", "--num-samples", "-3"], "--num-samples=-3 must be >= 1"),
    (["--space", "smoke", "--search-alg", "grid"], "invalid choice: 'grid'"),
    (["--space", "smoke", "--set", "budget.epochs"], "must look like KEY=VALUE"),
    (["--space", "smoke", "--cpus-per-trial", "0"], "--cpus-per-trial=0.0 must be > 0"),
])
def test_bad_input_fails_fast_with_one_line(tmp_path: Path, args: list[str],
                                            message: str) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: bad\ndataset: digits\nattacks: [unclosed\n")
    args = [str(bad_yaml) if a == "BAD_YAML" else a for a in args]
    proc = run_search(*args, "--storage-path", str(tmp_path / "ray"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]
    assert "started" not in proc.stdout  # no trial ran
    assert not (tmp_path / "mlflow.db").exists()


def test_dry_run_prints_the_plan_without_ray(tmp_path: Path) -> None:
    proc = run_search("--space", "mid", "--dry-run", "--set", "budget.epochs=6", cwd=tmp_path,
                      timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "6 epochs" in proc.stdout
    assert "Elastic@medium+JPEG@medium+Snow@medium" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_ray_client_address_with_a_local_store_is_refused(tmp_path: Path) -> None:
    with socket.socket() as listener:  # something answering at the address: a stand-in head
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        proc = run_search("--space", "smoke", "--address", f"ray://127.0.0.1:{port}",
                          "--storage-path", str(tmp_path / "ray"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: --address ray://127.0.0.1:{port} runs Tune")
    assert "--mlflow-uri http://HEAD:5000" in proc.stderr


ONE_RECIPE_SPACE = """
name: same
dataset: digits
attacks:
  pool: {candidates: [PGD], min_size: 1, max_size: 1, default: [PGD]}
  heldout: [PGDL2]
baselines: []
budget: {epochs: 2, eval_every: 1, batch_size: 256, eval_samples: 64}
fixed: {train_attack_steps: 2, meta: "off", include_clean: true, unig: "off", w_feat: 0.0,
        w_cyc: 0.0, w_pcl: 0.0, w_trades: 0.0, w_ce_clean: 1.0}
params:
  w_ce: {type: categorical, choices: [1.0], default: 1.0}
"""


@pytest.mark.slow
def test_a_trial_in_a_reused_worker_reports_what_a_fresh_worker_does(tmp_path: Path) -> None:
    """Trials reuse the worker process of one that ended (tune.TuneConfig(reuse_actors)): the
    same recipe three times, one at a time, gives the first trial (a fresh worker) and the two
    after it (its worker, reused) the same metrics at every evaluation, bit for bit."""
    space = tmp_path / "same.yaml"
    space.write_text(ONE_RECIPE_SPACE)
    proc = run_search("--space", str(space), "--num-samples", "3", "--max-concurrent", "1",
                      "--search-alg", "random", "--scheduler", "none", "--sealed-top-k", "0",
                      "--storage-path", str(tmp_path / "ray"), "--name", "same",
                      "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = []
    for record in sorted((tmp_path / "ray" / "same").glob("*/result.json")):
        rows = [json.loads(line) for line in record.read_text().splitlines()]
        runs.append(rows)
    assert len(runs) == 3 and all(len(rows) == 2 for rows in runs)
    assert len({rows[0]["pid"] for rows in runs}) == 1  # one worker ran all three
    metrics = [[{k: v for k, v in row.items() if k.startswith(("val/", "masking/"))}
                for row in rows] for rows in runs]
    assert metrics[0][-1]["val/clean/acc"] > 0.5 and any("masking/" in k for k in metrics[0][-1])
    assert metrics[1] == metrics[0] and metrics[2] == metrics[0]
