"""The leaderboard of a search, read back from its MLflow child runs, and the best recipe."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from search.vocab import OBJECTIVE, TAG, TrialStatus
from spaces import Mode, Space
from trainables.vocab import (
    CLEAN_ACC,
    HELDOUT_MEAN,
    MASKING,
    MASKING_ANY,
    THREAT_PGD10,
    Group,
    Split,
    Stat,
    group_metric,
)

__all__ = ["Entry", "collect", "format_table", "rank", "to_csv"]

STATUS_ORDER: dict[str, int] = {
    TrialStatus.COMPLETED: 0, TrialStatus.EARLY_STOPPED: 1, TrialStatus.RUNNING: 2,
    TrialStatus.RETRYING: 2, TrialStatus.INTERRUPTED: 2, TrialStatus.FAILED: 3,
    TrialStatus.ORPHANED: 3}
COLUMNS = (("objective", OBJECTIVE), ("held-out mean", HELDOUT_MEAN),
           ("worst", group_metric(Split.VAL, Group.HELDOUT, Stat.WORST)),
           ("union", group_metric(Split.VAL, Group.HELDOUT, Stat.UNION)),
           ("clean", CLEAN_ACC), ("PGD-10", THREAT_PGD10),
           ("transfer", group_metric(Split.VAL, Group.TRANSFER)),
           ("sealed mean", group_metric(Split.TEST, Group.SEALED)),
           ("AA", group_metric(Split.TEST, Group.AUTOATTACK, Stat.ACC)))


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
    def baseline(self) -> str | None:
        """The reference recipe this trial is, if any."""
        return self.tags.get(TAG.BASELINE) or None

    @property
    def versus(self) -> str:
        """Against the best baseline on the validation objective: `+0.041 n.s. (pgd-at)`, where
        n.s. says the paired interval contains 0 (the tag has the interval)."""
        text = self.tags.get(TAG.VS_BASELINE)
        value = self.metrics.get(f"{Split.VAL}/vs_best_baseline")
        if not text or value is None:
            return "-"
        verdict = "n.s." if text.startswith("not significantly") else "sig."
        return f"{value:+.3f} {verdict} ({text.split(':')[0].split()[-1]})"

    @property
    def flags(self) -> list[str]:
        """The masking checks this trial failed (informational ones left out)."""
        raised = self.tags.get(TAG.MASKING_FLAGS, "none")
        return [] if raised == "none" else raised.split(",")


def collect(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Entry]:
    runs: list[Run] = client.search_runs(
        [experiment_id], f"tags.`{TAG.PARENT}` = '{parent_run_id}'", max_results=10000)
    return [Entry(run.info.run_id, run.data.tags.get(TAG.TRIAL_ID, ""),
                  run.info.run_name or run.info.run_id,
                  run.data.tags.get(TAG.STATUS, "unknown"),
                  int(run.data.tags.get(TAG.EVALUATIONS, "0") or 0),
                  dict(run.data.metrics), dict(run.data.params), dict(run.data.tags))
            for run in runs]


def rank(entries: Sequence[Entry], objective: str, mode: Mode = Mode.MAX,
         tiebreak: str = HELDOUT_MEAN) -> list[Entry]:
    """Full-length trials first (their objective is comparable), then early-stopped, failed.

    Ties (e.g. several trials whose objective was zeroed for masking) go by `tiebreak`.
    """
    sign = -1.0 if mode == Mode.MAX else 1.0

    def key(entry: Entry) -> tuple[int, float, float]:
        value, second = entry.value(objective), entry.value(tiebreak)
        return (STATUS_ORDER.get(entry.status, len(STATUS_ORDER)),
                sign * value if value is not None else float("inf"),
                sign * second if second is not None else float("inf"))

    return sorted(entries, key=key)


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def format_table(entries: Sequence[Entry], space: Space, *, limit: int | None = None) -> str:
    searched = [name for name in space.params]
    header = (f"{'rank':>4}  {'trial':<40} {'status':<13} "
              + " ".join(f"{title:>6}" if len(title) <= 6 else title for title, _ in COLUMNS)
              + f"  {'vs best baseline':<22}  masking flags  " + "  ".join(searched))
    lines = [header]
    for index, entry in enumerate(entries[:limit] if limit else entries, start=1):
        cells = " ".join(_fmt(entry.value(metric)).rjust(max(6, len(title)))
                         for title, metric in COLUMNS)
        values = "  ".join(_short(entry.params.get(name, "-")) for name in searched)
        flags = ",".join(entry.flags) or ("-" if MASKING_ANY in entry.metrics else "n/a")
        lines.append(f"{index:>4}  {entry.name[:40]:<40} {entry.status:<13} {cells}  "
                     f"{entry.versus:<22}  {flags:<13}  {values}")
    return "\n".join(lines)


def _short(text: str) -> str:
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:.3g}"


def to_csv(entries: Sequence[Entry], space: Space) -> str:
    metric_keys = sorted({k for e in entries for k in e.metrics
                          if k.startswith((f"{Split.VAL}/", f"{Split.TEST}/", f"{MASKING}/"))})
    param_keys = list(space.logged_params(space.default_values()))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", "trial", "run_id", "status", "evaluations", TAG.MASKING_FLAGS,
                     *metric_keys, *param_keys])
    for index, entry in enumerate(entries, start=1):
        writer.writerow([index, entry.name, entry.run_id, entry.status, entry.evaluations,
                         "+".join(entry.flags),
                         *(_cell(entry.metrics.get(k)) for k in metric_keys),
                         *(entry.params.get(k, "") for k in param_keys)])
    return out.getvalue()


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"
