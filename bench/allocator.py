"""Does keeping freed tensors' memory in the process pay (trainables/runtime.py,
tune_allocator)?

    python bench/allocator.py                  # mnist5k, 1 thread, 5 rounds
    python bench/allocator.py --rounds 3 --trial-epochs 1

glibc's malloc settings hold for a whole process and cannot be undone, so every figure comes
from a fresh Python process, glibc's own thresholds (DEFENSE_SEARCH_ALLOCATOR=default) and the
tuned ones alternating in every round, so a noisy machine moves both alike; median of the
rounds. Rows: the small CNN's forward + backward w.r.t. the input (what every gradient attack
and evaluation runs) at batch 64 and 256; one epoch of the plain PGD-AT reference loop
(bench/reference.py: what a user's own loop would gain from the same setting); and the
`pgd-at` trial itself (training, evaluations, masking checks), whose metrics must be bitwise
equal under both settings (the setting changes no arithmetic).
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


def _child(work: str, space_name: str, epochs: int) -> dict[str, object]:
    """One measurement in this (fresh) process: seconds and a digest of what it computed."""
    import torch
    import torch.nn.functional as F

    from trainables.runtime import tune_allocator

    torch.set_num_threads(1)
    tuned = tune_allocator()
    if work.startswith("model"):
        from trainables.defense.models import build_arch

        torch.manual_seed(0)
        parts = build_arch("small_cnn", (1, 28, 28), 10)
        model = torch.nn.Sequential(parts.encoder, parts.head).eval()
        batch = int(work.removeprefix("model-b"))
        x = torch.rand(batch, 1, 28, 28, requires_grad=True)
        y = torch.randint(0, 10, (batch,))

        def step() -> torch.Tensor:
            return torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]

        for _ in range(5):
            step()
        start = time.perf_counter()
        for _ in range(20):
            grad = step()
        return {"tuned": tuned, "seconds": (time.perf_counter() - start) / 20,
                "digest": hashlib.sha256(grad.numpy().tobytes()).hexdigest()[:16]}
    sys.path.insert(0, str(_HERE))
    from reference import plain_pgd_at

    import spaces
    from trainables.defense.baselines import baseline_config
    from trainables.setting.prepare import prepare_shared
    from trainables.train import run_trial

    space = spaces.load(space_name, [f"budget.epochs={epochs}"])
    config = baseline_config(space.trial_config(threads=1), "pgd-at")
    shared = prepare_shared(config, pool_candidates=space.pool.candidates, log=lambda _: None)
    if work == "reference":
        return {"tuned": tuned, "seconds": plain_pgd_at(config, shared), "digest": "-"}
    start = time.perf_counter()
    result = run_trial(config, shared=shared, log=lambda _: None)
    seconds = time.perf_counter() - start
    metrics = {k: v for k, v in sorted(result.metrics.items())
               if not k.startswith("time/") and "seconds" not in k}  # timings differ anyway
    return {"tuned": tuned, "seconds": seconds,
            "digest": hashlib.sha256(json.dumps(metrics).encode()).hexdigest()[:16]}


def _measure(work: str, setting: str, args: argparse.Namespace) -> dict[str, object]:
    env = {**os.environ, "DEFENSE_SEARCH_ALLOCATOR": setting}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", work, "--space", args.space,
         "--trial-epochs", str(args.trial_epochs)],
        env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{work} ({setting}) failed:\n{proc.stderr[-3000:]}")
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
          "round(s), a fresh process per figure; seconds median [min, max]: glibc's "
          "thresholds -> tuned")
    for work in args.works:
        runs: dict[str, list[dict[str, object]]] = {"default": [], "tuned": []}
        for _ in range(args.rounds):
            for setting in runs:
                runs[setting].append(_measure(work, setting, args))
        seconds = {s: [float(str(r["seconds"])) for r in found] for s, found in runs.items()}
        digests = {str(r["digest"]) for found in runs.values() for r in found}
        assert all(r["tuned"] for r in runs["tuned"]), "tune_allocator did not apply here"
        assert not any(r["tuned"] for r in runs["default"]), "the opt-out was not honoured"
        before, after = (statistics.median(v) for v in seconds.values())
        same = "-" if digests == {"-"} else ("yes" if len(digests) == 1 else "NO")
        print(f"  {work:<11} {before:9.4f} [{min(seconds['default']):.4f}, "
              f"{max(seconds['default']):.4f}] -> {after:9.4f} [{min(seconds['tuned']):.4f}, "
              f"{max(seconds['tuned']):.4f}]  {before / after:5.2f}x  bitwise equal: {same}")


if __name__ == "__main__":
    main()
