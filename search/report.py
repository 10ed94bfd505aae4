"""`python -m search.report`: a search's leaderboard, Pareto plot, per-attack heat map and
parameter importance, written as PNG files and logged to the search's MLflow parent run.

    python -m search.report                          # the latest search under ./ray_results
    python -m search.report --name mid-20261121-095941 --format markdown
    python -m search.report --mlflow-uri http://HEAD:5000 --experiment defense-search-paper
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from search.cli import Parser, run_cli
from search.leaderboard import COLUMNS, Entry, format_table, to_csv
from search.records import Located, locate
from search.stores import writable_folder
from search.vocab import ARTIFACT, TrialStatus
from spaces import INACTIVE, Mode, Space
from trainables.errors import ConfigError
from trainables.vocab import CLEAN_ACC, HELDOUT_MEAN, Group, Split, Stat

__all__ = ["heat_map", "importance_plot", "main", "pareto_figure", "pareto_plot"]

HELDOUT, CLEAN = HELDOUT_MEAN, CLEAN_ACC


def pareto_plot(entries: Sequence[Entry], path: Path) -> Path:
    """Clean vs held-out accuracy, one dot per trial (see `pareto_figure`), as a PNG."""
    fig = pareto_figure(entries)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_figure(entries: Sequence[Entry]) -> Figure:
    """Clean vs held-out accuracy, one dot per trial; flags crossed out; the Pareto front of
    the trials that passed the masking checks (a flagged trial's robustness is not real).

    Only the front and the baselines are labelled, and the front is drawn over the dots:
    validation accuracies come in steps of 1/n, so many trials share a spot; their labels are
    placed where no other label is (`_place_labels`).
    """
    points = [(clean, heldout, e) for e in entries if (clean := e.value(CLEAN)) is not None
              and (heldout := e.value(HELDOUT)) is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    styles: dict[str, tuple[str, str]] = {TrialStatus.COMPLETED: ("o", "tab:blue"),
              TrialStatus.EARLY_STOPPED: ("o", "lightsteelblue")}
    for clean, heldout, entry in points:
        marker, colour = ("s", "tab:green") if entry.baseline else styles.get(
            entry.status, ("o", "grey"))
        ax.scatter(clean, heldout, marker=marker, color=colour, s=40, zorder=2, alpha=0.8)
        if entry.flags:
            ax.scatter(clean, heldout, marker="x", color="tab:red", s=90, zorder=3)
    front: list[tuple[float, float, Entry]] = []
    best = -1.0
    honest = [p for p in points if not p[2].flags and not p[2].baseline]
    for clean, heldout, entry in sorted(honest, key=lambda p: (-p[0], -p[1])):
        if heldout > best:
            front.append((clean, heldout, entry))
            best = heldout
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:orange", lw=1.8,
                marker="o", markersize=7, markerfacecolor="none", zorder=4,
                label="Pareto front (unflagged trials)")
    ax.scatter([], [], marker="x", color="tab:red", label="masking flag raised")
    ax.scatter([], [], marker="o", color="lightsteelblue", label="stopped early by ASHA")
    ax.scatter([], [], marker="s", color="tab:green", label="baseline")
    ax.set_xlabel("clean accuracy (validation)")
    ax.set_ylabel("held-out robust accuracy, mean over attacks (validation)")
    ax.set_title("Clean vs held-out robustness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()  # first: the labels are placed in the final layout's display space
    _place_labels(ax, [(c, h, e.baseline or e.name.split()[0])
                       for c, h, e in front + [p for p in points if p[2].baseline]])
    return fig


# Where a label may go, in points from its dot: right of it, then rows above and below, then
# the same on the left. A label takes the first spot that overlaps no label placed before and
# stays inside the axes; failing that, the first free spot; a dot crowded beyond every spot
# keeps the last one.
_ROWS = (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8)
_SPOTS = tuple((side, 3 + 10 * row) for side in (5, -5) for row in _ROWS)


def _place_labels(ax: Any, labels: Sequence[tuple[float, float, str]]) -> None:
    """Annotates each (x, y, text) at a spot where its box (the renderer's own extent of the
    text) overlaps no box placed before."""
    renderer = ax.figure.canvas.get_renderer()
    placed: list[Any] = []
    for x, y, text in labels:
        boxes = []
        for dx, dy in _SPOTS:
            note = ax.annotate(text, (x, y), fontsize=7, xytext=(dx, dy),
                               textcoords="offset points", zorder=5,
                               ha="left" if dx > 0 else "right")
            boxes.append(note.get_window_extent(renderer).padded(1))
            note.remove()
        free = [i for i, box in enumerate(boxes) if not any(box.overlaps(o) for o in placed)]
        inside = [i for i in free if ax.bbox.containsx(boxes[i].x0) and ax.bbox.containsx(
            boxes[i].x1) and ax.bbox.containsy(boxes[i].y0) and ax.bbox.containsy(boxes[i].y1)]
        best = (inside or free or [len(_SPOTS) - 1])[0]
        dx, dy = _SPOTS[best]
        ax.annotate(text, (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points",
                    zorder=5, ha="left" if dx > 0 else "right")
        placed.append(boxes[best])


def heat_map(entries: Sequence[Entry], path: Path) -> Path:
    """Robust accuracy per trial (rows) and attack (columns): pool, held-out, transfer, sealed."""
    groups = tuple(f"{split}/{group}/" for split, group in (
        (Split.VAL, Group.POOL), (Split.VAL, Group.HELDOUT), (Split.VAL, Group.TRANSFER),
        (Split.TEST, Group.SEALED), (Split.TEST, Group.ADAPTIVE)))
    columns = sorted({k for e in entries for k in e.metrics
                      if k.startswith(groups) and k.endswith("/acc")},
                     key=lambda k: (groups.index(k.rsplit("/", 2)[0] + "/"), k))
    rows = [e for e in entries if any(c in e.metrics for c in columns)]
    data = [[e.metrics.get(c, float("nan")) for c in columns] for e in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(columns) + 3),
                                    max(3.0, 0.32 * len(rows) + 2)))
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)),
                  [c.removesuffix(f"/{Stat.ACC}").replace(f"{Split.VAL}/", "")
                   .replace(f"{Split.TEST}/", "test ")
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


def importance_plot(entries: Sequence[Entry], space: Space, objective: str, path: Path
                    ) -> Path | None:
    """fANOVA importance of the searched values for the objective, over the full-length trials
    as MLflow has them (so it needs no access to the search's Optuna database)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        flag: optuna.distributions.CategoricalDistribution([False, True])
        for flag in space.pool.flags(space.pool.candidates)} if space.pool.searched else {}
    for name, spec in space.params.items():
        if spec.choices is not None:
            distributions[name] = optuna.distributions.CategoricalDistribution(spec.choices)
        else:
            assert spec.low is not None and spec.high is not None
            distributions[name] = optuna.distributions.FloatDistribution(
                spec.low, spec.high, log=spec.log)
    study = optuna.create_study(
        direction="maximize" if space.search.mode == Mode.MAX else "minimize")
    done = [e for e in entries if e.value(objective) is not None
            and e.status == TrialStatus.COMPLETED]
    for entry in done:
        values = _typed_values(entry, space)
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions={k: distributions[k] for k in values},
            value=entry.value(objective)))
    if len(done) < 3:
        print(f"importance: {len(done)} full-length trial(s); fANOVA needs at least 3",
              file=sys.stderr)
        return None
    try:
        importance = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as err:
        print(f"importance: not computed ({err})", file=sys.stderr)
        return None
    names = list(importance)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.35 * len(names) + 1.5)))
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"fANOVA importance for {objective} ({len(done)} full-length trials)")
    ax.set_title("Which searched values mattered")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _typed_values(entry: Entry, space: Space) -> dict[str, Any]:
    """A trial's searched values from its MLflow params (strings) as the space types them;
    inactive ones left out."""
    values: dict[str, Any] = {}
    if space.pool.searched and "pool" in entry.params:
        values.update(space.pool.flags(entry.params["pool"].split("+")))
    for name, spec in space.params.items():
        raw = entry.params.get(name, INACTIVE)
        if raw == INACTIVE:
            continue
        if spec.choices is not None:
            values[name] = next((c for c in spec.choices if str(c) == raw), raw)
        else:
            values[name] = float(raw)
    return values


def parallel_coordinates(entries: Sequence[Entry], space: Space, objective: str, path: Path
                         ) -> Path | None:
    """Every trial's searched values against the objective, one line per trial coloured by
    it: what W&B Sweeps draws unasked (MLflow's compare page picks its own metric)."""
    names = [*space.params]
    rows = [e for e in entries if e.value(objective) is not None]
    if not rows or not names:
        return None
    columns: list[tuple[str, list[float], list[str] | None]] = []
    for name in names:
        spec = space.params[name]
        raw = [e.params.get(name, INACTIVE) for e in rows]
        if spec.choices is not None:
            labels = [str(c) for c in spec.choices] + [INACTIVE]
            columns.append((name, [labels.index(r) / max(1, len(labels) - 1)
                                   if r in labels else 1.0 for r in raw], labels))
        else:
            assert spec.low is not None and spec.high is not None
            low, high = (math.log(spec.low), math.log(spec.high)) if spec.log else (
                spec.low, spec.high)
            scaled = []
            for r in raw:
                value = float(r) if r != INACTIVE else float("nan")
                value = math.log(value) if spec.log and value > 0 else value
                scaled.append((value - low) / (high - low) if high > low else 0.5)
            columns.append((name, scaled, None))
    values = [e.value(objective) or 0.0 for e in rows]
    top = max(values) or 1.0
    columns.append((objective.rsplit("/", 1)[-1], [v / top for v in values], None))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(columns)), 5))
    cmap = plt.get_cmap("viridis")
    order = sorted(range(len(rows)), key=lambda i: values[i])  # the best drawn on top
    for i in order:
        ys = [col[1][i] for col in columns]
        baseline = rows[i].baseline
        if baseline:
            ax.plot(range(len(columns)), ys, color="tab:red", lw=2.2, ls="--")
            ax.annotate(baseline, (len(columns) - 1, ys[-1]), fontsize=7, xytext=(4, 0),
                        textcoords="offset points", color="tab:red")
        else:
            ax.plot(range(len(columns)), ys, color=cmap(values[i] / top), lw=1.4, alpha=0.85)
    for x, (_, _, ticks) in enumerate(columns):
        ax.axvline(x, color="grey", lw=0.6)
        for j, tick in enumerate(ticks or ()):
            ax.annotate(tick, (x, j / max(1, len(ticks or ()) - 1)), fontsize=6,
                        xytext=(3, 0), textcoords="offset points", color="dimgrey")
    ax.set_xticks(range(len(columns)), [c[0] for c in columns], rotation=30, ha="right",
                  fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"Searched values against {objective} (colour: objective; dashed red: "
                 "baselines)", fontsize=9)
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, top)), ax=ax,
                 label=objective)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(entries: Sequence[Entry], folder: Path, *, objective: str, space: Space
                ) -> list[Path]:
    """Every plot of a search's report, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [pareto_plot(entries, folder / "pareto.png"),
               heat_map(entries, folder / "heatmap.png")]
    found = [parallel_coordinates(entries, space, objective, folder / "parallel.png"),
             importance_plot(entries, space, objective, folder / "importance.png")]
    return written + [p for p in found if p is not None]


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
    p = Parser(prog="python -m search.report", description=(
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

    def body() -> int:
        if args.out is not None and not args.no_plots:
            writable_folder(args.out, "--out")  # before anything is read or drawn
        found = locate(storage_path=args.storage_path, name=args.name,
                       mlflow_uri=args.mlflow_uri, experiment=args.experiment)
        if not found.entries:
            raise ConfigError(f"search {found.name!r} has no trial runs in MLflow yet")
        space = _space_of(found)
        print(_table(found.entries, args.format, space))
        if args.no_plots:
            return 0
        if args.out:
            out = Path(args.out)
        elif found.folder is not None:
            out = found.folder / "report"
        else:
            out = Path("report") / found.name
        written = write_plots(found.entries, out, space=space,
                              objective=space.search.objective)
        for path in written:
            found.client.log_artifact(found.parent_id, str(path), "report")
        print(f"\nplots: {', '.join(str(p) for p in written)} (also on the MLflow parent run, "
              "under report/)", file=sys.stderr)
        return 0

    return run_cli(body)


def _space_of(found: Located) -> Any:
    """The search's space (for the searched-value columns), from its parent run's artifacts."""
    import os
    import tempfile

    from mlflow.exceptions import MlflowException

    import spaces

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = found.client.download_artifacts(found.parent_id, ARTIFACT.SPACE, folder)
        except (MlflowException, OSError):  # no copy logged: the space named in the tags
            run = found.client.get_run(found.parent_id)
            return spaces.load(run.data.tags.get("space", "mid"))
        return spaces.load(path)


if __name__ == "__main__":
    raise SystemExit(main())
