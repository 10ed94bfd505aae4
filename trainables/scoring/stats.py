"""Intervals for every robust accuracy the project reports, and paired comparisons.

An accuracy is a mean over evaluated points of a per-point outcome: 0/1 for one attack, the
mean over attacks for a group's mean, the AND over attacks for its union. So:
- one attack's accuracy gets a Wilson interval (binomial, `binomtest(...).proportion_ci`);
- a mean over attacks gets a percentile bootstrap over points (`scipy.stats.bootstrap`);
- two models on the same points are compared by the paired difference of their per-point
  outcomes, with a paired bootstrap interval, and McNemar's exact test for 0/1 outcomes
  (a binomial test on the discordant pairs);
- over seeds (retrained models), the mean and a t interval of the per-seed values;
- two recipes trained over seeds and scored on the same points, by `seeded_difference`: its
  interval adds the training randomness (seed-to-seed spread, pooled over every recipe of
  the comparison) to the point sampling (a paired bootstrap), so a verdict does not hang on
  which seeds happened to train well.
All at 95% unless asked otherwise; the bootstrap is seeded, so a report is repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["CONFIDENCE", "Interval", "mcnemar_p", "mean_interval", "paired_difference",
           "pooled_seed_variance", "seed_interval", "seeded_difference", "wilson"]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """An estimate and its interval."""

    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _outcomes(values: Sequence[float] | np.ndarray) -> np.ndarray:
    out = np.asarray(values, dtype=float).ravel()
    if out.size == 0:
        raise ValueError("an interval needs at least one evaluated point")
    return out


def wilson(correct: Sequence[bool] | np.ndarray, *, confidence: float = CONFIDENCE
           ) -> Interval:
    """The accuracy of 0/1 outcomes with its Wilson score interval."""
    outcomes = _outcomes(correct)
    k, n = int(outcomes.sum()), outcomes.size
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high))


def _bootstrap(data: tuple[np.ndarray, ...], statistic: object, *, paired: bool,
               confidence: float) -> tuple[float, float]:
    if all(np.all(d == d[0]) for d in data):  # no spread: the interval is the point
        value = float(statistic(*data))  # type: ignore[operator]
        return value, value
    result = stats.bootstrap(data, statistic, paired=paired, vectorized=True,
                             n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence,
                             method="percentile", random_state=BOOTSTRAP_SEED)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_interval(values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE
                  ) -> Interval:
    """A mean over points of per-point values in [0, 1] (a group mean or union), with a
    percentile bootstrap interval over the points; 0/1 values get Wilson's instead."""
    outcomes = _outcomes(values)
    if np.isin(outcomes, (0.0, 1.0)).all():
        return wilson(outcomes.astype(bool), confidence=confidence)
    low, high = _bootstrap((outcomes,), lambda v, axis=-1: v.mean(axis=axis), paired=False,
                           confidence=confidence)
    return Interval(float(outcomes.mean()), low, high)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                      confidence: float = CONFIDENCE) -> Interval:
    """mean(a) - mean(b) for two models' per-point values on the same points, with a paired
    bootstrap interval (points resampled together)."""
    first, second = _outcomes(a), _outcomes(b)
    if first.shape != second.shape:
        raise ValueError(f"a paired difference needs the same points, got {first.size} and "
                         f"{second.size}")
    low, high = _bootstrap((first, second),
                           lambda u, v, axis=-1: u.mean(axis=axis) - v.mean(axis=axis),
                           paired=True, confidence=confidence)
    return Interval(float(first.mean() - second.mean()), low, high)


def mcnemar_p(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> float:
    """McNemar's exact test of two models' 0/1 outcomes on the same points: the two-sided
    binomial test of the points only one of them got right (1.0 when there are none)."""
    first, second = _outcomes(a).astype(bool), _outcomes(b).astype(bool)
    only_a, only_b = int((first & ~second).sum()), int((~first & second).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def seed_interval(values: Sequence[float], *, confidence: float = CONFIDENCE,
                  bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """The mean of per-seed values with a Student-t interval (the point itself for one seed),
    cut to `bounds` (an accuracy's is [0, 1])."""
    data = _outcomes(values)
    mean = float(data.mean())
    if data.size < 2:
        return Interval(mean, mean, mean)
    half = float(stats.t.ppf((1 + confidence) / 2, data.size - 1)) * float(
        data.std(ddof=1)) / math.sqrt(data.size)
    return Interval(mean, max(bounds[0], mean - half), min(bounds[1], mean + half))


def pooled_seed_variance(per_seed: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The seed-to-seed variance of a metric pooled over recipes (each recipe's values over
    its seeds, around its own mean), and its degrees of freedom: one-way ANOVA's within-group
    variance, on the assumption that retraining varies every recipe about as much."""
    squares, dof = 0.0, 0
    for values in per_seed:
        data = np.asarray(values, dtype=float)
        if data.size >= 2:
            squares += float(((data - data.mean()) ** 2).sum())
            dof += data.size - 1
    return (squares / dof if dof else 0.0), dof


def seeded_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *,
                      seed_variance: tuple[float, int], confidence: float = CONFIDENCE
                      ) -> Interval:
    """Recipe a minus recipe b, each trained with several seeds (one array of per-point values
    per seed, all on the same points). The estimate is the difference of the means; its
    interval widens the paired bootstrap over points (of the seed-averaged values) by the
    training randomness: a t interval on the pooled seed variance `(variance, dof)`, the two
    half-widths added in quadrature (independent sources)."""
    first, second = np.mean(a, axis=0), np.mean(b, axis=0)
    points = paired_difference(first, second, confidence=confidence)
    variance, dof = seed_variance
    if dof == 0 or variance == 0:
        return points
    spread = math.sqrt(variance / len(a) + variance / len(b))
    half = float(stats.t.ppf((1 + confidence) / 2, dof)) * spread
    return Interval(points.value,
                    points.value - math.hypot(points.value - points.low, half),
                    points.value + math.hypot(points.high - points.value, half))
