"""The model-based samplers' start-up (search/tuner.make_sampler): random until `startup`
trials have finished, ASHA-pruned ones included, for GP as for TPE."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from search.tuner import StartupCountsPruned, make_sampler
from spaces import SearchAlg

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
         "w": optuna.distributions.FloatDistribution(0.0, 4.0)}
COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def _proposal(sampler: optuna.samplers.BaseSampler, *, completed: int, pruned: int
              ) -> dict[str, Any]:
    """What `sampler` proposes from its model for the next trial of a study that holds
    `completed` and `pruned` finished trials ({} while it still draws at random)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for i in range(completed + pruned):
        state = COMPLETE if i < completed else PRUNED
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 1e-3 * (1 + i % 5), "w": 0.4 * i}, distributions=SPACE,
            state=state, value=0.1 * i if state == COMPLETE else None))
    study.ask()
    trial = study.trials[-1]
    return sampler.sample_relative(study, trial, sampler.infer_relative_search_space(study, trial))


def test_gp_leaves_its_random_start_up_once_enough_trials_finished_pruned_or_not() -> None:
    # 2 completed and 8 pruned, as in a `mid` search where ASHA stopped most proposals
    assert set(_proposal(StartupCountsPruned(seed=0, startup=10), completed=2, pruned=8)) == set(
        SPACE)
    # Optuna's own GP sampler counts completed trials only: still drawing at random there
    stock = optuna.samplers.GPSampler(seed=0, n_startup_trials=10, warn_independent_sampling=False)
    assert _proposal(stock, completed=2, pruned=8) == {}


@pytest.mark.parametrize(("completed", "pruned"), [(2, 7), (1, 9), (0, 10)])
def test_gp_draws_at_random_before_the_start_up_or_with_under_two_completed_trials(
        completed: int, pruned: int) -> None:
    assert _proposal(StartupCountsPruned(seed=0, startup=10), completed=completed,
                     pruned=pruned) == {}


def test_the_gp_search_alg_is_the_sampler_that_counts_pruned_trials() -> None:
    sampler = make_sampler(SearchAlg.GP, seed=3, startup=5)
    assert isinstance(sampler, StartupCountsPruned) and sampler.startup == 5
