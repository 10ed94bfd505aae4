"""`python -m search.report`: a search's leaderboard, Pareto plot, per-attack heat map and
parameter importance, written as PNG files and logged to the search's MLflow parent run.

    python -m search.report                          # the latest search under ./ray_results
    python -m search.report --name mid-20261121-095941 --format markdown
    python -m search.report --mlflow-uri http://HEAD:5000 --experiment defense-search-paper
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from search.leaderboard import COLUMNS, Entry, collect, format_table, rank, to_csv
from trainables.errors import ConfigError, DefenseSearchError

__all__ = ["heat_map", "importance_plot", "main", "pareto_plot"]

OBJECTIVE = "val/objective"
HELDOUT, CLEAN = "val/heldout/mean_acc", "val/clean/acc"


@dataclass
class Search:
    name: str
    client: Any
    experiment_id: str
    parent_id: str
    entries: list[Entry]
    optuna_storage: str | None
    out: Path


def _locate(args: argparse.Namespace) -> Search:
    """The search to report on: by MLflow experiment (its latest parent run) or by name."""
    from mlflow.tracking import MlflowClient

    if args.experiment:
        uri = args.mlflow_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            raise ConfigError(f"no MLflow experiment {args.experiment!r} at {uri}")
        parents = [r for r in client.search_runs([experiment.experiment_id],
                                                 order_by=["attributes.start_time DESC"])
                   if "mlflow.parentRunId" not in r.data.tags
                   and (args.name is None or r.info.run_name == args.name)]
        if not parents:
            raise ConfigError(f"experiment {args.experiment!r} holds no search run")
        parent = parents[0]
        name, optuna_storage = parent.info.run_name, None
        out = Path(args.out or Path("report") / name)
        experiment_id, parent_id = experiment.experiment_id, parent.info.run_id
    else:
        from search.records import find_search, read_info

        folder = find_search(args.storage_path, args.name)
        info = read_info(folder)
        client = MlflowClient(args.mlflow_uri or info["mlflow_uri"])
        name, optuna_storage = info["name"], info.get("optuna_storage")
        experiment_id, parent_id = info["experiment_id"], info["parent_run_id"]
        out = Path(args.out or folder / "report")
    entries = rank(collect(client, experiment_id, parent_id), OBJECTIVE)
    if not entries:
        raise ConfigError(f"search {name!r} has no trial runs in MLflow yet")
    out.mkdir(parents=True, exist_ok=True)
    return Search(name, client, experiment_id, parent_id, entries, optuna_storage, out)


def pareto_plot(entries: Sequence[Entry], path: Path) -> Path:
    """Clean vs held-out accuracy, one dot per trial; flags crossed out; the Pareto front of
    the trials that passed the masking checks (a flagged trial's robustness is not real)."""
    points = [(e.value(CLEAN), e.value(HELDOUT), e) for e in entries
              if e.value(CLEAN) is not None and e.value(HELDOUT) is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {"completed": ("o", "tab:blue"), "early-stopped": ("o", "lightsteelblue"),
              "baseline": ("s", "tab:green")}
    for clean, heldout, entry in points:
        marker, colour = styles.get(entry.status, ("o", "grey"))
        ax.scatter(clean, heldout, marker=marker, color=colour, s=40, zorder=2)
        if entry.flags:
            ax.scatter(clean, heldout, marker="x", color="tab:red", s=90, zorder=3)
        label = entry.name if entry.status == "baseline" else entry.name.split()[0]
        ax.annotate(label, (clean, heldout), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    front, best = [], -1.0
    honest = [p for p in points if not p[2].flags and p[2].status != "baseline"]
    for clean, heldout, _ in sorted(honest, key=lambda p: (-p[0], -p[1])):
        if heldout > best:
            front.append((clean, heldout))
            best = heldout
    if front:
        ax.plot(*zip(*front, strict=True), color="tab:orange", lw=1.5, zorder=1,
                label="Pareto front (unflagged trials)")
    ax.scatter([], [], marker="x", color="tab:red", label="masking flag raised")
    ax.scatter([], [], marker="o", color="lightsteelblue", label="stopped early by ASHA")
    ax.scatter([], [], marker="s", color="tab:green", label="baseline")
    ax.set_xlabel("clean accuracy (validation)")
    ax.set_ylabel("held-out robust accuracy, mean over attacks (validation)")
    ax.set_title("Clean vs held-out robustness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heat_map(entries: Sequence[Entry], path: Path) -> Path:
    """Robust accuracy per trial (rows) and attack (columns): pool, held-out, transfer, sealed."""
    groups = ("val/pool/", "val/heldout/", "val/transfer/", "test/sealed/", "test/adaptive/")
    columns = sorted({k for e in entries for k in e.metrics
                      if k.startswith(groups) and k.endswith("/acc")},
                     key=lambda k: (groups.index(k.rsplit("/", 2)[0] + "/"), k))
    rows = [e for e in entries if any(c in e.metrics for c in columns)]
    data = [[e.metrics.get(c, float("nan")) for c in columns] for e in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(columns) + 3),
                                    max(3.0, 0.32 * len(rows) + 2)))
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)),
                  [c.removesuffix("/acc").replace("val/", "").replace("test/", "test ")
                   for c in columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [e.name for e in rows], fontsize=7)
    for i, row in enumerate(data):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=5,
                        color="white" if value < 0.5 else "black")
    fig.colorbar(image, ax=ax, label="robust accuracy")
    ax.set_title("Robust accuracy per trial and attack")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def importance_plot(storage: str, study_name: str, path: Path) -> Path | None:
    """fANOVA importance of the searched values for the objective (completed trials only)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 3:
        print(f"importance: {len(done)} completed trial(s); fANOVA needs at least 3",
              file=sys.stderr)
        return None
    try:
        importance = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target=lambda t: t.values[0])
    except (RuntimeError, ValueError) as err:
        print(f"importance: not computed ({err})", file=sys.stderr)
        return None
    names = list(importance)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.35 * len(names) + 1.5)))
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"fANOVA importance for the objective ({len(done)} completed trials)")
    ax.set_title("Which searched values mattered")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(entries: Sequence[Entry], fmt: str, space: Any) -> str:
    if fmt == "csv":
        return to_csv(entries, space)
    if fmt == "json":
        return json.dumps([{"rank": i, "trial": e.name, "status": e.status,
                            "masking_flags": e.flags, "run_id": e.run_id,
                            **{key: e.value(key) for _, key in COLUMNS}, "params": e.params}
                           for i, e in enumerate(entries, 1)], indent=2)
    if fmt == "markdown":
        header = ["rank", "trial", "status", *(title for title, _ in COLUMNS), "masking flags"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for i, e in enumerate(entries, 1):
            cells = [f"{e.value(k):.3f}" if e.value(k) is not None else "-" for _, k in COLUMNS]
            lines.append(f"| {i} | {e.name} | {e.status} | " + " | ".join(cells)
                         + f" | {', '.join(e.flags) or '-'} |")
        return "\n".join(lines)
    return format_table(entries, space)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.report", description=(
        "Leaderboard, Pareto plot, per-attack heat map and parameter importance of a search"))
    p.add_argument("--name", default=None, help="the search (default: the latest)")
    p.add_argument("--storage-path", default="./ray_results",
                   help="where `search.run` kept its results")
    p.add_argument("--mlflow-uri", default=None, help="tracking URI (default: the search's)")
    p.add_argument("--experiment", default=None,
                   help="report the latest search of this MLflow experiment instead")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.add_argument("--out", default=None, help="folder for the PNG files")
    p.add_argument("--no-plots", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    try:
        search = _locate(args)
        space = _space_of(search)
        print(_table(search.entries, args.format, space))
        if args.no_plots:
            return 0
        written = [pareto_plot(search.entries, search.out / "pareto.png"),
                   heat_map(search.entries, search.out / "heatmap.png")]
        if search.optuna_storage:
            found = importance_plot(search.optuna_storage, search.name,
                                    search.out / "importance.png")
            written += [found] if found else []
        for path in written:
            search.client.log_artifact(search.parent_id, str(path), "report")
        print(f"\nplots: {', '.join(str(p) for p in written)} (also on the MLflow parent run, "
              "under report/)", file=sys.stderr)
    except DefenseSearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _space_of(search: Search) -> Any:
    """The search's space (for the searched-value columns), from its parent run's artifacts."""
    import os
    import tempfile

    from mlflow.exceptions import MlflowException

    import spaces

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = search.client.download_artifacts(search.parent_id, "space.yaml", folder)
        except (MlflowException, OSError):  # no copy logged: the space named in the tags
            run = search.client.get_run(search.parent_id)
            return spaces.load(run.data.tags.get("space", "mid"))
        return spaces.load(path)


if __name__ == "__main__":
    raise SystemExit(main())
