"""The final comparison's head start: a baseline's recipe does not depend on the search's
winner, so its seeds are trained and evaluated (or taken as an earlier search kept them,
search/kept.py) as Ray tasks while the search still runs. The search's tail then no longer
leaves a core idle, and the final comparison has less left to do when the search ends.

The tasks wait for the tail: they are submitted once every trial of the search has started
and none waits for resources. Submitted as soon as a baseline completed, they took the core it
freed ahead of the next searched trial, and then held both cores: on `mnist5k` (1fb49a3),
after the standard, pgd-at and pgd-l2-at baselines' tasks were submitted, the next trial
waited 6, 8 and 12 minutes for a freed core, and the search had run 6 of its 16 trials after
66 minutes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune import Callback

from search.final import Tasks
from search.records import baseline_model, checkpoint_model, trial_status
from search.vocab import TrialStatus
from spaces import RECORD_KEY, TrialRecord
from trainables.setting.prepare import Shared

__all__ = ["HeadStart"]


class HeadStart(Callback):
    """A Tune callback: starts a completed baseline trial's final tasks (every seed)."""

    def __init__(self, *, shared: Shared | None, resources: Mapping[str, float],
                 seeds: Sequence[int], strength: float, max_t: int, trials: int,
                 fresh: bool = False) -> None:
        self.shared, self.resources, self.seeds = shared, dict(resources), list(seeds)
        self.strength, self.max_t, self.fresh = strength, max_t, fresh
        self.trials = trials  # the search's size: the tasks wait until all have started
        self.started: dict[tuple[str, int], Any] = {}  # (baseline, seed) -> Ray object ref
        self.waiting: list[tuple[TrialRecord, bytes | None]] = []  # (baseline, own model)
        self.tasks: Tasks | None = None  # made at the first submit; the final stage's too

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into its experiment state: no data there, and Ray's object
        # refs would not survive a restart (a resumed search starts its final tasks at the end)
        return {**self.__dict__, "shared": None, "started": {}, "waiting": [], "tasks": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a search pickled before the tasks waited for the tail has neither: resume it
        self.__dict__.update({"waiting": [], "trials": 0, "tasks": None, **state})

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        record: TrialRecord | None = trial.config.get(RECORD_KEY)
        result = trial.last_result or {}
        if record is None or not record.baseline or self.shared is None or \
                trial_status(result, self.max_t) != TrialStatus.COMPLETED:
            return
        # the model is read now: Tune may drop the trial's checkpoint before the tail
        self.waiting.append((record, baseline_model(
            record, lambda: None if trial.checkpoint is None else
            checkpoint_model(trial.checkpoint))))
        self.on_step_begin(iteration, trials)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self.waiting and len(trials) >= self.trials and \
                not any(t.status in ("PENDING", "PAUSED") for t in trials):
            self.flush(when="while the search runs")

    def flush(self, when: str = "as the search ended") -> dict[tuple[str, int], Any]:
        """Submits every waiting baseline's tasks (at the tail; the final stage calls this
        for those a search that ended before its tail left) and returns all started."""
        for record, own in self.waiting:
            self._submit(record, own, when)
        self.waiting.clear()
        return self.started

    def _submit(self, record: TrialRecord, own: bytes | None, when: str) -> None:
        assert record.baseline is not None and self.shared is not None
        if self.tasks is None:
            self.tasks = Tasks(self.shared, self.resources, self.strength, fresh=self.fresh)
        for index, seed in enumerate(self.seeds):
            key = (record.baseline, seed)
            if key not in self.started:  # every seed trained: see final.candidates_of
                self.started[key] = self.tasks.submit(
                    record.with_config(seed=seed), None, keep=index == 0,
                    own=own if seed == record.config.seed else None)
        print(f"final: {record.baseline}'s {len(self.seeds)} seeds started {when}", flush=True)

