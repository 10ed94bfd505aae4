"""Runs a validated SearchPlan: prepare once, start/join Ray, fit, report, export the best."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search.cluster import REMOTE_SCHEMES, check_cluster
from search.leaderboard import Entry, collect, format_table, rank, to_csv
from search.progress import ProgressPrinter
from search.records import find_search, read_info, use_loopback_for
from search.sealed import evaluate_sealed, model_file
from search.tracking import MlflowTrialLogger, open_experiment
from search.trainable import OBJECTIVE
from search.tuner import SearchPlan, build_tuner, restore_tuner
from spaces import Space
from trainables.prepare import Shared, prepare_shared

__all__ = ["Reopened", "reopen_search", "run_search"]

REPO = Path(__file__).resolve().parents[1]


def _quiet_ray() -> None:
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _parent_run(client: Any, experiment_id: str, plan: SearchPlan, *, resume: bool) -> str:
    if resume:
        found = client.search_runs([experiment_id], f"tags.search_name = '{plan.name}'",
                                   max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    space, config = plan.space, plan.space.trial_config()
    tags = {"search_name": plan.name, "space": space.name, "dataset": config.dataset,
            "threat_model": space.setup().threat.describe(), "git_commit": _git_commit(),
            "heldout_attacks": "+".join(config.heldout),
            "sealed_attacks": "+".join(config.sealed) or "-",
            "pool_candidates": "+".join(space.pool.candidates)}
    run = client.create_run(experiment_id, run_name=plan.name, tags=tags)
    params = {"num_samples": plan.num_samples, "max_concurrent": plan.max_concurrent,
              "search_alg": plan.search_alg, "multi_objective": plan.multi_objective,
              "scheduler": plan.scheduler, "objective": plan.raw_objective, "mode": plan.mode,
              "penalize_flags": space.search.penalize_flags,
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
    _quiet_ray()
    import ray
    from mlflow.tracking import MlflowClient

    space = plan.space
    Path(plan.output_dir).mkdir(parents=True, exist_ok=True)
    config = space.trial_config(cache_dir=cache_dir, seed=plan.seed)
    # "local" starts a new instance even where `ray start` left a cluster file behind
    ray.init(address=plan.address or "local", include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    parent_id = None
    try:
        node_count = check_cluster(plan.mlflow_uri, plan.storage_path,
                                   remote_storage=plan.storage_path.startswith(REMOTE_SCHEMES))
        resources = _resources(plan)
        print(f"ray: {node_count} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs, "
              f"{ray.cluster_resources().get('GPU', 0):g} GPUs; per trial {resources}",
              flush=True)
        print(f"search {plan.name}: preparing data and teacher (cached per data set and seed)",
              flush=True)
        shared = prepare_shared(config, pool_candidates=space.pool.candidates,
                                log=lambda line: print(f"  {line}", flush=True))
        client = MlflowClient(plan.mlflow_uri)
        experiment_id = open_experiment(client, plan.experiment)
        parent_id = _parent_run(client, experiment_id, plan, resume=resume)
        callbacks = [
            MlflowTrialLogger(tracking_uri=plan.mlflow_uri, experiment_id=experiment_id,
                              parent_run_id=parent_id, space=space,
                              max_t=space.max_evaluations),
            ProgressPrinter(space, num_samples=plan.num_samples, max_t=space.max_evaluations,
                            objective=plan.objective, epochs=config.epochs)]
        _write_search_info(plan, experiment_id, parent_id, resources, cache_dir)
        client.log_artifact(parent_id, str(Path(plan.output_dir) / "space.yaml"))
        path = f"{plan.storage_path.rstrip('/')}/{plan.name}"
        tuner = (restore_tuner(plan, shared, resources, path) if resume
                 else build_tuner(plan, shared, resources, callbacks))
        results = tuner.fit()
        if plan.sealed_top_k:
            print(f"\nsealed evaluation of the best {plan.sealed_top_k} completed trial(s) on "
                  "the test split (held-out + sealed attacks, AutoAttack)", flush=True)
            entries = rank(collect(client, experiment_id, parent_id), plan.objective, plan.mode)
            evaluate_sealed(space=space, shared=shared, client=client,
                            experiment_id=experiment_id, parent_id=parent_id, entries=entries,
                            results=results, resources=resources, top_k=plan.sealed_top_k,
                            strength=plan.sealed_strength, seed=plan.seed,
                            out=Path(plan.output_dir))
    except BaseException:
        if parent_id is not None:
            client.set_terminated(parent_id, "KILLED" if sys.exc_info()[0] is KeyboardInterrupt
                                  else "FAILED")
        raise
    finally:
        ray.shutdown()
    return _finish(plan, client, experiment_id, parent_id, results)


def _write_search_info(plan: SearchPlan, experiment_id: str, parent_id: str,
                       resources: dict[str, float], cache_dir: str | None) -> None:
    """What `search.sealed` and `search.report` need to reopen this search later."""
    out = Path(plan.output_dir)
    (out / "space.yaml").write_text(yaml.safe_dump(dict(plan.space.raw), sort_keys=False))
    info = {"name": plan.name, "space": plan.space.name, "mlflow_uri": plan.mlflow_uri,
            "experiment": plan.experiment, "experiment_id": experiment_id,
            "parent_run_id": parent_id, "storage_path": plan.storage_path,
            "optuna_storage": plan.optuna_storage, "seed": plan.seed, "resources": resources,
            "address": plan.address, "cache_dir": cache_dir, "mode": plan.mode}
    (out / "search.json").write_text(json.dumps(info, indent=2))


@dataclass
class Reopened:
    space: Space
    shared: Shared
    client: Any
    experiment_id: str
    parent_id: str
    entries: list[Entry]
    results: Any
    resources: dict[str, float]
    seed: int
    output_dir: Path
    info: dict[str, Any]


@contextmanager
def reopen_search(storage_path: str, name: str | None) -> Iterator[Reopened]:
    """A finished search, ready to evaluate again: its space, shared state, runs, results."""
    import spaces

    out = find_search(storage_path, name)
    info = read_info(out)
    use_loopback_for(info["address"])
    _quiet_ray()
    import ray
    from mlflow.tracking import MlflowClient
    from ray.tune import ExperimentAnalysis, ResultGrid

    space = spaces.load(str(out / "space.yaml"))
    ray.init(address=info["address"] or "local", include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        config = space.trial_config(cache_dir=info["cache_dir"], seed=info["seed"])
        shared = prepare_shared(config, pool_candidates=space.pool.candidates,
                                log=lambda _: None)
        client = MlflowClient(info["mlflow_uri"])
        entries = rank(collect(client, info["experiment_id"], info["parent_run_id"]),
                       OBJECTIVE, info["mode"])
        path = f"{info['storage_path'].rstrip('/')}/{info['name']}"
        results = ResultGrid(ExperimentAnalysis(path))
        yield Reopened(space, shared, client, info["experiment_id"], info["parent_run_id"],
                       entries, results, info["resources"], info["seed"], out, info)
    finally:
        ray.shutdown()


def _finish(plan: SearchPlan, client: Any, experiment_id: str, parent_id: str,
            results: Any) -> int:
    space, out = plan.space, Path(plan.output_dir)
    entries = rank(collect(client, experiment_id, parent_id), plan.objective, plan.mode)
    print("\nleaderboard (full-length trials first; ranked by "
          f"{plan.objective}):\n{format_table(entries, space, limit=15)}")
    (out / "leaderboard.csv").write_text(to_csv(entries, space))
    client.log_artifact(parent_id, str(out / "leaderboard.csv"))
    statuses = [e.status for e in entries]
    for status in ("completed", "early-stopped", "failed"):
        client.log_metric(parent_id, f"trials/{status}", statuses.count(status))
    best = next((e for e in entries if e.status == "completed"), None)
    if best is None:
        client.set_terminated(parent_id, "FAILED")
        print("no trial ran to completion: see the failures above", file=sys.stderr)
        return 1
    values = space.values_from_params(best.params)
    raw = best.value(plan.raw_objective)
    note = (f"Best recipe of search {plan.name} ({best.name}): {plan.raw_objective} = "
            f"{raw if raw is None else round(raw, 4)}, masking flags: "
            f"{', '.join(best.flags) or 'none'}.")
    (out / "best_config.yaml").write_text(yaml.safe_dump(
        space.with_defaults(values, name=f"{space.name}-best", note=note), sort_keys=False))
    client.log_artifact(parent_id, str(out / "best_config.yaml"))
    client.set_tag(parent_id, "best_run", best.run_id)
    for key in ("val/heldout/mean_acc", "val/heldout/worst_acc", "val/heldout/union_acc",
                "val/clean/acc"):
        if best.value(key) is not None:
            client.log_metric(parent_id, f"best/{key}", float(best.value(key)))
    model = _export_best_model(results, best, out)
    if model is not None:
        client.log_artifact(parent_id, str(model), "best")
        client.log_artifact(best.run_id, str(model))
    client.set_terminated(parent_id, "FINISHED")
    _print_where(plan, best, model, out)
    return 0


def _export_best_model(results: Any, best: Entry, out: Path) -> Path | None:
    payload = model_file(results, best.trial_id)
    if payload is None:
        print(f"note: the best trial's final checkpoint holds no model file ({best.trial_id})")
        return None
    target = out / "best_model.pt"
    target.write_bytes(payload)
    return target


def _print_where(plan: SearchPlan, best: Any, model: Path | None, out: Path) -> None:
    print(f"\nbest trial   {best.name}: held-out mean {best.value('val/heldout/mean_acc'):.3f}, "
          f"worst {best.value('val/heldout/worst_acc'):.3f}, union "
          f"{best.value('val/heldout/union_acc'):.3f}, clean {best.value('val/clean/acc'):.3f}")
    print(f"best recipe  {out / 'best_config.yaml'}  (pass it to --space, here or to "
          "python -m trainables.trial)")
    if model is not None:
        print(f"best model   {model}  (trainables.load_defended_model)")
    print(f"leaderboard  {out / 'leaderboard.csv'}")
    print(f"optuna       {plan.optuna_storage} (study {plan.name})")
    print(f"mlflow       mlflow ui --backend-store-uri {plan.mlflow_uri}   "
          f"(experiment {plan.experiment!r}, parent run {plan.name!r})"
          if not plan.mlflow_uri.startswith("http") else
          f"mlflow       {plan.mlflow_uri}  (experiment {plan.experiment!r}, parent run "
          f"{plan.name!r})")
