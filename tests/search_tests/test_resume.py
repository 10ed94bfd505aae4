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


def test_a_tune_state_cut_short_is_put_back_from_its_whole_copy(tmp_path: Path) -> None:
    import json

    import spaces
    from search.guard import DiskGuard
    from search.resume import check_resumable
    from trainables.errors import ConfigError

    folder = tmp_path / "cut"
    folder.mkdir()
    state = folder / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text(json.dumps({"trial_data": [["{}", "{}"]]}))
    for name in ("tuner.pkl", "searcher-state-2026-01-01_00-00-00.pkl"):
        (folder / name).write_bytes(b"\x80\x05N.")
    DiskGuard(folder=str(folder), watch=[], reserve=0)._keep_copy()  # as during the search
    whole = state.read_bytes()
    state.write_bytes(whole[:20])  # what a full disk left of Tune's plain copy
    space = spaces.load("smoke")
    notes: list[str] = []
    check_resumable(folder, space, "smoke", log=notes.append)
    assert state.read_bytes() == whole
    assert "was damaged (experiment_state-2026-01-01_00-00-00.json is not whole JSON" in notes[0]
    state.write_bytes(whole[:20])
    (folder / "tuner.pkl").write_bytes(b"\x80\x05")  # the copy is gone: nothing to put back
    for copied in (folder / ".tune-state").iterdir():
        copied.unlink()
    with pytest.raises(ConfigError, match=r"is damaged .* and no whole copy of it is kept"):
        check_resumable(folder, space, "smoke")
