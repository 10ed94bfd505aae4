"""One smoke search against a real MLflow server, shared by the search, report, sealed and
MLflow-UI tests (a search is the expensive part)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str, cwd: Path, timeout: int = 600,
               drop_env: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`python -m module args` in `cwd`, without the variables `drop_env` names."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env} | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class FinishedSearch:
    proc: subprocess.CompletedProcess[str]
    name: str
    storage: Path
    cwd: Path
    mlflow_uri: str
    client: MlflowClient
    experiment_id: str

    @property
    def output(self) -> Path:
        return self.storage / self.name


@pytest.fixture(scope="session")
def smoke_search(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> FinishedSearch:
    cwd = tmp_path_factory.mktemp("smoke-search")
    proc = run_module("search.run", "--space", "smoke", "--num-samples", "8",
                      "--sealed-top-k", "1", "--final-seeds", "2", "--mlflow-uri", mlflow_server,
                      "--experiment", "smoke-test", "--storage-path", str(cwd / "ray"),
                      "--name", "smoke-test", cwd=cwd, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("smoke-test")
    assert experiment is not None
    return FinishedSearch(proc, "smoke-test", cwd / "ray", cwd, mlflow_server, client,
                          experiment.experiment_id)
