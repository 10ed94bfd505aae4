"""Where a trial's time goes: per phase, for the space's default recipe and for PGD-AT.

    python bench/trial_cost.py                       # mid, 1 thread, 3 repeats
    python bench/trial_cost.py --space smoke --repeats 1

Each trial runs standalone (no Ray) on a warm cache (the teacher and transfer sets prepared
once first) with one torch thread, and prints min / median / max seconds over the repeats of:
pool crafting, the training step (losses, meta step, update), evaluation attacks (per attack,
summed over the evaluations), masking checks, and the whole trial.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

import spaces
from trainables.config import Fidelity, TrialConfig
from trainables.defense.baselines import baseline_config
from trainables.setting.prepare import prepare_shared
from trainables.train import run_trial


def _phases(config: TrialConfig, fidelity: Fidelity, shared: object, repeats: int
            ) -> dict[str, list[float]]:
    found: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        start = time.perf_counter()
        result = run_trial(config, fidelity=fidelity, shared=shared,  # type: ignore[arg-type]
                           log=lambda _: None)
        wall = time.perf_counter() - start
        found["total (wall)"].append(wall)
        totals = {k: v for k, v in result.metrics.items() if k.startswith("time/")
                  and k.endswith("_s") and k.count("/") == 1 and k != "time/total_s"
                  and k != "time/elapsed_s"}
        for key, seconds in totals.items():
            found[key.removeprefix("time/").removesuffix("_s")].append(seconds)
        # the per-attack times of every evaluation, summed over the evaluations
        per_attack: dict[str, float] = defaultdict(float)
        for report in result.history:
            for key, seconds in report.items():
                if key.startswith(("time/val/", "time/masking/")):
                    per_attack[key.removeprefix("time/").removesuffix("_s")] += seconds
        for key, seconds in per_attack.items():
            found[f"  {key}"].append(seconds)
        found["other (wall - phases)"].append(
            wall - sum(totals.get(f"time/{p}_s", 0.0)
                       for p in ("craft", "step", "eval_attacks", "masking")))
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="mid")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="space override, e.g. budget.rung_samples=128 (repeatable)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    space = spaces.load(args.space, args.overrides)
    default = space.trial_config(threads=args.threads)
    shared = prepare_shared(default, pool_candidates=space.pool.candidates, log=lambda _: None)
    recipes = {"default recipe": default, "pgd-at": baseline_config(default, "pgd-at")}
    print(f"space {space.name} ({args.overrides or 'as shipped'}), {args.threads} thread(s), "
          f"{args.repeats} repeat(s); seconds min / median / max")
    for label, config in recipes.items():
        print(f"\n{label}: pool {'+'.join(config.pool)}, {config.epochs} epochs, batch "
              f"{config.batch_size}, evaluation every {config.eval_every}")
        for phase, values in _phases(config, space.fidelity, shared, args.repeats).items():
            print(f"  {phase:<44} {min(values):7.2f} {statistics.median(values):7.2f} "
                  f"{max(values):7.2f}")


if __name__ == "__main__":
    main()
