"""What a search's Optuna study holds before its first trial: the space's default recipe, its
baselines and, with `--warm-start`, what an earlier search or a lever study already knows.

A warm start from an earlier search of the same space and data set (and objective) adds its
completed trials to the study as results (the sampler learns from them at once, no trial is
run again); from another space or data set, its best recipes are enqueued as proposals (run
like any trial: their values are not results here). A lever table written by bench/levers.py
gives proposals, or results when its space, data set and objective match. Every point keeps
its origin as an Optuna user attribute (`origin`), which the trial's record and its MLflow
run carry too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from search.plan import SearchPlan
from search.records import SearchInfo
from search.vocab import ARTIFACT
from spaces import ORIGIN, Space, SpaceError, load
from trainables.errors import ConfigError
from trainables.vocab import SCORING_VERSION, EvalLosses

__all__ = ["WarmStart", "load_warm_start", "seed_study"]

PROPOSALS = 8  # at most this many of a source's best recipes are enqueued as proposals


@dataclass
class WarmStart:
    """Points from one source: with values (results) or without (proposals)."""

    source: str
    results: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    proposals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"warm-start:{Path(self.source).name}"

    def describe(self) -> str:
        return (f"{self.source}: {len(self.results)} result(s) added to the study, "
                f"{len(self.proposals)} proposal(s) enqueued")


def load_warm_start(source: str, space: Space) -> WarmStart:
    """The points of `source` (a search's output folder, its search.json, or a lever table),
    each checked to be a point of `space`; a mismatch is one ConfigError naming it."""
    path = Path(source).expanduser()
    if path.is_file() and path.name == ARTIFACT.SEARCH_INFO:
        path = path.parent
    if path.is_dir():
        found = _from_search(path, space)
    elif path.is_file() and path.suffix == ".json":
        found = _from_levers(path, space)
    else:
        raise ConfigError(f"--warm-start {source!r} is neither a search's output folder (with "
                          f"{ARTIFACT.SEARCH_INFO}) nor a lever table (.json from "
                          "bench/levers.py)")
    for values in [v for v, _ in found.results] + found.proposals:
        _check_point(values, space, source)
    if not found.results and not found.proposals:
        raise ConfigError(f"--warm-start {source!r} holds no finished recipe to start from")
    return found


def _from_search(folder: Path, space: Space) -> WarmStart:
    if not all((folder / name).is_file() for name in (ARTIFACT.SEARCH_INFO, ARTIFACT.OPTUNA_DB)):
        raise ConfigError(f"--warm-start {str(folder)!r} is not a search's output folder: it "
                          f"needs {ARTIFACT.SEARCH_INFO} and {ARTIFACT.OPTUNA_DB}")
    info = SearchInfo.read(folder)
    earlier = load(str(folder / ARTIFACT.SPACE))
    study = optuna.load_study(study_name=info.name,
                              storage=f"sqlite:///{folder / ARTIFACT.OPTUNA_DB}")
    done = [(dict(t.params), float(t.value)) for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
            and len(t.values or ()) == 1 and math.isfinite(t.value)]
    found = WarmStart(str(folder))
    if _same_problem(earlier, space) and info.scoring == SCORING_VERSION:
        found.results = done
    else:  # another data set or objective: its values mean nothing here, its recipes might
        best = sorted(done, key=lambda p: p[1], reverse=earlier.search.mode == "max")
        found.proposals = [values for values, _ in best[:PROPOSALS]]
    return found


def _from_levers(path: Path, space: Space) -> WarmStart:
    try:
        table = json.loads(path.read_text())
        levers: Mapping[str, Any] = table["levers"]
        # a lever table holds the objective metric as measured: with a robust floor the
        # search's objective is another number, so its recipes come as proposals
        same = (table["space"] == space.name and table["dataset"] == space.base["dataset"]
                and table["objective"] == space.search.objective
                and table.get("scoring", 0) == SCORING_VERSION  # scored as now
                and table.get("eval_losses", EvalLosses.CE_MARGIN) == _losses(space)
                and space.search.robust_floor is None)
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"--warm-start {str(path)!r} is not a lever table written by "
                          "bench/levers.py (it needs space, dataset, objective and levers)"
                          ) from None
    found = WarmStart(str(path))
    for lever in levers.values():
        values, scores = dict(lever["values"]), [float(v) for v in lever["objective"]]
        if same and scores:
            found.results.append((space.point(values), sum(scores) / len(scores)))
        else:
            found.proposals.append(values)
    return found


def _same_problem(earlier: Space, space: Space) -> bool:
    """Results carry over only where they mean the same: same space, data set, objective,
    the same penalties on it (masking flags, robust floor) and the same order of the losses
    (eval_losses); the caller also asks for the same way of scoring (SCORING_VERSION)."""
    return (earlier.name == space.name and earlier.base["dataset"] == space.base["dataset"]
            and earlier.search.objective == space.search.objective
            and earlier.search.penalize_flags == space.search.penalize_flags
            and earlier.search.robust_floor == space.search.robust_floor
            and _losses(earlier) == _losses(space))


def _losses(space: Space) -> EvalLosses:
    """The order of the non-Lp attacks' two losses in its evaluations: part of how a space
    scores (eval_losses); tables written before it existed scored with CE first."""
    return space.trial_config().eval_losses


def _check_point(values: Mapping[str, Any], space: Space, source: str) -> None:
    try:
        space.trial_config({k: v for k, v in values.items()})
        for name, value in values.items():
            if name in space.params:
                space.params[name].value(value)
    except SpaceError as err:
        raise ConfigError(f"--warm-start {source!r} does not fit space {space.name!r}: "
                          f"{str(err).split(': ', 1)[-1]}") from None


def seed_study(plan: SearchPlan) -> WarmStart | None:
    """Creates the search's Optuna study (before Tune opens it) holding, in this order, the
    space's default recipe and its baselines (enqueued), then the warm start: results added
    as completed trials, proposals enqueued. Returns the warm start, if any."""
    space = plan.space
    study = optuna.create_study(
        storage=plan.optuna_storage, study_name=plan.name, load_if_exists=True,
        **({"directions": ["maximize" if m == "max" else "minimize" for m in plan.modes()]}
           if plan.multi_objective else
           {"direction": "maximize" if plan.mode == "max" else "minimize"}))
    study.enqueue_trial(space.point(space.default_values()), user_attrs={ORIGIN: "default"})
    for name in space.baselines:
        study.enqueue_trial(space.point(space.baseline_values(name)),
                            user_attrs={ORIGIN: f"baseline:{name}"})
    if plan.warm_start is None:
        return None
    warm = load_warm_start(plan.warm_start, space)
    for values, value in warm.results if not plan.multi_objective else ():
        point = space.point(values)
        study.add_trial(optuna.trial.create_trial(
            params=point, distributions=space.distributions(point), value=value,
            user_attrs={ORIGIN: warm.origin}))
    for values in warm.proposals + ([v for v, _ in warm.results] if plan.multi_objective
                                    else []):
        study.enqueue_trial(space.point(values), user_attrs={ORIGIN: warm.origin})
    return warm
