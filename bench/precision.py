"""Does crafting the final evaluation's attacks in bfloat16 pay, and what does it move?

    python bench/precision.py                        # mnist5k, 1 thread, 1 round
    python bench/precision.py --model final/pgd-at/model.pt --rounds 2
    python bench/precision.py --space smoke --points 64   # seconds: the test's size

Rows: the space's model's forward pass and forward + backward w.r.t. the input
(bench/pool.py's passes) in float32 and under bfloat16 autocast; then a `pgd-at` model's final
evaluation without AutoAttack (the held-out and sealed attacks, each on the CE and the margin
loss: what `eval_precision` changes) in float32 and in bfloat16, alternating, with the seconds
of each and every test metric that moved (both are judged in float32). The model is trained
here (the space's `pgd-at` baseline, no masking checks) unless `--model` names a saved one.
The plain PGD-AT loop of the same data and epochs (bench/reference.py) is timed in the same
run: ratios to it survive a noisy day.

    python bench/precision.py --train 0,1            # whole trials, float32 vs bfloat16

`--train SEEDS`: instead, whole trials as the search runs them (training, validation with its
masking checks) of the space's `pgd-at` and default recipe at each seed, with
`train_precision` and `eval_precision` both float32, then both bfloat16: the seconds of each
phase, and the validation metrics each precision reached next to how far float32's own move
from one seed to the next (bfloat16 training is another rounding of the same recipe: what it
moves should be within a seed's spread).
"""

from __future__ import annotations

import argparse
import statistics
import time
from itertools import pairwise

import torch
from pool import passes, race
from reference import plain_pgd_at

import spaces
from trainables import load_defended_model
from trainables.attacks.precision import LowPrecision
from trainables.defense.baselines import baseline_config
from trainables.defense.models import DefendedModel
from trainables.runtime import native_bfloat16
from trainables.scoring.final import final_evaluation
from trainables.setting.prepare import Shared, prepare_shared
from trainables.train import run_trial
from trainables.vocab import Precision

PRECISIONS = (Precision.FLOAT32, Precision.BFLOAT16)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--space", default="mnist5k")
    p.add_argument("--model", help="a saved model (default: train the space's pgd-at here)")
    p.add_argument("--points", type=int, default=0, help="test points (0: the space's)")
    p.add_argument("--rounds", type=int, default=1, help="evaluations per precision")
    p.add_argument("--repeats", type=int, default=20, help="repeats of each model pass")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="space override, e.g. budget.epochs=2 (repeatable)")
    p.add_argument("--train", default="", metavar="SEEDS",
                   help="whole trials at these seeds (e.g. 0,1) instead of the evaluation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    space = spaces.load(args.space, args.overrides)
    config = baseline_config(space.trial_config(threads=args.threads), "pgd-at").replace(
        masking_samples=0, **({"test_samples": args.points} if args.points else {}))
    shared = prepare_shared(config, pool_candidates=space.pool.candidates, log=lambda _: None)
    device = torch.device("cpu")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, space {space.name} "
          f"({args.overrides or 'as shipped'}), {args.threads} thread(s); this CPU computes "
          f"bfloat16 {'natively' if native_bfloat16(device) else 'by emulation'}")
    reference = plain_pgd_at(config, shared)
    print(f"  reference: plain PGD-AT loop ({config.epochs} epochs)      {reference:8.2f} s")
    if args.train:
        _trials(space, shared, [int(s) for s in args.train.split(",")], args.threads,
                reference)
        return

    if args.model:
        model = load_defended_model(args.model)
    else:
        start = time.perf_counter()
        model = run_trial(config, fidelity=space.fidelity, shared=shared,
                          log=lambda _: None).model
        trained = time.perf_counter() - start
        print(f"  pgd-at trained here                          {trained:8.2f} s")
    model = DefendedModel(model.encoder, model.head).eval()

    x = shared.data.val_x[:256]
    y = shared.data.val_y[:256]
    exact, low = passes(model, x, y), passes(LowPrecision(model, torch.bfloat16), x, y)
    print(f"\nthe model's passes, batch {len(x)}, median of {args.repeats} (ms)")
    for row in exact:
        a, b = race(exact[row], low[row], args.repeats)
        print(f"  {row:<22} float32 {a * 1e3:8.1f}  bfloat16 {b * 1e3:8.1f}  {a / b:5.2f}x")

    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    metrics: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for precision in PRECISIONS:
            start = time.perf_counter()
            found = final_evaluation(model, shared, config.replace(eval_precision=precision),
                                     autoattack=False, log=lambda _: None)
            seconds[precision].append(time.perf_counter() - start)
            metrics[precision] = found.metrics
    a, b = (statistics.median(seconds[p]) for p in PRECISIONS)
    points = len(shared.points("test", config)[1])
    print(f"\nfinal evaluation without AutoAttack, {points} test points, median of "
          f"{args.rounds} (s)")
    print(f"  float32 {a:8.1f} ({a / reference:.2f}x the reference)  bfloat16 {b:8.1f} "
          f"({b / reference:.2f}x); float32 / bfloat16 {a / b:5.2f}x")
    moved = {k: (v, metrics[Precision.BFLOAT16][k]) for k, v in metrics[Precision.FLOAT32].items()
             if k.startswith("test/") and not k.endswith(("_lo", "_hi")) and "/time" not in k
             and v != metrics[Precision.BFLOAT16][k]}
    print(f"  test metrics that moved (bfloat16 minus float32; {len(moved)} of them):")
    for key, (fp32, bf16) in moved.items():
        print(f"    {key:<44} {fp32:.4f} -> {bf16:.4f}  {bf16 - fp32:+.4f}")


TRIAL_METRICS = {"clean": "val/clean/acc", "held-out family mean": "val/heldout/family_mean_acc",
                 "pool mean": "val/pool/mean_acc"}
PHASES = ("craft", "step", "eval_attacks", "masking")


def _trials(space: spaces.Space, shared: Shared, seeds: list[int], threads: int,
            reference: float) -> None:
    """Whole trials of `pgd-at` and the default recipe at each seed, in each precision."""
    default = space.trial_config(threads=threads)
    recipes = {"pgd-at": baseline_config(default, "pgd-at"), "default recipe": default}
    for label, recipe in recipes.items():
        print(f"\n{label}: whole trials (training + validation + masking checks), seconds and "
              "validation metrics")
        found: dict[tuple[int, str], dict[str, float]] = {}
        for seed in seeds:
            for precision in PRECISIONS:
                config = recipe.replace(seed=seed, train_precision=precision,
                                        eval_precision=precision)
                start = time.perf_counter()
                result = run_trial(config, fidelity=space.fidelity, shared=shared,
                                   log=lambda _: None)
                row = {"wall": time.perf_counter() - start, **{
                    phase: result.metrics.get(f"time/{phase}_s", 0.0) for phase in PHASES},
                    **{k: result.metrics[m] for k, m in TRIAL_METRICS.items()}}
                found[seed, precision] = row
                print(f"  seed {seed} {precision:<8} {row['wall']:7.1f} s "
                      f"({row['wall'] / reference:.2f}x the reference)  " + "  ".join(
                          f"{phase} {row[phase]:.1f}" for phase in PHASES) + "  |  " +
                      "  ".join(f"{k} {row[k]:.3f}" for k in TRIAL_METRICS), flush=True)
        _trial_summary(found, seeds)


def _trial_summary(found: dict[tuple[int, str], dict[str, float]], seeds: list[int]) -> None:
    fp32, bf16 = PRECISIONS
    walls = {p: statistics.median(found[s, p]["wall"] for s in seeds) for p in PRECISIONS}
    print(f"  median trial: float32 {walls[fp32]:.1f} s, bfloat16 {walls[bf16]:.1f} s: "
          f"{walls[fp32] / walls[bf16]:.2f}x")
    for key in TRIAL_METRICS:
        moved = [found[s, bf16][key] - found[s, fp32][key] for s in seeds]
        spread = [found[b, fp32][key] - found[a, fp32][key] for a, b in pairwise(seeds)]
        print(f"  {key:<22} bfloat16 - float32 per seed: "
              + ", ".join(f"{d:+.3f}" for d in moved)
              + ("; float32 seed to seed: " + ", ".join(f"{d:+.3f}" for d in spread)
                 if spread else ""))


if __name__ == "__main__":
    main()
