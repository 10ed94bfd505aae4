"""Trials per hour with 1 and 2 trials at once, on this machine.

    python bench/concurrency.py                       # mid, 4 trials per setting
    python bench/concurrency.py --trials 6 --set budget.epochs=6

The same searches (random sampler, same seed: the same recipes in the same order; no ASHA, no
baselines, no final comparison), run with --max-concurrent 1 (1 and 2 torch threads per
trial) and 2 (1 thread each). Throughput is trials over the search phase's wall time (the
driver's `wall time:` line), so Ray's start and the preparation do not count.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def search_seconds(space: str, trials: int, concurrent: int, cpus: int,
                   overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "search.run", "--space", space, "--num-samples",
                   str(trials), "--max-concurrent", str(concurrent), "--cpus-per-trial",
                   str(cpus), "--search-alg", "random", "--scheduler", "none",
                   "--sealed-top-k", "0", "--set", "baselines=[]", "--name", "concurrency",
                   "--storage-path", f"{folder}/ray", "--mlflow-uri",
                   f"sqlite:///{folder}/mlflow.db"]
        for override in overrides:
            command += ["--set", override]
        proc = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    found = re.search(r"search (?:(\d+)m)?([\d.]+)s", proc.stdout.split("wall time:")[-1])
    assert found, proc.stdout[-1000:]
    return 60 * float(found.group(1) or 0) + float(found.group(2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="mid")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    settings = (("1 at once, 1 thread each", 1, 1), ("1 at once, 2 threads each", 1, 2),
                ("2 at once, 1 thread each", 2, 1))
    print(f"space {args.space}, {args.trials} trials per setting (random sampler, seed 0, no "
          f"ASHA), {os.cpu_count()} CPUs")
    rates = {}
    for label, concurrent, cpus in settings:
        seconds = search_seconds(args.space, args.trials, concurrent, cpus, args.overrides)
        rates[label] = 3600 * args.trials / seconds
        print(f"  {label:<28} search phase {seconds:7.1f}s  -> {rates[label]:6.1f} trials/hour",
              flush=True)
    two = rates["2 at once, 1 thread each"]
    print(f"2 at once vs 1 at once: {two / rates['1 at once, 1 thread each']:.2f}x (1 thread), "
          f"{two / rates['1 at once, 2 threads each']:.2f}x (2 threads)")


if __name__ == "__main__":
    main()
