"""Does Optuna's TPE find better recipes than random sampling with the same budget?

    python bench/search_efficiency.py                          # mid, 16 trials, seeds 0 1 2
    python bench/search_efficiency.py --trials 12 --set budget.epochs=6

Runs the space's search with `--search-alg tpe` and `--search-alg random` for each seed (the
same trials budget, ASHA on, no baselines, no final comparison) and plots the best full-length
objective found after each finished trial (mean over seeds, band: min to max) to
bench/results/search-efficiency-<space>.png; prints the curves' end points.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
OBJECTIVE = "val/objective"


def best_so_far(space: str, algorithm: str, seed: int, trials: int,
                overrides: list[str]) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        command = [sys.executable, "-m", "search.run", "--space", space, "--num-samples",
                   str(trials), "--search-alg", algorithm, "--seed", str(seed),
                   "--sealed-top-k", "0", "--set", "baselines=[]", "--name", "efficiency",
                   "--storage-path", f"{folder}/ray", "--mlflow-uri", uri,
                   "--experiment", "efficiency"]
        for override in overrides:
            command += ["--set", override]
        proc = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode not in (0, 1):  # 1: no trial completed (all stopped or failed)
            raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("efficiency")
        assert experiment is not None
        runs = [r for r in client.search_runs([experiment.experiment_id], max_results=500)
                if "mlflow.parentRunId" in r.data.tags]
    runs.sort(key=lambda r: r.info.end_time or 0)
    curve, best = [], 0.0
    for run in runs:
        if run.data.tags.get("trial_status") == "completed":
            best = max(best, run.data.metrics.get(OBJECTIVE, 0.0))
        curve.append(best)
    return curve + [best] * (trials - len(curve))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="mid")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    out = Path(args.out or REPO / "bench" / "results" / f"search-efficiency-{args.space}.png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    print(f"space {args.space}, {args.trials} trials, seeds {args.seeds}; best full-length "
          f"{OBJECTIVE} after the last trial (per seed) and mean")
    for algorithm, colour in (("tpe", "tab:blue"), ("random", "tab:orange")):
        curves = np.array([best_so_far(args.space, algorithm, seed, args.trials,
                                       args.overrides) for seed in args.seeds])
        x = np.arange(1, args.trials + 1)
        ax.plot(x, curves.mean(0), color=colour, label=f"{algorithm} (mean of "
                                                       f"{len(args.seeds)} seeds)")
        ax.fill_between(x, curves.min(0), curves.max(0), color=colour, alpha=0.2)
        print(f"  {algorithm:<7} {' '.join(f'{c[-1]:.3f}' for c in curves)}  mean "
              f"{curves[:, -1].mean():.3f}; after half the budget "
              f"{curves[:, args.trials // 2 - 1].mean():.3f}", flush=True)
    ax.set_xlabel("trials finished")
    ax.set_ylabel(f"best full-length {OBJECTIVE}")
    ax.set_title(f"TPE vs random sampling on {args.space} (band: min to max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
