"""A search whose driver dies resumes to the end; the multi-objective search runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.vocab import ORPHANED
from tests.processes import stop_process
from tests.search_tests.conftest import REPO, run_module


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_end(tmp_path: Path, mlflow_server: str) -> None:
    args = ["--space", "smoke", "--num-samples", "6", "--scheduler", "none", "--set",
            "budget.epochs=6", "--sealed-top-k", "0", "--mlflow-uri", mlflow_server,
            "--experiment", "resume-test", "--storage-path", str(tmp_path / "ray"),
            "--name", "resume-test"]
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    client = MlflowClient(mlflow_server)
    deadline = time.time() + 300
    try:
        while True:  # let two trials finish, then kill the driver like a crash would
            assert first.poll() is None and time.time() < deadline, (
                (tmp_path / "first.log").read_text()[-3000:])
            experiment = client.get_experiment_by_name("resume-test")
            done = client.search_runs([experiment.experiment_id],
                                      "tags.trial_status = 'completed'") if experiment else []
            if len(done) >= 2:
                break
            time.sleep(1)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        stop_process(first)  # and whatever Ray processes it left in its session
        log.close()
    finished_before = {r.info.run_id for r in done}

    second = run_module("search.run", *args, "--resume", cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs = client.search_runs([experiment.experiment_id], max_results=50)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6  # no trial run twice, none lost
    assert all(r.data.tags["trial_status"] == "completed" for r in children)
    assert finished_before <= {r.info.run_id for r in children}
    storage = f"sqlite:///{tmp_path / 'ray' / 'resume-test' / 'optuna.db'}"
    study = optuna.load_study(study_name="resume-test", storage=storage)
    states = [t.state for t in study.trials]
    orphans = [t for t in study.trials if ORPHANED in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in orphans)
    assert states.count(optuna.trial.TrialState.COMPLETE) + len(orphans) >= 6
    assert optuna.trial.TrialState.RUNNING not in states


@pytest.mark.slow
def test_nsga2_searches_the_clean_vs_heldout_front(tmp_path: Path) -> None:
    proc = run_module("search.run", "--space", "smoke", "--search-alg", "nsga2",
                      "--num-samples", "4", "--sealed-top-k", "0", "--storage-path",
                      str(tmp_path / "ray"), "--name", "front", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = optuna.load_study(study_name="front",
                              storage=f"sqlite:///{tmp_path / 'ray' / 'front' / 'optuna.db'}")
    assert len(study.directions) == 2  # held-out objective and clean accuracy
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert finished and all(len(t.values) == 2 for t in finished)
    assert len(study.best_trials) >= 1  # the Pareto front
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(finished) + len(pruned) == 4
