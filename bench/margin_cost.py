"""What the margin pass (masking.both_losses) costs in a final evaluation: one trial of a kept
search read back from its last checkpoint, its final evaluation on the test split (no
AutoAttack, no transfer group) with and without the pass, alternated, and each score.

    python bench/margin_cost.py RESULTS_FOLDER 1 --points 300 --repeats 2

RESULTS_FOLDER is a search's Ray results folder (`<keep>/ray_results/<name>`). One thread.
"""

from __future__ import annotations

import statistics
from typing import Any

from attack_convergence import (
    kept_trial_on_test_points,
    timed_final_evaluation,
    timed_final_header,
)

from trainables.scoring import final
from trainables.vocab import EvalLosses


def main() -> None:
    args, model, config, shared = kept_trial_on_test_points(__doc__.split("\n\n")[0])
    # what it measures is CE first (bench/eval_losses.py compares the two orders)
    config = config.replace(eval_losses=EvalLosses.CE_MARGIN)
    real = final.both_losses
    seconds: dict[str, list[float]] = {"CE alone": [], "CE and margin": []}
    scores: dict[str, dict[str, float]] = {}

    def without(model: Any, plain: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        return dict(plain)

    for _ in range(args.repeats):
        for label, margin in (("CE alone", without), ("CE and margin", real)):
            final.both_losses = margin  # type: ignore[assignment]
            took, metrics = timed_final_evaluation(model, shared, config)
            seconds[label].append(took)
            scores[label] = {k: metrics[f"test/{k}"] for k in (
                "heldout/family_mean_acc", "sealed/family_mean_acc", "sealed/union_acc")}
    final.both_losses = real
    base = statistics.median(seconds["CE alone"])
    print(timed_final_header(args))
    for label, values in seconds.items():
        print(f"  {label:<14} {statistics.median(values):7.1f} s (median of {len(values)}; "
              f"{statistics.median(values) / base:.2f}x)  "
              + "  ".join(f"{k} {v:.3f}" for k, v in scores[label].items()))


if __name__ == "__main__":
    main()
