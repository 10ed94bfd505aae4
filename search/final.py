"""The final comparison of a search: its best recipes against the space's baselines.

`search.run` ends with this stage; `python -m search.final` runs it again on a finished
search, e.g. with more seeds, more trials or other baselines:

    python -m search.final --name mid-20261121-095941 --seeds 5 --top-k 2

Each candidate (the best `top_k` completed searched trials, and every baseline of the space) is
trained with `seeds` seeds and evaluated on the test split: held-out and sealed attacks at
`strength`, the transfer group, AutoAttack (trainables/scoring/final.py). A searched recipe's
seed-0 model is the search's own when its trial completed, and so is a completed baseline's
for its trial's seed (search/records.baseline_model: the very model that seed's task would
train; during a search these tasks start at its tail, search/headstart.py); the others are
trained again, all as parallel Ray tasks with a trial's
resources, and each task's answer is kept for later searches of the same setting
(search/kept.py). Every number is a mean
over seeds with a 95% t interval, and the best recipe is compared with each baseline by the
difference of their means on the same test points, whose 95% interval holds both the point
sampling (a paired bootstrap) and the training randomness (the seed-to-seed spread pooled over
the candidates): the verdict says "better" only when it excludes 0.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search import kept
from search.card import FinalFacts
from search.cli import Parser, run_cli
from search.exports import export_model
from search.journal import Journal, TrackingOutageError, client_writes
from search.leaderboard import Entry
from search.lock import search_lock
from search.records import (
    SearchInfo,
    baseline_model,
    locate,
    model_file,
    points_of,
    quiet_ray,
    record_of,
    use_loopback_for,
)
from search.session import ray_session
from search.vocab import (
    ARTIFACT,
    FINAL_SEEDS,
    FRESH_FINAL_ENV,
    TAG,
    TRACKING_OUTAGE_S,
    TrialStatus,
    best_key,
    final_delta_key,
    final_key,
    fresh_final_default,
)
from spaces import Space, TrialRecord
from trainables.defense.baselines import BASELINES
from trainables.defense.export import load_defended_model, save_defended_model
from trainables.defense.models import DefendedModel
from trainables.errors import ConfigError
from trainables.files import write_atomic
from trainables.scoring.final import Evaluation, final_evaluation
from trainables.scoring.masking import invalidates
from trainables.scoring.stats import (
    Interval,
    paired_difference,
    pooled_seed_variance,
    seed_interval,
    seeded_difference,
)
from trainables.setting.prepare import Shared, prepare_shared
from trainables.vocab import (
    MASKING_ANSWERED,
    SEALED_STRENGTH,
    TIME_AUTOATTACK,
    TIME_FINAL,
    TIME_TRAIN,
    Group,
    Split,
    Stat,
    group_metric,
    high_key,
    low_key,
)

__all__ = ["COLUMNS", "Candidate", "FinalReport", "Tasks", "candidates_of", "final_stage", "main",
           "verdict",
           "versus_baselines"]

# The final table's columns: (title, metric)
COLUMNS = (("clean", group_metric(Split.TEST, Group.CLEAN, Stat.ACC)),
           ("held-out mean", group_metric(Split.TEST, Group.HELDOUT, Stat.MEAN)),
           ("held-out union", group_metric(Split.TEST, Group.HELDOUT, Stat.UNION)),
           ("sealed mean", group_metric(Split.TEST, Group.SEALED, Stat.MEAN)),
           ("sealed union", group_metric(Split.TEST, Group.SEALED, Stat.UNION)),
           ("AutoAttack", group_metric(Split.TEST, Group.AUTOATTACK, Stat.ACC)),
           # a scores claim's rows (trainables/scoring/served.py): the white-box reference
           # attacks, the query attacks asked adaptively, and the output-change cost
           ("white-box mean", group_metric(Split.TEST, Group.WHITE_BOX, Stat.MEAN)),
           ("adaptive query mean", group_metric(Split.TEST, Group.ADAPTIVE_QUERY, Stat.MEAN)),
           ("adaptive query union",
            group_metric(Split.TEST, Group.ADAPTIVE_QUERY, Stat.UNION)),
           ("output change", group_metric(Split.TEST, Group.OUTPUT, Stat.PROB_CHANGE)),
           ("top-1 agreement", group_metric(Split.TEST, Group.OUTPUT, Stat.TOP1_AGREEMENT)))
SEALED_MEAN = COLUMNS[3][1]
AUTOATTACK = group_metric(Split.TEST, Group.AUTOATTACK, Stat.ACC)
FINAL_MODELS = "final"  # <search>/final/<recipe>/model.pt: each recipe's seed-0 model and card


@dataclass
class Candidate:
    label: str  # "t15" or "pgd-at"
    record: TrialRecord
    run_id: str | None  # its MLflow run in the search
    baseline: bool
    model: bytes | None = None  # seed 0's model, when the search trained it to the end
    own: bytes | None = None  # a baseline's: the model its completed trial trained
    evaluations: dict[int, Evaluation] = field(default_factory=dict)  # seed -> evaluation

    def interval(self, metric: str) -> Interval | None:
        values = [e.metrics[metric] for e in self.evaluations.values() if metric in e.metrics]
        return seed_interval(values, bounds=(0.0, 1.0)) if values else None

    def per_seed(self, metric: str) -> list[np.ndarray]:
        """Each seed's per-point values of `metric` (seeds in order)."""
        return [self.evaluations[s].points[metric] for s in sorted(self.evaluations)
                if metric in self.evaluations[s].points]


@dataclass
class FinalReport:
    candidates: list[Candidate]
    seeds: list[int]
    differences: dict[str, dict[str, Interval]]  # baseline -> metric -> best minus baseline

    @property
    def best(self) -> Candidate | None:
        return next((c for c in self.candidates if not c.baseline), None)

    def facts_of(self, candidate: Candidate) -> FinalFacts:
        """What a model card says of `candidate`'s seed-0 model and of its recipe."""
        own = candidate.evaluations.get(self.seeds[0])
        clean = own.points.get(COLUMNS[0][1]) if own is not None else None
        means = {t: i for t, m in (*COLUMNS, *self.families)
                 if (i := candidate.interval(m)) is not None}
        return FinalFacts(own.metrics if own else None,
                          None if clean is None else len(clean), means, self.seeds)

    def facts_of_run(self, run_id: str) -> FinalFacts | None:
        """The same for the model of a search's run: a searched recipe's seed-0 model is the
        run's own when the run completed; a baseline's answers are kept as its training's,
        not the search's (see `candidates_of`), so only its means over seeds are the run's."""
        found = next((c for c in self.candidates if c.run_id == run_id), None)
        if found is None:
            return None
        facts = self.facts_of(found)
        return replace(facts, own=None, points=None) if found.baseline else facts

    def verdict(self, baseline: str) -> str:
        """Whether the best recipe beats `baseline` on the sealed mean, significantly."""
        diff = self.differences.get(baseline, {}).get(SEALED_MEAN)
        return "-" if diff is None else verdict(diff, baseline)

    @property
    def columns(self) -> list[tuple[str, str]]:
        """The columns some candidate has a value for (a white-box space has no query rows)."""
        return [(t, m) for t, m in COLUMNS if any(c.interval(m) for c in self.candidates)]

    @property
    def families(self) -> list[tuple[str, str]]:
        """Each held-out and sealed family some candidate has per-point values of, as
        (title, metric): what the group means are the means of."""
        return family_columns(self.candidates)

    def markdown(self) -> str:
        best, columns = self.best, self.columns
        lines = [f"Test split, mean over {len(self.seeds)} seeds {self.seeds} [95% t interval]",
                 "", "| recipe | " + " | ".join(t for t, _ in columns) + " |",
                 "|---|" + "---|" * len(columns)]
        for c in self.candidates:
            cells = [_fmt(c.interval(m)) for _, m in columns]
            kind = "baseline" if c.baseline else "searched"
            lines.append(f"| {c.label} ({kind}) | " + " | ".join(cells) + " |")
        if best is not None and self.differences:
            lines += ["", f"Difference, {best.label} minus each baseline, on the same test "
                      "points, mean over seeds [95% interval: paired bootstrap over points "
                      "and t over seeds (seed spread pooled over the recipes)]", "",
                      "| baseline | " + " | ".join(f"Δ {t}" for t, _ in columns)
                      + " | verdict (sealed mean) |", "|---|" + "---|" * (len(columns) + 1)]
            for name, diffs in self.differences.items():
                cells = [_fmt(diffs.get(m), signed=True) for _, m in columns]
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {self.verdict(name)} |")
        return "\n".join(lines + self._family_lines())

    def _family_lines(self) -> list[str]:
        """Per family: each recipe's accuracy, and the best recipe minus each baseline (the
        group means above are means of these)."""
        best, families = self.best, self.families
        if not families:
            return []
        head = "| recipe | " + " | ".join(t for t, _ in families) + " |"
        lines = ["", "Per family (test split, mean over seeds [95% t interval])", "", head,
                 "|---|" + "---|" * len(families)]
        lines += [f"| {c.label} | " + " | ".join(_fmt(c.interval(m)) for _, m in families)
                  + " |" for c in self.candidates]
        if best is not None and self.differences:
            lines += ["", f"Per family, {best.label} minus each baseline [95% interval, as "
                      "above]", "", head.replace("recipe", "baseline", 1),
                      "|---|" + "---|" * len(families)]
            lines += [f"| {name} | " + " | ".join(_fmt(diffs.get(m), signed=True)
                                                   for _, m in families) + " |"
                      for name, diffs in self.differences.items()]
        return lines

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for c in self.candidates:
            row: dict[str, Any] = {"recipe": c.label, "baseline": c.baseline,
                                   "run_id": c.run_id, "seeds": sorted(c.evaluations)}
            for _, metric in COLUMNS:
                interval = c.interval(metric)
                if interval is not None:
                    row.update({metric: interval.value, low_key(metric): interval.low,
                                high_key(metric): interval.high})
            out.append(row)
        return out

    def parent_metrics(self) -> dict[str, float]:
        """The best recipe's row and its paired differences with each baseline, as the
        parent run's `final/...` metrics."""
        best, out = self.best, {}
        if best is None:
            return {}
        for row in self.rows():
            if row["recipe"] == best.label:
                out.update({final_key(best_key(k)): float(v) for k, v in row.items()
                            if k.startswith(f"{Split.TEST}/")})
        for name, diffs in self.differences.items():
            for metric, diff in diffs.items():
                out.update({final_delta_key(name, metric): diff.value,
                            final_delta_key(name, low_key(metric)): diff.low,
                            final_delta_key(name, high_key(metric)): diff.high})
        return out

    def csv(self) -> str:
        rows = self.rows()
        keys = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()


def family_columns(candidates: Sequence[Candidate]) -> list[tuple[str, str]]:
    """(title, metric) of each held-out and sealed family in the candidates' per-point values,
    held-out first, in the order the evaluations report them."""
    out: dict[str, str] = {}
    for group, kind in ((Group.HELDOUT, "held-out"), (Group.SEALED, "sealed")):
        prefix = f"{Split.TEST}/{group}/"
        for c in candidates:
            for e in c.evaluations.values():
                for key in e.points:  # test/sealed/Blur/acc, not test/sealed/mean_acc
                    family, _, stat = key.removeprefix(prefix).partition("/")
                    if key.startswith(prefix) and stat == Stat.ACC:
                        out.setdefault(key, f"{kind} {family}")
    return [(title, key) for key, title in out.items()]


def verdict(difference: Interval, baseline: str) -> str:
    """What a paired difference with `baseline` says: better or worse only when its 95%
    interval excludes 0."""
    if difference.low > 0:
        return f"better than {baseline}"
    if difference.high < 0:
        return f"worse than {baseline}"
    return f"not significantly better than {baseline}"


def _fmt(interval: Interval | None, *, signed: bool = False) -> str:
    if interval is None:
        return "-"
    sign = "+" if signed else ""
    return (f"{interval.value:{sign}.3f} [{interval.low:{sign}.3f}, "
            f"{interval.high:{sign}.3f}]")


# ---------------------------------------------------------------- the Ray task


def _evaluate(shared: Shared, record: TrialRecord, payload: bytes | None, strength: float,
              threads: int, keep: bool, own: bool = False
              ) -> tuple[Evaluation, bytes | None, bool]:
    """A Ray task: train the recipe with its record's seed (unless its model is given; with
    the validation its early stopping needs, if it stops early), then its final evaluation;
    the model trained here too if `keep` (a file's bytes; `own`: the given model is the
    search's training of this very record, kept as if trained here). The last value, False,
    says the answer was computed (Tasks.submit gives True for a kept one)."""
    from search.trainable import assigned_device
    from trainables.train import run_trial

    torch.set_num_threads(threads)
    device = assigned_device()
    config = record.config.replace(device=device, threads=threads, masking_samples=0)
    start = time.perf_counter()
    if payload is None:
        model = run_trial(config, shared=shared, log=lambda _: None,
                          validation=config.early_stopping).model
    else:
        with tempfile.NamedTemporaryFile(suffix=".pt") as handle:
            handle.write(payload)
            handle.flush()
            model = load_defended_model(handle.name, device=device)
    trained = time.perf_counter() - start if payload is None else 0.0  # 0: a model reused
    evaluation = final_evaluation(model, shared, config, strength=strength, log=lambda _: None)
    evaluation.metrics[TIME_TRAIN] = trained
    saved = (_saved(model, shared, record, evaluation)
             if keep and (payload is None or own) else None)
    return evaluation, saved, False


def _saved(model: DefendedModel, shared: Shared, record: TrialRecord,
           evaluation: Evaluation) -> bytes:
    """The trained model as a file's bytes, with its record, metrics and threat model."""
    with tempfile.TemporaryDirectory() as folder:
        setup, path = shared.setup, Path(folder) / ARTIFACT.MODEL
        save_defended_model(path, model, arch=setup.arch, image_shape=setup.info.image_shape,
                            num_classes=setup.info.num_classes,
                            info={**record.to_dict(), "metrics": evaluation.metrics,
                                  "threat_model": setup.threat.to_dict()})
        return path.read_bytes()


def _times(metrics: Mapping[str, float]) -> str:
    """What a task cost, and what AutoAttack's share bought: its interval's half-width."""
    trained = metrics.get(TIME_TRAIN, 0.0)
    low, high = metrics.get(low_key(AUTOATTACK)), metrics.get(high_key(AUTOATTACK))
    width = f" for +-{(high - low) / 2:.3f}" if low is not None and high is not None else ""
    return (f"{'trained in ' + format(trained, '.0f') + 's' if trained > 0 else 'model reused'}"
            f", evaluated in {metrics.get(TIME_FINAL, 0.0):.0f}s, AutoAttack "
            f"{metrics.get(TIME_AUTOATTACK, 0.0):.0f}s of it{width}")


# ---------------------------------------------------------------- the stage


def candidates_of(space: Space, entries: Sequence[Entry], results: Any, *, top_k: int,
                  baselines: Sequence[str] | None = None) -> list[Candidate]:
    """The best `top_k` searched trials, then the baselines (default: the space's). Trials that
    raised no masking flag against the space's claim come first (a flagged trial's robustness
    is not real against the attacker the space assumes), then those
    that ran to the end; an early-stopped one is only taken when too few did, and is trained
    full-length here like every other seed. A baseline's answers depend on nothing the
    search did (a later search of the same setting takes them as they were kept,
    search/kept.py): its seeds are trained here, but the seed its trial trained to the end
    is evaluated on the trial's model, bitwise the model that training would give
    (records.baseline_model), here as in search/headstart.py."""
    out: list[Candidate] = []
    baseline_runs: dict[str, Entry] = {}
    searched = []
    for entry in entries:
        record = record_of(results, entry.trial_id)
        if record is None:
            continue
        if record.baseline:
            baseline_runs.setdefault(record.baseline, entry)
        elif entry.status in (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED):
            answered = bool(entry.metrics.get(MASKING_ANSWERED, 0.0))
            invalid = any(invalidates(flag, space.access, answered=answered)
                          for flag in entry.flags)
            searched.append(((invalid, entry.status != TrialStatus.COMPLETED), entry, record))
    for _, entry, record in sorted(searched, key=lambda s: s[0])[:top_k]:
        done = entry.status == TrialStatus.COMPLETED
        out.append(Candidate(entry.name.split()[0], record, entry.run_id, False,
                             model_file(results, entry.trial_id) if done else None))
    for name in space.baselines if baselines is None else baselines:
        run = baseline_runs.get(name)
        if run is None:  # not part of the search: trained here only, with the space's setting
            out.append(Candidate(name, space.baseline_record(name), None, True))
            continue
        record = record_of(results, run.trial_id)
        assert record is not None
        own = (baseline_model(record, partial(model_file, results, run.trial_id))
               if run.status == TrialStatus.COMPLETED else None)
        out.append(Candidate(name, record, run.run_id, True, own=own))
    return out


class Tasks:
    """The final comparison's Ray tasks: train (unless a model is given) and evaluate one
    recipe and seed, with a trial's resources; an answer kept by an earlier search of the same
    setting is taken instead unless `fresh` (search/kept.py)."""

    def __init__(self, shared: Shared, resources: Mapping[str, float], strength: float, *,
                 fresh: bool = False) -> None:
        import ray

        self.task = ray.remote(max_retries=1)(_evaluate)
        self.options = {"num_cpus": resources.get("cpu", 1),
                        "num_gpus": resources.get("gpu", 0),
                        "resources": {k: v for k, v in resources.items()
                                      if k not in ("cpu", "gpu")}}
        self.threads = max(1, int(resources.get("cpu", 1)))
        self.shared_ref, self.strength = ray.put(shared), strength
        self.folder, self.fresh = shared.cache_dir, fresh
        # tasks computed from a model the search trained (a searched recipe's, or the one a
        # baseline's trial trained) rather than training it again; a kept answer uses none
        self.models_reused = 0

    def submit(self, record: TrialRecord, payload: bytes | None, *, keep: bool,
               own: bytes | None = None) -> Any:
        """`keep`: return the model trained too (seed 0's, exported with its card). `own`: the
        model the search trained from exactly this record (a baseline's trial), evaluated
        instead of training it again: the same weights, bitwise on a CPU (the trial's
        evaluations draw no training randomness; tests/trainables_tests/test_trial.py), so
        its answer is the training's and kept as such."""
        import ray

        found = None if self.fresh else kept.load(
            self.folder, kept.task_key(record, payload, self.strength),
            keep=keep and payload is None)
        if found is not None:
            return ray.put((*found, True))
        self.models_reused += payload is not None or own is not None
        # Ray's stubs type remote calls of up to six arguments
        return self.task.options(**self.options).remote(  # type: ignore[call-arg]
            self.shared_ref, record, payload if own is None else own, self.strength,
            self.threads, keep, own is not None)

    def keep(self, key: str, evaluation: Evaluation, model: bytes | None) -> None:
        """Keeps a computed answer for later searches; a disk that refuses it costs only
        that (the answer is computed again next time)."""
        try:
            kept.store(self.folder, key, evaluation, model)
        except OSError as err:
            print(f"final: could not keep a task's answer in {self.folder}: {err}", flush=True)


def final_stage(*, space: Space, shared: Shared, candidates: list[Candidate], client: Any,
                parent_id: str, resources: Mapping[str, float], seeds: Sequence[int],
                strength: float, out: Path,
                started: Mapping[tuple[str, int], Any] | None = None,
                tasks: Tasks | None = None,
                outage_s: float = TRACKING_OUTAGE_S, fresh: bool = False) -> FinalReport:
    """Evaluates every candidate over `seeds` (parallel Ray tasks; `started`: the baselines'
    tasks search/headstart.py began during the search through `tasks`, reused here) and
    returns the report, written to `out`
    first, then logged to the MLflow parent run and the candidates' runs through a journal
    (`out`/mlflow-pending-final.jsonl while MLflow is away, waited for up to `outage_s`).
    `fresh`: compute every task again rather than take what an earlier search kept."""
    _evaluate_all(candidates, tasks or Tasks(shared, resources, strength, fresh=fresh), seeds,
                  started or {})
    report = FinalReport(candidates, list(seeds), _differences(candidates))
    write_atomic(out / ARTIFACT.FINAL_TABLE, report.markdown() + "\n")
    write_atomic(out / ARTIFACT.FINAL_CSV, report.csv())
    files = [{"kind": "file", "run": parent_id, "path": str(path),
              "folder": f"{FINAL_MODELS}/{c.label}"}
             for c in report.candidates if c.model is not None  # seed 0's model, its card
             for path in export_model(c.model, out / FINAL_MODELS / c.label / ARTIFACT.MODEL,
                                      name=c.label, space=space, out=out,
                                      final=report.facts_of(c))]
    print("\n" + report.markdown(), flush=True)
    journal = final_journal(client, out)
    for event in [*_report_writes(report, parent_id), *files]:
        journal.submit(event)
    drain_final(journal, client.tracking_uri, out, outage_s)
    return report


def final_journal(client: Any, out: Path) -> Journal:
    """The final comparison's MLflow writes, kept in `out` while the server is away."""
    return Journal(client.tracking_uri, out / ARTIFACT.FINAL_JOURNAL, client_writes(client),
                   log=lambda line: print(line, flush=True))


def drain_final(journal: Journal, uri: str, out: Path, outage_s: float) -> None:
    """Waits (bounded) for the server to take the final comparison's writes; what it does not
    take stays in the journal, which `search.run --resume` logs (without evaluating again)."""
    if not journal.pending:
        return
    print(f"mlflow: {len(journal.pending)} write(s) of the final comparison wait for {uri}; "
          f"waiting up to {outage_s:g}s (--tracking-outage)", flush=True)
    if not journal.drain(outage_s):
        raise TrackingOutageError(
            f"MLflow at {uri} did not come back within {outage_s:g}s: the final comparison is "
            f"in {out / ARTIFACT.FINAL_TABLE} and {len(journal.pending)} write(s) of it are "
            f"kept in {journal.path}; start the server and run `python -m search.run --space "
            f"{out / ARTIFACT.SPACE} --name {out.name} --resume` (with the same --mlflow-uri "
            "and --storage-path) to log them")


def _evaluate_all(candidates: list[Candidate], tasks: Tasks, seeds: Sequence[int],
                  started: Mapping[tuple[str, int], Any]) -> None:
    """Every candidate and seed as a Ray task with a trial's resources (or the task already
    started for it); each evaluation is kept on its candidate as it arrives."""
    import ray

    pending = {}
    for candidate in candidates:
        for index, seed in enumerate(seeds):
            record = candidate.record.with_config(seed=seed)
            payload = candidate.model if index == 0 else None  # None for a baseline
            ref = started.get((candidate.label, seed)) if candidate.baseline else None
            own = candidate.own if seed == candidate.record.config.seed else None
            if ref is None:
                ref = tasks.submit(record, payload, keep=index == 0, own=own)
            pending[ref] = (candidate, seed, kept.task_key(record, payload, tasks.strength))
    early = sum(1 for c in candidates for s in seeds if c.baseline and (c.label, s) in started)
    print(f"final: {len(candidates)} recipes x {len(seeds)} seeds = {len(pending)} tasks "
          f"({early} started by the search; "
          f"{tasks.models_reused} of them from a model the search trained)", flush=True)
    reused = 0
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        candidate, seed, key = pending.pop(done[0])
        candidate.evaluations[seed], trained, was_kept = ray.get(done[0])
        reused += was_kept
        if not was_kept:
            tasks.keep(key, candidate.evaluations[seed], trained)
        candidate.model = candidate.model or trained  # seed 0's, kept beside its card
        metrics = candidate.evaluations[seed].metrics
        print(f"final: {candidate.label} seed {seed}: " + ", ".join(
            f"{title} {metrics[m]:.3f}" for title, m in COLUMNS if m in metrics)
            + f"  ({'kept by an earlier search: ' if was_kept else ''}{_times(metrics)})",
            flush=True)
    if reused:
        print(f"final: {reused} of {len(candidates) * len(seeds)} answers were kept by an earlier "
              "search of the same setting and code (--fresh-final computes them again)",
              flush=True)


def _report_writes(report: FinalReport, parent_id: str) -> Iterator[dict[str, Any]]:
    """The report's MLflow writes, as journal events: each candidate's means over seeds on its
    own run, the best recipe's row and its differences with the baselines on the parent run,
    and the tables."""
    for candidate in report.candidates:
        if candidate.run_id is None:
            continue
        logged = {}
        for _, metric in COLUMNS:
            interval = candidate.interval(metric)
            if interval is not None:
                logged.update({final_key(metric): interval.value,
                               final_key(low_key(metric)): interval.low,
                               final_key(high_key(metric)): interval.high})
        yield {"kind": "metrics", "run": candidate.run_id, "metrics": logged}
        yield {"kind": "tag", "run": candidate.run_id, "key": TAG.FINAL, "value": "true"}
    yield {"kind": "metrics", "run": parent_id, "metrics": report.parent_metrics()}
    for text, file in ((report.markdown(), ARTIFACT.FINAL_TABLE),
                       (report.csv(), ARTIFACT.FINAL_CSV),
                       (json.dumps(report.rows(), indent=2), ARTIFACT.FINAL_JSON)):
        yield {"kind": "text", "run": parent_id, "text": text, "file": file}


def versus_baselines(entries: Sequence[Entry], results: Any, objective: str
                     ) -> tuple[str | None, dict[str, Interval]]:
    """On validation: the best completed baseline trial, and each completed searched trial's
    paired difference of `objective` with it (the same validation points)."""
    done = [e for e in entries if e.status == TrialStatus.COMPLETED
            and e.value(objective) is not None]
    baselines = sorted((e for e in done if e.baseline), key=lambda e: -(e.value(objective) or 0))
    if not baselines:
        return None, {}
    reference = points_of(results, baselines[0].trial_id, objective)
    if reference is None:
        return None, {}
    out = {}
    for entry in done:
        points = points_of(results, entry.trial_id, objective)
        if not entry.baseline and points is not None and points.shape == reference.shape:
            out[entry.run_id] = paired_difference(points, reference)
    return baselines[0].baseline, out


def _differences(candidates: Sequence[Candidate]) -> dict[str, dict[str, Interval]]:
    """The best recipe minus each baseline, per column: over the same test points and over
    the seeds, the training randomness pooled over every candidate (stats.seeded_difference)."""
    best = next((c for c in candidates if not c.baseline), None)
    if best is None:
        return {}
    out: dict[str, dict[str, Interval]] = {}
    for _, metric in (*COLUMNS, *family_columns(candidates)):
        spread = pooled_seed_variance([[float(p.mean()) for p in c.per_seed(metric)]
                                       for c in candidates])
        for baseline in (c for c in candidates if c.baseline):
            a, b = best.per_seed(metric), baseline.per_seed(metric)
            if a and b:
                out.setdefault(baseline.label, {})[metric] = seeded_difference(
                    a, b, seed_variance=spread)
    return out


# ---------------------------------------------------------------- the command


@dataclass
class Reopened:
    """A finished search, ready to evaluate again."""

    space: Space
    shared: Shared
    results: Any
    resources: dict[str, float]
    seed: int


@contextmanager
def _reopen(info: SearchInfo, folder: Path) -> Iterator[Reopened]:
    """The search's space, shared state and Tune results, with Ray running (Ray is imported
    here, after the caller chose its network setting)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    import spaces

    quiet_ray()
    space = spaces.load(str(folder / ARTIFACT.SPACE))
    with ray_session(info.address):
        config = space.trial_config(cache_dir=info.cache_dir)
        shared = prepare_shared(config, pool_candidates=space.pool.candidates,
                                log=lambda _: None)
        yield Reopened(space, shared, ResultGrid(ExperimentAnalysis(info.results_path)),
                       info.resources, info.seed)


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m search.final", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--name", default=None, help="the search (default: the latest one)")
    p.add_argument("--storage-path", default="./ray_results")
    p.add_argument("--top-k", type=int, default=1, help="best completed trials to compare")
    p.add_argument("--seeds", type=int, default=FINAL_SEEDS,
                   help="seeds per recipe (the search's own model is seed 0's)")
    p.add_argument("--strength", type=float, default=SEALED_STRENGTH,
                   help="multiplier of attack iterations, queries and restarts")
    p.add_argument("--baselines", default=None, metavar="NAMES",
                   help=f"comma-separated baselines ({', '.join(BASELINES)}; default: the "
                        "space's)")
    p.add_argument("--fresh-final", action="store_true", default=fresh_final_default(),
                   help="compute every task again rather than take the answers an earlier "
                        "search of the same setting and code kept (default: off, on where "
                        f"{FRESH_FINAL_ENV}=1)")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    args = p.parse_args(argv)

    def body() -> int:
        for flag, value in (("--top-k", args.top_k), ("--seeds", args.seeds)):
            if value < 1:
                raise ConfigError(f"{flag}={value} must be >= 1")
        if not math.isfinite(args.strength):
            raise ConfigError(f"--strength={args.strength} must be a finite number")
        if args.strength <= 0:
            raise ConfigError(f"--strength={args.strength} must be > 0")
        found = locate(storage_path=args.storage_path, name=args.name)
        assert found.info is not None and found.folder is not None
        names = None if args.baselines is None else args.baselines.split(",")
        unknown = [n for n in names or () if n not in BASELINES]
        if unknown:
            raise ConfigError(f"--baselines {unknown} do not exist; choose from "
                              f"{', '.join(BASELINES)}")
        use_loopback_for(found.info.address)
        with search_lock(found.folder, found.name), _reopen(found.info, found.folder) as opened:
            candidates = candidates_of(opened.space, found.entries, opened.results,
                                       top_k=args.top_k, baselines=names)
            report = final_stage(
                space=opened.space, shared=opened.shared, candidates=candidates,
                client=found.client, parent_id=found.parent_id, resources=opened.resources,
                seeds=[opened.seed + i for i in range(args.seeds)], strength=args.strength,
                out=found.folder, fresh=args.fresh_final)
        if args.format == "csv":
            print(report.csv())
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
