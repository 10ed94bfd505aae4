"""The local sampler (search/local.py): proposals next to the best finished recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna

import spaces
from search.local import LocalSampler
from search.warmstart import load_warm_start

optuna.logging.set_verbosity(optuna.logging.WARNING)
DISTRIBUTIONS = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                 "w": optuna.distributions.FloatDistribution(0.0, 4.0),
                 "steps": optuna.distributions.IntDistribution(1, 20),
                 "opt": optuna.distributions.CategoricalDistribution(["adam", "sgd", "adamw"])}


def _ask(study: optuna.Study) -> dict[str, object]:
    trial = study.ask()
    values = {"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
              "w": trial.suggest_float("w", 0.0, 4.0),
              "steps": trial.suggest_int("steps", 1, 20),
              "opt": trial.suggest_categorical("opt", ["adam", "sgd", "adamw"])}
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # never an incumbent itself
    return values


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=LocalSampler(seed=seed))


def _add(study: optuna.Study, value: float, *, state: optuna.trial.TrialState =
         optuna.trial.TrialState.COMPLETE, **params: object) -> None:
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=DISTRIBUTIONS, state=state,
        value=value if state == optuna.trial.TrialState.COMPLETE else None))


def test_each_proposal_is_the_best_finished_recipe_with_one_or_two_values_moved() -> None:
    study = _study()
    best: dict[str, Any] = {"lr": 1e-3, "w": 0.0, "steps": 10, "opt": "adam"}
    _add(study, 0.4, lr=5e-3, w=2.0, steps=3, opt="sgd")
    _add(study, 0.6, **best)
    _add(study, 0.0, lr=1e-4, w=4.0, steps=20, opt="adamw")  # zeroed by a masking flag
    _add(study, math.nan, state=optuna.trial.TrialState.PRUNED, lr=2e-3, w=1.0, steps=5,
         opt="adam")
    moved_w = 0
    for _ in range(40):
        values = _ask(study)
        changed = {k for k in best if values[k] != best[k]}
        assert 1 <= len(changed) <= 2, values
        assert 1e-4 <= values["lr"] <= 1e-2 and 0.0 <= values["w"] <= 4.0  # type: ignore[operator]
        assert 1 <= values["steps"] <= 20  # type: ignore[operator]
        moved_w += "w" in changed
    # a weight at its lower bound (off) moves as often as the others (reflected, not clipped)
    assert moved_w >= 8


def test_before_any_finished_trial_it_samples_at_random_and_is_repeatable() -> None:
    first = [_ask(s) for s in [_study(seed=3)] for _ in range(5)]
    again = [_ask(s) for s in [_study(seed=3)] for _ in range(5)]
    assert first == again
    assert len({v["lr"] for v in first}) == 5


def test_on_mnist5k_warm_started_from_the_lever_study_it_stays_next_to_the_best() -> None:
    # the sampler's behaviour next to a known best is what is checked here, so the table's
    # values are told as results (a warm start takes them as proposals: scored with CE alone)
    space = spaces.load("mnist5k", ["search.robust_floor=null"])
    source = Path(__file__).resolve().parents[2] / "bench/results/levers-mnist5k-all.json"
    levers = json.loads(source.read_text())["levers"].values()
    results = [(lever["values"], sum(lever["objective"]) / len(lever["objective"]))
               for lever in levers]
    assert len(load_warm_start(str(source), space).proposals) == len(results)
    study = _study(seed=1)
    for values, value in results:
        point = space.point(values)
        study.add_trial(optuna.trial.create_trial(
            params=point, distributions=space.distributions(point), value=value))
    incumbent = space.point(max(results, key=lambda r: r[1])[0])
    for _ in range(12):
        trial = study.ask()
        proposed = space.point(space.suggest(trial))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        changed = {k for k in incumbent.keys() | proposed.keys()
                   if incumbent.get(k) != proposed.get(k)}
        # one or two values moved, plus what a condition or the pool's size bounds then force
        assert 1 <= len(changed) <= 6, changed


def test_the_local_sampler_is_a_search_alg_of_every_space() -> None:
    from search.tuner import make_sampler

    assert isinstance(make_sampler(spaces.SearchAlg("local"), seed=0, startup=5), LocalSampler)


def test_an_int_always_moves_on_its_grid_and_a_minimised_objective_keeps_the_lowest() -> None:
    study = optuna.create_study(direction="minimize", sampler=LocalSampler(seed=5,
                                                                           max_changes=1))
    grid = {"k": optuna.distributions.IntDistribution(2, 20, step=2),
            "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for value, k in ((0.9, 4), (0.1, 10), (0.5, 16)):
        study.add_trial(optuna.trial.create_trial(params={"k": k, "lr": 1e-3},
                                                  distributions=grid, value=value))
    for _ in range(30):
        trial = study.ask()
        k, lr = trial.suggest_int("k", 2, 20, step=2), trial.suggest_float("lr", 1e-4, 1e-2,
                                                                           log=True)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        assert (k != 10) != (lr != 1e-3)  # exactly one value moved, from the lowest (k=10)
        assert k % 2 == 0 and 2 <= k <= 20 and 1e-4 <= lr <= 1e-2


def test_the_local_sampler_is_refused_with_several_objectives_before_ray(
        tmp_path: Path) -> None:
    from search import run
    from trainables.errors import ConfigError

    args = run.build_parser().parse_args(
        ["--space", "smoke", "--search-alg", "local", "--multi-objective",
         "--storage-path", str(tmp_path), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    try:
        run.make_plan(args)
    except ConfigError as err:
        assert "--search-alg local" in str(err) and "\n" not in str(err)
    else:
        raise AssertionError("a local multi-objective search was planned")


def test_a_proposal_the_study_already_holds_is_drawn_again() -> None:
    flags = {"opt": optuna.distributions.CategoricalDistribution(["adam", "sgd"]),
             "flag": optuna.distributions.CategoricalDistribution([True, False])}

    def ask(study: optuna.Study) -> dict[str, object]:
        trial = study.ask()
        values = {"opt": trial.suggest_categorical("opt", ["adam", "sgd"]),
                  "flag": trial.suggest_categorical("flag", [True, False])}
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return values

    for seed in range(6):
        study = optuna.create_study(direction="maximize",
                                    sampler=LocalSampler(seed=seed, max_changes=1))
        for value, opt in ((0.6, "adam"), (0.1, "sgd")):
            study.add_trial(optuna.trial.create_trial(params={"opt": opt, "flag": True},
                                                      distributions=flags, value=value))
        # of the incumbent's two one-value neighbours, only flag=False is not known yet
        assert ask(study) == {"opt": "adam", "flag": False}
        # both neighbours known: a random draw, still a point of the space
        again = ask(study)
        assert again["opt"] in ("adam", "sgd") and again["flag"] in (True, False)


def test_mid_searches_locally_by_default_and_with_several_objectives_by_tpe(
        tmp_path: Path) -> None:
    from search import run

    def planned(*extra: str) -> str:
        args = run.build_parser().parse_args(
            ["--space", "mid", *extra, "--storage-path", str(tmp_path),
             "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"])
        return str(run.make_plan(args).search_alg)

    assert planned() == "local"
    assert planned("--multi-objective") == "tpe"
    assert planned("--search-alg", "random") == "random"


def test_covered_proposals_move_the_least_explored_values_of_the_incumbent_first() -> None:
    names = [f"v{i}" for i in range(8)]
    flags = {n: optuna.distributions.CategoricalDistribution([0, 1]) for n in names}

    def ask(study: optuna.Study) -> set[str]:
        trial = study.ask()
        values = {n: trial.suggest_categorical(n, [0, 1]) for n in names}
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return {n for n in names if values[n] != 0}

    for seed in range(4):
        study = optuna.create_study(direction="maximize", sampler=LocalSampler(
            seed=seed, max_changes=1, cover=True))
        study.add_trial(optuna.trial.create_trial(params=dict.fromkeys(names, 0),
                                                  distributions=flags, value=0.6))
        # v0 and v1 already have a neighbour each; a recipe far away explores nothing
        for moved in (["v0"], ["v1"], names[:5]):
            study.add_trial(optuna.trial.create_trial(
                params={n: int(n in moved) for n in names}, distributions=flags, value=0.1))
        # one value per proposal, each one not yet tried next to the incumbent
        changed = [ask(study) for _ in range(6)]
        assert all(len(c) == 1 for c in changed), changed
        assert set().union(*changed) == set(names[2:]), changed


def test_stacked_proposals_add_the_moves_that_helped_most_to_the_incumbent_first() -> None:
    study = optuna.create_study(direction="maximize", sampler=LocalSampler(seed=0, stack=True))
    base: dict[str, Any] = {"lr": 1e-3, "w": 0.0, "steps": 10, "opt": "adam"}
    _add(study, 0.50, **base)
    _add(study, 0.56, **{**base, "opt": "sgd"})  # helped by 0.06
    _add(study, 0.53, **{**base, "w": 2.0})  # helped by 0.03
    _add(study, 0.40, **{**base, "lr": 5e-3, "steps": 3})  # hurt: not a move to stack
    _add(study, 0.70, lr=2e-3, w=1.0, steps=12, opt="adam")  # the incumbent, far from the rest
    first, second = _ask(study), _ask(study)
    assert first == {"lr": 2e-3, "w": 1.0, "steps": 12, "opt": "sgd"}
    assert second == {"lr": 2e-3, "w": 2.0, "steps": 12, "opt": "adam"}
    # the moves it already has or the study holds are not proposed again: a local move then
    _add(study, 0.65, lr=2e-3, w=1.0, steps=12, opt="sgd")  # the stacked one, run (worse)
    third = _ask(study)
    changed = {k for k in third if third[k] != {"lr": 2e-3, "w": 1.0, "steps": 12,
                                                  "opt": "adam"}[k]}
    assert 1 <= len(changed) <= 2 and third != second, third


def test_stacking_is_a_search_alg() -> None:
    from search.tuner import make_sampler

    sampler = make_sampler(spaces.SearchAlg("local-stack"), seed=0, startup=5)
    assert isinstance(sampler, LocalSampler) and sampler.stack and not sampler.cover
