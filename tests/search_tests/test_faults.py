"""Faults during a search on this machine: the tracking server lost and back (also during the
final comparison), a trial that crashes, one that diverges, a driver SIGKILLed (its Ray
processes left behind, a checkpoint corrupted) and resumed, Ctrl-C and SIGTERM, a second
start of the same search, a full disk. After each, Ray, Optuna and MLflow agree on the
trials."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.vocab import ORPHANED
from tests.processes import session_members, start_mlflow_server, stop_process
from tests.search_tests.conftest import REPO, run_module


def _popen(args: list[str], cwd: Path, log: Path, *, piped: bool = False
           ) -> subprocess.Popen[bytes]:
    """`search.run` writing to `log`; `piped`: only its stderr, stdout a pipe to read."""
    return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE if piped else log.open("wb"),
                            stderr=log.open("wb") if piped else subprocess.STDOUT,
                            start_new_session=True)


def _children(client: MlflowClient, experiment: str) -> list[object]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return [r for r in client.search_runs([found.experiment_id], max_results=100)
            if "mlflow.parentRunId" in r.data.tags]


def _wait_until(condition: object, proc: subprocess.Popen[bytes], log: Path,
                timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _ray_trials(folder: Path) -> dict[str, str]:
    """Ray Tune's own record of a search's trials: trial id -> status."""
    states = sorted(folder.glob("experiment_state-*.json"))
    assert states, f"no experiment state in {folder}"
    data = json.loads(states[-1].read_text())
    out = {}
    for entry in data["trial_data"]:
        trial = json.loads(entry[0]) if isinstance(entry, list) else json.loads(entry)
        out[trial["trial_id"]] = trial["status"]
    return out


def _agree(folder: Path, client: MlflowClient, experiment: str, study: str, count: int
           ) -> list[object]:
    """Ray, Optuna and MLflow each hold `count` finished trials, and the same ones."""
    ray = _ray_trials(folder)
    assert len(ray) == count and set(ray.values()) <= {"TERMINATED", "ERROR"}, ray
    trials = optuna.load_study(study_name=study,
                               storage=f"sqlite:///{folder / 'optuna.db'}").trials
    # a trial the killed driver asked for after its last searcher checkpoint never reaches
    # Optuna again (whether Tune then ran it or not): told FAIL, marked orphaned
    orphans = [t for t in trials if ORPHANED in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in orphans), orphans
    assert count - len(orphans) <= len(trials) - len(orphans) <= count
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    children = _children(client, experiment)
    # a run of a trial the killed driver started after Tune's last saved state: Tune ran that
    # sample again under a new trial id, so the old run is marked orphaned, KILLED
    lost = [r for r in children if r.data.tags.get("trial_status") == "orphaned"]  # type: ignore[attr-defined]
    assert all(r.info.status == "KILLED" and r.data.tags["ray_trial_id"] not in ray  # type: ignore[attr-defined]
               for r in lost)
    children = [r for r in children if r.data.tags.get("trial_status") != "orphaned"]  # type: ignore[attr-defined]
    assert len(children) == count
    assert {r.data.tags["ray_trial_id"] for r in children} == set(ray)  # type: ignore[attr-defined]
    assert all(r.info.status in ("FINISHED", "FAILED") for r in children)  # type: ignore[attr-defined]
    return children


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]], str]]:
    """An MLflow server the test may stop and start again on the same port and store (the
    tests that leave the server alone log to the session's, `mlflow_server`, each to its own
    experiment: a server of their own cost 7 to 8 s each to start and stop)."""
    root = tmp_path / "server"
    root.mkdir()
    proc, uri = start_mlflow_server(root)
    procs = [proc]
    yield root, procs, uri
    for proc in procs:
        stop_process(proc)


def _args(name: str, uri: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["--space", "smoke", "--mlflow-uri", uri, "--experiment", name, "--name", name,
            "--storage-path", str(tmp_path / "ray"), "--sealed-top-k", "0",
            "--scheduler", "none", *extra]


@pytest.mark.slow
def test_mlflow_lost_and_back_mid_search_loses_nothing(
        tmp_path: Path, server: tuple[Path, list[subprocess.Popen[bytes]], str]) -> None:
    root, procs, uri = server
    log = tmp_path / "search.log"
    search = _popen(_args("outage", uri, tmp_path, "--num-samples", "2", "--set",
                          "budget.epochs=6", "--set", "baselines=[]"), tmp_path, log)
    client = MlflowClient(uri)
    try:
        _wait_until(lambda: len(_children(client, "outage")) >= 1, search, log)
        stop_process(procs.pop())  # the server goes away while trials train...
        time.sleep(10)
        assert search.poll() is None  # ...and the search neither stalls nor dies
        port = int(uri.rsplit(":", 1)[1])
        procs.append(start_mlflow_server(root, port=port)[0])
        assert search.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        stop_process(search)
    output = log.read_text()
    assert "does not answer: the search goes on" in output and " is back" in output
    children = _agree(tmp_path / "ray" / "outage", client, "outage", "outage", 2)
    for run in children:  # every evaluation of every trial reached the server
        history = client.get_metric_history(run.info.run_id, "val/clean/acc")  # type: ignore[attr-defined]
        assert sorted(m.step for m in history) == list(range(1, 7))
        assert run.data.tags["trial_status"] == "completed"  # type: ignore[attr-defined]
    assert not (tmp_path / "ray" / "outage" / "mlflow-pending.jsonl").exists()


@pytest.mark.slow
def test_mlflow_lost_for_good_stops_cleanly_and_resume_logs_the_rest(
        tmp_path: Path, server: tuple[Path, list[subprocess.Popen[bytes]], str]) -> None:
    root, procs, uri = server
    log = tmp_path / "search.log"
    args = _args("lost", uri, tmp_path, "--num-samples", "2", "--set", "budget.epochs=4",
                 "--set", "baselines=[]", "--tracking-outage", "5")
    search = _popen(args, tmp_path, log)
    client = MlflowClient(uri)
    try:
        _wait_until(lambda: len(_children(client, "lost")) >= 1, search, log)
        stop_process(procs.pop())
        code = search.wait(timeout=600)
    finally:
        stop_process(search)
    output = log.read_text()
    assert code == 3, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: MLflow at") and "--resume" in last, last
    journal = tmp_path / "ray" / "lost" / "mlflow-pending.jsonl"
    assert journal.is_file() and journal.read_text().strip()
    procs.append(start_mlflow_server(root, port=int(uri.rsplit(":", 1)[1]))[0])
    second = run_module("search.run", *args, "--resume", cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "kept from the last run's outage logged" in second.stdout
    children = _agree(tmp_path / "ray" / "lost", client, "lost", "lost", 2)
    assert all(r.data.tags["trial_status"] == "completed" for r in children)  # type: ignore[attr-defined]
    for run in children:
        history = client.get_metric_history(run.info.run_id, "val/clean/acc")  # type: ignore[attr-defined]
        assert sorted(m.step for m in history) == list(range(1, 5))
    assert not journal.exists()


@pytest.mark.slow
def test_a_crashing_trial_is_failed_with_its_error_in_mlflow(
        tmp_path: Path, mlflow_server: str) -> None:
    uri = mlflow_server
    log = tmp_path / "search.log"
    search = _popen(_args("crash", uri, tmp_path, "--num-samples", "2", "--set",
                          "budget.epochs=5", "--set", "baselines=[]", "--max-failures", "0",
                          "--max-concurrent", "1"), tmp_path, log)
    client = MlflowClient(uri)
    try:
        def running() -> bool:
            runs = _children(client, "crash")
            return bool(runs) and bool(runs[0].data.tags.get("ray_pid"))  # type: ignore[attr-defined]

        _wait_until(running, search, log)
        victim = _children(client, "crash")[0]
        os.kill(int(victim.data.tags["ray_pid"]), signal.SIGSEGV)  # type: ignore[attr-defined]
        assert search.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        stop_process(search)
    assert "FAILED (error log:" in log.read_text()
    children = _agree(tmp_path / "ray" / "crash", client, "crash", "crash", 2)
    crashed = next(r for r in children if r.info.run_id == victim.info.run_id)  # type: ignore[attr-defined]
    assert crashed.info.status == "FAILED"  # type: ignore[attr-defined]
    assert crashed.data.tags["trial_status"] == "failed"  # type: ignore[attr-defined]
    assert "died" in crashed.data.tags["failure"].lower() or \
        "error" in crashed.data.tags["failure"].lower()  # type: ignore[attr-defined]
    text = client.download_artifacts(crashed.info.run_id, "failure.txt", str(tmp_path))  # type: ignore[attr-defined]
    assert Path(text).read_text().strip()
    others = [r for r in children if r is not crashed]
    assert all(r.data.tags["trial_status"] == "completed" for r in others)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_diverging_trial_fails_with_its_reason_and_is_not_retried(
        tmp_path: Path, mlflow_server: str) -> None:
    uri = mlflow_server
    # lr 1 with Adam: clean accuracy falls to chance within the first epoch
    proc = run_module("search.run", *_args(
        "diverge", uri, tmp_path, "--num-samples", "1", "--set", "baselines=[]", "--set",
        "fixed.lr=1", "--set", "budget.epochs=3", "--max-failures", "2"), cwd=tmp_path,
        timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "diverged" in proc.stdout and "not retried" in proc.stdout
    assert "retrying" not in proc.stdout
    client = MlflowClient(uri)
    (run,) = _agree(tmp_path / "ray" / "diverge", client, "diverge", "diverge", 1)
    assert run.info.status == "FAILED"  # type: ignore[attr-defined]
    assert "diverged" in run.data.tags["failure"]  # type: ignore[attr-defined]
    study = optuna.load_study(study_name="diverge",
                              storage=f"sqlite:///{tmp_path / 'ray' / 'diverge' / 'optuna.db'}")
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


NO_RECIPE_SPACE = """
name: norecipe
dataset: digits
attacks:
  pool: {candidates: [FGSM], min_size: 1, max_size: 1, default: [FGSM]}
  heldout: [PGDL2]
  sealed: [Fog@medium]
baselines: []
budget: {epochs: 1, eval_every: 1, batch_size: 256, eval_samples: 32, test_samples: 64,
         autoattack_samples: 16}
fixed: {train_attack_steps: 1, meta: "off", include_clean: true, unig: "off", w_ce: 1.0,
        w_feat: 0.0, w_cyc: 0.0, w_pcl: 0.0, w_trades: 0.0}
params:
  train_on: {type: categorical, choices: [adversarial, clean], default: adversarial}
  w_ce_clean: {type: float, low: 0.0, high: 1.0, default: 0.0}
"""


@pytest.mark.slow
def test_a_proposal_that_makes_no_recipe_fails_its_trial_and_the_search_goes_on(
        tmp_path: Path, mlflow_server: str) -> None:
    """The local sampler's first proposal (seed 0) moves train_on alone: clean training with
    every clean-side weight 0 trains nothing. It used to end the whole search (exit 2)."""
    uri = mlflow_server
    space = tmp_path / "norecipe.yaml"
    space.write_text(NO_RECIPE_SPACE)
    args = _args("norecipe", uri, tmp_path, "--num-samples", "3", "--search-alg", "local",
                 "--seed", "0", "--max-concurrent", "1")
    args[1] = str(space)
    proc = run_module("search.run", *args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trains nothing" in proc.stdout and "not retried" in proc.stdout
    client = MlflowClient(uri)
    runs = _agree(tmp_path / "ray" / "norecipe", client, "norecipe", "norecipe", 3)
    failed = [r for r in runs if r.info.status == "FAILED"]  # type: ignore[attr-defined]
    assert len(failed) == 1 and "trains nothing" in failed[0].data.tags["failure"]  # type: ignore[attr-defined]
    assert failed[0].data.params["train_on"] == "clean"  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_killed_driver_resumes_and_its_leftovers_are_stopped(
        tmp_path: Path, mlflow_server: str) -> None:
    uri = mlflow_server
    args = _args("resume", uri, tmp_path, "--num-samples", "4", "--set", "budget.epochs=6",
                 "--set", "baselines=[]")
    log = tmp_path / "first.log"
    first = _popen(args, tmp_path, log)
    client = MlflowClient(uri)
    try:
        def two_done_one_midway() -> bool:
            runs = _children(client, "resume")
            done = [r for r in runs if r.data.tags.get("trial_status") == "completed"]  # type: ignore[attr-defined]
            midway = [r for r in runs if r.data.tags.get("trial_status") == "running"  # type: ignore[attr-defined]
                      and len(client.get_metric_history(r.info.run_id, "val/clean/acc")) >= 2]  # type: ignore[attr-defined]
            return len(done) >= 2 and bool(midway)

        _wait_until(two_done_one_midway, first, log)
        os.kill(first.pid, signal.SIGKILL)
        finished_before = {r.info.run_id for r in _children(client, "resume")  # type: ignore[attr-defined]
                           if r.data.tags.get("trial_status") == "completed"}  # type: ignore[attr-defined]
        first.wait(timeout=30)
        time.sleep(2)
        left = [pid for pid in session_members(first.pid)
                if Path(f"/proc/{pid}/comm").exists()]
        assert left, "Ray left nothing behind: nothing for the next start to stop"
        # a checkpoint of a trial that had not finished, corrupted as a crash mid-write would
        folder = tmp_path / "ray" / "resume"
        unfinished = [d for d in folder.iterdir() if d.is_dir() and (d / "result.json").exists()
                      and len((d / "result.json").read_text().splitlines()) < 6
                      and list(d.glob("checkpoint_*"))]
        assert unfinished, [d.name for d in folder.iterdir()]
        # every unfinished trial's: Tune restores only those its last snapshot saw checkpointed,
        # and which of them those are depends on when the kill came
        for state in (s for trial in unfinished for s in trial.glob("checkpoint_*/state.pt")):
            state.write_bytes(os.urandom(256))
        second = run_module("search.run", *args, "--resume", cwd=tmp_path, timeout=600)
    finally:
        stop_process(first)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "stopped" in second.stdout and "left by a search that was killed" in second.stdout
    assert "which no longer runs: lock taken over" in second.stdout  # the killed one's lock
    assert not [pid for pid in left if Path(f"/proc/{pid}").exists()
                and pid in session_members(first.pid)]
    done_lines = [line for line in second.stdout.splitlines() if " done: " in line]
    assert done_lines and not done_lines[0].split("[")[-1].startswith("1/4")
    children = _agree(folder, client, "resume", "resume", 4)  # no trial run twice, none lost
    assert all(r.data.tags["trial_status"] == "completed" for r in children)  # type: ignore[attr-defined]
    assert finished_before <= {r.info.run_id for r in children}  # type: ignore[attr-defined]
    assert _parent(client, "resume", "resume").info.status == "FINISHED"
    restarted = [r for r in children if r.data.tags.get("restarted")]  # type: ignore[attr-defined]
    assert restarted, second.stdout[-3000:]  # the corrupted one started over, and finished


# ---- issue 21: interruption is a state, the final comparison journaled, a full disk


def _parent(client: MlflowClient, experiment: str, name: str) -> Any:
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    (run,) = client.search_runs([found.experiment_id], f"tags.search_name = '{name}'")
    return run


def _one_line_at_the_end(output: str, start: str) -> str:
    last = output.strip().splitlines()[-1]
    assert last.startswith(start), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return last


@pytest.mark.slow
def test_ctrl_c_is_a_state_one_search_per_name_and_resume_finishes_it(
        tmp_path: Path, mlflow_server: str) -> None:
    uri = mlflow_server
    args = _args("ctrlc", uri, tmp_path, "--num-samples", "2", "--max-concurrent", "1",
                 "--set", "budget.epochs=2", "--set", "baselines=[]")
    log, folder, client = tmp_path / "first.log", tmp_path / "ray" / "ctrlc", MlflowClient(uri)
    first = _popen(args, tmp_path, log)
    try:
        def statuses() -> list[object]:
            return [r.data.tags.get("trial_status") for r in _children(client, "ctrlc")]  # type: ignore[attr-defined]

        _wait_until(lambda: "running" in statuses(), first, log, timeout=900)
        # the same name while the first search runs; before the wait below, so that the
        # signal follows it within a poll (the second trial of a fast hour took about as long
        # as this command, and ended the search before the signal)
        second = run_module("search.run", *args, cwd=tmp_path, timeout=300)
        _wait_until(lambda: {"completed", "running"} <= set(statuses()), first, log, timeout=900)
        start = time.monotonic()
        first.send_signal(signal.SIGINT)  # what Ctrl-C sends
        code = first.wait(timeout=300)
        took = time.monotonic() - start
    finally:
        stop_process(first)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
    assert f"search 'ctrlc' is already running (pid {first.pid}" in lines[0]
    assert "give this one another --name" in lines[0]
    output = log.read_text()
    assert code == 130 and took < 60, (code, took, output[-3000:])
    last = _one_line_at_the_end(output, "interrupted: resume with `python -m search.run "
                                        "--space smoke --name ctrlc")
    assert "--resume`" in last
    for left_out in ("best_config.yaml", "best_model.pt", "leaderboard.csv", "report",
                     "search.lock"):  # nothing that looks like a finished search
        assert not (folder / left_out).exists(), left_out
    assert _parent(client, "ctrlc", "ctrlc").info.status == "KILLED"
    runs = _children(client, "ctrlc")
    assert sorted((r.info.status, r.data.tags["trial_status"]) for r in runs) == [  # type: ignore[attr-defined]
        ("FINISHED", "completed"), ("KILLED", "interrupted")]
    resumed = run_module("search.run", *args, "--resume", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    children = _agree(folder, client, "ctrlc", "ctrlc", 2)
    assert all(r.info.status == "FINISHED" and r.data.tags["trial_status"] == "completed"  # type: ignore[attr-defined]
               for r in children)
    assert _parent(client, "ctrlc", "ctrlc").info.status == "FINISHED"
    assert (folder / "best_config.yaml").is_file() and not (folder / "search.lock").exists()


def _stopped_mid_trial(name: str, uri: str, tmp_path: Path,
                       stop: Callable[[subprocess.Popen[bytes]], None], *, piped: bool = False
                       ) -> tuple[int, float, str]:
    """A one-trial search stopped by `stop` once the trial has reported: its exit code, the
    seconds from `stop` to the exit, its output; checks no Ray process is left and MLflow
    holds the search and its trial as interrupted. `piped`: stdout is a pipe `stop` may
    close (the output is then stderr's)."""
    args = _args(name, uri, tmp_path, "--num-samples", "1", "--set", "budget.epochs=4",
                 "--set", "baselines=[]")
    log, client = tmp_path / "search.log", MlflowClient(uri)
    search = _popen(args, tmp_path, log, piped=piped)
    try:
        def one_evaluation() -> bool:
            runs = _children(client, name)
            return bool(runs) and bool(client.get_metric_history(runs[0].info.run_id,  # type: ignore[attr-defined]
                                                                 "val/clean/acc"))

        _wait_until(one_evaluation, search, log, timeout=900)
        start = time.monotonic()
        stop(search)
        code = search.wait(timeout=300)
        took = time.monotonic() - start
        deadline = time.time() + 20
        while session_members(search.pid) and time.time() < deadline:
            time.sleep(0.5)
        left = session_members(search.pid)
    finally:
        stop_process(search)
    output = log.read_text()
    for crash in ("Aborted", "core dumped", "*** SIG", "Stack trace", "Check failed"):
        assert crash not in output, output[-3000:]
    assert not left, f"Ray processes left running: {left}"
    assert _parent(client, name, name).info.status == "KILLED"
    (run,) = _children(client, name)
    assert run.info.status == "KILLED" and run.data.tags["trial_status"] == "interrupted"  # type: ignore[attr-defined]
    return code, took, output


@pytest.mark.slow
def test_sigterm_stops_the_search_in_seconds_without_a_ray_crash(
        tmp_path: Path, mlflow_server: str) -> None:
    code, took, output = _stopped_mid_trial(
        "term", mlflow_server, tmp_path,
        lambda search: search.send_signal(signal.SIGTERM))  # what `timeout` and schedulers send
    assert code == 143 and took < 60, (code, took, output[-3000:])
    _one_line_at_the_end(output, "interrupted: resume with")


@pytest.mark.slow
def test_a_reader_of_the_output_that_goes_away_stops_the_search_as_a_signal_does(
        tmp_path: Path, mlflow_server: str) -> None:
    # `search.run | tee log` with the tee killed: the next print stops the search, where
    # Python's EPIPE ended it with a traceback from Tune's reporter, its trial's run left
    # RUNNING in MLflow
    def reader_gone(search: subprocess.Popen[bytes]) -> None:
        assert search.stdout is not None
        search.stdout.close()

    code, took, output = _stopped_mid_trial("pipe", mlflow_server, tmp_path, reader_gone,
                                            piped=True)
    assert code == 128 + signal.SIGPIPE and took < 90, (code, took, output[-3000:])
    _one_line_at_the_end(output, "interrupted: resume with")


@pytest.mark.slow
def test_mlflow_lost_during_the_final_comparison_loses_nothing(
        tmp_path: Path, server: tuple[Path, list[subprocess.Popen[bytes]], str]) -> None:
    root, procs, uri = server
    args = _args("final", uri, tmp_path, "--num-samples", "1", "--set", "budget.epochs=1",
                 "--set", "baselines=[]", "--sealed-top-k", "1", "--final-seeds", "1",
                 "--tracking-outage", "5")
    log, folder = tmp_path / "search.log", tmp_path / "ray" / "final"
    search = _popen(args, tmp_path, log)
    try:
        _wait_until(lambda: "final: 1 recipes x 1 seeds" in log.read_text(), search, log,
                    timeout=900)
        stop_process(procs.pop())  # the server goes away while the final tasks run
        code = search.wait(timeout=600)
    finally:
        stop_process(search)
    output = log.read_text()
    assert code == 3, output[-3000:]
    last = _one_line_at_the_end(output, "error: MLflow at")
    assert "the final comparison is in" in last and "--resume" in last
    table = (folder / "final.md").read_text()  # written before any MLflow write
    assert "| recipe |" in table and (folder / "sealed.csv").read_text().strip()
    journal = folder / "mlflow-pending-final.jsonl"
    assert journal.is_file() and journal.read_text().strip()
    procs.append(start_mlflow_server(root, port=int(uri.rsplit(":", 1)[1]))[0])
    resumed = run_module("search.run", *args, "--resume", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "the final comparison ran before; its" in resumed.stdout
    assert "final: 1 recipes x" not in resumed.stdout  # logged, not evaluated again
    assert not journal.exists()
    client = MlflowClient(uri)
    parent = _parent(client, "final", "final")
    assert parent.info.status == "FINISHED"
    assert any(k.startswith("final/") for k in parent.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"final.md", "sealed.csv", "final.json"} <= artifacts
    (child,) = _children(client, "final")
    assert child.data.tags.get("final_comparison") == "true"  # type: ignore[attr-defined]


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB file system of its own (tmpfs), so that writes really fail when it is full."""
    mount = tmp_path / "disk"
    mount.mkdir()
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]  # as the Makefile's system-deps does
    done = subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    # a failure, not a skip: the full-disk test must run wherever the suite runs (CI is root)
    assert done.returncode == 0, ("the full-disk test needs to mount a small tmpfs (root, or "
                                  f"sudo without a password): {done.stderr.strip()}")
    yield mount
    subprocess.run([*sudo, "umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_search_in_one_line_and_resume_finishes_it(
        tmp_path: Path, mlflow_server: str,
        small_disk: Path) -> None:
    uri = mlflow_server
    args = _args("full", uri, tmp_path, "--num-samples", "2", "--set", "budget.epochs=3",
                 "--set", "baselines=[]", "--storage-path", str(small_disk / "ray"))
    log, folder, filler = tmp_path / "search.log", small_disk / "ray" / "full", small_disk / "fill"
    search = _popen(args, tmp_path, log)
    try:
        _wait_until(lambda: "epoch 1/3" in log.read_text(), search, log, timeout=900)
        # something else fills the disk, to the last byte
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 1024 * 1024)
        code = search.wait(timeout=300)
        # checked before the search: another one does not start on this disk
        other = run_module("search.run", *_args("other", uri, tmp_path, "--storage-path",
                                                  str(small_disk / "ray")), cwd=tmp_path,
                           timeout=300)
    finally:
        stop_process(search)
    output = log.read_text()
    assert code == 4, output[-3000:]
    last = _one_line_at_the_end(output, "error: a disk the search writes to is full (")
    assert "it stopped with its state kept" in last and "--resume`" in last
    assert other.returncode == 2 and "this search writes about" in other.stderr, other.stderr
    assert not (small_disk / "ray" / "other").exists()
    json.loads((folder / "search.json").read_text())  # the search's own files are whole
    assert not list(folder.glob("*.tmp-*"))
    assert _parent(MlflowClient(uri), "full", "full").info.status == "KILLED"
    filler.unlink()  # space freed
    resumed = run_module("search.run", *args, "--resume", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    children = _agree(folder, MlflowClient(uri), "full", "full", 2)
    assert all(r.data.tags["trial_status"] == "completed" for r in children)  # type: ignore[attr-defined]


def test_a_tune_failure_on_a_full_disk_is_reported_as_the_full_disk(tmp_path: Path) -> None:
    """A full disk also cuts Tune's own files short: its ResultGrid then fails reading an empty
    error.pkl (EOFError, seen on a fresh-clone run). The search reports the disk, not that;
    any other failure of Tune is left as it is."""
    from types import SimpleNamespace

    from search import guard
    from search.disk import DiskFullError
    from search.driver import fit_watched

    plan = SimpleNamespace(output_dir=str(tmp_path),
                           resume_command="python -m search.run --resume")

    class Tuner:
        def __init__(self, full: bool) -> None:
            self.full = full

        def fit(self) -> None:
            if self.full:
                guard._REASON.append("trial t could not write: No space left on device")
            raise EOFError("Ran out of input")

    try:
        with pytest.raises(DiskFullError, match=r"a disk the search writes to is full \(trial "
                           r"t could not write: No space left on device; .* --resume`"):
            fit_watched(Tuner(full=True), plan)  # type: ignore[arg-type]
    finally:
        guard.DiskGuard.watching()  # no reason left over for the tests after this one
    with pytest.raises(EOFError):
        fit_watched(Tuner(full=False), plan)  # type: ignore[arg-type]


def test_tunes_traceback_of_a_trial_the_full_disk_failed_is_left_out() -> None:
    """Tune logs a failed trial's traceback before the guard can stop the search (seen on a
    run where the disk filled while Tune copied a checkpoint): a full disk's is dropped, the
    guard says it in one line; any other failure's stays."""
    import errno
    import logging

    from search import guard

    guard.DiskGuard.watching()
    guard.DiskGuard.watching()  # once per fit: the filter is not stacked
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    assert sum(isinstance(f, guard._QuietDiskFull) for f in controller.filters) == 1
    kept: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = kept.append  # type: ignore[method-assign]
    controller.addHandler(handler)
    try:
        for error in (OSError(errno.ENOSPC, "No space left on device"),
                      RuntimeError("task failed:\nOSError: [Errno 28] Error writing bytes"),
                      ValueError("a bug")):
            controller.error("Trial task failed for trial t", exc_info=error)
    finally:
        controller.removeHandler(handler)
    (record,) = kept
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


def test_a_run_the_resumed_search_never_ran_is_marked_orphaned(tmp_path: Path) -> None:
    """Seen on a fresh clone once trials reused their workers: the driver was killed just
    after it started a trial and before Tune saved its state; the resumed search ran that
    sample as a new trial, and the old run, made from the killed driver's journal, stayed
    RUNNING. Only a run not ended whose trial Tune does not know is marked; a finished one,
    or one Tune resumes, is left alone."""
    from search.tracking import mark_orphaned_children, stop_running_children
    from search.vocab import TAG

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("orphans")
    parent = client.create_run(experiment).info.run_id
    runs = {trial: client.create_run(experiment, tags={TAG.PARENT: parent, TAG.TRIAL_ID: trial,
                                                       TAG.STATUS: "running"}).info.run_id
            for trial in ("known", "lost", "done")}
    client.set_tag(runs["done"], TAG.STATUS, "completed")
    client.set_terminated(runs["done"], "FINISHED")
    assert stop_running_children(client, experiment, parent) == 2  # the kill, on --resume
    late = client.create_run(experiment, tags={TAG.PARENT: parent, TAG.TRIAL_ID: "late",
                                               TAG.STATUS: "running"}).info.run_id
    runs["late"] = late  # made after the stop, from the killed driver's journal
    assert mark_orphaned_children(client, experiment, parent, {"known", "done"}) == 2
    states = {trial: (client.get_run(run).info.status, client.get_run(run).data.tags)
              for trial, run in runs.items()}
    for trial in ("lost", "late"):
        assert states[trial][0] == "KILLED" and states[trial][1][TAG.STATUS] == "orphaned"
    assert "before Ray Tune saved this trial" in states["lost"][1][TAG.FAILURE]
    assert states["known"][1][TAG.STATUS] == "interrupted"  # Tune resumes it: not an orphan
    assert states["done"][1][TAG.STATUS] == "completed"
    assert mark_orphaned_children(client, experiment, parent, {"known", "done"}) == 0
