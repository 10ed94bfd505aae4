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
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from pool import passes, race
from reference import plain_pgd_at

import spaces
from trainables import load_defended_model
from trainables.attacks.precision import LowPrecision, native_bfloat16
from trainables.defense.baselines import baseline_config
from trainables.defense.models import DefendedModel
from trainables.scoring.final import final_evaluation
from trainables.setting.prepare import prepare_shared
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


if __name__ == "__main__":
    main()
