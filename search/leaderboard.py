"""The leaderboard of a search, read back from its MLflow child runs, and the best recipe."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from search.records import STATUS_TAG
from spaces import Space

__all__ = ["Entry", "collect", "format_table", "rank", "to_csv"]

STATUS_ORDER = {"completed": 0, "early-stopped": 1, "running": 2, "retrying": 2, "failed": 3,
                "baseline": 4}
COLUMNS = (("objective", "val/objective"), ("held-out mean", "val/heldout/mean_acc"),
           ("worst", "val/heldout/worst_acc"), ("union", "val/heldout/union_acc"),
           ("clean", "val/clean/acc"), ("transfer", "val/transfer/mean_acc"),
           ("sealed mean", "test/sealed/mean_acc"), ("AA", "test/autoattack/acc"))


@dataclass
class Entry:
    run_id: str
    trial_id: str
    name: str
    status: str
    evaluations: int
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        return self.metrics.get(metric)

    @property
    def flags(self) -> list[str]:
        """The masking checks this trial failed (informational ones left out)."""
        raised = self.tags.get("masking_flags", "none")
        return [] if raised == "none" else raised.split(",")


def collect(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Entry]:
    runs: list[Run] = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10000)
    return [Entry(run.info.run_id, run.data.tags.get("ray_trial_id", ""),
                  run.info.run_name or run.info.run_id,
                  run.data.tags.get(STATUS_TAG, "unknown"),
                  int(run.data.tags.get("evaluations", "0") or 0),
                  dict(run.data.metrics), dict(run.data.params), dict(run.data.tags))
            for run in runs]


def rank(entries: Sequence[Entry], objective: str, mode: str = "max",
         tiebreak: str = "val/heldout/mean_acc") -> list[Entry]:
    """Full-length trials first (their objective is comparable), then early-stopped, failed.

    Ties (e.g. several trials whose objective was zeroed for masking) go by `tiebreak`.
    """
    sign = -1.0 if mode == "max" else 1.0

    def key(entry: Entry) -> tuple[int, float, float]:
        value, second = entry.value(objective), entry.value(tiebreak)
        return (STATUS_ORDER.get(entry.status, 4),
                sign * value if value is not None else float("inf"),
                sign * second if second is not None else float("inf"))

    return sorted(entries, key=key)


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def format_table(entries: Sequence[Entry], space: Space, *, limit: int | None = None) -> str:
    searched = [name for name in space.params]
    header = (f"{'rank':>4}  {'trial':<40} {'status':<13} "
              + " ".join(f"{title:>6}" if len(title) <= 6 else title for title, _ in COLUMNS)
              + "  masking flags  " + "  ".join(searched))
    lines = [header]
    for index, entry in enumerate(entries[:limit] if limit else entries, start=1):
        cells = " ".join(_fmt(entry.value(metric)).rjust(max(6, len(title)))
                         for title, metric in COLUMNS)
        values = "  ".join(_short(entry.params.get(name, "-")) for name in searched)
        flags = ",".join(entry.flags) or ("-" if "masking/any" in entry.metrics else "n/a")
        lines.append(f"{index:>4}  {entry.name[:40]:<40} {entry.status:<13} {cells}  "
                     f"{flags:<13}  {values}")
    return "\n".join(lines)


def _short(text: str) -> str:
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:.3g}"


def to_csv(entries: Sequence[Entry], space: Space) -> str:
    metric_keys = sorted({k for e in entries for k in e.metrics
                          if k.startswith(("val/", "test/", "masking/"))})
    param_keys = list(space.logged_params(space.default_values()))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", "trial", "run_id", "status", "evaluations", "masking_flags",
                     *metric_keys, *param_keys])
    for index, entry in enumerate(entries, start=1):
        writer.writerow([index, entry.name, entry.run_id, entry.status, entry.evaluations,
                         "+".join(entry.flags),
                         *(_cell(entry.metrics.get(k)) for k in metric_keys),
                         *(entry.params.get(k, "") for k in param_keys)])
    return out.getvalue()


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"
