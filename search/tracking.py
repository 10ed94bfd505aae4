"""MLflow wiring, all on the driver: one parent run per search, one nested child run per trial.

Only the driver talks to MLflow (trials may run on other nodes), through MlflowClient: no
fluent `set_experiment` (it sets MLFLOW_EXPERIMENT_ID and silently redirects other loggers),
and batched `log_batch` calls (one request per report, not one per metric).
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search.journal import Journal
from search.progress import trial_label
from search.records import trial_status
from search.stores import artifact_location
from search.vocab import (
    ARTIFACT,
    FAILURE_LINES,
    FAILURE_REASON,
    METRIC_PREFIXES,
    TAG,
    TRIAL_DEVICE,
    TRIAL_NODE,
    TRIAL_RESTARTED,
    TrialStatus,
)
from spaces import RECORD_KEY, TrialRecord
from trainables.attacks import attack_spec, list_families
from trainables.attacks.threat import NORMS
from trainables.errors import ConfigError
from trainables.scoring.masking import raised_flags
from trainables.vocab import MASKING, MASKING_ANSWERED, MASKING_ANY, THREAT_PGD10, Group, Stat

__all__ = ["MlflowTrialLogger", "mark_orphaned_children", "masking_record", "open_experiment",
           "robustness_table", "stop_running_children", "trial_metrics"]

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")


# What the experiment is, in MLflow's words. MLflow 3.17's UI does not read it to choose the
# first page (a browser setting does): search/ui.py saves a view and prints its link.
EXPERIMENT_KIND = {TAG.EXPERIMENT_KIND: "custom_model_development"}


def open_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(
            name, artifact_location=artifact_location(client.tracking_uri, name),
            tags=EXPERIMENT_KIND)
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"MLflow experiment {name!r} is deleted; restore it in the UI or pick "
                          "another --experiment")
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def stop_running_children(client: MlflowClient, experiment_id: str, parent_id: str) -> int:
    """After an interruption: the trials' runs still RUNNING are marked KILLED (tag
    `trial_status` interrupted); a resumed search marks them RUNNING again."""
    runs = client.search_runs([experiment_id], f"tags.`{TAG.PARENT}` = '{parent_id}' and "
                              "attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        client.set_tag(run.info.run_id, TAG.STATUS, TrialStatus.INTERRUPTED)
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


def mark_orphaned_children(client: MlflowClient, experiment_id: str, parent_id: str,
                           known: set[str]) -> int:
    """After a resumed search: a trial's run not ended (running, retrying or interrupted),
    whose trial Tune does not know, was started by the killed driver after Tune's last saved
    state (its start may reach MLflow only now, from the killed driver's journal), so Tune
    never resumed it: it ran that sample again as a new trial. The run is marked orphaned,
    not left looking like a trial that is still running or that `--resume` would finish."""
    runs = client.search_runs([experiment_id], f"tags.`{TAG.PARENT}` = '{parent_id}'",
                              max_results=1000)
    unended = (TrialStatus.RUNNING, TrialStatus.RETRYING, TrialStatus.INTERRUPTED)
    orphans = [run for run in runs if run.data.tags.get(TAG.STATUS) in unended
               and run.data.tags.get(TAG.TRIAL_ID) not in known]
    for run in orphans:
        client.set_tag(run.info.run_id, TAG.STATUS, TrialStatus.ORPHANED)
        client.set_tag(run.info.run_id, TAG.FAILURE, "started by a driver that was killed "
                       "before Ray Tune saved this trial: the resumed search never ran it")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(orphans)


def trial_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The project's metrics in a Tune result (no config/*, pid, timestamp noise).

    Of the masking checks only `masking/any`, `masking/answered` and the PGD-10 accuracy the
    search's robust floor reads are metrics; the flags raised go to the `masking_flags` tag and
    the evidence to masking.json, so they do not bury the held-out numbers in the UI's metric
    lists.
    """
    return {k: float(v) for k, v in result.items()
            if k.startswith(METRIC_PREFIXES) and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and (not k.startswith(f"{MASKING}/")
                 or k in (MASKING_ANY, MASKING_ANSWERED, THREAT_PGD10))}


def masking_record(result: Mapping[str, Any]) -> dict[str, Any]:
    """Every check's flag and evidence, for masking.json."""
    return {"flags": {k.split("/")[1]: bool(v) for k, v in result.items()
                      if k.count("/") == 1 and k.startswith(f"{MASKING}/")
                      and k != MASKING_ANSWERED},
            "answered": bool(result.get(MASKING_ANSWERED, 0.0)),
            "evidence": {k.split("/", 2)[2]: v for k, v in result.items()
                         if k.startswith(f"{MASKING}/evidence/")}}


def robustness_table(metrics: Mapping[str, float]) -> str:
    """CSV: split, group, attack (or a whole family: `attack` = family), family, kind and
    accuracy for every per-attack and per-family metric."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["split", "group", "attack", "family", "kind", "accuracy"])
    families = {*NORMS, *list_families()}
    for key in sorted(metrics):
        parts = key.split("/")
        if len(parts) != 4 or parts[3] != Stat.ACC or parts[1] == Group.CLEAN:
            continue
        name = parts[2].replace(".", "@")  # metric keys spell `@` as a dot
        if name in families:
            row = [name, name, "family"]
        else:
            spec = attack_spec(name)
            row = [name, spec.family, spec.kind]
        writer.writerow([parts[0], parts[1], *row, f"{metrics[key]:.4f}"])
    return out.getvalue()


def failure_line(text: str) -> str:
    """The line that says why: a reported reason's first line, or the last `Error: ...` line
    of a traceback (MLflow tags hold 5000 characters; this holds 500)."""
    lines = [line.strip() for line in text.splitlines()  # Ray's "Failure # n (at ...)" header
             if line.strip() and not line.strip().startswith("Failure #")]
    errors = [line for line in lines if line.split(":", 1)[0].endswith(("Error", "Exception"))
              or line.startswith(("ray.exceptions", "trainables.errors"))]
    return (errors[-1] if errors else lines[0] if lines else "unknown")[:500]


def _batched(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class MlflowTrialLogger(Callback):
    """Ray Tune callback: a nested MLflow child run per trial, logged in batches.

    Each hook turns what it logs into a plain-data event for the Journal, so a tracking-server
    outage delays the writes instead of stalling or crashing the search.
    """

    def __init__(self, *, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 space_name: str, max_t: int, journal_path: str) -> None:
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id
        self.parent_run_id, self.space_name, self.max_t = parent_run_id, space_name, max_t
        self.journal_path = journal_path
        self._client: MlflowClient | None = None
        self._journal: Journal | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._placement: dict[str, dict[str, str]] = {}  # trial id -> node, pid, device

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into its state
        return {**self.__dict__, "_client": None, "_journal": None, "_runs": {},
                "_placement": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self.tracking_uri, self.journal_path, self.apply,
                                    log=lambda line: print(line, flush=True))
        return self._journal

    # ---- runs
    def run_id(self, trial_id: str, label: str, record: TrialRecord) -> str:
        """The trial's child run: created once, found again after a retry or a resume."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{TAG.PARENT}` = '{self.parent_run_id}' and "
            f"tags.{TAG.TRIAL_ID} = '{trial_id}'", max_results=1)
        if found:
            self._runs[trial_id] = found[0].info.run_id
            return self._runs[trial_id]
        tags = {TAG.PARENT: self.parent_run_id, TAG.TRIAL_ID: trial_id,
                TAG.SPACE: self.space_name, TAG.STATUS: TrialStatus.RUNNING,
                **({TAG.BASELINE: record.baseline} if record.baseline else {}),
                **({TAG.ORIGIN: record.origin} if record.origin else {})}
        run = self.client.create_run(self.experiment_id, run_name=label, tags=tags)
        self._runs[trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[
            Param(k, v) for k, v in sorted(record.mlflow_params().items())])
        return run.info.run_id

    def _event(self, kind: str, trial: Any, **payload: Any) -> None:
        self.journal.submit({"kind": kind, "trial": str(trial.trial_id),
                             "label": trial_label(trial),
                             "record": trial.config[RECORD_KEY].to_dict(),
                             **payload})

    # ---- Tune callback hooks: what to log, as events
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._event("status", trial, status=TrialStatus.RUNNING)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        placement = {TAG.NODE: str(result.get(TRIAL_NODE, "")),
                     TAG.PID: str(result.get("pid", "")),
                     TAG.DEVICE: str(result.get(TRIAL_DEVICE, ""))}
        tags = {}
        if self._placement.get(trial.trial_id) != placement:  # first result, or moved
            self._placement[trial.trial_id] = placement
            tags = {k: v for k, v in placement.items() if v}
        flags = raised_flags(result)
        if flags is not None:
            tags[TAG.MASKING_FLAGS] = ",".join(flags) or "none"
        self._event("result", trial, metrics=trial_metrics(result), tags=tags,
                    step=int(result.get("epoch", result.get("training_iteration", 0))),
                    stamp=int(time.time() * 1000))

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self._event("status", trial, status=TrialStatus.RETRYING)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        result = trial.last_result or {}
        status = trial_status(result, self.max_t)
        failure = None
        if status == TrialStatus.FAILED:  # a reason the trial reported: it was not retried
            failure = f"{result[FAILURE_REASON]}\n\nlast lines:\n{result.get(FAILURE_LINES, '')}"
        self._finish(trial, status, "FAILED" if failure else "FINISHED", result, failure)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        error_file = getattr(trial, "error_file", None)
        text = (Path(error_file).read_text(errors="replace")
                if error_file and Path(error_file).is_file() else "no error file")
        self._finish(trial, TrialStatus.FAILED, "FAILED", trial.last_result or {}, text)

    def _finish(self, trial: Any, status: str, state: str, result: Mapping[str, Any],
                failure: str | None = None) -> None:
        self._event("finish", trial, status=status, state=state, failure=failure,
                    restarted=bool(result.get(TRIAL_RESTARTED)),
                    evaluations=int(result.get("training_iteration", 0)),
                    metrics=trial_metrics(result),
                    masking=masking_record(result) if MASKING_ANY in result else None)

    # ---- events -> MLflow
    def apply(self, event: Mapping[str, Any]) -> None:
        """Logs one event (also a replayed one: every write is idempotent)."""
        run_id = self.run_id(event["trial"], event["label"],
                             TrialRecord.from_dict(event["record"]))
        kind = event["kind"]
        if kind == "status":
            self.client.set_tag(run_id, TAG.STATUS, event["status"])
            self.client.update_run(run_id, status="RUNNING")  # also one an interruption KILLED
        elif kind == "result":
            entries = [Metric(k, v, event["stamp"], event["step"])
                       for k, v in sorted(event["metrics"].items())]
            tags = [RunTag(k, v) for k, v in event["tags"].items()]
            for index, batch in enumerate(_batched(entries, 1000)):  # MLflow's request limit
                self.client.log_batch(run_id, metrics=batch, tags=tags if index == 0 else [])
        elif kind == "finish":
            self._apply_finish(run_id, event)
        else:
            raise ValueError(f"unknown journal event kind {kind!r}")

    def _apply_finish(self, run_id: str, event: Mapping[str, Any]) -> None:
        self.client.set_tag(run_id, TAG.STATUS, event["status"])
        if event["failure"] is not None:
            self.client.set_tag(run_id, TAG.FAILURE, failure_line(event["failure"]))
            self.client.log_text(run_id, event["failure"], ARTIFACT.FAILURE)
        if event["restarted"]:
            self.client.set_tag(run_id, TAG.RESTARTED, "checkpoint unreadable: started over")
        self.client.set_tag(run_id, TAG.EVALUATIONS, str(event["evaluations"]))
        self.client.log_dict(run_id, event["record"], ARTIFACT.CONFIG)
        if event["metrics"]:
            self.client.log_text(run_id, robustness_table(event["metrics"]),
                                 ARTIFACT.ROBUSTNESS)
        if event["masking"] is not None:
            self.client.log_dict(run_id, event["masking"], ARTIFACT.MASKING)
        self.client.set_terminated(run_id, event["state"])
