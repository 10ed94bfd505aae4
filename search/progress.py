"""A compact live progress view of a search, one line per event (Ray's own tables are off)."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from search.records import trial_status
from spaces import RECORD_KEY
from trainables.vocab import (
    CLEAN_ACC,
    FAILURE_REASON,
    HELDOUT_MEAN,
    Group,
    Split,
    Stat,
    TrialStatus,
    group_metric,
)

__all__ = ["ProgressPrinter", "trial_label"]


def trial_label(trial: Any) -> str:
    """`t07 pool=PGD+MIFGSM unig=per_sample`: the child run's name in MLflow too."""
    record = trial.config[RECORD_KEY]
    values = record["params"]
    # Ray's search generator numbers trials from 1 in the experiment tag: "<n>_<values>"
    number = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    prefix = f"t{int(number):02d}" if number.isdigit() else str(trial.trial_id)
    if record.get("baseline"):
        return f"{prefix} baseline={record['baseline']}"
    label = f"{prefix} pool={values['pool']}"
    if "unig" in values:
        label += f" unig={values['unig']}"
    return label


class ProgressPrinter(Callback):
    def __init__(self, *, num_samples: int, max_t: int, objective: str, epochs: int) -> None:
        self.num_samples, self.max_t = num_samples, max_t
        self.objective, self.epochs = objective, epochs
        self.start = time.time()
        self.done: dict[str, int] = {TrialStatus.COMPLETED: 0, TrialStatus.EARLY_STOPPED: 0,
                                     TrialStatus.FAILED: 0}
        self.best: tuple[float, str] | None = None

    def _print(self, text: str) -> None:
        elapsed = int(time.time() - self.start)
        print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._print(f"{trial_label(trial)}: started")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        epoch = int(result.get("epoch", 0))
        objective = result.get(self.objective)
        union = group_metric(Split.VAL, Group.HELDOUT, Stat.UNION)
        self._print(f"{trial_label(trial)}: epoch {epoch}/{self.epochs}  clean "
                    f"{result.get(CLEAN_ACC, float('nan')):.3f}  held-out mean "
                    f"{result.get(HELDOUT_MEAN, float('nan')):.3f}  union "
                    f"{result.get(union, float('nan')):.3f}")
        full = int(result.get("training_iteration", 0)) >= self.max_t
        if objective is not None and full and (self.best is None or objective > self.best[0]):
            self.best = (float(objective), trial_label(trial).split()[0])

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self._print(f"{trial_label(trial)}: failed, retrying from its last "
                    "checkpoint")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        done = int((trial.last_result or {}).get("training_iteration", 0))
        status = trial_status(trial.last_result, self.max_t)
        self.done[status] += 1
        note = {TrialStatus.COMPLETED: "",
                TrialStatus.FAILED: f" ({(trial.last_result or {}).get(FAILURE_REASON)}; not "
                                    "retried)"}.get(status, f" by ASHA after {done}/"
                                                            f"{self.max_t} evaluations")
        self._print(f"{trial_label(trial)}: {status}{note}  {self._summary()}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done[TrialStatus.FAILED] += 1
        self._print(f"{trial_label(trial)}: FAILED (error log: "
                    f"{getattr(trial, 'error_file', None) or 'see Ray logs'})  {self._summary()}")

    def _summary(self) -> str:
        finished = sum(self.done.values())
        best = f", best full-length {self.best[0]:.3f} ({self.best[1]})" if self.best else ""
        return (f"[{finished}/{self.num_samples} done: {self.done[TrialStatus.COMPLETED]} "
                f"completed, {self.done[TrialStatus.EARLY_STOPPED]} early-stopped, "
                f"{self.done[TrialStatus.FAILED]} failed{best}]")
