"""The search's vocabulary: samplers, schedulers, trial statuses, MLflow tags, artifact file
names and the metric keys the search itself writes (a trial's own keys are in
trainables/vocab.py). Each is spelled here once and read through these names."""

from __future__ import annotations

import os
from enum import StrEnum

from trainables.vocab import Split, time_key

__all__ = [
    "ARTIFACT",
    "FAILURE_LINES",
    "FAILURE_REASON",
    "FINAL_SEEDS",
    "FRESH_FINAL_ENV",
    "METRIC_PREFIXES",
    "OBJECTIVE",
    "ORPHANED",
    "POINTS",
    "TAG",
    "TRACKING_OUTAGE_S",
    "TRIAL_DEVICE",
    "TRIAL_NODE",
    "TRIAL_RESTARTED",
    "VS_BEST_BASELINE",
    "Scheduler",
    "TrialStatus",
    "best_key",
    "final_delta_key",
    "final_key",
    "fresh_final_default",
    "phase_key",
    "points_key",
    "trials_key",
]


class Scheduler(StrEnum):
    ASHA = "asha"
    NONE = "none"


class TrialStatus(StrEnum):
    """A child run's fate, in the STATUS tag."""

    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    EARLY_STOPPED = "early-stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the search stopped (Ctrl-C, SIGTERM, a full disk) mid-trial
    ORPHANED = "orphaned"  # started by a driver killed before Tune saved the trial: never resumed


# ---------------------------------------------------------------- metric keys

# What Tune optimises: the space's objective, zeroed for a trial that raised a masking flag,
# less a full-length trial's PGD-10 shortfall below search.robust_floor.
OBJECTIVE = f"{Split.VAL}/objective"
# Where a trial ran (reported with each result; the MLflow tags ray_node_id, device)
TRIAL_NODE = "trial/node_id"
TRIAL_DEVICE = "trial/device"
TRIAL_RESTARTED = "trial/restarted"
# a trial that failed for a reason a retry would meet again reports it (and is not retried)
FAILURE_REASON = "failure/reason"
FAILURE_LINES = "failure/last_lines"
POINTS = "points"
VS_BEST_BASELINE = f"{Split.VAL}/vs_best_baseline"  # paired difference with the best baseline
# Metric namespaces a trial reports (what MLflow keeps; Tune's own keys are left out)
METRIC_PREFIXES = ("val/", "train/", "test/", "time/", "masking/", "fidelity/")


def points_key(metric: str) -> str:
    """A result's per-point values of one summary metric: `points/val/heldout/mean_acc`."""
    return f"{POINTS}/{metric}"


def final_key(metric: str) -> str:
    """A recipe's mean over seeds in the final comparison: `final/test/sealed/mean_acc`."""
    return f"final/{metric}"


def final_delta_key(baseline: str, metric: str) -> str:
    """The best recipe minus `baseline` in the final comparison."""
    return f"final/delta/{baseline}/{metric}"


def best_key(metric: str) -> str:
    """The best trial's value, on the parent run: `best/val/heldout/mean_acc`."""
    return f"best/{metric}"


def trials_key(status: str) -> str:
    """How many trials ended so, on the parent run: `trials/completed`."""
    return f"trials/{status}"


def phase_key(phase: str) -> str:
    """Seconds of one phase of the search command: `time/final_comparison_s`."""
    return time_key(phase.replace(" ", "_"))


ORPHANED = "orphaned"  # Optuna user attribute of a trial a killed driver asked for, never ran;
# in MLflow the same fate is the trial_status TrialStatus.ORPHANED


# ---------------------------------------------------------------- MLflow tags and artifacts


class TAG:
    STATUS = "trial_status"
    MASKING_FLAGS = "masking_flags"
    TRIAL_ID = "ray_trial_id"
    PARENT = "mlflow.parentRunId"
    SEARCH_NAME = "search_name"
    SPACE = "space"
    EVALUATIONS = "evaluations"
    BEST_RUN = "best_run"
    FINAL = "final_comparison"  # a run whose recipe the final comparison retrained
    BASELINE = "baseline"  # the reference recipe a trial is (trainables/defense/baselines.py)
    VS_BASELINE = "vs_best_baseline"  # a trial's objective against the best baseline's
    FAILURE = "failure"  # why a trial failed: exception type and message
    RESTARTED = "restarted"  # a trial whose checkpoint could not be read started over
    NODE = "ray_node_id"
    PID = "ray_pid"
    DEVICE = "device"
    DATASET = "dataset"
    THREAT_MODEL = "threat_model"
    GIT_COMMIT = "git_commit"
    HELDOUT = "heldout_attacks"
    SEALED = "sealed_attacks"
    POOL = "pool_candidates"
    EXPERIMENT_KIND = "mlflow.experimentKind"
    ORIGIN = "origin"  # where a trial's recipe came from: default, baseline, warm start
    WARM_START = "warm_start"  # on the parent run: what the study started from


class ARTIFACT:
    CONFIG = "config.json"  # a trial's resolved record: config + searched values
    ROBUSTNESS = "robustness.csv"
    MASKING = "masking.json"
    FAILURE = "failure.txt"  # a failed trial's error and its last lines
    MODEL = "model.pt"  # a trial's final defended model, in its last checkpoint
    STATE = "state.pt"  # a trial's resumable state, in every checkpoint
    LEADERBOARD = "leaderboard.csv"
    FINAL_CSV = "sealed.csv"  # the final comparison, one row per recipe
    FINAL_TABLE = "final.md"  # ... as the table a person reads
    FINAL_JSON = "final.json"
    BEST_CONFIG = "best_config.yaml"
    BEST_MODEL = "best_model.pt"
    SPACE = "space.yaml"
    SEARCH_INFO = "search.json"
    OPTUNA_DB = "optuna.db"
    MLFLOW_JOURNAL = "mlflow-pending.jsonl"  # MLflow writes queued while the server was away
    FINAL_JOURNAL = "mlflow-pending-final.jsonl"  # ... of the final comparison
    LOCK = "search.lock"  # the command running the search now: pid, host, start time
    REPORT = "report"  # the folder of the report plots


FINAL_SEEDS = 3  # the final comparison trains every recipe with this many seeds
TRACKING_OUTAGE_S = 300.0  # how long a finished search waits for a lost tracking server
# where this is 1, final tasks are computed again rather than taken from an earlier search
# (search/kept.py); the test suite sets it, so that no test reads another one's answers
FRESH_FINAL_ENV = "DEFENSE_SEARCH_FRESH_FINAL"


def fresh_final_default() -> bool:
    """`--fresh-final`'s default."""
    return os.environ.get(FRESH_FINAL_ENV, "") == "1"
