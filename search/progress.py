"""A compact live progress view of a search, one line per event (Ray's own tables are off)."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from search.records import trial_status
from search.vocab import FAILURE_REASON, TrialStatus
from spaces import RECORD_KEY, TrialRecord
from trainables.scoring.masking import floor_accuracy, raised_flags, stronger_flags
from trainables.vocab import (
    CLEAN_ACC,
    HELDOUT_MEAN,
    MASKING_ANSWERED,
    Group,
    Split,
    Stat,
    group_metric,
)

__all__ = ["ProgressPrinter", "trial_label"]


def trial_label(trial: Any) -> str:
    """`t07 pool=PGD+MIFGSM unig=per_sample`: the child run's name in MLflow too."""
    record: TrialRecord = trial.config[RECORD_KEY]
    values = record.params
    # Ray's search generator numbers trials from 1 in the experiment tag: "<n>_<values>"
    number = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    prefix = f"t{int(number):02d}" if number.isdigit() else str(trial.trial_id)
    if record.baseline:
        return f"{prefix} baseline={record.baseline}"
    label = f"{prefix} pool={values['pool']}"
    if "unig" in values:
        label += f" unig={values['unig']}"
    return label


class ProgressPrinter(Callback):
    """Counts come from the trials Tune passes to each hook, so a resumed search goes on
    counting where it stopped."""

    def __init__(self, *, num_samples: int, max_t: int, objective: str, epochs: int,
                 robust_floor: float | None = None) -> None:
        self.num_samples, self.max_t = num_samples, max_t
        self.objective, self.epochs = objective, epochs
        self.robust_floor = robust_floor
        self.start = time.time()

    def __setstate__(self, state: dict[str, Any]) -> None:  # restored by --resume: a new clock
        self.__dict__.update(state)
        self.start = time.time()

    def _print(self, text: str) -> None:
        elapsed = int(time.time() - self.start)
        print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._print(f"{trial_label(trial)}: started")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        epoch = int(result.get("epoch", 0))
        union = group_metric(Split.VAL, Group.HELDOUT, Stat.UNION)
        self._print(f"{trial_label(trial)}: epoch {epoch}/{self.epochs}  clean "
                    f"{result.get(CLEAN_ACC, float('nan')):.3f}  held-out mean "
                    f"{result.get(HELDOUT_MEAN, float('nan')):.3f}  union "
                    f"{result.get(union, float('nan')):.3f}")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self._print(f"{trial_label(trial)}: failed, retrying from its last "
                    "checkpoint")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        result = trial.last_result or {}
        done = int(result.get("training_iteration", 0))
        status = trial_status(result, self.max_t)
        flags = raised_flags(result)
        zeroed = bool(flags) and result.get(self.objective) == 0
        penalty = f"; masking flags {', '.join(flags or [])}: objective zeroed" if zeroed else ""
        met = stronger_flags(result) if result.get(MASKING_ANSWERED) and not zeroed else []
        floor, robust = getattr(self, "robust_floor", None), floor_accuracy(result)
        if (not penalty and floor is not None and robust < floor  # NaN: not measured
                and status == TrialStatus.COMPLETED):  # early rungs pay nothing
            attack = "the strongest Linf attack" if met else "PGD-10"
            penalty = (f"; {attack} {robust:.3f} below the robust floor {floor:g}: "
                       "objective lowered")
        if met:
            penalty += f"; masking flags {', '.join(met)}: met by the margin loss"
        note = {TrialStatus.COMPLETED: penalty[2:] and f" ({penalty[2:]})",
                TrialStatus.FAILED: f" ({result.get(FAILURE_REASON)}; not retried)"}.get(
            status, f" by ASHA after {done}/{self.max_t} evaluations{penalty}")
        self._print(f"{trial_label(trial)}: {status}{note}  {self._summary(trials, trial)}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._print(f"{trial_label(trial)}: FAILED (error log: "
                    f"{getattr(trial, 'error_file', None) or 'see Ray logs'})  "
                    f"{self._summary(trials, trial, error=True)}")

    def _summary(self, trials: list[Any], current: Any, *, error: bool = False) -> str:
        done = {TrialStatus.COMPLETED: 0, TrialStatus.EARLY_STOPPED: 0, TrialStatus.FAILED: 0}
        best: tuple[float, str] | None = None
        for trial in trials:
            finished = trial is current or trial.status in ("TERMINATED", "ERROR")
            if not finished:
                continue
            result = trial.last_result or {}
            status = (TrialStatus.FAILED if trial.status == "ERROR" or (trial is current and error)
                      else trial_status(result, self.max_t))
            done[status] += 1
            objective = result.get(self.objective)
            if status == TrialStatus.COMPLETED and objective is not None and (
                    best is None or objective > best[0]):
                best = (float(objective), trial_label(trial).split()[0])
        text = f", best full-length {best[0]:.3f} ({best[1]})" if best else ""
        return (f"[{sum(done.values())}/{self.num_samples} done: "
                f"{done[TrialStatus.COMPLETED]} completed, {done[TrialStatus.EARLY_STOPPED]} "
                f"early-stopped, {done[TrialStatus.FAILED]} failed{text}]")
