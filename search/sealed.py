"""Sealed re-evaluation of a search's best trials (and of two baselines) on the test split.

    python -m search.sealed --name mid-20261121-095941 --baselines

After `search.run` finishes its trials it re-evaluates the top-k completed trials this way
(`--sealed-top-k`, default 3): their final models, the test split, the held-out attacks plus
the sealed ones (never seen while searching) at double strength, the official AutoAttack and,
for UniG models, the adaptive attacks (trainables/sealed.py). Each runs as a Ray task with a
trial's resources, so on a cluster it runs on the GPU workers. The numbers go to each trial's
MLflow run (`test/...`) and, as `sealed.csv`, to the parent run.

`--baselines` also trains and evaluates, with the search's budget and seed, standard training
and PGD adversarial training, logged as child runs tagged `baseline`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from search.leaderboard import Entry
from spaces import Space
from trainables.config import TrialConfig
from trainables.export import load_defended_model
from trainables.prepare import Shared
from trainables.sealed import SEALED_STRENGTH, sealed_evaluation

__all__ = ["BASELINES", "evaluate_sealed", "main", "model_file"]

# Trained and evaluated exactly like a trial of the space, with these recipe values.
_PLAIN = {"meta": "off", "w_feat": 0.0, "w_cyc": 0.0, "w_pix": 0.0, "w_pred_kl": 0.0,
          "w_ce": 1.0, "pcl_weight": 0.0, "unig": "off", "train_head": True,
          "student_init": "random"}
BASELINES: dict[str, dict[str, Any]] = {
    "standard": {**_PLAIN, "train_on": "clean", "include_clean": True},
    "pgd-at": {**_PLAIN, "train_on": "adversarial", "pool": ["PGD"], "include_clean": False},
}
SUMMARY = ("test/clean/acc", "test/heldout/mean_acc", "test/heldout/union_acc",
           "test/sealed/mean_acc", "test/sealed/union_acc", "test/transfer/mean_acc",
           "test/adaptive/mean_acc", "test/autoattack/acc")


def model_file(results: Any, trial_id: str) -> bytes | None:
    """The final defended model a trial saved in its last checkpoint, as bytes."""
    for result in results:
        if result.metrics.get("trial_id") != trial_id or result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as folder:
            path = Path(folder) / "model.pt"
            return path.read_bytes() if path.exists() else None
    return None


def _evaluate_saved(payload: bytes, shared: Shared, config: dict[str, Any], strength: float,
                    threads: int) -> dict[str, float]:
    """A Ray task: the sealed evaluation of one saved defended model."""
    from search.trainable import assigned_device

    torch.set_num_threads(threads)
    device = assigned_device()
    with tempfile.NamedTemporaryFile(suffix=".pt") as handle:
        handle.write(payload)
        handle.flush()
        model = load_defended_model(handle.name, device=device)
    return sealed_evaluation(model, shared, TrialConfig.from_dict(config), strength=strength,
                             log=lambda _: None)


def _train_and_evaluate(shared: Shared, config: dict[str, Any], strength: float,
                        threads: int) -> dict[str, float]:
    """A Ray task: train a baseline like a trial, then its sealed evaluation."""
    from search.trainable import assigned_device
    from trainables.trial import run_trial

    device = assigned_device()
    trial = TrialConfig.from_dict({**config, "device": device, "threads": threads})
    result = run_trial(trial, shared=shared, log=lambda _: None)
    metrics = dict(result.metrics)
    metrics.update(sealed_evaluation(result.model, shared, trial, strength=strength,
                                     log=lambda _: None))
    return metrics


def baseline_config(space: Space, name: str, **extra: Any) -> TrialConfig:
    return space.trial_config(**{**BASELINES[name], **extra})


def evaluate_sealed(*, space: Space, shared: Shared, client: Any, experiment_id: str,
                    parent_id: str, entries: Sequence[Entry], results: Any,
                    resources: dict[str, float], top_k: int, strength: float = SEALED_STRENGTH,
                    baselines: bool = False, seed: int = 0, out: Path | None = None
                    ) -> list[dict[str, Any]]:
    """Sealed numbers for the top-k completed trials (and the baselines), logged to MLflow."""
    import ray
    from mlflow.entities import Metric, Param

    from search.tracking import params_for

    evaluate_saved = ray.remote(max_retries=1)(_evaluate_saved)
    train_and_evaluate = ray.remote(max_retries=1)(_train_and_evaluate)

    threads = max(1, int(resources.get("cpu", 1)))
    options = {"num_cpus": resources.get("cpu", 1), "num_gpus": resources.get("gpu", 0),
               "resources": {k: v for k, v in resources.items() if k not in ("cpu", "gpu")}}
    shared_ref = ray.put(shared)
    jobs: list[tuple[str, str, Any]] = []  # (label, run id, future)
    for entry in [e for e in entries if e.status == "completed"][:top_k]:
        payload = model_file(results, entry.trial_id)
        if payload is None:
            print(f"sealed: no saved model for {entry.name}; skipped", file=sys.stderr)
            continue
        config = space.trial_config(space.values_from_params(entry.params), seed=seed)
        jobs.append((entry.name, entry.run_id, evaluate_saved.options(**options).remote(
            payload, shared_ref, config.to_dict(), strength, threads)))
    for name in BASELINES if baselines else ():
        config = baseline_config(space, name, seed=seed)
        run = client.create_run(experiment_id, run_name=f"baseline {name}", tags={
            "mlflow.parentRunId": parent_id, "baseline": name, "trial_status": "baseline"})
        client.log_batch(run.info.run_id, params=[
            Param(k, v) for k, v in sorted(params_for(space, config).items())])
        jobs.append((f"baseline {name}", run.info.run_id, train_and_evaluate.options(
            **options).remote(shared_ref, config.to_dict(), strength, threads)))
    rows = []
    for label, run_id, future in jobs:
        metrics = ray.get(future)
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in sorted(numeric.items())])
        client.set_tag(run_id, "sealed", "true")
        if label.startswith("baseline"):
            client.set_terminated(run_id, "FINISHED")
        rows.append({"trial": label, "run_id": run_id, **numeric})
        print(f"sealed: {label}: " + ", ".join(f"{k.split('/', 1)[1]} {numeric[k]:.3f}"
                                               for k in SUMMARY if k in numeric), flush=True)
    if rows:
        text = table(rows, "csv")
        client.log_text(parent_id, text, "sealed.csv")
        if out is not None:
            (out / "sealed.csv").write_text(text)
    return rows


def table(rows: Sequence[dict[str, Any]], fmt: str = "markdown") -> str:
    keys = [k for k in SUMMARY if any(k in r for r in rows)]
    if fmt == "json":
        return json.dumps([{"trial": r["trial"], **{k: r.get(k) for k in keys}} for r in rows],
                          indent=2)
    cells = [[str(r["trial"]), *(f"{r[k]:.3f}" if k in r else "-" for k in keys)] for r in rows]
    header = ["trial", *(k.removeprefix("test/") for k in keys)]
    if fmt == "csv":
        buffer = io.StringIO()
        buffer.write(",".join(header) + "\n")
        for row in cells:
            buffer.write(",".join(row) + "\n")
        return buffer.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------- the CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.sealed", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--name", default=None, help="the search (default: the latest one)")
    p.add_argument("--storage-path", default="./ray_results")
    p.add_argument("--top-k", type=int, default=3, help="best completed trials to evaluate")
    p.add_argument("--strength", type=float, default=SEALED_STRENGTH,
                   help="multiplier of attack iterations, queries and restarts")
    p.add_argument("--baselines", action="store_true",
                   help="also train and evaluate standard training and PGD-AT")
    p.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    args = p.parse_args(argv)
    from search.records import find_search, read_info, use_loopback_for
    from trainables.errors import DefenseSearchError

    try:
        use_loopback_for(read_info(find_search(args.storage_path, args.name))["address"])
        from search.driver import reopen_search  # imports Ray: after the network setting

        with reopen_search(args.storage_path, args.name) as opened:
            rows = evaluate_sealed(
                space=opened.space, shared=opened.shared, client=opened.client,
                experiment_id=opened.experiment_id, parent_id=opened.parent_id,
                entries=opened.entries, results=opened.results, resources=opened.resources,
                top_k=args.top_k, strength=args.strength, baselines=args.baselines,
                seed=opened.seed, out=opened.output_dir)
    except DefenseSearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(rows, args.format))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
