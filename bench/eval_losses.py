"""Which order of the two losses should the evaluations' non-Lp gradient attacks run in?

    python bench/eval_losses.py                          # mnist5k's pgd-at, 1 thread
    python bench/eval_losses.py --recipe default         # the space's default recipe
    python bench/eval_losses.py --space smoke --points 64    # seconds: the test's size

A model of the space (its `pgd-at` baseline, or `--recipe default`: the space's default
recipe; trained here without masking checks) gets the final evaluation without AutoAttack
(held-out and sealed attacks at the final's strength, on the test split) once per
`eval_losses` order, alternating: `ce-margin` (CE, then the margin loss at the same
iterations on what CE left) and `margin-ce` (the margin loss, then CE at half the
iterations). Printed: the seconds of each with its ratio to the plain PGD-AT loop of the same
data and epochs timed in the same run (bench/reference.py), and every held-out and sealed
score with its change.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from reference import plain_pgd_at

import spaces
from trainables.defense.baselines import baseline_config
from trainables.scoring.final import final_evaluation
from trainables.setting.prepare import prepare_shared
from trainables.train import run_trial
from trainables.vocab import EvalLosses, Group, Split, Stat, group_metric


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--space", default="mnist5k")
    p.add_argument("--recipe", default="pgd-at", help="a baseline of the space, or default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", type=int, default=0, help="test points (0: the space's)")
    p.add_argument("--rounds", type=int, default=1, help="evaluations per order")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    space = spaces.load(args.space, [])
    default = space.trial_config(threads=args.threads)
    recipe = default if args.recipe == "default" else baseline_config(default, args.recipe)
    config = recipe.replace(masking_samples=0, seed=args.seed,
                            **({"test_samples": args.points} if args.points else {}))
    shared = prepare_shared(config, pool_candidates=space.pool.candidates, log=lambda _: None)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, space {space.name}, recipe {args.recipe}, seed "
          f"{args.seed}, {args.threads} thread(s)")
    reference = plain_pgd_at(config, shared)
    print(f"  reference: plain PGD-AT loop ({config.epochs} epochs)  {reference:8.2f} s")
    start = time.perf_counter()
    model = run_trial(config, fidelity=space.fidelity, shared=shared, log=lambda _: None).model
    print(f"  {args.recipe} trained here                 {time.perf_counter() - start:8.2f} s",
          flush=True)
    seconds: dict[str, list[float]] = {losses: [] for losses in EvalLosses}
    metrics: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for losses in EvalLosses:
            start = time.perf_counter()
            metrics[losses] = final_evaluation(
                model, shared, config.replace(eval_losses=losses), autoattack=False,
                log=lambda _: None).metrics
            seconds[losses].append(time.perf_counter() - start)
    _report(seconds, metrics, reference)


def _report(seconds: dict[str, list[float]],
            metrics: dict[str, dict[str, float]], reference: float) -> None:
    first, second = EvalLosses
    a, b = (statistics.median(seconds[o]) for o in EvalLosses)
    print(f"\nfinal evaluation without AutoAttack, median of {len(seconds[first])} (s)")
    print(f"  {first} {a:8.1f} ({a / reference:.2f}x the reference)  {second} {b:8.1f} "
          f"({b / reference:.2f}x); {first} / {second} {a / b:5.2f}x")
    keys = [group_metric(Split.TEST, g, s) for g in (Group.HELDOUT, Group.SEALED)
            for s in (Stat.FAMILY_MEAN, Stat.UNION)]
    families = [k for k in metrics[first] if k.endswith(f"/{Stat.ACC}") and any(
        k.startswith(f"{Split.TEST}/{g}/") for g in (Group.HELDOUT, Group.SEALED))
        and "." not in k.split("/")[2]]  # families, and attacks without a level (Pixle)
    keys += sorted(families)
    print(f"  test scores ({first} -> {second}, points):")
    for key in keys:
        x, y = metrics[first][key], metrics[second][key]
        print(f"    {key:<40} {x:.4f} -> {y:.4f}  {100 * (y - x):+.2f}")


if __name__ == "__main__":
    main()
