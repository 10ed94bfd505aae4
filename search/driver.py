"""Runs a validated SearchPlan: prepare once, start/join Ray, fit, report, export the best."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from search.cluster import REMOTE_SCHEMES, alive_nodes, check_cluster
from search.disk import DiskFullError, free_bytes, full_text, is_disk_full, mb, need_of
from search.exports import code_commit, export_model
from search.final import (
    FinalReport,
    candidates_of,
    drain_final,
    final_journal,
    final_stage,
    verdict,
    versus_baselines,
)
from search.guard import DiskGuard, disk_full_reason
from search.headstart import HeadStart
from search.journal import Journal, TrackingOutageError, quick_failures
from search.leaderboard import Entry, collect, format_table, rank, to_csv
from search.plan import SearchPlan
from search.progress import ProgressPrinter
from search.records import SearchInfo, model_file, quiet_ray, record_of
from search.report import write_plots
from search.resources import check_request, node_types_of, ray_request
from search.session import ray_session
from search.signals import Interrupted, deferred, graceful, stop_tune
from search.stores import FILE_STORE_OPT_OUT, local_store
from search.tracking import (
    MlflowTrialLogger,
    mark_orphaned_children,
    open_experiment,
    stop_running_children,
)
from search.tuner import build_tuner, fail_orphans, restore_tuner
from search.ui import publish_view, runs_url
from search.vocab import (
    ARTIFACT,
    TAG,
    VS_BEST_BASELINE,
    TrialStatus,
    best_key,
    phase_key,
    trials_key,
)
from search.warmstart import seed_study
from spaces import Mode
from trainables.files import write_atomic
from trainables.setting.prepare import Shared, prepare_shared
from trainables.vocab import (
    CLEAN_ACC,
    GROUP_STATS,
    SCORING_VERSION,
    Group,
    Split,
    Stat,
    group_metric,
    high_key,
    low_key,
)

__all__ = ["run_search"]


def _parent_run(client: Any, experiment_id: str, plan: SearchPlan, *, resume: bool) -> str:
    if resume:
        found = client.search_runs([experiment_id], f"tags.{TAG.SEARCH_NAME} = '{plan.name}'",
                                   max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    space, config = plan.space, plan.space.trial_config()
    tags = {TAG.SEARCH_NAME: plan.name, TAG.SPACE: space.name, TAG.DATASET: config.dataset,
            TAG.THREAT_MODEL: space.setup().threat.describe(), TAG.GIT_COMMIT: code_commit(),
            TAG.HELDOUT: "+".join(config.heldout), TAG.SEALED: "+".join(config.sealed) or "-",
            TAG.POOL: "+".join(space.pool.candidates)}
    run = client.create_run(experiment_id, run_name=plan.name, tags=tags)
    params = {"num_samples": plan.num_samples, "max_concurrent": plan.max_concurrent,
              "search_alg": plan.search_alg, "multi_objective": plan.multi_objective,
              "scheduler": plan.scheduler, "objective": plan.raw_objective, "mode": plan.mode,
              "penalize_flags": space.search.penalize_flags,
              "robust_floor": space.search.robust_floor,
              "max_t": space.max_evaluations, "grace_period": space.search.grace_period,
              "reduction_factor": space.search.reduction_factor, "seed": plan.seed,
              "epochs": config.epochs, "eval_every": config.eval_every,
              "cpus_per_trial": plan.cpus_per_trial, "gpus_per_trial": plan.gpus_per_trial,
              "address": plan.address or "local", "storage_path": plan.storage_path}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value))
    return run.info.run_id


def _resources(plan: SearchPlan) -> dict[str, float]:
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 1.0), total.get("GPU", 0.0)
    gpu_share = plan.gpus_per_trial
    if gpu_share is None:
        gpu_share = round(min(1.0, gpus / plan.max_concurrent), 4) if gpus else 0.0
    cpu_share = plan.cpus_per_trial
    if cpu_share is None:
        cpu_share = 1.0 if gpu_share else max(1.0, float(int(cpus // plan.max_concurrent)))
    resources = {"cpu": cpu_share, **({"gpu": gpu_share} if gpu_share else {}),
                 **plan.trial_resources}
    return resources


def run_search(plan: SearchPlan, *, resume: bool = False, cache_dir: str | None = None) -> int:
    quiet_ray()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    quick_failures()
    parent_id = None
    clock = Clock()
    with ray_session(plan.address):
        try:
            resources = _start(plan)
            client = MlflowClient(plan.mlflow_uri)  # a sqlite store is made here, not before
            config = plan.space.trial_config(cache_dir=cache_dir)
            shared = prepare_shared(config, pool_candidates=plan.space.pool.candidates,
                                    log=lambda line: print(f"  {line}", flush=True))
            experiment_id = open_experiment(client, plan.experiment)
            parent_id = _parent_run(client, experiment_id, plan, resume=resume)
            _write_search_info(plan, experiment_id, parent_id, resources, cache_dir)
            client.log_artifact(parent_id, str(Path(plan.output_dir) / ARTIFACT.SPACE))
            clock.lap("prepare")
            results, head = _fit(plan, shared, resources, experiment_id, parent_id,
                                 resume=resume)
            _compare_with_baselines(client, experiment_id, parent_id, results, plan)
            clock.lap("search")
            report = _final(plan, shared, resources, client, experiment_id, parent_id, results,
                            head)
            clock.lap("final comparison")
        except BaseException as err:
            full = isinstance(err, DiskFullError) or is_disk_full(err)
            if parent_id is not None and not isinstance(err, TrackingOutageError):
                with contextlib.suppress(MlflowException, OSError):  # what failed, maybe
                    _mark_stopped(client, experiment_id, parent_id, err, resumable=full)
            if full and not isinstance(err, DiskFullError):
                raise _disk_full(plan, full_text([str(err)]) or str(err)) from None
            raise
    try:
        with deferred():  # quick, and never to be left half written
            return _finish(plan, client, experiment_id, parent_id, results, report, clock)
    except Interrupted:
        print("note: the signal came while the results were written; they were completed "
              "first", file=sys.stderr)
        return 0


def _mark_stopped(client: Any, experiment_id: str, parent_id: str, err: BaseException, *,
                  resumable: bool) -> None:
    """The parent run's end: KILLED, with its trials' runs still running, for a search that
    stopped to be resumed (interrupted, or its disk full); FAILED otherwise."""
    resumable = resumable or isinstance(err, KeyboardInterrupt)
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.CRITICAL)  # not its traceback of a write the full disk refused
    try:
        if resumable:
            stop_running_children(client, experiment_id, parent_id)
        client.set_terminated(parent_id, "KILLED" if resumable else "FAILED")
    finally:
        mlflow_log.setLevel(level)


def _disk_full(plan: SearchPlan, reason: str) -> DiskFullError:
    return DiskFullError(
        f"a disk the search writes to is full ({reason}; {mb(free_bytes(plan.output_dir))} "
        f"free where its results are): it stopped with its state kept; free space, then run "
        f"`{plan.resume_command}` (with the same --set and --mlflow-uri)")


class Clock:
    """Wall time per phase of the command (printed at the end and logged on the parent run)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = now - self.last
        self.last = now

    def line(self) -> str:
        def span(seconds: float) -> str:
            return f"{int(seconds // 60)}m{seconds % 60:04.1f}s" if seconds >= 60 \
                else f"{seconds:.1f}s"

        return ("wall time: " + ", ".join(f"{k} {span(v)}" for k, v in self.laps.items())
                + f"; total {span(time.perf_counter() - self.start)}")


def _start(plan: SearchPlan) -> dict[str, float]:
    """Checks the cluster against the plan; the per-trial resources."""
    import ray

    node_count = check_cluster(plan.mlflow_uri, plan.storage_path,
                               remote_storage=plan.storage_path.startswith(REMOTE_SCHEMES))
    resources = _resources(plan)
    note = check_request(ray_request(resources),
                         [dict(n["Resources"]) for n in alive_nodes()],
                         node_types=node_types_of(),
                         where=f"the cluster at {plan.address}" if plan.address
                         else "this machine")
    if note:
        print(f"ray: {note}", flush=True)
    Path(plan.output_dir).mkdir(parents=True, exist_ok=True)
    total = ray.cluster_resources()
    print(f"ray: {node_count} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} "
          f"GPUs; per trial {resources}", flush=True)
    print(f"search {plan.name}: preparing data and teacher (cached per data set and seed)",
          flush=True)
    return resources


def _fit(plan: SearchPlan, shared: Shared, resources: dict[str, float], experiment_id: str,
         parent_id: str, *, resume: bool) -> tuple[Any, HeadStart | None]:
    """Runs (or resumes) the trials; every write to MLflow goes through the journal. A new
    search starts its baselines' final tasks as they complete (search/headstart.py)."""
    journal = Path(plan.output_dir) / ARTIFACT.MLFLOW_JOURNAL
    logger = MlflowTrialLogger(tracking_uri=plan.mlflow_uri, experiment_id=experiment_id,
                               parent_run_id=parent_id, space_name=plan.space.name,
                               max_t=plan.space.max_evaluations, journal_path=str(journal))
    if resume and logger.journal.pending:  # what an outage kept from the last run
        count = len(logger.journal.pending)
        if logger.journal.flush(force=True):
            print(f"mlflow: {count} write(s) kept from the last run's outage logged", flush=True)
    progress = ProgressPrinter(num_samples=plan.num_samples, max_t=plan.space.max_evaluations,
                               objective=plan.objective, epochs=plan.space.trial_config().epochs,
                               robust_floor=plan.space.search.robust_floor)
    path = f"{plan.storage_path.rstrip('/')}/{plan.name}"
    head = (HeadStart(shared=shared, resources=resources, seeds=plan.final_seed_list,
                      strength=plan.sealed_strength, max_t=plan.space.max_evaluations,
                      trials=plan.num_samples, fresh=plan.fresh_final)
            if plan.sealed_top_k and not resume else None)
    if not resume:  # the defaults, the baselines and any warm start, before Tune opens it
        warm = seed_study(plan)
        if warm is not None:
            print(f"warm start: {warm.describe()}", flush=True)
            logger.client.set_tag(parent_id, TAG.WARM_START, warm.describe())
    guard = _guard(plan)
    tuner = (restore_tuner(plan, shared, resources, path) if resume
             else build_tuner(plan, shared, resources,
                              [logger, progress, guard, *([head] if head is not None else [])]))
    results = fit_watched(tuner, plan)
    if resume and (orphans := fail_orphans(plan.optuna_storage, plan.name)):
        print(f"optuna: {orphans} trial(s) the killed driver had asked for never reached "
              "Optuna again: told FAIL (user attribute 'orphaned')", flush=True)
    _drain_journal(plan, logger, journal)
    if resume:
        _mark_orphaned_runs(logger.client, results, experiment_id, parent_id)
    return results, head


def _mark_orphaned_runs(client: Any, results: Any, experiment_id: str, parent_id: str) -> None:
    """The MLflow side of fail_orphans: runs of trials the killed driver started after Tune's
    last saved state (mark_orphaned_children)."""
    known = {str(r.metrics["trial_id"]) for r in results if "trial_id" in (r.metrics or {})}
    if count := mark_orphaned_children(client, experiment_id, parent_id, known):
        print(f"mlflow: {count} run(s) of trials the killed driver had started after Ray "
              "Tune's last saved state marked orphaned (the resumed search ran those samples "
              "as new trials)", flush=True)


def fit_watched(tuner: Any, plan: SearchPlan) -> Any:
    """`tuner.fit()` under the disk guard and the signal handlers; a full disk is reported as
    DiskFullError whether Tune returned or failed on it."""
    DiskGuard.watching()
    with graceful(stop_tune):  # a signal: Tune stops and saves its state, then Interrupted
        try:
            results = tuner.fit()
        except Exception:
            # a full disk also cuts Tune's own files short (an empty error.pkl makes its
            # ResultGrid raise EOFError): the disk is the cause to report, not that
            if disk_full_reason() is None:
                raise
    if (reason := disk_full_reason()) is not None:
        raise _disk_full(plan, reason) from None
    return results


def _guard(plan: SearchPlan) -> DiskGuard:
    """Stops the search before its disk is full (search/guard.py), watching its results
    folder and a local tracking store."""
    store = local_store(plan.mlflow_uri)
    watch = [plan.output_dir, *([str(store.parent)] if store is not None else [])]
    need = need_of(plan.space, trials=plan.num_samples, running=plan.max_concurrent)
    return DiskGuard(folder=plan.output_dir, watch=watch, reserve=need.reserve)


def _final(plan: SearchPlan, shared: Shared, resources: dict[str, float], client: Any,
           experiment_id: str, parent_id: str, results: Any, head: HeadStart | None
           ) -> FinalReport | str | None:
    """The final comparison's report. One that ran before but whose MLflow writes were kept
    for an outage is not run again: its writes are logged, its table (markdown) reused."""
    if not plan.sealed_top_k:
        return None
    out = Path(plan.output_dir)
    kept = final_journal(client, out)
    if kept.pending and (out / ARTIFACT.FINAL_TABLE).is_file():
        count = len(kept.pending)
        drain_final(kept, plan.mlflow_uri, out, plan.tracking_outage_s)
        print(f"mlflow: the final comparison ran before; its {count} kept write(s) logged",
              flush=True)
        return (out / ARTIFACT.FINAL_TABLE).read_text().rstrip("\n")
    space = plan.space
    print(f"\nfinal comparison: the best {plan.sealed_top_k} searched recipe(s) and the "
          f"baselines ({', '.join(space.baselines) or 'none'}) on the test split, "
          f"{plan.final_seeds} seeds each (held-out + sealed attacks, AutoAttack)", flush=True)
    entries = rank(collect(client, experiment_id, parent_id), plan.objective, plan.mode)
    started = head.flush() if head is not None else None  # what still waited for the tail
    return final_stage(space=space, shared=shared,
                       candidates=candidates_of(space, entries, results,
                                                top_k=plan.sealed_top_k),
                       client=client, parent_id=parent_id, resources=resources,
                       seeds=plan.final_seed_list, strength=plan.sealed_strength, out=out,
                       started=started, tasks=head.tasks if head is not None else None,
                       outage_s=plan.tracking_outage_s, fresh=plan.fresh_final)


def _drain_journal(plan: SearchPlan, logger: MlflowTrialLogger, path: Path) -> None:
    """Waits (bounded) for a lost tracking server to take what the trials logged meanwhile;
    what it does not take stays in the journal for --resume."""
    journal = Journal(plan.mlflow_uri, path, logger.apply,
                      log=lambda line: print(line, flush=True))
    if not journal.pending:
        return
    print(f"mlflow: {len(journal.pending)} write(s) wait for {plan.mlflow_uri}; waiting up to "
          f"{plan.tracking_outage_s:g}s (--tracking-outage)", flush=True)
    if not journal.drain(plan.tracking_outage_s):
        raise TrackingOutageError(
            f"MLflow at {plan.mlflow_uri} did not come back within {plan.tracking_outage_s:g}s:"
            f" every trial finished and {len(journal.pending)} write(s) are kept in {path}; "
            f"start the server and run `python -m search.run --space {plan.space.source} "
            f"--name {plan.name} --resume` (with the same --mlflow-uri and --storage-path) to "
            "log them and write the final report")


def _write_search_info(plan: SearchPlan, experiment_id: str, parent_id: str,
                       resources: dict[str, float], cache_dir: str | None) -> None:
    """What `search.final` and `search.report` need to reopen this search later."""
    out = Path(plan.output_dir)
    write_atomic(out / ARTIFACT.SPACE, yaml.safe_dump(dict(plan.space.raw), sort_keys=False))
    SearchInfo(plan.name, plan.space.name, plan.mlflow_uri, plan.experiment, experiment_id,
               parent_id, plan.storage_path, plan.optuna_storage, plan.seed, resources,
               plan.address, cache_dir, plan.mode, SCORING_VERSION).write(out)


def _compare_with_baselines(client: Any, experiment_id: str, parent_id: str, results: Any,
                            plan: SearchPlan) -> None:
    """Tags each completed searched trial with its paired difference from the best baseline
    on the validation objective (the leaderboard's `vs best baseline`)."""
    from mlflow.entities import Metric

    entries = collect(client, experiment_id, parent_id)
    reference, differences = versus_baselines(entries, results, plan.raw_objective)
    for run_id, diff in differences.items():
        client.set_tag(run_id, TAG.VS_BASELINE, f"{verdict(diff, str(reference))}: "
                                                f"{diff.value:+.3f} [{diff.low:+.3f}, "
                                                f"{diff.high:+.3f}]")
        key = VS_BEST_BASELINE
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in (
            (key, diff.value), (low_key(key), diff.low), (high_key(key), diff.high))])


def _finish(plan: SearchPlan, client: Any, experiment_id: str, parent_id: str,
            results: Any, report: FinalReport | str | None, clock: Clock) -> int:
    space, out = plan.space, Path(plan.output_dir)
    entries = rank(collect(client, experiment_id, parent_id), plan.objective, plan.mode)
    print("\nleaderboard (full-length trials first; ranked by "
          f"{plan.objective}):\n{format_table(entries, space, limit=15)}")
    write_atomic(out / ARTIFACT.LEADERBOARD, to_csv(entries, space))
    client.log_artifact(parent_id, str(out / ARTIFACT.LEADERBOARD))
    statuses = [e.status for e in entries]
    for status in (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED, TrialStatus.FAILED):
        client.log_metric(parent_id, trials_key(status), statuses.count(status))
    best = next((e for e in entries if e.status == TrialStatus.COMPLETED), None)
    record = record_of(results, best.trial_id) if best is not None else None
    if best is None or record is None:
        client.set_terminated(parent_id, "FAILED")
        print("no trial ran to completion: see the failures above", file=sys.stderr)
        return 1
    values = space.values_of(record)
    raw = best.value(plan.raw_objective)
    note = (f"Best recipe of search {plan.name} ({best.name}): {plan.raw_objective} = "
            f"{raw if raw is None else round(raw, 4)}, masking flags: "
            f"{', '.join(best.flags) or 'none'}.")
    write_atomic(out / ARTIFACT.BEST_CONFIG, yaml.safe_dump(
        space.with_defaults(values, name=f"{space.name}-best", note=note), sort_keys=False))
    client.log_artifact(parent_id, str(out / ARTIFACT.BEST_CONFIG))
    client.set_tag(parent_id, TAG.BEST_RUN, best.run_id)
    for key in (*(group_metric(Split.VAL, Group.HELDOUT, stat) for stat in GROUP_STATS),
                CLEAN_ACC):
        value = best.value(key)
        if value is not None:
            client.log_metric(parent_id, best_key(key), value)
    final = report if isinstance(report, FinalReport) else None
    exported = _export_best_model(results, best, out, space, final)
    for path in exported:  # the model and its card
        client.log_artifact(parent_id, str(path), "best")
        client.log_artifact(best.run_id, str(path))
    model = exported[0] if exported else None
    plots = write_plots(entries, out / "report", objective=plan.raw_objective, space=space)
    for path in plots:
        client.log_artifact(parent_id, str(path), "report")
    clock.lap("report")
    for phase, seconds in clock.laps.items():
        client.log_metric(parent_id, phase_key(phase), seconds)
    key = publish_view(client, experiment_id, search=plan.name, parent_id=parent_id,
                       objective=plan.raw_objective, ascending=plan.mode == Mode.MIN)
    client.set_terminated(parent_id, "FINISHED")
    _print_where(plan, best, model, out, plots, runs_url(plan.mlflow_uri, experiment_id, key))
    if report is not None:
        print("\nfinal comparison (test split; the table is also on the MLflow parent run as "
              f"{ARTIFACT.FINAL_TABLE}):\n{final.markdown() if final else report}")
    print(f"\n{clock.line()}")
    return 0


def _export_best_model(results: Any, best: Entry, out: Path, space: Any,
                       report: FinalReport | None) -> list[Path]:
    """best_model.pt and its card (with the final comparison's numbers of this very model,
    when it was one of the compared)."""
    payload = model_file(results, best.trial_id)
    if payload is None:
        print(f"note: the best trial's final checkpoint holds no model file ({best.trial_id})")
        return []
    return export_model(payload, out / ARTIFACT.BEST_MODEL, name=best.name.split()[0],
                        space=space, out=out,
                        final=report.facts_of_run(best.run_id) if report else None)


def _print_where(plan: SearchPlan, best: Entry, model: Path | None, out: Path,
                 plots: list[Path], view_url: str) -> None:
    heldout = {stat: best.value(group_metric(Split.VAL, Group.HELDOUT, stat))
               for stat in GROUP_STATS}
    print(f"\nbest trial   {best.name}: held-out mean {heldout[Stat.MEAN]:.3f}, worst "
          f"{heldout[Stat.WORST]:.3f}, union {heldout[Stat.UNION]:.3f}, clean "
          f"{best.value(CLEAN_ACC):.3f}")
    print(f"best recipe  {out / ARTIFACT.BEST_CONFIG}  (pass it to --space, here or to "
          "python -m search.trial)")
    if model is not None:
        print(f"best model   {model}  (trainables.load_defended_model; its card: "
              f"{model.with_suffix('.card.md').name}, .card.json)")
    print(f"leaderboard  {out / ARTIFACT.LEADERBOARD}")
    print(f"report       {', '.join(p.name for p in plots)} in {out / 'report'}")
    print(f"optuna       {plan.optuna_storage} (study {plan.name})")
    if not plan.mlflow_uri.startswith("http"):
        opt_out = ("" if plan.mlflow_uri.startswith("sqlite:") or local_store(plan.mlflow_uri)
                   is None else f"{FILE_STORE_OPT_OUT}=true ")  # a folder store's UI needs it
        print(f"mlflow       {opt_out}mlflow ui --backend-store-uri {plan.mlflow_uri}, then open")
    print(f"mlflow       {view_url}\n             (experiment {plan.experiment!r}: this "
          "search's trials, best objective first; the view is in the runs page's Views menu)")
