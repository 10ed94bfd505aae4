"""MLflow wiring, all on the driver: one parent run per search, one nested child run per trial.

Only the driver talks to MLflow (trials may run on other nodes), through MlflowClient: no
fluent `set_experiment` (it sets MLFLOW_EXPERIMENT_ID and silently redirects other loggers),
and batched `log_batch` calls (one request per report, not one per metric).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search.progress import trial_label
from search.records import STATUS_TAG, trial_status
from spaces import Space
from trainables.attacks import attack_spec
from trainables.config import TrialConfig
from trainables.errors import ConfigError

__all__ = ["MlflowTrialLogger", "check_tracking_uri", "masking_flags", "masking_record",
           "open_experiment", "params_for", "robustness_table", "trial_metrics"]

METRIC_PREFIXES = ("val/", "train/", "test/", "time/", "masking/")
RUNTIME_KEYS = ("device", "threads", "cache_dir")  # where a trial ran, not what it trained
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")


def check_tracking_uri(uri: str, *, timeout_s: float = 5.0) -> None:
    """Raises ConfigError unless `uri` is a reachable tracking server or a writable store."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as reply:
                if reply.status != 200:
                    raise ConfigError(f"--mlflow-uri {uri}: /health answered {reply.status}")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(f"--mlflow-uri {uri} is unreachable ({reason}); start the server "
                              "(mlflow server --host ... --port ...) or use a sqlite:/// URI"
                              ) from None
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).expanduser().resolve().parent
    elif uri.startswith("file:") or "://" not in uri:
        folder = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser().resolve()
        folder = folder if folder.exists() else folder.parent
    else:
        return  # databricks://, postgresql://...: MLflow itself reports problems
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"--mlflow-uri {uri}: folder {folder} does not exist or is not "
                          "writable")


def open_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"MLflow experiment {name!r} is deleted; restore it in the UI or pick "
                          "another --experiment")
    return experiment.experiment_id


def trial_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The project's metrics in a Tune result (no config/*, pid, timestamp noise).

    Of the masking checks only `masking/any` is a metric; the flags raised go to the
    `masking_flags` tag and the evidence to masking.json, so they do not bury the held-out
    numbers in the UI's metric lists.
    """
    return {k: float(v) for k, v in result.items()
            if k.startswith(METRIC_PREFIXES) and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and (not k.startswith("masking/") or k == "masking/any")}


INFORMATIONAL_FLAGS = ("randomized", "backward_in_forward")


def masking_flags(result: Mapping[str, Any]) -> list[str] | None:
    """The masking checks a result raised (None when no check ran)."""
    if "masking/any" not in result:
        return None
    return [k.split("/")[1] for k, v in result.items()
            if k.count("/") == 1 and k.startswith("masking/") and k != "masking/any" and v
            and k.split("/")[1] not in INFORMATIONAL_FLAGS]


def masking_record(result: Mapping[str, Any]) -> dict[str, Any]:
    """Every check's flag and evidence, for masking.json."""
    return {"flags": {k.split("/")[1]: bool(v) for k, v in result.items()
                      if k.count("/") == 1 and k.startswith("masking/")},
            "evidence": {k.split("/", 2)[2]: v for k, v in result.items()
                         if k.startswith("masking/evidence/")}}


def robustness_table(metrics: Mapping[str, float]) -> str:
    """CSV: split, group, attack, norm, family, accuracy for every per-attack metric."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["split", "group", "attack", "norm", "family", "accuracy"])
    for key in sorted(metrics):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "acc" and parts[1] not in ("clean",):
            spec = attack_spec(parts[2])
            writer.writerow([parts[0], parts[1], parts[2], spec.norm, spec.family,
                             f"{metrics[key]:.4f}"])
    return out.getvalue()


def params_for(space: Space, config: TrialConfig, values: Mapping[str, Any] | None = None
               ) -> dict[str, str]:
    """The same param keys on every child run: the config's fixed values and the searched ones.

    `values` are the searched values; without them (a baseline) they are read off the config.
    """
    if values is None:
        values = dict(space.pool.flags(config.pool)) if space.pool.searched else {}
        values.update({name: getattr(config, name) for name in space.params})
    params = {k: _param(v) for k, v in config.to_dict().items() if k not in RUNTIME_KEYS}
    params.update({k: _param(v) for k, v in space.logged_params(values).items()})
    return params


def _batched(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class MlflowTrialLogger(Callback):
    """Ray Tune callback: a nested MLflow child run per trial, logged in batches."""

    def __init__(self, *, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 space: Space, max_t: int) -> None:
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id
        self.parent_run_id, self.space, self.max_t = parent_run_id, space, max_t
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._placement: dict[str, dict[str, str]] = {}  # run id -> node, pid, device

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into its state
        return {**self.__dict__, "_client": None, "_runs": {}, "_placement": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ---- runs
    def run_id(self, trial: Any) -> str:
        """The trial's child run: created once, found again after a retry or a resume."""
        trial_id = str(trial.trial_id)
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
            f"tags.ray_trial_id = '{trial_id}'", max_results=1)
        if found:
            self._runs[trial_id] = found[0].info.run_id
            return self._runs[trial_id]
        values = _values(trial)
        params = params_for(self.space, self.space.trial_config(values), values)
        tags = {"mlflow.parentRunId": self.parent_run_id, "ray_trial_id": trial_id,
                "space": self.space.name, STATUS_TAG: "running"}
        run = self.client.create_run(self.experiment_id,
                                     run_name=trial_label(self.space, trial), tags=tags)
        self._runs[trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[
            Param(k, v) for k, v in sorted(params.items())])
        return run.info.run_id

    # ---- Tune callback hooks
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, STATUS_TAG, "running")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        metrics = trial_metrics(result)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        stamp = int(time.time() * 1000)
        entries = [Metric(k, v, stamp, step) for k, v in sorted(metrics.items())]
        run_id = self.run_id(trial)
        placement = {"ray_node_id": str(result.get("trial/node_id", "")),
                     "ray_pid": str(result.get("pid", "")),
                     "device": str(result.get("trial/device", ""))}
        if self._placement.get(run_id) != placement:  # first result, or moved after a retry
            self._placement[run_id] = placement
            tags = [RunTag(k, v) for k, v in placement.items() if v]
        else:
            tags = []
        flags = masking_flags(result)
        if flags is not None:
            tags.append(RunTag("masking_flags", ",".join(flags) or "none"))
        for index, batch in enumerate(_batched(entries, 1000)):  # MLflow's per-request limit
            self.client.log_batch(run_id, metrics=batch, tags=tags if index == 0 else [])

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self.client.set_tag(self.run_id(trial), STATUS_TAG, "retrying")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        result = trial.last_result or {}
        self._finish(trial, trial_status(result, self.max_t), "FINISHED", result)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        self._finish(trial, "failed", "FAILED", trial.last_result or {})

    def _finish(self, trial: Any, status: str, state: str, result: Mapping[str, Any]) -> None:
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, STATUS_TAG, status)
        self.client.set_tag(run_id, "evaluations", str(result.get("training_iteration", 0)))
        metrics = trial_metrics(result)
        self.client.log_dict(run_id, self.space.trial_config(_values(trial)).to_dict(),
                             "config.json")
        if metrics:
            self.client.log_text(run_id, robustness_table(metrics), "robustness.csv")
        if "masking/any" in result:
            self.client.log_dict(run_id, masking_record(result), "masking.json")
        self.client.set_terminated(run_id, state)


def _values(trial: Any) -> dict[str, Any]:
    return dict(trial.config)


def _param(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)
