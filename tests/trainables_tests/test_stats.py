"""The interval functions on cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainables.scoring.stats import (
    mcnemar_p,
    mean_interval,
    paired_difference,
    seed_interval,
    wilson,
)


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_matches_the_formula_and_a_published_value() -> None:
    interval = wilson([True] * 8 + [False] * 2)
    assert interval.value == 0.8
    assert (interval.low, interval.high) == pytest.approx(_wilson_by_hand(8, 10), abs=1e-9)
    assert (interval.low, interval.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    everything = wilson([True] * 20)  # no 0-width interval at 100%
    assert everything.value == everything.high == 1.0
    assert everything.low == pytest.approx(_wilson_by_hand(20, 20)[0])
    assert everything.low < 1


def test_wilson_width_shrinks_like_one_over_root_n() -> None:
    small, large = wilson([1, 0] * 50), wilson([1, 0] * 800)
    assert (small.high - small.low) / (large.high - large.low) == pytest.approx(4, rel=0.05)


def test_mean_interval_of_0_1_values_is_wilson_and_of_fractions_a_bootstrap() -> None:
    assert mean_interval([1, 1, 0, 1]) == wilson([True, True, False, True])
    fractions = np.array([0.0, 0.5, 1.0, 0.5] * 25)  # e.g. a per-point mean over 2 attacks
    interval = mean_interval(fractions)
    assert interval.value == pytest.approx(0.5)
    assert interval.low < 0.5 < interval.high
    # the bootstrap's spread is the standard error's: sd 0.354 / sqrt(100) = 0.035
    assert (interval.high - interval.low) / 2 == pytest.approx(1.96 * 0.0354, rel=0.2)
    assert mean_interval(fractions) == interval  # seeded: a report is repeatable


def test_paired_difference_on_hand_made_masks() -> None:
    a = np.array([1, 1, 1, 0, 1, 1, 0, 1] * 20, dtype=float)
    b = np.array([1, 0, 0, 0, 1, 1, 0, 1] * 20, dtype=float)  # a wins on 2 of every 8 points
    diff = paired_difference(a, b)
    assert diff.value == pytest.approx(0.25)
    assert diff.low > 0 and diff.excludes_zero
    assert paired_difference(b, a).value == pytest.approx(-0.25)
    same = paired_difference(a, a)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same points"):
        paired_difference(a, b[:-1])


def test_pairing_makes_a_small_consistent_gain_significant() -> None:
    """The same 3-point gain is invisible to two independent intervals, clear when paired."""
    rng = np.random.default_rng(0)
    b = (rng.random(1000) < 0.5).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:30]] = 1  # a fixes 30 of b's errors and breaks none
    assert wilson(a).low < wilson(b).high  # the unpaired intervals overlap
    assert paired_difference(a, b).low > 0


def test_mcnemar_counts_only_the_discordant_points() -> None:
    a = [1, 1, 1, 0, 1]
    b = [1, 0, 0, 0, 1]  # 2 points only a got right, none only b
    assert mcnemar_p(a, b) == pytest.approx(0.5)  # two-sided binomial(2, 2, 0.5)
    assert mcnemar_p(a, a) == 1.0
    a = [1] * 10 + [0] * 10
    b = [0] * 10 + [0] * 10
    assert mcnemar_p(a, b) == pytest.approx(2 * 0.5**10)


def test_seed_interval_is_a_t_interval() -> None:
    interval = seed_interval([0.40, 0.42, 0.44])
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert interval.value == pytest.approx(0.42)
    assert (interval.low, interval.high) == pytest.approx((0.42 - half, 0.42 + half))
    one = seed_interval([0.5])
    assert one.low == one.high == 0.5


def test_seeded_difference_adds_the_seed_spread_to_the_point_sampling() -> None:
    from trainables.scoring.stats import pooled_seed_variance, seeded_difference

    rng = np.random.default_rng(0)
    base = rng.random(500) < 0.6
    same = [base.astype(float)] * 3  # three seeds that agree exactly: points only
    other = [(rng.random(500) < 0.5).astype(float)] * 3
    spread = pooled_seed_variance([[p.mean() for p in same], [p.mean() for p in other]])
    assert spread == (0.0, 4)
    assert seeded_difference(same, other, seed_variance=spread) == paired_difference(
        np.mean(same, axis=0), np.mean(other, axis=0))
    # seeds that disagree: the same estimate, a wider interval
    noisy = [(rng.random(500) < p).astype(float) for p in (0.55, 0.62, 0.68)]
    spread = pooled_seed_variance([[p.mean() for p in noisy], [p.mean() for p in other]])
    wide = seeded_difference(noisy, other, seed_variance=spread)
    narrow = paired_difference(np.mean(noisy, axis=0), np.mean(other, axis=0))
    assert wide.value == pytest.approx(narrow.value)
    assert wide.low < narrow.low and wide.high > narrow.high


def test_seeded_difference_covers_the_truth_when_training_is_random() -> None:
    """Two recipes equally good on average, each seed a random shift of a recipe's accuracy:
    a point-only interval calls a difference far more often than 5% of the time, the seeded
    one about 5%."""
    from trainables.scoring.stats import pooled_seed_variance, seeded_difference

    rng = np.random.default_rng(1)
    point_only = seeded = 0
    trials = 200
    for _ in range(trials):
        recipes = [[(rng.random(400) < 0.6 + rng.normal(0, 0.03)).astype(float)
                    for _ in range(3)] for _ in range(4)]
        spread = pooled_seed_variance([[p.mean() for p in r] for r in recipes])
        a, b = recipes[0], recipes[1]
        point_only += paired_difference(np.mean(a, axis=0), np.mean(b, axis=0)).excludes_zero
        seeded += seeded_difference(a, b, seed_variance=spread).excludes_zero
    assert point_only / trials > 0.12  # measured 0.19: 4x the nominal 5%
    assert seeded / trials < 0.10
