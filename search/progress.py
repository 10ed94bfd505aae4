"""A compact live progress view of a search, one line per event (Ray's own tables are off)."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from search.records import trial_status
from spaces import Space

__all__ = ["ProgressPrinter", "trial_label"]


def trial_label(space: Space, trial: Any) -> str:
    """`t07 pool=PGD+MIFGSM unig=per_sample`: the child run's name in MLflow too."""
    values = space.logged_params(dict(trial.config))
    # Ray's search generator numbers trials from 1 in the experiment tag: "<n>_<values>"
    number = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    prefix = f"t{int(number):02d}" if number.isdigit() else str(trial.trial_id)
    label = f"{prefix} pool={values['pool']}"
    if "unig" in values:
        label += f" unig={values['unig']}"
    return label


class ProgressPrinter(Callback):
    def __init__(self, space: Space, *, num_samples: int, max_t: int, objective: str,
                 epochs: int) -> None:
        self.space, self.num_samples, self.max_t = space, num_samples, max_t
        self.objective, self.epochs = objective, epochs
        self.start = time.time()
        self.done: dict[str, int] = {"completed": 0, "early-stopped": 0, "failed": 0}
        self.best: tuple[float, str] | None = None

    def _print(self, text: str) -> None:
        elapsed = int(time.time() - self.start)
        print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._print(f"{trial_label(self.space, trial)}: started")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        epoch = int(result.get("epoch", 0))
        objective = result.get(self.objective)
        self._print(f"{trial_label(self.space, trial)}: epoch {epoch}/{self.epochs}  clean "
                    f"{result.get('val/clean/acc', float('nan')):.3f}  held-out mean "
                    f"{result.get('val/heldout/mean_acc', float('nan')):.3f}  union "
                    f"{result.get('val/heldout/union_acc', float('nan')):.3f}")
        full = int(result.get("training_iteration", 0)) >= self.max_t
        if objective is not None and full and (self.best is None or objective > self.best[0]):
            self.best = (float(objective), trial_label(self.space, trial).split()[0])

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self._print(f"{trial_label(self.space, trial)}: failed, retrying from its last "
                    "checkpoint")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        done = int((trial.last_result or {}).get("training_iteration", 0))
        status = trial_status(trial.last_result, self.max_t)
        self.done[status] += 1
        note = "" if status == "completed" else f" by ASHA after {done}/{self.max_t} evaluations"
        self._print(f"{trial_label(self.space, trial)}: {status}{note}  {self._summary()}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done["failed"] += 1
        self._print(f"{trial_label(self.space, trial)}: FAILED (error log: "
                    f"{getattr(trial, 'error_file', None) or 'see Ray logs'})  {self._summary()}")

    def _summary(self) -> str:
        finished = sum(self.done.values())
        best = f", best full-length {self.best[0]:.3f} ({self.best[1]})" if self.best else ""
        return (f"[{finished}/{self.num_samples} done: {self.done['completed']} completed, "
                f"{self.done['early-stopped']} early-stopped, {self.done['failed']} failed{best}]")
