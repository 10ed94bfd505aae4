"""Does Pixle's top-k draw of distinct pixels pay (trainables/attacks/sparse.py, `smallest`)?

    python bench/pixle.py                      # mnist5k's teacher, 1,500 test points, 1 thread
    python bench/pixle.py --points 300 --repeats 3
    python bench/pixle.py --final              # the teacher's whole final evaluation, both ways

Pixle writes each patch at distinct random pixels: the columns of the smallest of one uniform
key per pixel. It took them from a whole argsort of the 784 keys; `smallest` takes the top-k.
This runs the final comparison's Pixle (strength 2) on the test points of mnist5k's undefended
teacher (a clean model: most points survive, so every iteration runs) with each way of
drawing, alternating the two in every repeat so a noisy machine moves both alike, and checks
that both return the same images (the lever changes no answer unless keys tie). `--final`
times the teacher's whole final evaluation instead (held-out, sealed and transfer attacks on
the test points, no AutoAttack) and checks that every metric is equal.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import spaces
from trainables.attacks import build_attack, sparse
from trainables.defense.models import DefendedModel
from trainables.scoring.final import final_evaluation
from trainables.setting.prepare import prepare_shared
from trainables.vocab import SEALED_STRENGTH, Split

Draw = Callable[[torch.Tensor, int], torch.Tensor]


def _argsort(keys: torch.Tensor, count: int) -> torch.Tensor:
    return keys.argsort(1)[:, :count]


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--space", default="mnist5k")
    p.add_argument("--points", type=int, default=1500)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--final", action="store_true",
                   help="time the whole final evaluation (no AutoAttack), not Pixle alone")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    space = spaces.load(args.space, [])
    config = space.trial_config(threads=args.threads).replace(test_samples=args.points)
    shared = prepare_shared(config, pool_candidates=space.pool.candidates, log=lambda _: None)
    model = DefendedModel(shared.teacher.encoder, shared.teacher.head).eval()
    x, y = shared.points(Split.TEST, config)
    shipped: Draw = sparse.smallest

    def run(draw: Draw) -> tuple[float, object]:
        sparse.smallest = draw  # type: ignore[assignment]
        if args.final:
            evaluation = final_evaluation(model, shared, config, autoattack=False,
                                          log=lambda _: None)
            answers = {k: v for k, v in evaluation.metrics.items() if not k.startswith("time/")}
            return evaluation.metrics["time/final_s"], answers
        attack = build_attack("Pixle", model, shared.setup.threat,
                              num_classes=shared.setup.info.num_classes,
                              strength=SEALED_STRENGTH, seed=0)
        start = time.perf_counter()
        images = torch.cat([attack(x[i:i + config.eval_batch_size],
                                   y[i:i + config.eval_batch_size])
                            for i in range(0, len(x), config.eval_batch_size)])
        return time.perf_counter() - start, images

    times: dict[str, list[float]] = {"argsort": [], "top-k (shipped)": []}
    same = True
    for _ in range(args.repeats):
        before, theirs = run(_argsort)
        after, ours = run(shipped)
        times["argsort"].append(before)
        times["top-k (shipped)"].append(after)
        same &= _same(theirs, ours)
    sparse.smallest = shipped  # type: ignore[assignment]
    what = ("the whole final evaluation (no AutoAttack)" if args.final
            else f"Pixle at strength {SEALED_STRENGTH}")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, space {space.name}, {what} on {len(x)} test "
          f"points of the teacher, {args.threads} thread(s), {args.repeats} repeat(s); seconds "
          "min / median / max")
    for label, values in times.items():
        print(f"  {label:<18} {min(values):8.2f} {statistics.median(values):8.2f} "
              f"{max(values):8.2f}")
    ratio = statistics.median(times["top-k (shipped)"]) / statistics.median(times["argsort"])
    print(f"top-k / argsort: {ratio:.2f}x; the same {'metrics' if args.final else 'images'}: "
          f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
