"""The UniG paper's claim on our data: UniG vs PGD-AT vs standard training under a query
attacker with a budget (Square, 2,500 queries per point), with and without the adaptive query
attacks, over seeds, with paired intervals.

    python bench/query_table.py                       # mid-query's setting, seeds 0 1 2
    python bench/query_table.py --points 50 --queries 2500 --seeds 0 1 2

Per seed: standard training and PGD-AT are trained with the space's budget (no validation);
UniG is the paper's plug-in, put on the seed's standard model (the base stays frozen). Each
model is attacked on the first `points` test points by Square@q<queries> as a batch attacker
asks (plain), then adaptively at the same budget: each query the mean of 5 (EOT), each point
asked alone, and both; "adaptive" is the per-point AND of the plain and adaptive results. A
model whose answers are the same on repeated queries and alone as in a batch (checked on the
points first) gives the adaptive attacker nothing: its adaptive numbers are its plain ones,
and the run says so instead of spending the queries. The AND gives UniG four draws of the
attack, so every model is also attacked `--restarts` times with fresh randomness ("plain
restarts", AND-ed), and "worst" is the AND of everything run on a model. Differences are UniG
minus each other recipe on the same points, with the final comparison's interval (the paired
bootstrap over points widened by the seed-to-seed spread).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import spaces
from trainables.attacks import build_attack
from trainables.attacks.query import Adaptive
from trainables.defense.baselines import baseline_config
from trainables.defense.models import DefendedModel
from trainables.defense.unig import UniG
from trainables.scoring.evaluate import clean_correct, robust_mask
from trainables.scoring.masking import CheckContext, batch_dependent_output, is_randomized
from trainables.scoring.served import ADAPTIVE_ASKING, output_change
from trainables.scoring.stats import pooled_seed_variance, seed_interval, seeded_difference
from trainables.setting.prepare import prepare_shared
from trainables.train import run_trial
from trainables.vocab import Group, Split, Stat, group_metric

RESTARTS = "plain restarts"


def _attack(model: torch.nn.Module, name: str, x: torch.Tensor, y: torch.Tensor,
            adaptive: Adaptive | None, threat: object, seed: int, restart: int = 0
            ) -> torch.Tensor:
    correct = clean_correct(model, x, y, 256)
    # Square seeds its own generator from `seed`: a restart needs another one to draw anew.
    # Restart 0 keeps the seed and stream the table was first measured with.
    attack = build_attack(name, model, threat, num_classes=10,  # type: ignore[arg-type]
                          seed=seed + 7919 * restart, adaptive=adaptive)
    suffix = f"/restart{restart}" if restart else ""
    return robust_mask(model, attack, x, y, correct, batch_size=256, seed=seed,
                       stream=f"{name}/{adaptive.name if adaptive else 'plain'}{suffix}")


def evaluate(model: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor,
             y: torch.Tensor, args: argparse.Namespace, threat: object, seed: int,
             log: Callable[[str], None]) -> dict[str, np.ndarray]:
    name = f"Square@q{args.queries}"
    start = time.perf_counter()
    out = {"clean": clean_correct(model, x, y, 256).float().numpy()}
    cost = output_change(model, teacher, x, split=Split.TEST, batch_size=256)[1]
    out["output change"] = cost[group_metric(Split.TEST, Group.OUTPUT, Stat.PROB_CHANGE)]
    plain = _attack(model, name, x, y, None, threat, seed)
    out["plain"] = plain.float().numpy()
    restarted = plain.clone()
    for restart in range(1, args.restarts):
        restarted &= _attack(model, name, x, y, None, threat, seed, restart)
    out[RESTARTS] = restarted.float().numpy()
    context = CheckContext(model, x, y, threat, 10)  # type: ignore[arg-type]
    batch_dependent = batch_dependent_output(context)[0] or context.batch_dependent
    randomized = is_randomized(model, x)
    adaptive = plain.clone()
    for asking in ADAPTIVE_ASKING:
        if not (randomized or batch_dependent):
            break  # the same answers however asked: nothing to adapt to
        mask = _attack(model, name, x, y, asking, threat, seed)
        out[asking.name] = mask.float().numpy()
        adaptive &= mask
    out["adaptive"] = adaptive.float().numpy()
    out["worst"] = (adaptive & restarted).float().numpy()
    log(f"    randomized={randomized} batch-dependent={batch_dependent}: " + ", ".join(
        f"{k} {v.mean():.3f}" for k, v in out.items()) + f"  ({time.perf_counter() - start:.0f}s)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--space", default="mid-query")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--queries", type=int, default=2500)
    p.add_argument("--restarts", type=int, default=4,
                   help="plain runs per model, AND-ed: the adaptive AND asks UniG 4 times, so "
                        "every model gets as many draws of the attack")
    p.add_argument("--unig", default="per_sample")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", default=None, help="keep the per-point outcomes here (.npz)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    space = spaces.load(args.space)
    base = space.trial_config(threads=args.threads, masking_samples=0)
    shared = prepare_shared(base, log=lambda _: None)
    threat = shared.setup.threat
    teacher = DefendedModel(shared.teacher.encoder, shared.teacher.head).eval()
    x, y = shared.split(Split.TEST)
    x, y = x[:args.points], y[:args.points]
    results: dict[str, list[dict[str, np.ndarray]]] = {}
    for seed in args.seeds:
        models = {}
        for recipe in ("standard", "pgd-at"):
            started = time.perf_counter()
            config = baseline_config(base, recipe).replace(seed=seed)
            models[recipe] = run_trial(config, shared=shared, log=lambda _: None,
                                       validation=False).model.eval()
            print(f"seed {seed}: trained {recipe} in {time.perf_counter() - started:.0f}s",
                  flush=True)
        standard = models["standard"]
        models[f"unig-{args.unig}"] = DefendedModel(standard.encoder, standard.head,
                                                    UniG(args.unig)).eval()
        for label, model in models.items():
            torch.manual_seed(seed)
            print(f"seed {seed}: {label}", flush=True)
            results.setdefault(label, []).append(
                evaluate(model, teacher, x, y, args, threat, seed, print))
    if args.save:
        arrays: dict[str, Any] = {f"{label}|{seed}|{column}": values
                                  for label, per_seed in results.items()
                                  for seed, result in zip(args.seeds, per_seed, strict=True)
                                  for column, values in result.items()}
        np.savez(args.save, **arrays)
    report(results, args)


def report(results: dict[str, list[dict[str, np.ndarray]]], args: argparse.Namespace) -> None:
    columns = ["clean", "plain", RESTARTS, "eot5", "single", "eot5+single", "adaptive", "worst",
               "output change"]
    print(f"\nSquare@q{args.queries} (Linf), first {args.points} test points, seeds "
          f"{args.seeds}: mean over seeds [95% t interval]\n")
    print("| recipe | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for label, per_seed in results.items():
        cells = []
        for column in columns:
            values = [float(r[column].mean()) for r in per_seed if column in r]
            cells.append(str(seed_interval(values, bounds=(0, 1))) if values else "= plain")
        print(f"| {label} | " + " | ".join(cells) + " |")
    unig = f"unig-{args.unig}"
    print(f"\nPaired difference, {unig} minus each recipe on the same points (95% interval: "
          "the paired bootstrap over points widened by the seed-to-seed spread, as the final "
          "comparison's)\n")
    paired = ("clean", "plain", RESTARTS, "adaptive", "worst")
    spread = {c: pooled_seed_variance([[float(r[c].mean()) for r in per_seed]
                                       for per_seed in results.values()]) for c in paired}
    print("| versus | " + " | ".join(paired) + " |\n|---|" + "---|" * len(paired))
    for label in results:
        if label == unig:
            continue
        cells = [str(seeded_difference([r[c] for r in results[unig]],
                                       [r[c] for r in results[label]],
                                       seed_variance=spread[c]))
                 for c in paired]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
