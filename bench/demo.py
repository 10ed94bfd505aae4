"""The demo's wall time, split into prepare, search, final comparison and report.

    python bench/demo.py                  # what `make demo` runs: python -m search.run --space mid
    python bench/demo.py --space smoke
    python bench/demo.py --keep /tmp/demo    # keep its results, models and cards

Runs the command in a fresh folder (its own MLflow store and results; the teacher cache is the
usual one, so a second run skips the teacher's training as a user's second demo would) and
prints the command's wall time next to the driver's own split of it, and as a ratio to the
plain PGD-AT loop (bench/reference.py, the space's `pgd-at` recipe on one thread) timed just
before and just after it: absolute times on a shared machine move from day to day.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="mid")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--log", default=None, help="also keep the command's output here")
    p.add_argument("--keep", default=None,
                   help="run in this folder and keep it (results, models and cards, MLflow store)")
    args = p.parse_args()
    before = _reference(args.space, args.overrides)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or scratch
        Path(folder).mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "search.run", "--space", args.space]
        for override in args.overrides:
            command += ["--set", override]
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = time.perf_counter() - start
    if args.log:
        Path(args.log).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    split = next((line for line in proc.stdout.splitlines() if line.startswith("wall time:")),
                 "wall time: (not printed)")
    after = _reference(args.space, args.overrides)
    reference = (before + after) / 2
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, space {args.space}: command "
          f"{wall // 60:.0f}m{wall % 60:04.1f}s on {os.cpu_count()} CPUs = "
          f"{wall / reference:.0f}x the reference loop ({before:.1f}s before, {after:.1f}s "
          f"after)\n  {split}")


def _reference(space_name: str, overrides: list[str]) -> float:
    """Seconds of the plain PGD-AT loop on the space's data (one thread)."""
    import torch
    from reference import plain_pgd_at

    import spaces
    from trainables.defense.baselines import baseline_config
    from trainables.setting.prepare import prepare_shared

    torch.set_num_threads(1)
    space = spaces.load(space_name, overrides)
    config = space.trial_config(threads=1)
    shared = prepare_shared(config, pool_candidates=space.pool.candidates, log=lambda _: None)
    return plain_pgd_at(baseline_config(config, "pgd-at"), shared)


if __name__ == "__main__":
    main()
