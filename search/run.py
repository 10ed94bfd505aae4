"""`python -m search.run --space mid`: the distributed defense search.

Validates everything (space, flags, MLflow store, Ray address) before Ray starts, prepares
what all trials share once, runs Optuna + ASHA trials on Ray Tune, logs every trial to
MLflow, then prints the leaderboard and exports the best recipe and its defended model.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from search.cli import EXIT_STOPPED, Parser, exit_now, run_cli
from search.cluster import REMOTE_SCHEMES
from search.disk import check_free_space, need_of, used_bytes
from search.lock import search_lock
from search.plan import SearchPlan
from search.records import DEFAULT_OUTPUT, use_loopback_for
from search.resume import check_resumable
from search.signals import catch_signals
from search.stores import check_name, check_tracking_uri, inside, writable_folder
from search.vocab import (
    ARTIFACT,
    FINAL_SEEDS,
    FRESH_FINAL_ENV,
    TRACKING_OUTAGE_S,
    Scheduler,
    fresh_final_default,
)
from spaces import SearchAlg, Space
from trainables.errors import ConfigError
from trainables.vocab import SEALED_STRENGTH

__all__ = ["build_parser", "interrupted_line", "main", "make_plan"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m search.run",
                description="Search defense recipes (MID + PCL + UniG) with Ray Tune, Optuna and "
                            "ASHA; every trial's held-out robustness goes to MLflow.")
    _space_arguments(p)
    _search_arguments(p)
    _place_arguments(p)
    _resource_arguments(p)
    _final_arguments(p)
    return p


def _space_arguments(p: argparse.ArgumentParser) -> None:
    """The space, its overrides and the data."""
    p.add_argument("--space", default="mid", help="space name (smoke, mid, paper) or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space field, validated like the file "
                        "(e.g. --set dataset=mnist5k --set budget.epochs=5); repeatable")
    p.add_argument("--seed", type=int, default=None,
                   help="data split, teacher, trial and sampler seed (default: the space's, 0)")
    p.add_argument("--data-dir", default=None, help="folder with the data set's standard files")
    p.add_argument("--cache-dir", default=None, help="teacher/target cache folder")
    p.add_argument("--dry-run", action="store_true",
                   help="validate everything and print the plan without starting Ray")


def _search_arguments(p: argparse.ArgumentParser) -> None:
    """How the search runs: trials, sampler, scheduler."""
    p.add_argument("--num-samples", type=int, default=None,
                   help="trials to run (default: the space's search.num_samples)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials running at once (default: the space's search.max_concurrent)")
    p.add_argument("--search-alg", choices=[a.value for a in SearchAlg], default=None,
                   help="Optuna sampler (default: the space's search.sampler): tpe, tpe-mv "
                        "(multivariate TPE over the values that appear together), gp "
                        "(Gaussian process), random, local (one or two values of the best "
                        "recipe so far changed: search/local.py); nsga2 searches the clean vs "
                        "held-out Pareto front")
    p.add_argument("--warm-start", default=None, metavar="SOURCE",
                   help="start from an earlier search's folder (its trials become results "
                        "when the space and data set match, proposals otherwise) or a lever "
                        "table written by bench/levers.py (its recipes become proposals)")
    p.add_argument("--multi-objective", action="store_true",
                   help="optimise held-out and clean accuracy together (implied by nsga2)")
    p.add_argument("--scheduler", choices=[s.value for s in Scheduler], default=Scheduler.ASHA,
                   help="asha stops weak trials at its rungs; none runs every trial in full")


def _place_arguments(p: argparse.ArgumentParser) -> None:
    """Where things run and are kept: Ray, MLflow, the results folder."""
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster (HOST:PORT, ray://HOST:PORT or auto); "
                        "default: start Ray on this machine")
    p.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", default=None,
                   help="MLflow experiment name (default: defense-search-<space>)")
    p.add_argument("--tracking-outage", type=float, default=TRACKING_OUTAGE_S,
                   metavar="SECONDS",
                   help="how long a finished search waits for a lost MLflow server before it "
                        "stops with what it could not log kept for --resume (trials keep "
                        "training during an outage either way)")
    p.add_argument("--storage-path", default="./ray_results",
                   help="Ray results and checkpoints: a local folder, or shared storage such as "
                        "s3://bucket/path on a multi-node cluster")
    p.add_argument("--name", default=None,
                   help="name of this search (Ray run and MLflow parent run; default "
                        "<space>-<date>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="resume the search --name (default: the latest of this space) from "
                        "--storage-path")


def _resource_arguments(p: argparse.ArgumentParser) -> None:
    """What each trial asks Ray for, and how failures are retried."""
    p.add_argument("--cpus-per-trial", type=float, default=None,
                   help="CPUs per trial = its torch threads (default: CPUs / max-concurrent, "
                        "or 1 when trials get GPUs)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPU share per trial, e.g. 0.25 (default: GPUs / max-concurrent, up to "
                        "1, when Ray sees GPUs; else 0)")
    p.add_argument("--trial-resource", action="append", default=[], metavar="NAME=AMOUNT",
                   help="a custom Ray resource every trial asks for, e.g. worker_slot=0.01 to "
                        "keep trials on nodes that offer it; repeatable")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failed trial from its last checkpoint")


def _final_arguments(p: argparse.ArgumentParser) -> None:
    """The final comparison after the search."""
    p.add_argument("--sealed-top-k", type=int, default=1,
                   help="best searched recipes compared with the space's baselines at the end, "
                        "on the test split against the held-out and sealed attacks and "
                        "AutoAttack (0: no final comparison)")
    p.add_argument("--final-seeds", type=int, default=FINAL_SEEDS,
                   help="seeds each recipe of the final comparison is evaluated over (a trial's "
                        "own model for its seed, the others trained)")
    p.add_argument("--sealed-strength", type=float, default=SEALED_STRENGTH,
                   help="multiplier of attack iterations/queries/restarts in that evaluation")
    p.add_argument("--fresh-final", action="store_true", default=fresh_final_default(),
                   help="compute every final task again rather than take the answers an "
                        "earlier search of the same setting and code kept (default: off, "
                        f"on where {FRESH_FINAL_ENV}=1)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_loopback_for(args.address)

    plans: list[SearchPlan] = []

    def body() -> int:
        plan = make_plan(args)
        if args.dry_run:
            print(describe_plan(plan))
            return 0
        from search.driver import run_search

        plans.append(plan)
        with catch_signals(), search_lock(Path(plan.output_dir), plan.name):
            return run_search(plan, resume=args.resume, cache_dir=args.cache_dir)

    return run_cli(body, interrupted=lambda: interrupted_line(args, plans[0] if plans else None))


def interrupted_line(args: argparse.Namespace, plan: SearchPlan | None) -> str:
    """What an interrupted search says: how to go on from where it stopped."""
    if plan is None:
        return "interrupted: nothing was started"
    output = Path(plan.output_dir)
    if not plan.storage_path.startswith(REMOTE_SCHEMES) and \
            not any(output.glob("experiment_state-*.json")):
        return ("interrupted before any trial started: run the same command again "
                f"(`python -m search.run --space {args.space} --name {plan.name} ...`)")
    where = "" if args.storage_path == "./ray_results" else f" --storage-path {plan.storage_path}"
    return (f"interrupted: resume with `python -m search.run --space {args.space} --name "
            f"{plan.name}{where} --resume` (and the same --set, --mlflow-uri and other flags)")


def make_plan(args: argparse.Namespace) -> SearchPlan:
    """Checks every argument and the space; nothing here starts Ray or trains anything."""
    space = _load_space(args)
    _check_numbers(args)
    address = check_address(args.address)
    trial_resources = parse_resources(args.trial_resource)
    if address is None:  # Ray will start here: what it will find is known before it starts
        from search.resources import check_request, local_offer, ray_request

        check_request(ray_request({"cpu": args.cpus_per_trial or 1.0,
                                   "gpu": args.gpus_per_trial or 0.0, **trial_resources}),
                      [local_offer()])
    storage, name, output = _where(args, space)
    if args.cache_dir is not None:
        writable_folder(args.cache_dir, "--cache-dir")
    mlflow_uri = _tracking_uri(args, address)
    alg = SearchAlg(args.search_alg or space.search.sampler)
    if alg.is_local and args.multi_objective and args.search_alg is None:
        alg = SearchAlg.TPE  # the space's local default has one objective; TPE takes several
    if alg.is_local and args.multi_objective:
        raise ConfigError(f"--search-alg {alg} moves the best recipe of one objective; with "
                          "--multi-objective use tpe, tpe-mv, gp, random or nsga2")
    warm = None
    if args.warm_start is not None:
        from search.warmstart import load_warm_start

        warm = args.warm_start
        load_warm_start(warm, space)  # checked now: a mismatch is refused before Ray
    if not storage.startswith(REMOTE_SCHEMES):
        need = need_of(space, trials=args.num_samples or space.search.num_samples,
                       running=args.max_concurrent or space.search.max_concurrent)
        check_free_space(output, need, already=used_bytes(output) if args.resume else 0)
    return SearchPlan(
        space=space, name=name,
        num_samples=args.num_samples or space.search.num_samples,
        max_concurrent=args.max_concurrent or space.search.max_concurrent,
        search_alg=alg, scheduler=Scheduler(args.scheduler),
        multi_objective=args.multi_objective or alg == SearchAlg.NSGA2,
        seed=space.trial_config().seed, storage_path=storage, output_dir=str(output),
        optuna_storage=f"sqlite:///{output / ARTIFACT.OPTUNA_DB}", mlflow_uri=mlflow_uri,
        experiment=args.experiment or f"defense-search-{space.name}", address=address,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_failures=args.max_failures, trial_resources=trial_resources,
        sealed_top_k=args.sealed_top_k, sealed_strength=args.sealed_strength,
        final_seeds=args.final_seeds, fresh_final=args.fresh_final,
        tracking_outage_s=args.tracking_outage,
        startup_trials=space.search.startup_trials, warm_start=warm)


def _where(args: argparse.Namespace, space: Space) -> tuple[str, str, Path]:
    """The storage path, the search's name and its results folder (inside the storage path,
    or inside ./search_output for remote storage); on --resume, the search found there."""
    storage = args.storage_path
    if not storage.startswith(REMOTE_SCHEMES):  # created when the search starts, not here
        storage = str(writable_folder(storage, "--storage-path"))
    if args.name is not None:
        check_name(args.name)
    name = check_name(resolve_name(args.name, space.name, storage, resume=args.resume),
                      "the search name")
    output = inside(Path(storage) if not storage.startswith(REMOTE_SCHEMES)
                    else DEFAULT_OUTPUT.resolve(), name)
    if args.resume:
        check_resumable(output, space, args.space)
    return storage, name, output


def _load_space(args: argparse.Namespace) -> Space:
    """The space with its overrides, checked against its data set (whose files, if it reads
    any, are read here, not first on the cluster's nodes)."""
    import spaces

    overrides = list(args.overrides) + ([f"data_dir={args.data_dir}"] if args.data_dir else [])
    if args.seed is not None:
        overrides.append(f"fixed.seed={args.seed}")
    space = spaces.load(args.space, overrides)
    setup = space.setup()  # data directory, attacks vs data set, budgets
    if setup.info.needs_data_dir:
        from trainables.setting.data import load_dataset

        config = space.trial_config()
        load_dataset(config.dataset, data_dir=config.data_dir, seed=config.data_seed,
                     download=config.download)
    return space


def _check_numbers(args: argparse.Namespace) -> None:
    """Every numeric flag finite and within its range."""
    for flag, value in (("--sealed-strength", args.sealed_strength),
                        ("--tracking-outage", args.tracking_outage),
                        ("--cpus-per-trial", args.cpus_per_trial),
                        ("--gpus-per-trial", args.gpus_per_trial)):
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{flag}={value} must be a finite number")
    for flag, value, low in (("--num-samples", args.num_samples, 1),
                             ("--max-concurrent", args.max_concurrent, 1),
                             ("--max-failures", args.max_failures, 0), ("--seed", args.seed, 0),
                             ("--sealed-top-k", args.sealed_top_k, 0),
                             ("--final-seeds", args.final_seeds, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{flag}={value} must be >= {low}")
    if not args.tracking_outage >= 0:
        raise ConfigError(f"--tracking-outage={args.tracking_outage} must be >= 0 seconds")
    if args.sealed_strength <= 0:
        raise ConfigError(f"--sealed-strength={args.sealed_strength} must be > 0")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial={args.cpus_per_trial} must be > 0")
    if args.gpus_per_trial is not None and not args.gpus_per_trial >= 0:
        raise ConfigError(f"--gpus-per-trial={args.gpus_per_trial} must be >= 0")
    if args.gpus_per_trial is not None and args.gpus_per_trial > 1 and \
            args.gpus_per_trial != int(args.gpus_per_trial):
        raise ConfigError(f"--gpus-per-trial={args.gpus_per_trial}: above 1 it must be whole")


def _tracking_uri(args: argparse.Namespace, address: str | None) -> str:
    """The MLflow store, checked (a server answers; a local store's folder is writable)."""
    from search.cluster import is_local_tracking

    mlflow_uri = args.mlflow_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    check_tracking_uri(mlflow_uri)
    if address and address.startswith("ray://") and is_local_tracking(mlflow_uri):
        raise ConfigError(f"--address {address} runs Tune (and its MLflow logging) on the "
                          f"cluster's head, where --mlflow-uri {mlflow_uri} is not this "
                          "machine's file: pass --mlflow-uri http://HEAD:5000")
    return mlflow_uri


def check_address(address: str | None) -> str | None:
    """None/local (start Ray here), auto, or a reachable HOST:PORT / ray://HOST:PORT."""
    if address in (None, "", "local"):
        return None
    if address == "auto":
        return address
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address {address!r} must be HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as err:
        raise ConfigError(f"--address {address}: no Ray head answers there ({err.strerror or err}"
                          "); start one with `ray start --head` or check the address") from None
    return address


def parse_resources(items: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not sep or not key or not 0 < amount < math.inf or key.upper() in ("CPU", "GPU"):
            raise ConfigError(f"--trial-resource {item!r} must be NAME=AMOUNT with a finite "
                              "AMOUNT > 0 (CPU/GPU have their own flags)")
        out[key] = amount
    return out


def resolve_name(name: str | None, space: str, storage: str, *, resume: bool) -> str:
    if not resume:
        return name or f"{space}-{time.strftime('%Y%m%d-%H%M%S')}"
    if storage.startswith(REMOTE_SCHEMES):
        if not name:
            raise ConfigError("--resume with remote --storage-path needs --name")
        return name
    from ray.tune import Tuner

    if name is None:
        candidates = sorted(Path(storage).glob(f"{space}-*"), key=os.path.getmtime)
        candidates = [c for c in candidates if Tuner.can_restore(str(c))]
        if not candidates:
            raise ConfigError(f"--resume: no search of space {space!r} to resume in {storage}")
        return candidates[-1].name
    if not Tuner.can_restore(str(Path(storage) / name)):
        raise ConfigError(f"--resume: {Path(storage) / name} holds no search to resume")
    return name


def describe_plan(plan: SearchPlan) -> str:
    space, config = plan.space, plan.space.trial_config()
    lines = [
        f"search {plan.name}: space {space.name} ({space.source})",
        f"  data set     {config.dataset}, threat model {space.setup().threat.describe()}",
        f"  pool         {'+'.join(space.pool.candidates)} (size {space.pool.min_size}.."
        f"{space.pool.max_size}, default {'+'.join(space.pool.default)}), crafted against "
        f"{config.craft_against}",
        f"  held-out     {'+'.join(config.heldout)}  (objective {plan.raw_objective}, "
        f"{plan.mode}"
        + (", zeroed for masking flags the margin pass does not answer"
           if space.search.penalize_flags else "")
        + (f", minus the shortfall of PGD-10 (or a stronger flagged Linf attack) below "
           f"{space.search.robust_floor:g}"
           if space.search.robust_floor is not None else "") + ")",
        f"  sealed       {'+'.join(config.sealed) or '-'}  (final report only)",
        f"  budget       {config.epochs} epochs, evaluation every {config.eval_every} on "
        f"{config.eval_samples or 'all'} validation points",
        "  searched     " + ", ".join(f"{n} [{s.low:g}, {s.high:g}]" if s.choices is None
                                      else f"{n} {list(s.choices)}"
                                      for n, s in space.params.items()),
        f"  trials       {plan.num_samples}, {plan.max_concurrent} at once, {plan.search_alg}"
        f"{' multi-objective' if plan.multi_objective else ''}, scheduler {plan.scheduler} "
        f"(max_t {space.max_evaluations}, grace {space.search.grace_period}, reduction "
        f"{space.search.reduction_factor})",
        f"  resources    cpus/trial {plan.cpus_per_trial or 'auto'}, gpus/trial "
        f"{plan.gpus_per_trial if plan.gpus_per_trial is not None else 'auto'}"
        f"{' ' + str(plan.trial_resources) if plan.trial_resources else ''}",
        f"  ray          {plan.address or 'local'}, results in {plan.storage_path}/{plan.name}",
        f"  mlflow       {plan.mlflow_uri}, experiment {plan.experiment}",
        f"  optuna       {plan.optuna_storage} (study {plan.name})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    code = main()
    if code in EXIT_STOPPED:
        exit_now(code)
    raise SystemExit(code)
