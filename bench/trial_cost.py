"""Where a trial's and a final comparison's time goes, per phase and per attack, as seconds and
as ratios to the plain PGD-AT loop (bench/reference.py) timed in the same run.

    python bench/trial_cost.py                                # mid, 1 thread, 3 repeats
    python bench/trial_cost.py --space mnist5k --repeats 1 --final
    python bench/trial_cost.py --space mnist5k --repeats 1 --final --recipes standard,trades
    python bench/trial_cost.py --space smoke --repeats 1 --set budget.epochs=1

Each trial runs standalone (no Ray) on a warm cache (the teacher and transfer sets prepared
once first) with one torch thread: pool crafting, the training step (losses, meta step,
update), evaluation attacks (per attack, summed over the evaluations), masking checks, the
whole trial. `--final` adds the final evaluation of each trained model on the test split
(per attack, AutoAttack at several point counts with the interval each gives) and a cost
model of the final comparison: recipes x seeds tasks (train + evaluate) over the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from reference import plain_pgd_at

import spaces
from trainables.config import Fidelity, TrialConfig
from trainables.defense.baselines import BASELINES, baseline_config
from trainables.defense.models import DefendedModel
from trainables.scoring import final
from trainables.scoring.final import autoattack_points, autoattack_robust, final_evaluation
from trainables.scoring.stats import wilson
from trainables.setting.prepare import Shared, prepare_shared
from trainables.train import run_trial
from trainables.vocab import TIME_AUTOATTACK, TIME_FINAL, Split

PHASES = ("craft", "step", "eval_attacks", "masking")
# the final evaluation's parts, timed from outside (the evaluation logs per-attack times only)
FINAL_PARTS = {"evaluate_groups": "plain attacks (held-out + sealed, the first loss)",
               "both_losses": "second loss (non-Lp gradient attacks, unbroken points)",
               "transfer_masks": "transfer attacks",
               "_served": "output change (and, for a scores claim, adaptive query attacks)",
               "adaptive_and": "adaptive attacks (UniG models)"}


@contextlib.contextmanager
def _timed_parts(into: dict[str, float]) -> Iterator[None]:
    """Each of `final`'s FINAL_PARTS wrapped in a timer adding its seconds to `into`."""
    originals = {name: getattr(final, name) for name in FINAL_PARTS}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into[FINAL_PARTS[name]] += time.perf_counter() - start
        return run

    for name, fn in originals.items():
        setattr(final, name, timed(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(final, name, fn)


def _phases(config: TrialConfig, fidelity: Fidelity, shared: Shared, repeats: int
            ) -> tuple[dict[str, list[float]], DefendedModel]:
    found: dict[str, list[float]] = defaultdict(list)
    model = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run_trial(config, fidelity=fidelity, shared=shared, log=lambda _: None)
        wall = time.perf_counter() - start
        model = result.model
        found["total (wall)"].append(wall)
        for phase in PHASES:
            found[phase].append(result.metrics.get(f"time/{phase}_s", 0.0))
        # the per-attack times of every evaluation, summed over the evaluations
        per_attack: dict[str, float] = defaultdict(float)
        for report in result.history:
            for key, seconds in report.items():
                if key.startswith(("time/val/", "time/masking/")):
                    per_attack[key.removeprefix("time/").removesuffix("_s")] += seconds
        for key, seconds in per_attack.items():
            found[f"  {key}"].append(seconds)
        found["other (wall - phases)"].append(wall - sum(found[p][-1] for p in PHASES))
    assert model is not None
    return found, model


def _row(label: str, values: list[float], reference: float | None = None) -> str:
    ratio = f"  {statistics.median(values) / reference:6.2f}x" if reference else ""
    return (f"  {label:<46} {min(values):8.2f} {statistics.median(values):8.2f} "
            f"{max(values):8.2f}{ratio}")


def _final(model: DefendedModel, shared: Shared, config: TrialConfig,
           counts: list[int]) -> dict[str, float]:
    """The final evaluation's seconds per attack, and AutoAttack at each point count."""
    parts: dict[str, float] = defaultdict(float)
    with _timed_parts(parts):
        evaluation = final_evaluation(model, shared, config, log=lambda _: None)
    times = {k.removeprefix("time/").removesuffix("_s"): v
             for k, v in evaluation.metrics.items() if k.startswith("time/test/")}
    times.update(parts)
    times["AutoAttack (configured points)"] = evaluation.metrics.get(TIME_AUTOATTACK, 0.0)
    times["whole final evaluation"] = evaluation.metrics[TIME_FINAL]
    x, y = shared.points(Split.TEST, config)
    threat, classes = shared.setup.threat, shared.setup.info.num_classes
    for count in counts:
        part = autoattack_points(config.replace(autoattack_samples=count), len(y))
        start = time.perf_counter()
        found = autoattack_robust(model, x[part], y[part], threat, num_classes=classes,
                                  seed=config.seed, batch_size=config.eval_batch_size)
        if found is None:
            break
        interval = wilson(found[0].cpu().numpy())
        times[f"AutoAttack on {count} points (acc {interval.value:.3f} +-"
              f"{(interval.high - interval.low) / 2:.3f})"] = time.perf_counter() - start
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--space", default="mid")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--final", action="store_true", help="also the final evaluation's cost")
    p.add_argument("--aa-points", default="100,250,500",
                   help="point counts AutoAttack is timed on (with --final)")
    p.add_argument("--cores", type=int, default=2, help="cores the final comparison runs on")
    p.add_argument("--recipes", default="default recipe,pgd-at",
                   help="'default recipe' and/or baselines in the space's setting, "
                   "comma-separated")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="space override, e.g. budget.epochs=2 (repeatable)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    space = spaces.load(args.space, args.overrides)
    default = space.trial_config(threads=args.threads)
    labels = args.recipes.split(",")
    unknown = [x for x in labels if x != "default recipe" and x not in BASELINES]
    if unknown:  # before the minutes prepare_shared may take
        p.error(f"--recipes {','.join(unknown)}: not 'default recipe' nor a baseline "
                f"({', '.join(BASELINES)})")
    shared = prepare_shared(default, pool_candidates=space.pool.candidates, log=lambda _: None)
    pgd_at = baseline_config(default, "pgd-at")
    recipes = {x: default if x == "default recipe" else
               space.baseline_record(x, threads=args.threads).config for x in labels}
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, space {space.name} "
          f"({args.overrides or 'as shipped'}), {args.threads} thread(s), {args.repeats} "
          "repeat(s); seconds min / median / max, and the median over the reference")
    reference = [plain_pgd_at(pgd_at, shared) for _ in range(args.repeats)]
    base = statistics.median(reference)
    print(_row("reference: plain PGD-AT loop (training only)", reference, base))
    trained: dict[str, tuple[float, DefendedModel]] = {}
    for label, config in recipes.items():
        print(f"\n{label}: pool {'+'.join(config.pool)}, {config.epochs} epochs, batch "
              f"{config.batch_size}, evaluation every {config.eval_every}")
        found, model = _phases(config, space.fidelity, shared, args.repeats)
        for phase, values in found.items():
            print(_row(phase, values, base if phase == "total (wall)" else None))
        trained[label] = statistics.median(found["total (wall)"]), model
    if args.final:
        _final_report(space, shared, recipes, trained, args, base)


def _final_report(space: spaces.Space, shared: Shared, recipes: dict[str, TrialConfig],
                  trained: dict[str, tuple[float, DefendedModel]], args: argparse.Namespace,
                  base: float) -> None:
    counts = [int(c) for c in args.aa_points.split(",") if c]
    evaluations = []
    for label, config in recipes.items():
        times = _final(trained[label][1], shared, config.replace(masking_samples=0), counts)
        print(f"\nfinal evaluation of the {label} (test split, strength 2)")
        for key, seconds in times.items():
            print(f"  {key:<62} {seconds:8.2f}")
        evaluations.append(times["whole final evaluation"])
    tasks = (len(space.baselines) + 1) * 3  # the best recipe and each baseline, 3 seeds
    train = statistics.mean(t for t, _ in trained.values())
    evaluate = statistics.mean(evaluations)
    retrained = tasks - (len(space.baselines) + 1)  # seed 0's models come from the search
    total = (retrained * train + tasks * evaluate) / args.cores
    print(f"\nfinal comparison cost model: {tasks} tasks ({len(space.baselines)} baselines + "
          f"the best recipe, 3 seeds), {retrained} retrained at ~{train:.0f}s and {tasks} "
          f"evaluated at ~{evaluate:.0f}s, over {args.cores} cores: ~{total / 60:.1f} min "
          f"({total / base:.1f}x the reference loop)")


if __name__ == "__main__":
    main()
