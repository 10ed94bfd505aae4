"""Does the search earn its keep? Each sampler against random search and against the space's
own default recipe, at the same budget, over several search seeds.

    python bench/search_efficiency.py                                  # mid, 4 samplers x 3
    python bench/search_efficiency.py --samplers tpe random --seeds 0 1 2 --trials 16
    python bench/search_efficiency.py --space mnist5k --samplers tpe --warm-start LEVERS.json

Each search is the space's own (`python -m search.run`, its baselines and default recipe
included, ASHA on) without the final comparison. Per search it records, after each finished
trial: the best full-length objective found by a *searched* recipe (not the default, not a
baseline), against the trial count and against wall time; and at the end, the paired
difference of that best recipe with the default recipe on the same validation points. It
prints a table (mean over seeds with a t interval; per seed whether the best searched recipe
beats the default with a paired interval above 0) and plots both curves per sampler to
bench/results/search-efficiency-<space>.png, with the default recipe's value and the best
recipe of a lever study (`--levers`, written by bench/levers.py) as lines: does the search
beat a person?

Seeds run in the outer loop, so a stopped benchmark leaves every sampler with the same seeds.
`--record FILE` appends each finished search to a JSON-lines file and skips the ones it already
holds; the table and plot are then over everything in it, so a long benchmark can be run in
parts, and a variant of a sampler (`--label tpe-startup5 --set search.startup_trials=5`) can
join the same table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from mlflow.tracking import MlflowClient

import spaces
from search.vocab import OBJECTIVE, TAG, TrialStatus, points_key
from trainables.scoring.stats import Interval, paired_difference, seed_interval

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Search:
    """One search's curve and its end: the best searched recipe against the default."""

    sampler: str
    seed: int
    by_trial: list[float]  # best searched objective after each finished trial
    by_time: list[tuple[float, float]]  # (minutes since the start, best so far)
    default: float  # the default recipe's objective
    versus_default: Interval | None  # best searched minus default, paired on val points
    wall_min: float
    # what became of the searched recipes: full length, stopped by ASHA, zeroed by a flag
    fates: tuple[int, int, int] | None = None
    # the best searched recipe's values where they differ from the default recipe's
    best_changes: dict[str, str] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> Search:
        raw = json.loads(line)
        versus = raw.pop("versus_default")
        raw["by_time"] = [tuple(pair) for pair in raw["by_time"]]
        raw["fates"] = tuple(raw["fates"]) if raw.get("fates") else None
        return cls(**raw, versus_default=Interval(**versus) if versus else None)


def run_search(space: str, sampler: str, seed: int, trials: int, overrides: list[str],
               warm: str | None, keep: Path | None = None) -> Search:
    """One search in a fresh folder: a temporary one, or `keep` (left in place, with its
    MLflow store and ray_results, to look at the recipes it found)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=False)
    with (contextlib.nullcontext(str(keep)) if keep is not None
          else tempfile.TemporaryDirectory()) as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        command = [sys.executable, "-m", "search.run", "--space", space, "--num-samples",
                   str(trials), "--search-alg", sampler, "--seed", str(seed),
                   "--sealed-top-k", "0", "--name", "efficiency", "--storage-path",
                   f"{folder}/ray", "--mlflow-uri", uri, "--experiment", "efficiency",
                   *(["--warm-start", warm] if warm else [])]
        for override in overrides:
            command += ["--set", override]
        start = time.time()
        proc = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = (time.time() - start) / 60
        if proc.returncode not in (0, 1):  # 1: no trial completed (all stopped or failed)
            raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
        return _read(Path(folder), uri, sampler, seed, trials, start, wall,
                     spaces.load(space, overrides).search.objective)


def _read(folder: Path, uri: str, sampler: str, seed: int, trials: int, start: float,
          wall: float, objective: str) -> Search:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("efficiency")
    assert experiment is not None
    runs = [r for r in client.search_runs([experiment.experiment_id], max_results=500)
            if TAG.PARENT in r.data.tags]
    runs.sort(key=lambda r: r.info.end_time or 0)
    points = {}  # the per-point values of the objective at each trial's last evaluation
    for path in (folder / "ray" / "efficiency").glob("*/result.json"):
        last = json.loads(path.read_text().splitlines()[-1])
        points[last["trial_id"]] = last.get(points_key(objective))
    by_trial, by_time, best, best_run = [], [], 0.0, None
    default, default_run = 0.0, None
    full = stopped = zeroed = 0
    for run in runs:
        origin = run.data.tags.get(TAG.ORIGIN, "")
        value = run.data.metrics.get(OBJECTIVE, 0.0)
        status = run.data.tags.get(TAG.STATUS)
        searched = origin != "default" and not origin.startswith("baseline")
        if searched:
            full += status == TrialStatus.COMPLETED
            stopped += status == TrialStatus.EARLY_STOPPED
            zeroed += (status == TrialStatus.COMPLETED and value == 0
                       and run.data.metrics.get(objective, 0.0) > 0)
        if status == TrialStatus.COMPLETED:
            if origin == "default":
                default, default_run = value, run
            elif searched and value > best:
                best, best_run = value, run
        by_trial.append(best)
        by_time.append((((run.info.end_time or 0) / 1000 - start) / 60, best))
    versus = None
    if best_run is not None and default_run is not None:
        a = points.get(best_run.data.tags[TAG.TRIAL_ID])
        b = points.get(default_run.data.tags[TAG.TRIAL_ID])
        if a is not None and b is not None:
            versus = paired_difference(np.asarray(a), np.asarray(b))
    by_trial += [best] * (trials - len(by_trial))
    changes = None
    if best_run is not None and default_run is not None:
        own, base = best_run.data.params, default_run.data.params
        changes = {k: v for k, v in sorted(own.items()) if base.get(k) != v}
    return Search(sampler, seed, by_trial, by_time, default, versus, wall,
                  (full, stopped, zeroed), changes)


def _lever_best(path: str | None) -> tuple[str, float] | None:
    if path is None:
        return None
    table = json.loads(Path(path).read_text())["levers"]
    name = max(table, key=lambda n: statistics.fmean(table[n]["objective"]))
    return name, statistics.fmean(table[name]["objective"])


def _table(found: dict[str, list[Search]], reference: str) -> list[str]:
    """Per sampler: what its searched recipes became, the best of them per seed ("-": none
    reached full length unflagged), that best against the default recipe (paired on the
    validation points), and the search's winner (the better of the two: what a user gets)
    against `reference`'s winner, paired by seed."""
    lines = ["| sampler | searched recipes per seed: full length / ASHA-stopped / zeroed by a "
             "flag | best searched, per seed | vs the default recipe (paired, per seed) | "
             "beats it in | the search's winner, mean [95% t over seeds] | vs "
             f"{reference}'s winner (paired by seed) | wall min/search |",
             "|---|---|---|---|---|---|---|---|"]

    def winner(search: Search) -> float:
        return max(search.by_trial[-1], search.default)

    ref = {s.seed: winner(s) for s in found.get(reference, [])}
    for sampler, searches in found.items():
        fates = " ".join("/".join(map(str, s.fates)) if s.fates else "?" for s in searches)
        best = " ".join(f"{s.by_trial[-1]:.3f}" if s.by_trial[-1] > 0 else "-"
                        for s in searches)
        wins = sum(1 for s in searches if s.versus_default and s.versus_default.low > 0)
        versus = "; ".join(f"{s.versus_default.value:+.3f} [{s.versus_default.low:+.3f}, "
                           f"{s.versus_default.high:+.3f}]" if s.versus_default else "-"
                           for s in searches)
        paired = [winner(s) - ref[s.seed] for s in searches if s.seed in ref]
        gap = seed_interval(paired) if sampler != reference and len(paired) > 1 else None
        lines.append(
            f"| {sampler} | {fates} | {best} | {versus} | {wins} of {len(searches)} | "
            f"{seed_interval([winner(s) for s in searches])} | "
            f"{'-' if gap is None else f'{gap.value:+.3f} [{gap.low:+.3f}, {gap.high:+.3f}]'}"
            f" | {statistics.fmean(s.wall_min for s in searches):.1f} |")
    return lines


def _plot(found: dict[str, list[Search]], lever: tuple[str, float] | None, out: Path,
          title: str) -> None:
    fig, (by_n, by_t) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for sampler, searches in found.items():
        colour = next(colours)
        curves = np.array([s.by_trial for s in searches])
        x = np.arange(1, curves.shape[1] + 1)
        by_n.plot(x, curves.mean(0), color=colour, label=f"{sampler} ({len(searches)} seeds)")
        by_n.fill_between(x, curves.min(0), curves.max(0), color=colour, alpha=0.15)
        for search in searches:
            times, values = zip(*search.by_time, strict=True)
            by_t.step(times, values, where="post", color=colour, alpha=0.7)
    defaults = [s.default for searches in found.values() for s in searches]
    for ax in (by_n, by_t):
        ax.axhline(statistics.fmean(defaults), color="black", linestyle="--",
                   label="the space's default recipe")
        if lever is not None:
            ax.axhline(lever[1], color="tab:red", linestyle=":",
                       label=f"lever study's best ({lever[0]})")
        ax.set_ylabel(f"best searched full-length {OBJECTIVE}")
        ax.grid(alpha=0.3)
    by_n.set_xlabel("trials finished (baselines and the default included)")
    by_t.set_xlabel("minutes since the search started")
    by_n.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--space", default="mid")
    p.add_argument("--samplers", nargs="+", default=["tpe", "tpe-mv", "gp", "random"])
    p.add_argument("--trials", type=int, default=None, help="default: the space's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--levers", default=None, help="a lever table (bench/levers.py --out)")
    p.add_argument("--warm-start", default=None, help="passed to every search")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default=None)
    p.add_argument("--record", default=None,
                   help="JSON lines: each finished search is appended; ones already there are "
                        "skipped, and the table covers the whole file")
    p.add_argument("--keep", default=None,
                   help="keep each search's folder as KEEP/<label>-seed<N> (else a temp folder)")
    p.add_argument("--report", action="store_true",
                   help="run nothing: the table and plot of what --record holds")
    p.add_argument("--label", default=None,
                   help="the table's name for the (single) sampler, e.g. for a --set variant")
    args = p.parse_args()
    if args.report and not args.record:
        p.error("--report prints what --record FILE holds: give --record")
    if args.label and len(args.samplers) != 1:
        p.error(f"--label {args.label!r} names one sampler; got --samplers {args.samplers}")
    trials = args.trials or spaces.load(args.space, args.overrides).search.num_samples
    out = Path(args.out or REPO / "bench" / "results" / f"search-efficiency-{args.space}.png")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, space {args.space}, {trials} trials per search, "
          + (f"the searches in {args.record}" if args.report else f"seeds {args.seeds}")
          + (f", warm start {args.warm_start}" if args.warm_start else ""), flush=True)
    record = Path(args.record) if args.record else None
    done = ([Search.from_json(line) for line in record.read_text().splitlines() if line]
            if record is not None and record.exists() else [])
    for seed in [] if args.report else args.seeds:  # seeds outside: a stopped run leaves
        for sampler in args.samplers:  # every sampler the same seeds
            label = args.label or sampler
            if any(s.sampler == label and s.seed == seed for s in done):
                continue
            search = run_search(args.space, sampler, seed, trials, args.overrides,
                                args.warm_start,
                                Path(args.keep).resolve() / f"{label}-seed{seed}" if args.keep
                                else None)
            search.sampler = label
            done.append(search)
            if record is not None:
                with record.open("a") as f:
                    f.write(search.to_json() + "\n")
            print(f"  {label} seed {seed}: best searched {search.by_trial[-1]:.3f}, default "
                  f"{search.default:.3f}, {search.wall_min:.1f} min; the best's changes to "
                  f"the default: {search.best_changes}", flush=True)
    found: dict[str, list[Search]] = {}
    for search in sorted(done, key=lambda s: s.seed):
        found.setdefault(search.sampler, []).append(search)
    reference = "random" if "random" in found else next(iter(found))
    print("\n" + "\n".join(_table(found, reference)))
    lever = _lever_best(args.levers)
    if lever is not None:
        print(f"\nthe lever study's best recipe: {lever[0]}, {lever[1]:.3f} (mean over its seeds)")
    _plot(found, lever, out, f"{args.space}: samplers at {trials} trials")
    shown = Path(out).resolve()
    print(f"plot: {shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown}")


if __name__ == "__main__":
    main()
