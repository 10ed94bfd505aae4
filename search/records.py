"""What a search leaves behind, and how later commands find it again (no Ray imported here:
commands must choose Ray's network settings before Ray is imported).

- `search.json` in the search's output folder: where its MLflow runs, Optuna study and Ray
  results are;
- a trial's record (`Space.record`): the exact config it trained and its searched values,
  carried in Tune's trial config under RECORD_KEY;
- the trial's final defended model, in its last checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from search.leaderboard import Entry, collect, rank
from search.stores import check_name, check_tracking_uri
from search.vocab import ARTIFACT, FAILURE_REASON, OBJECTIVE, TAG, TrialStatus, points_key
from spaces import RECORD_KEY, Mode, TrialRecord
from trainables.errors import ConfigError
from trainables.files import write_atomic

__all__ = [
    "Located",
    "SearchInfo",
    "checkpoint_model",
    "find_search",
    "locate",
    "model_file",
    "points_of",
    "quiet_ray",
    "record_of",
    "trial_status",
    "use_loopback_for",
]

DEFAULT_OUTPUT = Path("search_output")  # searches whose --storage-path is remote keep files here


def find_search(storage_path: str, name: str | None) -> Path:
    """The output folder of search `name` (default: the latest) under `storage_path`."""
    storage = Path(storage_path).expanduser().resolve()
    if name is not None:
        check_name(name)
        for folder in (storage / name, DEFAULT_OUTPUT.resolve() / name):
            if (folder / ARTIFACT.SEARCH_INFO).exists():
                return folder
        raise ConfigError(f"no search {name!r} in {storage} (no {ARTIFACT.SEARCH_INFO} found)")
    found = sorted(storage.glob(f"*/{ARTIFACT.SEARCH_INFO}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"no finished search in {storage}: pass --storage-path or --name")
    return found[-1].parent


@dataclass(frozen=True)
class SearchInfo:
    """What a search writes to `search.json` in its output folder, so that later commands
    (`search.final`, `search.report`) can reopen it: where its MLflow runs, Optuna study and
    Ray results are, and how its trials ran."""

    name: str
    space: str
    mlflow_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    storage_path: str
    optuna_storage: str
    seed: int
    resources: dict[str, float]
    address: str | None
    cache_dir: str | None
    mode: Mode = Mode.MAX
    scoring: int = 0  # trainables.vocab.SCORING_VERSION when it ran (0: before there was one)

    def write(self, folder: Path) -> None:
        write_atomic(folder / ARTIFACT.SEARCH_INFO, json.dumps(
            {**asdict(self), "mode": self.mode.value}, indent=2))

    @classmethod
    def read(cls, folder: Path) -> SearchInfo:
        data = json.loads((folder / ARTIFACT.SEARCH_INFO).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def results_path(self) -> str:
        """Where Tune keeps the search's experiment state and trials."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"


def use_loopback_for(address: str | None) -> None:
    """A search on this machine keeps Ray on the loopback interface; Ray reads this setting
    when it is imported, and then binds 127.0.0.1 instead of the host's network address."""
    if address in (None, "", "local"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def quiet_ray() -> None:
    """Ray Tune's output settings for a search driver (set before Ray is imported)."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")


def trial_status(result: Mapping[str, Any] | None, max_t: int) -> TrialStatus:
    """How a trial that ended without error ended: failed (a reason it reported), all its
    evaluations, or stopped by ASHA."""
    if FAILURE_REASON in (result or {}):
        return TrialStatus.FAILED
    done = int((result or {}).get("training_iteration", 0))
    return TrialStatus.COMPLETED if done >= max_t else TrialStatus.EARLY_STOPPED


def record_of(results: Any, trial_id: str) -> TrialRecord | None:
    """The record (config and searched values) a trial of a Tune ResultGrid trained."""
    for result in results:
        if result.metrics.get("trial_id") == trial_id and RECORD_KEY in (result.config or {}):
            record: TrialRecord = result.config[RECORD_KEY]
            return record
    return None


def points_of(results: Any, trial_id: str, metric: str) -> np.ndarray | None:
    """The per-point values of `metric` at a trial's last evaluation (when it ran to the end)."""
    for result in results:
        if result.metrics.get("trial_id") == trial_id:
            values = result.metrics.get(points_key(metric))
            return None if values is None else np.asarray(values, dtype=float)
    return None


def model_file(results: Any, trial_id: str) -> bytes | None:
    """The final defended model a trial saved in its last checkpoint, as bytes."""
    for result in results:
        if result.metrics.get("trial_id") != trial_id or result.checkpoint is None:
            continue
        return checkpoint_model(result.checkpoint)
    return None


def baseline_model(record: TrialRecord, read: Callable[[], bytes | None]) -> bytes | None:
    """The model a baseline's completed trial trained (`read` from its checkpoint), where
    training its seed again would give the same one: bitwise on a CPU (the trial's
    evaluations draw no training randomness; tests/trainables_tests/test_trial.py). Not with
    early stopping: the trial chose its checkpoint on cheaper evaluations than a final task's."""
    if record.config.early_stopping:
        return None
    try:
        return read()
    except OSError:
        return None


def checkpoint_model(checkpoint: Any) -> bytes | None:
    """The defended model a trial's checkpoint holds (its final one does), as bytes."""
    with checkpoint.as_directory() as folder:
        path = Path(folder) / ARTIFACT.MODEL
        return path.read_bytes() if path.exists() else None


@dataclass
class Located:
    """A search found again through MLflow: its runs, and its output folder if it has one."""

    name: str
    client: Any
    experiment_id: str
    parent_id: str
    entries: list[Entry]
    folder: Path | None = None
    info: SearchInfo | None = None


def locate(*, storage_path: str, name: str | None, mlflow_uri: str | None = None,
           experiment: str | None = None) -> Located:
    """A search by MLflow experiment (its latest parent run, or the one named `name`), or by
    its output folder under `storage_path` (default: the latest)."""
    from mlflow.tracking import MlflowClient

    if experiment:
        uri = mlflow_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        check_tracking_uri(uri, must_exist=True)  # no empty store made by looking
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ConfigError(f"no MLflow experiment {experiment!r} at {uri}")
        parents = [r for r in client.search_runs([found.experiment_id],
                                                 order_by=["attributes.start_time DESC"])
                   if TAG.PARENT not in r.data.tags
                   and (name is None or r.info.run_name == name)]
        if not parents:
            raise ConfigError(f"experiment {experiment!r} holds no search run")
        parent = parents[0]
        located = Located(parent.info.run_name, client, found.experiment_id,
                          parent.info.run_id, [])
    else:
        folder = find_search(storage_path, name)
        info = SearchInfo.read(folder)
        check_tracking_uri(mlflow_uri or info.mlflow_uri, must_exist=True)
        client = MlflowClient(mlflow_uri or info.mlflow_uri)
        located = Located(info.name, client, info.experiment_id, info.parent_run_id, [], folder,
                          info)
    mode = Mode(located.info.mode) if located.info is not None else Mode.MAX
    located.entries = rank(collect(client, located.experiment_id, located.parent_id),
                           OBJECTIVE, mode)
    return located
