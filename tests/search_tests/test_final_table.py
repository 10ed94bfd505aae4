"""The final comparison's table (search/final.py, FinalReport): which family a verdict rests on.

A group's mean hides where it is won or lost: on mnist5k the searched recipe's sealed mean was
level with PGD-AT's while it lost 15 points on one of the four sealed families (docs/results.md,
"Where the sealed mean is lost"). The table has per-family rows and paired differences, from
per-point values the evaluation keeps.
"""

from __future__ import annotations

import numpy as np
import pytest

import spaces
from search.final import Candidate, FinalReport, _differences, family_columns
from trainables.scoring.final import Evaluation

POINTS = 400
SEALED = ("test/sealed/Fog/acc", "test/sealed/Blur/acc")
HELDOUT = ("test/heldout/Elastic/acc",)


def _candidate(label: str, accuracy: dict[str, float], *, baseline: bool) -> Candidate:
    space = spaces.load("smoke")
    record = (space.baseline_record(label) if baseline
              else space.record(space.default_values()))
    candidate = Candidate(label, record, None, baseline)
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        points = {key: (rng.random(POINTS) < value).astype(np.float32)
                  for key, value in accuracy.items()}
        sealed = np.mean([points[k] for k in SEALED], axis=0)
        points["test/sealed/mean_acc"] = sealed
        metrics = {key: float(values.mean()) for key, values in points.items()}
        candidate.evaluations[seed] = Evaluation(metrics, points)
    return candidate


def test_the_table_says_which_family_the_sealed_mean_is_lost_on() -> None:
    # the same sealed mean, made of a gain on Fog and a loss on Blur (the same random points,
    # so the per-family differences are exact)
    best = _candidate("t01", {HELDOUT[0]: 0.5, SEALED[0]: 0.9, SEALED[1]: 0.2}, baseline=False)
    pgd = _candidate("pgd-at", {HELDOUT[0]: 0.3, SEALED[0]: 0.6, SEALED[1]: 0.5},
                     baseline=True)
    assert family_columns([best, pgd]) == [("held-out Elastic", HELDOUT[0]),
                                           ("sealed Fog", SEALED[0]),
                                           ("sealed Blur", SEALED[1])]
    differences = _differences([best, pgd])
    report = FinalReport([best, pgd], [0, 1], differences)
    blur, fog = differences["pgd-at"][SEALED[1]], differences["pgd-at"][SEALED[0]]
    assert blur.high < 0 < fog.low  # both significant, in opposite directions
    assert differences["pgd-at"]["test/sealed/mean_acc"].value == pytest.approx(
        (fog.value + blur.value) / 2)
    table = report.markdown()
    assert "Per family (test split" in table and "Per family, t01 minus each baseline" in table
    row = next(line for line in table.splitlines()[::-1] if line.startswith("| pgd-at |"))
    assert row.count("[") == 3 and f"{blur.value:+.3f}" in row
    # the parent run's metrics carry the per-family differences too
    assert f"final/delta/pgd-at/{SEALED[1]}" in report.parent_metrics()


def test_an_evaluation_without_family_points_leaves_the_table_as_it_was() -> None:
    # kept answers of older code hold no per-family points: no per-family table, no error
    best = _candidate("t01", {SEALED[0]: 0.9, SEALED[1]: 0.2}, baseline=False)
    pgd = _candidate("pgd-at", {SEALED[0]: 0.6, SEALED[1]: 0.5}, baseline=True)
    for candidate in (best, pgd):
        for evaluation in candidate.evaluations.values():
            for key in SEALED:
                del evaluation.points[key]
    report = FinalReport([best, pgd], [0, 1], _differences([best, pgd]))
    assert family_columns([best, pgd]) == [] and "Per family" not in report.markdown()
