"""A real two-node Ray cluster on this machine, a real MLflow server, and `search.run` on them.

Every process runs inside a network namespace this test creates (loopback only), so all
traffic stays on 127.0.0.1. The worker node also gets a private mount namespace in which one
folder is hidden behind a tmpfs: a node that cannot see a local --storage-path.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.processes import free_port, session_members, start_mlflow_server, stop_process

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class Cluster:
    namespace: str
    address: str
    mlflow_uri: str
    shared: Path  # both nodes see it
    hidden: Path  # the worker node sees an empty tmpfs here
    head_id: str
    worker_id: str
    start_seconds: float

    def run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.namespace, *args],
                              capture_output=True, text=True, env=_env(), **kwargs)

    def popen(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.namespace, *args],
                                stdout=log.open("wb"), stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)

    def query(self, code: str) -> object:
        """Runs Python inside the namespace (where 127.0.0.1 is the cluster's) -> JSON."""
        proc = self.run(sys.executable, "-c", code, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def child_runs(self, experiment: str) -> list[dict[str, object]]:
        return self.query(f"""
import json
from mlflow.tracking import MlflowClient
client = MlflowClient({self.mlflow_uri!r})
exp = client.get_experiment_by_name({experiment!r})
runs = client.search_runs([exp.experiment_id]) if exp else []
out = []
for r in runs:
    history = {{m.step: m.value for m in client.get_metric_history(r.info.run_id,
                                                                   "val/clean/acc")}}
    out.append({{"run_id": r.info.run_id, "tags": r.data.tags, "metrics": r.data.metrics,
                 "status": r.info.status, "history": history}})
print(json.dumps(out))
""")  # type: ignore[return-value]


# One token for every Ray process of this test: on a fresh machine there is no ~/.ray/auth_token
# for `ray start` to read, and the test must not write one there.
_TOKEN = secrets.token_hex(32)


def _env() -> dict[str, str]:
    # The same token-auth mode and token for every Ray process (head, worker, driver, queries).
    # A local search's loopback switch (set by in-process tests) would refuse a second node.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    # A node whose raylet died is declared dead after 3 missed health checks 1 s apart, not
    # Ray's 5 at 3 s (the lost-worker test waits for that): a short bound by configuration
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN, "PYTHONPATH": str(REPO),
            "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{text!r} never appeared in {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    namespace = f"ds-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"],
                       check=True)
        shared, hidden = root / "shared", root / "hidden"
        shared.mkdir()
        hidden.mkdir()
        port = free_port()
        start = time.time()
        head_log, worker_log = root / "head.log", root / "worker.log"
        prefix = ["ip", "netns", "exec", namespace]
        head = subprocess.Popen(
            [*prefix, RAY, "start", "--head", "--port", str(port), "--num-cpus", "1",
             "--resources", '{"head_slot": 1}', "--include-dashboard", "false",
             "--disable-usage-stats", "--block"],
            stdout=head_log.open("wb"), stderr=subprocess.STDOUT, env=_env(),
            start_new_session=True)
        processes.append(head)
        _wait_for(head_log, "Ray runtime started", head)
        worker_cmd = (f"mount -t tmpfs tmpfs {hidden} && exec {RAY} start --address "
                      f"127.0.0.1:{port} --num-cpus 2 --num-gpus 1 "
                      f"--resources '{{\"worker_slot\": 2}}' "
                      "--disable-usage-stats --block")
        worker = subprocess.Popen(
            [*prefix, "unshare", "--mount", "--propagation", "private", "sh", "-c", worker_cmd],
            stdout=worker_log.open("wb"), stderr=subprocess.STDOUT, env=_env(),
            start_new_session=True)
        processes.append(worker)
        _wait_for(worker_log, "Ray runtime started", worker)
        start_seconds = time.time() - start
        server, uri = start_mlflow_server(root, prefix=tuple(prefix))
        processes.append(server)
        partial = Cluster(namespace, f"127.0.0.1:{port}", uri, shared, hidden, "", "",
                          start_seconds)
        nodes = partial.query(f"""
import json, ray
ray.init(address="127.0.0.1:{port}", logging_level="ERROR")
print(json.dumps([[n["NodeID"], n["Resources"]] for n in ray.nodes() if n["Alive"]]))
""")
        assert len(nodes) == 2, nodes  # type: ignore[arg-type]
        ids = {("worker" if "worker_slot" in res else "head"): node for node, res in nodes}
        partial.head_id, partial.worker_id = ids["head"], ids["worker"]
        print(f"\ntwo-node cluster ready in {start_seconds:.1f}s")
        yield partial
    finally:
        for proc in reversed(processes):  # by PID: MLflow, the worker node, then the head
            stop_process(proc)
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def _search(cluster: Cluster, name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "search.run", "--space", "smoke", "--address",
            cluster.address, "--mlflow-uri", cluster.mlflow_uri, "--experiment", name,
            "--name", name, "--storage-path", str(cluster.shared),
            "--trial-resource", "worker_slot=1", "--cpus-per-trial", "1", *args]


@pytest.mark.slow
def test_trials_run_on_the_worker_and_log_to_the_server(cluster: Cluster) -> None:
    start = time.time()
    # The worker offers one logical GPU: two trials share it at 0.5 each (no CUDA here, so
    # each trial still computes on the CPU, and says so)
    proc = cluster.run(*_search(cluster, "cluster-a", "--num-samples", "4",
                                "--gpus-per-trial", "0.5", "--sealed-top-k", "1",
                                "--final-seeds", "2"),
                       timeout=600, cwd=str(cluster.shared))
    print(f"\nsearch on the two-node cluster: {time.time() - start:.1f}s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ray: 2 node(s), 3 CPUs, 1 GPUs" in proc.stdout
    assert "per trial {'cpu': 1.0, 'gpu': 0.5, 'worker_slot': 1.0}" in proc.stdout
    runs = cluster.child_runs("cluster-a")
    parents = [r for r in runs if "mlflow.parentRunId" not in r["tags"]]  # type: ignore[operator]
    children = [r for r in runs if "mlflow.parentRunId" in r["tags"]]  # type: ignore[operator]
    assert len(parents) == 1 and len(children) == 4
    for run in children:
        tags, metrics = run["tags"], run["metrics"]
        assert tags["ray_node_id"] == cluster.worker_id  # type: ignore[index]
        assert tags["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # type: ignore[index]
        assert tags["trial_status"] in ("completed", "early-stopped")  # type: ignore[index]
        for name in ("val/heldout/mean_acc", "val/heldout/PGDL2/acc", "val/clean/acc"):
            assert 0.0 <= metrics[name] <= 1.0  # type: ignore[index]
    # Ray Tune's own per-trial records say the same
    sealed = [r for r in children if r["tags"].get("final_comparison") == "true"]  # type: ignore[union-attr]
    # the final comparison: the best searched trial and smoke's two baselines
    assert len(sealed) == 3
    assert all("final/test/autoattack/acc" in r["metrics"] for r in sealed)  # type: ignore[operator]
    records = list((cluster.shared / "cluster-a").glob("*/result.json"))
    assert len(records) == 4
    for record in records:
        for line in record.read_text().splitlines():
            assert json.loads(line)["trial/node_id"] == cluster.worker_id


@pytest.mark.slow
def test_a_killed_trial_is_retried_and_nothing_logged_is_lost(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    log = tmp_path / "search.log"
    search = cluster.popen(*_search(cluster, "cluster-b", "--num-samples", "2", "--scheduler",
                                    "none", "--set", "budget.epochs=8", "--max-failures", "2",
                                    "--sealed-top-k", "0"), log=log)
    try:
        victim, logged_before = None, {}
        deadline = time.time() + 300
        while victim is None:
            assert search.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            for run in cluster.child_runs("cluster-b"):
                history = run["history"]
                if len(history) >= 2 and run["tags"].get("ray_pid"):  # type: ignore[union-attr,arg-type]
                    victim, logged_before = run, dict(history)  # type: ignore[arg-type]
                    break
            time.sleep(0.5)
        pid = int(victim["tags"]["ray_pid"])  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)  # the trial's worker process, by its PID
        assert search.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        stop_process(search)
    output = log.read_text()
    assert "failed, retrying from its last checkpoint" in output
    after = {r["run_id"]: r for r in cluster.child_runs("cluster-b")}
    assert len([r for r in after.values() if "mlflow.parentRunId" in r["tags"]]) == 2  # type: ignore[operator]
    killed = after[victim["run_id"]]  # type: ignore[index]
    history = {int(k): v for k, v in killed["history"].items()}  # type: ignore[union-attr]
    for step, value in logged_before.items():  # what was logged before the kill is all there
        assert history[int(step)] == pytest.approx(value)
    assert max(history) == 8  # and the retried trial went on to its last epoch
    assert killed["tags"]["trial_status"] == "completed"  # type: ignore[index]
    assert killed["tags"]["ray_pid"] != str(pid)  # type: ignore[index]


@pytest.mark.slow
def test_a_local_tracking_store_is_refused_on_two_nodes(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    args = _search(cluster, "cluster-refused")
    args[args.index("--mlflow-uri") + 1] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = cluster.run(*args, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --mlflow-uri sqlite:") and "has 2 nodes" in last
    assert "mlflow server" in last
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was written


@pytest.mark.slow
def test_storage_a_node_cannot_see_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    args = _search(cluster, "cluster-hidden")
    args[args.index("--storage-path") + 1] = str(cluster.hidden)
    proc = cluster.run(*args, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --storage-path {cluster.hidden} is a local folder")
    assert cluster.worker_id[:8] in last and cluster.head_id[:8] not in last
    assert "cluster-hidden" not in {str(r["tags"].get("mlflow.runName"))  # type: ignore[union-attr]
                                    for r in cluster.child_runs("cluster-hidden")}


_LOST_EPOCHS = 10


@pytest.mark.slow
def test_a_lost_worker_node_reschedules_its_trials(cluster: Cluster, tmp_path: Path) -> None:
    """A second worker joins; its raylet is killed while it runs a trial. The trial goes back
    to the first worker from its last checkpoint and the search finishes, Ray, Optuna and
    MLflow agreeing on every trial."""
    port = cluster.address.rsplit(":", 1)[1]
    log = tmp_path / "worker2.log"
    worker2 = cluster.popen(RAY, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2",
                            "--resources", '{"worker_slot": 2, "doomed": 1}',
                            "--disable-usage-stats", "--block", log=log)
    search_log = tmp_path / "search.log"
    search = None
    try:
        _wait_for(log, "Ray runtime started", worker2)
        nodes = cluster.query(f"""
import json, ray
ray.init(address="127.0.0.1:{port}", logging_level="ERROR")
print(json.dumps([n["NodeID"] for n in ray.nodes() if n["Alive"] and "doomed" in n["Resources"]]))
""")
        (doomed_id,) = nodes  # type: ignore[misc]
        # 2 CPUs per trial: one trial fits on each worker, so one runs on the doomed node;
        # enough epochs that it still runs when this loop has seen its first one (each look
        # starts a Python process for MLflow's client: seconds on a loaded machine, while a
        # smoke epoch takes about 2; with 4 epochs the trial once ended before the kill)
        search = cluster.popen(*_search(cluster, "cluster-lost", "--num-samples", "2",
                                        "--scheduler", "none",
                                        "--set", f"budget.epochs={_LOST_EPOCHS}",
                                        "--set", "baselines=[]", "--sealed-top-k", "0",
                                        "--max-failures", "3", "--cpus-per-trial", "2",
                                        "--gpus-per-trial", "0"),
                               log=search_log)
        deadline = time.time() + 300
        while True:
            assert search.poll() is None and time.time() < deadline, \
                search_log.read_text()[-3000:]
            there = [r for r in cluster.child_runs("cluster-lost")
                     if r["tags"].get("ray_node_id") == doomed_id and r["history"]]  # type: ignore[union-attr]
            if there:
                break
            time.sleep(0.5)
        raylets = [pid for pid in session_members(worker2.pid)
                   if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet"]
        assert raylets, "no raylet found in the second worker's session"
        os.kill(raylets[0], signal.SIGKILL)
        assert search.wait(timeout=600) == 0, search_log.read_text()[-3000:]
    finally:
        if search is not None:
            stop_process(search)
        stop_process(worker2)
    assert "failed, retrying from its last checkpoint" in search_log.read_text()
    runs = cluster.child_runs("cluster-lost")
    children = [r for r in runs if "mlflow.parentRunId" in r["tags"]]  # type: ignore[operator]
    assert len(children) == 2
    assert all(r["tags"]["trial_status"] == "completed" for r in children)  # type: ignore[index]
    moved = [r for r in children if r["run_id"] == there[0]["run_id"]]
    assert moved[0]["tags"]["ray_node_id"] != doomed_id  # type: ignore[index]
    assert max(int(k) for k in moved[0]["history"]) == _LOST_EPOCHS  # type: ignore[union-attr]
    states = cluster.query(f"""
import json, optuna
study = optuna.load_study(study_name="cluster-lost",
                          storage="sqlite:///{cluster.shared / 'cluster-lost' / 'optuna.db'}")
print(json.dumps([t.state.name for t in study.trials]))
""")
    assert states == ["COMPLETE"] * 2
    records = list((cluster.shared / "cluster-lost").glob("*/result.json"))
    assert len(records) == 2
