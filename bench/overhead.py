"""What the machinery costs, in one run, as ratios (1 torch thread everywhere).

    python bench/overhead.py                 # mid's pgd-at recipe, 3 repeats
    python bench/overhead.py --repeats 1

1. the same trial standalone (`run_trial`, no Ray) vs inside a one-trial search
   (`python -m search.run`: Ray + Tune + Optuna + MLflow, --max-concurrent 1, 1 CPU): the
   trial's own time in the search (Tune's time_total_s) and the whole command's wall time,
   each over the standalone time;
2. our `pgd-at` trial vs the loop a user would write instead: plain PyTorch + torchattacks
   PGD-AT with the same model, data, epochs, batch, steps, step size and optimiser. Compared
   on training alone (our craft + step phases) and on the whole trial (ours also evaluates
   held-out attacks and runs the masking checks; the plain loop evaluates nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from reference import plain_pgd_at

import spaces
from trainables.config import TrialConfig
from trainables.defense.baselines import baseline_config
from trainables.setting.prepare import Shared, prepare_shared
from trainables.train import run_trial

REPO = Path(__file__).resolve().parents[1]


def standalone(config: TrialConfig, shared: Shared) -> tuple[float, float]:
    """(whole trial, training phases) seconds."""
    start = time.perf_counter()
    result = run_trial(config, shared=shared, log=lambda _: None)
    wall = time.perf_counter() - start
    return wall, result.metrics["time/craft_s"] + result.metrics["time/step_s"]


def in_search(space: str, overrides: list[str], folder: Path) -> tuple[float, float]:
    """(the trial's time inside Tune, the command's wall time) of a one-trial search."""
    name = "overhead"
    command = [sys.executable, "-m", "search.run", "--space", space, "--num-samples", "1",
               "--max-concurrent", "1", "--cpus-per-trial", "1", "--scheduler", "none",
               "--sealed-top-k", "0", "--set", "baselines=[]", "--name", name,
               "--storage-path", str(folder / "ray"),
               "--mlflow-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    for override in overrides:
        command += ["--set", override]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    results = list((folder / "ray" / name).glob("*/result.json"))
    last = json.loads(results[0].read_text().splitlines()[-1])
    return float(last["time_total_s"]), wall


def _row(label: str, values: list[float]) -> str:
    return (f"  {label:<58} {min(values):7.2f} {statistics.median(values):7.2f} "
            f"{max(values):7.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="mid")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    torch.set_num_threads(1)
    space = spaces.load(args.space, args.overrides)
    config = baseline_config(space.trial_config(threads=1), "pgd-at")
    shared = prepare_shared(config, pool_candidates=space.pool.candidates, log=lambda _: None)
    # the one-trial search's first trial is its defaults: make them pgd-at's values
    values = space.baseline_values("pgd-at")
    overrides = [*args.overrides, f"attacks.pool.default={json.dumps(list(config.pool))}",
                 *(f"params.{k}.default={json.dumps(v)}" for k, v in values.items()
                   if k in space.params)]
    found: dict[str, list[float]] = {k: [] for k in (
        "standalone trial (wall)", "standalone training (craft + step)",
        "trial inside a one-trial search (Tune's time_total_s)",
        "one-trial search command (wall)", "plain PyTorch + torchattacks PGD-AT loop")}
    for _ in range(args.repeats):
        wall, training = standalone(config, shared)
        found["standalone trial (wall)"].append(wall)
        found["standalone training (craft + step)"].append(training)
        with tempfile.TemporaryDirectory() as folder:
            inside, command = in_search(args.space, overrides, Path(folder))
        found["trial inside a one-trial search (Tune's time_total_s)"].append(inside)
        found["one-trial search command (wall)"].append(command)
        found["plain PyTorch + torchattacks PGD-AT loop"].append(plain_pgd_at(config, shared))
    print(f"space {space.name}, recipe pgd-at ({config.epochs} epochs, batch "
          f"{config.batch_size}, {config.train_attack_steps}-step PGD), 1 thread, "
          f"{args.repeats} repeat(s); seconds min / median / max")
    for label, values in found.items():
        print(_row(label, values))
    med = [statistics.median(v) for v in found.values()]
    trial, training, inside, command, plain = med
    print("ratios (medians):")
    for label, ratio in (("in-search trial / standalone trial", inside / trial),
                         ("one-trial search command / standalone trial", command / trial),
                         ("our training / plain loop", training / plain),
                         ("our whole trial / plain loop", trial / plain)):
        print(f"  {label:<46} {ratio:.3f}")


if __name__ == "__main__":
    main()
