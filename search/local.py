"""A local sampler: each proposal is the best finished recipe so far with one or two of its
values changed, the way a person's lever study moves.

TPE and the GP sampler model the whole space; with a few dozen finished recipes in a space of
thirty-odd values (most of them conditional) they propose far from anything known to work
(measured on mnist5k: warm-started from the 33-recipe lever study, TPE's proposals were
4-attack pools with UniG on, all stopped by ASHA). This one stays next to the incumbent:
the best COMPLETE trial of the study (warm-start results and baselines included; a trial
zeroed by a masking flag or pruned by ASHA is never the incumbent). Per proposal it picks
1 to `max_changes` of the incumbent's values and moves each: a float or int by a Gaussian
step of `step` of its range (in log space where the range is), a categorical to another
choice. A value the incumbent lacks (a newly active conditional one) and every value before
the first finished trial are drawn at random. An int always moves (at least one step), so
a proposal is never the incumbent itself. A proposal equal to a recipe the study already
holds (run, running or failed) is drawn again, up to `attempts` times, then sampled at random:
moving a pool flag back and forth would otherwise spend trials on known answers. One
objective only (search.run refuses it with --multi-objective).

`cover` (`--search-alg local-cover`) picks which values to move the way a lever study walks its
table: the incumbent's values with the fewest explored neighbours first (a known recipe that
differs from the incumbent in 1 to `max_changes` values explores each of them once), ties in
random order. Drawn at random, 11 proposals over mid's thirty-odd values move some twice and
leave most untried; covered, each proposal tries a value not yet tried next to the incumbent.

`stack` (`--search-alg local-stack`) first stacks what the study has seen help, the way a
person who walked a lever table then combines its levers: of two finished recipes that differ
in 1 to `max_changes` values, where the later one is the better, the later one's values are a
move that helped by their objective's difference. A proposal is the incumbent with the move
that helped most and that it does not have yet (nor the study as a recipe); only when no such
move is left is a value moved at random. The moves are read from the finished trials alone
(warm-start results, baselines and a resumed study's included): nothing is kept in between.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

__all__ = ["LocalSampler"]


class LocalSampler(optuna.samplers.BaseSampler):
    def __init__(self, *, seed: int = 0, max_changes: int = 2, step: float = 0.15,
                 attempts: int = 10, cover: bool = False, stack: bool = False) -> None:
        self.seed, self.max_changes, self.step = seed, max_changes, step
        self.attempts, self.cover, self.stack = attempts, cover, stack
        self._random = optuna.samplers.RandomSampler(seed=seed)
        # per trial number: the proposal (the incumbent's values, one or two of them moved)
        self._plans: dict[int, dict[str, Any]] = {}

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        incumbent = _incumbent(study)
        if incumbent is None:
            return
        known = [t.params for t in study.get_trials(deepcopy=False)
                 if t.params and t.number != trial.number]
        if self.stack:
            stacked = _stacked(study, incumbent, known, self.max_changes)
            if stacked is not None:
                self._plans[trial.number] = stacked
                return
        names = sorted(incumbent.params)
        explored = _explored(incumbent.params, known, self.max_changes) if self.cover else {}
        for attempt in range(self.attempts):
            # attempt 0 draws what the sampler drew before it skipped duplicates
            salt = f"{self.seed}:{trial.number}" + (f"/{attempt}" if attempt else "")
            rng = random.Random(salt)
            count = min(len(names), rng.randint(1, self.max_changes))
            if self.cover:  # the least explored first, ties at random
                order = {name: rng.random() for name in names}
                changed = sorted(names, key=lambda n: (explored.get(n, 0), order[n]))[:count]
            else:
                changed = rng.sample(names, count)
            proposal = dict(incumbent.params)
            for name in changed:
                proposal[name] = _moved(proposal[name], incumbent.distributions[name],
                                        random.Random(f"{salt}:{name}"), self.step)
            if not any(_same(proposal, params) for params in known):
                self._plans[trial.number] = proposal
                return

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self._plans.get(trial.number)
        value = plan.get(param_name) if plan is not None else None
        # nothing finished yet, every local move known already, a value the incumbent lacks,
        # or one the space no longer allows
        if plan is None or param_name not in plan or not _fits(value, param_distribution):
            return self._random.sample_independent(study, trial, param_name,
                                                   param_distribution)
        return value

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._plans.pop(trial.number, None)


def _incumbent(study: optuna.Study) -> FrozenTrial | None:
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    done = [(sign * t.value, t) for t in study.get_trials(deepcopy=False,
                                                          states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    return max(done, key=lambda d: d[0])[1] if done else None


def _stacked(study: optuna.Study, incumbent: FrozenTrial, known: Sequence[dict[str, Any]],
             max_changes: int) -> dict[str, Any] | None:
    """The incumbent with the move that helped most between two finished neighbours, of
    those it lacks and whose result the study does not hold; None when there is none."""
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    moves: list[tuple[float, int, int, dict[str, Any]]] = []
    for better in done:
        for worse in done:
            gain = sign * (better.value - worse.value)  # type: ignore[operator]
            differ = [name for name, value in better.params.items()
                      if name in worse.params and worse.params[name] != value]
            # the later one is the better: a move the study made that paid, not the undoing
            # of one that hurt (a broken recipe's neighbours would otherwise lead)
            if gain > 0 and better.number > worse.number and 1 <= len(differ) <= max_changes:
                moves.append((-gain, better.number, worse.number,
                              {name: better.params[name] for name in differ}))
    for *_, move in sorted(moves, key=lambda m: m[:3]):
        usable = {name: value for name, value in move.items()
                  if name not in incumbent.distributions
                  or _fits(value, incumbent.distributions[name])}
        if usable != move or all(incumbent.params.get(n) == v for n, v in move.items()):
            continue
        proposal = {**incumbent.params, **move}
        if not any(_same(proposal, params) for params in known):
            return proposal
    return None


def _explored(incumbent: dict[str, Any], known: Sequence[dict[str, Any]], max_changes: int
              ) -> dict[str, int]:
    """Per value of the incumbent: how many known recipes are its neighbours along it (they
    differ from it in 1 to `max_changes` values, this one among them)."""
    counts: dict[str, int] = {}
    for params in known:
        differ = [name for name, value in incumbent.items()
                  if name in params and params[name] != value]
        if 1 <= len(differ) <= max_changes:
            for name in differ:
                counts[name] = counts.get(name, 0) + 1
    return counts


def _same(proposal: dict[str, Any], params: dict[str, Any]) -> bool:
    """A known recipe is the proposal: each of its values is the proposal's. (Values only the
    proposal has are inactive under the shared ones, so they do not tell the two apart.)"""
    return all(name in proposal and proposal[name] == value for name, value in params.items())


def _fits(value: Any, distribution: BaseDistribution) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(distribution, FloatDistribution | IntDistribution):
        return isinstance(value, int | float) and distribution.low <= value <= distribution.high
    return False


def _moved(value: Any, distribution: BaseDistribution, rng: random.Random, step: float) -> Any:
    """`value` moved within `distribution`: another choice, or a clipped Gaussian step."""
    if isinstance(distribution, CategoricalDistribution):
        others = [c for c in distribution.choices if c != value]
        return rng.choice(others) if others else value
    if isinstance(distribution, FloatDistribution | IntDistribution):
        low, high = distribution.low, distribution.high
        log = distribution.log and low > 0
        to = (lambda v: math.log(v)) if log else (lambda v: float(v))
        back = (lambda v: math.exp(v)) if log else (lambda v: v)
        span = to(high) - to(low)
        moved = to(value) + rng.gauss(0.0, step * span)
        # reflected at the bounds: a value at one (a loss weight that is off) moves as often
        moved = to(low) + abs(moved - to(low)) if moved < to(low) else moved
        moved = to(high) - abs(to(high) - moved) if moved > to(high) else moved
        moved = min(max(back(moved), low), high)
        grid = distribution.step
        if grid is not None:  # on the grid, inside the bounds after round-off
            moved = min(max(low + round((moved - low) / grid) * grid, low), high)
        if isinstance(distribution, IntDistribution):
            moved = int(moved)
            if moved == value:  # a step that rounded back: one grid step, inward at a bound
                moved = value + grid if value + grid <= high else value - grid
            return max(low, min(high, moved))
        return moved
    raise TypeError(f"no local move for {type(distribution).__name__}")
