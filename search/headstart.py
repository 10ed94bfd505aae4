"""The final comparison's head start: a baseline's recipe does not depend on the search's
winner, so as soon as its trial completes, its seeds are trained and evaluated (or taken as an
earlier search kept them, search/kept.py), as Ray tasks that take a core whenever one is free,
while the search still runs. The search's tail then no longer leaves a core idle, and the
final comparison has less left to do when the search ends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune import Callback

from search.final import Tasks
from search.records import checkpoint_model, trial_status
from search.vocab import TrialStatus
from spaces import RECORD_KEY, TrialRecord
from trainables.setting.prepare import Shared

__all__ = ["HeadStart"]


class HeadStart(Callback):
    """A Tune callback: starts a completed baseline trial's final tasks (every seed)."""

    def __init__(self, *, shared: Shared | None, resources: Mapping[str, float],
                 seeds: Sequence[int], strength: float, max_t: int, fresh: bool = False
                 ) -> None:
        self.shared, self.resources, self.seeds = shared, dict(resources), list(seeds)
        self.strength, self.max_t, self.fresh = strength, max_t, fresh
        self.started: dict[tuple[str, int], Any] = {}  # (baseline, seed) -> Ray object ref
        self._tasks: Tasks | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into its experiment state: no data there, and Ray's object
        # refs would not survive a restart (a resumed search starts its final tasks at the end)
        return {**self.__dict__, "shared": None, "started": {}, "_tasks": None}

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        record: TrialRecord | None = trial.config.get(RECORD_KEY)
        result = trial.last_result or {}
        if record is None or not record.baseline or self.shared is None or \
                trial_status(result, self.max_t) != TrialStatus.COMPLETED:
            return
        if self._tasks is None:
            self._tasks = Tasks(self.shared, self.resources, self.strength, fresh=self.fresh)
        own = _own_model(trial, record)
        for index, seed in enumerate(self.seeds):
            key = (record.baseline, seed)
            if key not in self.started:  # every seed trained: see final.candidates_of
                self.started[key] = self._tasks.submit(
                    record.with_config(seed=seed), None, keep=index == 0,
                    own=own if seed == record.config.seed else None)
        print(f"final: {record.baseline}'s {len(self.seeds)} seeds started while the search "
              "runs", flush=True)



def _own_model(trial: Any, record: TrialRecord) -> bytes | None:
    """The model the baseline's trial trained (its last checkpoint's), where retraining its
    seed would give the same one: not with early stopping (the trial chose its checkpoint on
    cheaper early evaluations, the retraining on full ones)."""
    if record.config.early_stopping or trial.checkpoint is None:
        return None
    try:
        return checkpoint_model(trial.checkpoint)
    except OSError:
        return None
