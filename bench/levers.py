"""What each recipe lever buys on the validation split (never the sealed attacks).

    python bench/levers.py                          # mid, seeds 0 1, 2 workers
    python bench/levers.py --only pgd-at multi-at --seeds 0 1 2
    python bench/levers.py --space mnist5k --out bench/results/levers-mnist5k.md
    python bench/levers.py --space mnist5k --merge bench/results/levers-mnist5k.json \
        bench/results/levers-mnist5k-round[2-6].json --out bench/results/levers-mnist5k-all.json

Each lever is a recipe written as one of the space's baselines (or its defaults) plus changed
values, trained standalone (no Ray, 1 thread per worker) on every validation point, once per
seed. The table gives, per lever: the space's objective and the held-out union and clean
accuracy as mean over seeds [min, max], the masking flags raised, and the paired difference
with the reference lever on the same validation points (per-point values averaged over seeds,
95% paired bootstrap interval). Choosing levers by these numbers keeps the sealed set sealed.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import spaces
from trainables.scoring.stats import Interval, paired_difference
from trainables.vocab import (
    CLEAN_ACC,
    SCORING_VERSION,
    THREAT_PGD10,
    EvalLosses,
    Group,
    Split,
    group_metric,
)

UNION = group_metric(Split.VAL, Group.HELDOUT, "union_acc")
# with --autoattack N: the official AutoAttack on the first N validation points (the real thing)
VAL_AA = group_metric(Split.VAL, Group.AUTOATTACK, "acc")


@dataclass(frozen=True)
class Lever:
    name: str
    start: str  # a baseline's name, or "defaults" (the space's default recipe)
    values: Mapping[str, Any] = field(default_factory=dict)  # `pool` as a list of attacks


LP = ["FGSM", "PGD", "MIFGSM", "TPGD", "PGDL2"]
PERCEPTUAL, SPATIAL_RAND, CONTRAST_RAND = ("Perceptual@medium", "Spatial-Rand@medium",
                                           "Contrast-Rand@medium")
# mnist5k: the levers the unforeseen-robustness literature finds strongest (issue 15), each
# against the tuned baselines, with the space's training hygiene
LEVERS_MNIST5K = (
    Lever("standard", "standard"),
    Lever("pgd-at", "pgd-at"),
    Lever("pgd-l2-at", "pgd-l2-at"),
    Lever("pgd-l2-at, L2 eps x1.5", "pgd-l2-at", {"train_eps_scale_l2": 1.5}),
    Lever("pgd-l2-at, L2 eps x2", "pgd-l2-at", {"train_eps_scale_l2": 2.0}),
    Lever("trades", "trades"),
    Lever("multi-at (Linf pool worst)", "multi-at"),
    Lever("PGD+PGDL2 worst", "multi-at", {"pool": ["PGD", "PGDL2"]}),
    Lever("PGD+PGDL2 worst, L2 eps x1.5", "multi-at",
          {"pool": ["PGD", "PGDL2"], "train_eps_scale_l2": 1.5}),
    Lever("PGD+Perceptual worst", "multi-at", {"pool": ["PGD", PERCEPTUAL]}),
    Lever("PGD+random Spatial+Contrast worst", "multi-at",
          {"pool": ["PGD", SPATIAL_RAND, CONTRAST_RAND]}),
    Lever("pgd-at + EMA 0.99", "pgd-at", {"ema": 0.99}),
    Lever("pgd-at + AdamW weight decay 5e-4", "pgd-at",
          {"optimizer": "adamw", "weight_decay": 0.0005}),
    Lever("pgd-at + early stopping", "pgd-at", {"early_stopping": True}),
    Lever("pgd-at + cosine schedule", "pgd-at", {"lr_schedule": "cosine"}),
    Lever("pgd-at + label smoothing 0.1", "pgd-at", {"label_smoothing": 0.1}),
    Lever("pgd-at + variation regularisation 1", "pgd-at", {"w_vr": 1.0}),
    Lever("pgd-at, student from teacher", "pgd-at", {"student_init": "teacher"}),
    Lever("PGD+PGDL2 worst, teacher + distillation 0.5", "multi-at",
          {"pool": ["PGD", "PGDL2"], "student_init": "teacher", "w_feat": 0.5}),
    # the second round: the first round's best baseline (TRADES) with the levers on top
    Lever("trades 3", "trades", {"w_trades": 3.0}),
    Lever("trades, student from teacher", "trades", {"student_init": "teacher"}),
    Lever("trades, teacher + distillation 0.5", "trades",
          {"student_init": "teacher", "w_feat": 0.5}),
    Lever("trades, TPGD+PGDL2 worst", "trades",
          {"pool": ["TPGD", "PGDL2"], "pool_combine": "worst"}),
    Lever("trades + random Spatial+Contrast", "trades",
          {"pool": ["TPGD", SPATIAL_RAND, CONTRAST_RAND]}),
    Lever("PGD+random Spatial+Contrast worst, teacher + distillation 0.5", "multi-at",
          {"pool": ["PGD", SPATIAL_RAND, CONTRAST_RAND], "student_init": "teacher",
           "w_feat": 0.5}),
    Lever("trades + random Spatial+Contrast, teacher + distillation 0.5", "trades",
          {"pool": ["TPGD", SPATIAL_RAND, CONTRAST_RAND], "student_init": "teacher",
           "w_feat": 0.5}),
    # the third round: the second round's two best together
    Lever("trades 3 + random Spatial+Contrast", "trades",
          {"pool": ["TPGD", SPATIAL_RAND, CONTRAST_RAND], "w_trades": 3.0}),
    # the fourth round: its Linf robustness back (the final table's AutoAttack fell 27 points)
    Lever("trades 3 + random Spatial+Contrast worst", "trades",
          {"pool": ["TPGD", SPATIAL_RAND, CONTRAST_RAND], "w_trades": 3.0,
           "pool_combine": "worst"}),
    Lever("trades 3 + random Spatial+Contrast + adversarial CE 1", "trades",
          {"pool": ["TPGD", SPATIAL_RAND, CONTRAST_RAND], "w_trades": 3.0, "w_ce": 1.0}),
    Lever("trades 3 + random Spatial+Contrast, Linf eps x1.25", "trades",
          {"pool": ["TPGD", SPATIAL_RAND, CONTRAST_RAND], "w_trades": 3.0,
           "train_eps_scale": 1.25}),
    # the fifth round: more of the KL on Linf examples, or one corruption instead of two
    Lever("trades 3 + TPGD+PGD + random Spatial+Contrast", "trades",
          {"pool": ["TPGD", "PGD", SPATIAL_RAND, CONTRAST_RAND], "w_trades": 3.0}),
    Lever("trades 3 + random Contrast", "trades",
          {"pool": ["TPGD", CONTRAST_RAND], "w_trades": 3.0}),
    Lever("trades 3 + random Spatial", "trades",
          {"pool": ["TPGD", SPATIAL_RAND], "w_trades": 3.0}),
    # the sixth round, judged by AutoAttack on validation (--autoattack; Contrast-Rand@low
    # added to the candidates by --set, see the README): random Contrast at the low level
    # (contrast x[0.67, 1.5], brightness +-0.2) instead of medium (x[0.45, 2.2], +-0.4, more
    # than the Linf eps of 0.3), which cost 27 AutoAttack points on the test split
    Lever("trades 3 + random Spatial + random Contrast@low", "trades",
          {"pool": ["TPGD", SPATIAL_RAND, "Contrast-Rand@low"], "w_trades": 3.0}),
    # the eighth round, at the wide width (--set fixed.arch=wide_cnn): PGD-AT at half the lr
    # (at the space's lr its seed 1 fell to clean 0.876 in round 7), the reference there
    Lever("pgd-at, lr 5e-4", "pgd-at", {"lr": 0.0005}),
    # the ninth round: the cold search's t10 (the default + the optimised Contrast: sealed
    # +8.3, AutoAttack -20 on the test split) with its Linf robustness back, judged by
    # AutoAttack on validation: PGD beside TPGD (the Linf share of the pool back to half),
    # or the KL term at twice the weight
    Lever("trades 3 + random Spatial + Contrast", "trades",
          {"pool": ["TPGD", "Contrast@medium", SPATIAL_RAND], "w_trades": 3.0}),
    Lever("trades 3 + TPGD+PGD + random Spatial + Contrast", "trades",
          {"pool": ["TPGD", "PGD", "Contrast@medium", SPATIAL_RAND], "w_trades": 3.0}),
    Lever("trades 6 + random Spatial + Contrast", "trades",
          {"pool": ["TPGD", "Contrast@medium", SPATIAL_RAND], "w_trades": 6.0}),
    # the tenth round: the baselines' own budgets again under the current scoring (the margin
    # pass), each against its paper value (the table's "Δ vs its baseline")
    Lever("pgd-at, Linf eps x1.25", "pgd-at", {"train_eps_scale": 1.25}),
)
LEVERS = (
    Lever("standard", "standard"),
    Lever("pgd-at", "pgd-at"),
    Lever("trades", "trades"),
    Lever("multi-at", "multi-at"),
    Lever("pgd-at, eps x1.25", "pgd-at", {"train_eps_scale": 1.25}),
    Lever("pgd-at, eps x1.5", "pgd-at", {"train_eps_scale": 1.5}),
    Lever("PGD+PGDL2 worst", "multi-at", {"pool": ["PGD", "PGDL2"]}),
    Lever("PGD+PGDL2 each", "multi-at", {"pool": ["PGD", "PGDL2"], "pool_combine": "each"}),
    Lever("Lp pool worst", "multi-at", {"pool": LP}),
    Lever("PGD+PGDL2+Spatial+Contrast worst", "multi-at",
          {"pool": ["PGD", "PGDL2", "Spatial@medium", "Contrast@medium"]}),
    Lever("multi-at each", "multi-at", {"pool_combine": "each"}),
    Lever("multi-at, eps x1.25", "multi-at", {"train_eps_scale": 1.25}),
    Lever("multi-at + TRADES 3", "multi-at", {"w_trades": 3.0}),
    Lever("multi-at + clean CE 0.5", "multi-at", {"include_clean": True, "w_ce_clean": 0.5}),
    Lever("multi-at + PCL", "multi-at", {"w_pcl": 0.5, "pcl_margin": 1.0}),
    Lever("multi-at + distillation", "multi-at", {"w_feat": 1.0}),
    Lever("multi-at, student from teacher", "multi-at", {"student_init": "teacher"}),
    Lever("pgd-at, student from teacher", "pgd-at", {"student_init": "teacher"}),
    Lever("PGD+PGDL2 worst, student from teacher", "multi-at",
          {"pool": ["PGD", "PGDL2"], "student_init": "teacher"}),
    Lever("Lp pool worst, student from teacher", "multi-at",
          {"pool": LP, "student_init": "teacher"}),
    Lever("multi-at each, student from teacher", "multi-at",
          {"pool_combine": "each", "student_init": "teacher"}),
    Lever("multi-at, student from teacher, head frozen", "multi-at",
          {"student_init": "teacher", "train_head": False}),
    Lever("multi-at, student from teacher + TRADES 1.5", "multi-at",
          {"student_init": "teacher", "w_trades": 1.5}),
    Lever("multi-at, student from teacher + clean CE 0.5", "multi-at",
          {"student_init": "teacher", "include_clean": True, "w_ce_clean": 0.5}),
    Lever("multi-at, student from teacher + distillation", "multi-at",
          {"student_init": "teacher", "w_feat": 0.5}),
    Lever("MID defaults, UniG off", "defaults", {"unig": "off"}),
    Lever("MID defaults + TRADES 3, UniG off", "defaults", {"unig": "off", "w_trades": 3.0}),
    # training hygiene on the default recipe (issue 18: in mid's space since, never studied)
    Lever("defaults", "defaults"),
    Lever("defaults, lr 0.002", "defaults", {"lr": 0.002}),
    Lever("defaults, EMA 0.95", "defaults", {"ema": 0.95}),
    Lever("defaults, cosine", "defaults", {"lr_schedule": "cosine"}),
    Lever("defaults, label smoothing 0.1", "defaults", {"label_smoothing": 0.1}),
    Lever("defaults, variation regularisation 1", "defaults", {"w_vr": 1.0}),
)


def _values(space: spaces.Space, lever: Lever) -> dict[str, Any]:
    values = (space.default_values() if lever.start == "defaults"
              else space.baseline_values(lever.start))
    changes = dict(lever.values)
    if "pool" in changes:
        pool = changes.pop("pool")
        missing = [name for name in pool if name not in space.pool.candidates]
        if missing:  # flags() would leave them out silently
            raise SystemExit(f"lever {lever.name!r}: {missing} are not pool candidates of space "
                             f"{space.name!r}; add them with --set attacks.pool.candidates=[...]")
        values.update(space.pool.flags(pool))
    unknown = set(changes) - set(space.params)
    if unknown:
        raise SystemExit(f"lever {lever.name!r}: {sorted(unknown)} are not searched by space "
                         f"{space.name!r} (it searches {', '.join(space.params)})")
    return {**values, **{k: space.params[k].value(v) for k, v in changes.items()}}


def _run(space_name: str, overrides: list[str], lever: Lever, seed: int, autoattack: int
         ) -> tuple[str, int, dict[str, float], dict[str, np.ndarray], float]:
    import torch

    from trainables.scoring.final import autoattack_robust
    from trainables.setting.prepare import prepare_shared
    from trainables.train import run_trial

    torch.set_num_threads(1)
    space = spaces.load(space_name, overrides)
    config = space.trial_config(_values(space, lever), seed=seed, threads=1)
    start = time.perf_counter()
    shared = prepare_shared(config, pool_candidates=space.pool.candidates, log=lambda _: None)
    result = run_trial(config, fidelity=space.fidelity, shared=shared, log=lambda _: None)
    metrics, points = dict(result.metrics), dict(result.points)
    if autoattack:
        x, y = shared.points(Split.VAL, config)
        found = autoattack_robust(result.model.eval(), x[:autoattack], y[:autoattack],
                                  shared.setup.threat, num_classes=shared.setup.info.num_classes,
                                  seed=seed, batch_size=config.eval_batch_size)
        if found is not None:
            points[VAL_AA] = found[0].float().cpu().numpy()
            metrics[VAL_AA] = float(points[VAL_AA].mean())
    return lever.name, seed, metrics, points, time.perf_counter() - start


def _flags(runs: list[dict[str, float]]) -> list[str]:
    """The masking flags raised in any of `runs`."""
    return sorted({k.split("/")[1] for m in runs for k, v in m.items()
                   if k.startswith("masking/") and k.count("/") == 1
                   and k not in ("masking/any", "masking/answered") and v})


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} [{min(values):.3f}, {max(values):.3f}]" if len(values) > 1 \
        else f"{mean:.3f}"


def _interval(d: Interval | None) -> str:
    """A paired difference as `+0.012 [-0.003, +0.027]`; `-` where there is none."""
    return f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" if d is not None else "-"


def merge(space: spaces.Space, sources: list[str], out: str,
          overrides: list[str] | None = None) -> None:
    """One lever table (.json, what `search.run --warm-start` reads) from several rounds' of
    the same space, data set and objective: a lever in several rounds is taken once (the
    rounds give it identical values); one the space cannot express now is left out, said so.
    Every table must have been run with the same `--set` overrides as `overrides` (a round at
    another width, say, measured another problem)."""
    overrides = overrides or []
    known = set(space.params) | set(space.pool.flags(space.pool.candidates))
    levers: dict[str, Any] = {}
    scorings, orders = [], set()
    for source in sources:
        table = json.loads(Path(source).read_text())
        scorings.append(int(table.get("scoring", 0)))
        orders.add(table.get("eval_losses", EvalLosses.CE_MARGIN))
        found = (table["space"], table["dataset"], table["objective"],
                 table.get("overrides", []))
        expected = (space.name, space.base["dataset"], space.search.objective, overrides)
        if found != expected:
            raise SystemExit(f"{source}: space, data set, objective, overrides {found}; "
                             f"expected {expected}")
        for name, lever in table["levers"].items():
            values = dict(lever["values"])
            # a pool flag of a candidate the space lacks (a round with --set) is harmless off
            extra = {k for k in set(values) - known if values[k] is not False}
            values = {k: v for k, v in values.items() if k in known}
            if extra or space.point(values) != values:
                print(f"left out {name!r} ({source}): not a point of space {space.name!r} "
                      f"as it is now{f' ({sorted(extra)})' if extra else ''}")
                continue
            if name in levers and levers[name]["values"] != values:
                print(f"{name!r} ({source}) has other values than in an earlier table: the "
                      "earlier kept")
            levers.setdefault(name, {**lever, "values": values})
    Path(out).write_text(json.dumps(
        {"space": space.name, "dataset": space.base["dataset"],
         "objective": space.search.objective, "scoring": min(scorings, default=0),
         # tables whose attacks ran their losses in other orders: another number (warm start)
         **({"eval_losses": orders.pop()} if len(orders) == 1 else {"eval_losses": "mixed"}),
         "overrides": overrides, "sources": sources, "levers": levers},
        indent=1, default=str))
    print(f"{len(levers)} levers from {len(sources)} tables written to {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="mid")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="space override, e.g. budget.epochs=6 (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", nargs="+", default=None, help="lever names to run")
    p.add_argument("--reference", default="pgd-at", help="the lever the differences are to")
    p.add_argument("--autoattack", type=int, default=0, metavar="N",
                   help="also the official AutoAttack on the first N validation points of "
                        "every trained model, with its paired difference (0: off)")
    p.add_argument("--out", default=None,
                   help="also write the table (markdown) here, and every run's metrics "
                        "(masking evidence included) beside it as .json")
    p.add_argument("--merge", nargs="+", default=None, metavar="TABLE",
                   help="run nothing: merge these rounds' .json tables into --out (.json)")
    args = p.parse_args()
    if args.autoattack < 0:
        p.error(f"--autoattack {args.autoattack}: a number of points, >= 0 (0: off)")
    space = spaces.load(args.space, args.overrides)
    if args.merge:
        merge(space, args.merge, args.out or f"levers-{space.name}-all.json", args.overrides)
        return
    objective = space.search.objective
    known = LEVERS_MNIST5K if space.name == "mnist5k" else LEVERS
    levers = [lv for lv in known if args.only is None or lv.name in args.only]
    if args.reference not in [lv.name for lv in levers]:
        levers.insert(0, next(lv for lv in known if lv.name == args.reference))
    for lever in levers:
        _values(space, lever)  # every lever is expressible in the space, before any training
    from trainables.setting.prepare import prepare_shared
    # the teacher and target cached once here, not trained by every worker at once
    prepare_shared(space.trial_config(threads=1), pool_candidates=space.pool.candidates,
                   log=lambda _: None)

    runs: dict[str, list[tuple[dict[str, float], dict[str, np.ndarray], float]]] = {}
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        futures = [pool.submit(_run, args.space, args.overrides, lv, s, args.autoattack)
                   for lv in levers for s in args.seeds]
        for future in futures:
            name, seed, metrics, points, wall = future.result()
            runs.setdefault(name, []).append((metrics, points, wall))
            print(f"[{time.perf_counter() - started:6.0f}s] {name} seed {seed}: "
                  f"{objective} {metrics[objective]:.3f}, union {metrics[UNION]:.3f}, "
                  f"clean {metrics[CLEAN_ACC]:.3f}, "
                  f"Linf PGD-10 {metrics.get(THREAT_PGD10, math.nan):.3f}, "
                  f"AutoAttack {metrics.get(VAL_AA, math.nan):.3f}, "
                  f"flags {', '.join(_flags([metrics]))}, "
                  f"{wall:.0f}s", flush=True)

    def delta(name: str, other: str, metric: str) -> Interval:
        """`name` minus `other` on `metric`, paired by point (each averaged over its seeds)."""
        def averaged(lever: str) -> np.ndarray:
            return np.mean([pts[metric] for _, pts, _ in runs[lever]], axis=0)
        return paired_difference(averaged(name), averaged(other))

    aa_points = f"{args.autoattack} points" if args.autoattack else "not run"
    lines = [f"Space `{space.name}`{' ' + ' '.join(args.overrides) if args.overrides else ''}, "
             f"validation split, seeds {args.seeds}: mean [min, max] over seeds; Δ: paired "
             f"difference with `{args.reference}` on the same points [95% bootstrap interval]"
             "; Δ vs its baseline: the objective's paired difference with the baseline the "
             "lever starts from, where that baseline ran too",
             "", f"| lever | {objective} | Δ | Δ vs its baseline | held-out union | Δ | clean | "
             f"Linf PGD-10 | AutoAttack ({aa_points}) | Δ | "
             "masking flags | s/trial |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lever in levers:
        rows = runs[lever.name]
        flags = _flags([m for m, _, _ in rows])
        deltas = [delta(lever.name, args.reference, m) for m in (objective, UNION)]
        own = (delta(lever.name, lever.start, objective)
               if lever.start in runs and lever.start != lever.name else None)
        aa = (delta(lever.name, args.reference, VAL_AA)
              if args.autoattack and all(VAL_AA in pts for _, pts, _ in rows) else None)
        lines.append(
            f"| {lever.name} | {_cell([m[objective] for m, _, _ in rows])} | "
            f"{_interval(deltas[0])} | {_interval(own)} | "
            f"{_cell([m[UNION] for m, _, _ in rows])} | "
            f"{_interval(deltas[1])} | "
            f"{_cell([m[CLEAN_ACC] for m, _, _ in rows])} | "
            f"{_cell([m.get(THREAT_PGD10, math.nan) for m, _, _ in rows])} | "
            f"{_cell([m.get(VAL_AA, math.nan) for m, _, _ in rows])} | "
            f"{_interval(aa)} | "
            f"{', '.join(flags) or 'none'} | "
            f"{statistics.fmean(w for _, _, w in rows):.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        # the recipes with their validation values: what `search.run --warm-start` reads
        recipes = {lv.name: {"values": space.point(_values(space, lv)),
                             "objective": [m[objective] for m, _, _ in runs[lv.name]]}
                   for lv in levers}
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"space": space.name, "dataset": space.base["dataset"], "objective": objective,
             "scoring": SCORING_VERSION, "eval_losses": space.trial_config().eval_losses,
             "overrides": args.overrides, "seeds": args.seeds,
             "levers": recipes,
             "runs": {name: [{"metrics": m, "wall_s": w} for m, _, w in rows]
                      for name, rows in runs.items()}}, indent=1, default=str))
        print(f"written to {args.out} (+ .json)")


if __name__ == "__main__":
    main()
