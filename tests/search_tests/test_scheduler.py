"""ASHA never stops a baseline; with `search.baselines_in_rungs` off, a baseline's results do
not set the cutoffs that the searched recipes must pass."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from search.tuner import BaselinesToTheEnd
from spaces import RECORD_KEY


def _trial(trial_id: str, baseline: str | None) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id,
                           config={RECORD_KEY: SimpleNamespace(baseline=baseline)})


def _scheduler(baselines_in_rungs: bool) -> BaselinesToTheEnd:
    return BaselinesToTheEnd(baselines_in_rungs=baselines_in_rungs, metric="val/objective",
                             mode="max", time_attr="training_iteration", max_t=3,
                             grace_period=1, reduction_factor=3)


def _report(scheduler: BaselinesToTheEnd, trial: SimpleNamespace, value: float) -> str:
    return scheduler.on_trial_result(
        None, trial, {"training_iteration": 1, "val/objective": value})


@pytest.mark.parametrize("baselines_in_rungs", [True, False])
def test_a_strong_baseline_sets_the_cutoff_only_when_baselines_are_in_the_rungs(
        baselines_in_rungs: bool) -> None:
    scheduler = _scheduler(baselines_in_rungs)
    pgd_at, weak_baseline = _trial("b1", "pgd-at"), _trial("b2", "standard")
    default, proposal = _trial("t1", None), _trial("t2", None)
    for trial in (pgd_at, weak_baseline, default, proposal):
        scheduler.on_trial_add(None, trial)  # type: ignore[arg-type]  # a stand-in
    assert _report(scheduler, pgd_at, 0.9) == TrialScheduler.CONTINUE
    assert _report(scheduler, default, 0.4) == (TrialScheduler.STOP if baselines_in_rungs
                                                else TrialScheduler.CONTINUE)
    # a baseline below every cutoff still runs to the end
    assert _report(scheduler, weak_baseline, 0.1) == TrialScheduler.CONTINUE
    # the proposal is judged against the default recipe (0.4) either way, and against the
    # baselines (0.9, 0.1) only when they are in the rungs
    assert _report(scheduler, proposal, 0.5) == (TrialScheduler.STOP if baselines_in_rungs
                                                 else TrialScheduler.CONTINUE)
    for trial in (pgd_at, weak_baseline):  # their last results leave no trace in the rungs
        scheduler.on_trial_complete(None, trial, {"training_iteration": 3,
                                                  "val/objective": 0.5})
    assert scheduler._num_stopped == (2 if baselines_in_rungs else 0)
