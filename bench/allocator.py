"""Would keeping freed tensors' memory in the process pay? (Measured: not end to end; off.)

    python bench/allocator.py                  # mnist5k, 1 thread, 5 rounds
    python bench/allocator.py --rounds 3 --works model-b256 trial

glibc serves each block above its mmap threshold by a fresh mmap and returns it on free, and
trims the heap's top, so a pass over a batch may page-fault its activations in again. This
times each work in a fresh Python process, alternating glibc's own settings with
MALLOC_MMAP_THRESHOLD_=32 MB, MALLOC_TRIM_THRESHOLD_=1 GB and MALLOC_ARENA_MAX=1 in the
environment it starts with (glibc reads them then), so a noisy machine moves both alike;
median of the rounds. Rows: the space's model's forward + backward w.r.t. the input
(bench/pool.py's pass) at batch 64 and 256 in a fresh process (where the churn shows: 1.2x on
mnist5k), one epoch of the plain PGD-AT loop (bench/reference.py), and the `pgd-at` trial
(training, evaluations, masking checks), whose metrics must be bitwise equal under both (the
settings change no arithmetic).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_WORKS = ("model-b64", "model-b256", "reference", "trial")
SETTINGS = {"glibc's own": {},
            "kept memory": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                            "MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_ARENA_MAX": "1"}}


def _child(work: str, space_name: str, epochs: int) -> dict[str, object]:
    """One measurement in this (fresh) process: seconds and a digest of what it computed."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(_HERE))
    import spaces

    space = spaces.load(space_name, [f"budget.epochs={epochs}"])
    if work.startswith("model"):
        from pool import passes

        from trainables.defense.models import DefendedModel, build_arch
        from trainables.setting.setup import dataset_info

        torch.manual_seed(0)
        info = dataset_info(space.trial_config().dataset)
        parts = build_arch(info.default_arch, info.image_shape, info.num_classes)
        batch = int(work.removeprefix("model-b"))
        step = passes(DefendedModel(parts.encoder, parts.head).eval(),
                      torch.rand(batch, *info.image_shape),
                      torch.randint(0, info.num_classes, (batch,)))["forward + backward"]
        for _ in range(5):
            step()
        start = time.perf_counter()
        for _ in range(20):
            grad = step()
        return {"seconds": (time.perf_counter() - start) / 20,
                "digest": hashlib.sha256(grad.numpy().tobytes()).hexdigest()[:16]}
    from reference import plain_pgd_at

    from trainables.defense.baselines import baseline_config
    from trainables.setting.prepare import prepare_shared
    from trainables.train import run_trial

    config = baseline_config(space.trial_config(threads=1), "pgd-at")
    shared = prepare_shared(config, pool_candidates=space.pool.candidates, log=lambda _: None)
    if work == "reference":
        return {"seconds": plain_pgd_at(config, shared), "digest": "-"}
    start = time.perf_counter()
    result = run_trial(config, shared=shared, log=lambda _: None)
    seconds = time.perf_counter() - start
    metrics = {k: v for k, v in sorted(result.metrics.items())
               if not k.startswith("time/") and "seconds" not in k}  # timings differ anyway
    return {"seconds": seconds,
            "digest": hashlib.sha256(json.dumps(metrics).encode()).hexdigest()[:16]}


def _measure(work: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", work, "--space", args.space,
         "--trial-epochs", str(args.trial_epochs)],
        env={**base, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{work} failed:\n{proc.stderr[-3000:]}")
    found: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--space", default="mnist5k")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--trial-epochs", type=int, default=1,
                   help="epochs of the reference loop and the pgd-at trial")
    p.add_argument("--works", nargs="+", default=list(_WORKS), choices=_WORKS)
    p.add_argument("--child", choices=_WORKS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.space, args.trial_epochs)))
        return
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, space {args.space}, 1 thread, {args.rounds} "
          "round(s), a fresh process per figure; seconds median [min, max]: glibc's own "
          "settings -> kept memory")
    for work in args.works:
        runs: dict[str, list[dict[str, object]]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name, env in SETTINGS.items():
                runs[name].append(_measure(work, env, args))
        seconds = [[float(str(r["seconds"])) for r in found] for found in runs.values()]
        digests = {str(r["digest"]) for found in runs.values() for r in found}
        before, after = (statistics.median(v) for v in seconds)
        same = "-" if digests == {"-"} else ("yes" if len(digests) == 1 else "NO")
        print(f"  {work:<11} {before:9.4f} [{min(seconds[0]):.4f}, {max(seconds[0]):.4f}] -> "
              f"{after:9.4f} [{min(seconds[1]):.4f}, {max(seconds[1]):.4f}]  "
              f"{before / after:5.2f}x  bitwise equal: {same}")


if __name__ == "__main__":
    main()
