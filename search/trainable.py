"""The Ray Tune trainable: one trial of the space, reported (and checkpointed) per evaluation.

The function runs in a Ray worker process, on whichever node Ray placed it; it talks to Tune
only through `tune.report` and `tune.get_checkpoint`, and never to MLflow (the driver logs).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from spaces import RECORD_KEY, Space
from trainables.config import TrialConfig
from trainables.export import save_defended_model
from trainables.models import DefendedModel
from trainables.prepare import Shared
from trainables.trial import Points, run_trial
from trainables.vocab import ARTIFACT, MASKING_ANY, OBJECTIVE, POINTS, Mode

__all__ = ["assigned_device", "objective_value", "train_recipe"]


def assigned_device() -> str:
    """The device of the Ray task or trial running this: the GPU Ray assigned, else the CPU."""
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _device_and_threads(cpus: float, gpu_memory_fraction: float) -> tuple[str, int]:
    """The GPU Ray assigned (if any) and torch threads = this trial's CPUs."""
    device, threads = assigned_device(), max(1, int(cpus))
    if device == "cuda" and gpu_memory_fraction < 1:
        # Ray set CUDA_VISIBLE_DEVICES to the assigned GPU; trials sharing it are not isolated.
        torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction)
    return device, threads


def objective_value(metrics: Mapping[str, float], space: Space) -> float:
    """The space's objective, zeroed when a masking check raised a flag (search.penalize_flags):
    a score that only looks robust must not win the search."""
    value = metrics[space.search.objective]
    if space.search.penalize_flags and metrics.get(MASKING_ANY, 0.0) > 0:
        return 0.0 if space.search.mode == Mode.MAX else float("inf")
    return value


def train_recipe(config: dict[str, Any], *, space: Space, shared: Shared, cpus: float,
                 gpu_memory_fraction: float = 1.0) -> None:
    """Trains one recipe: `config[RECORD_KEY]` is the record the searcher built for it."""
    device, threads = _device_and_threads(cpus, gpu_memory_fraction)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    record = config[RECORD_KEY]
    trial_config = TrialConfig.from_dict({**record["config"], "device": device,
                                          "threads": threads})
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / ARTIFACT.STATE, map_location="cpu",
                                weights_only=False)

    def report(metrics: dict[str, float], points: Points, state: Callable[[], dict[str, Any]],
               model: DefendedModel) -> None:
        final = metrics["epoch"] >= trial_config.epochs
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state(), Path(folder) / ARTIFACT.STATE)
            if final:  # the driver exports the best one
                setup = shared.setup
                save_defended_model(
                    Path(folder) / ARTIFACT.MODEL, model, arch=setup.arch,
                    image_shape=setup.info.image_shape, num_classes=setup.info.num_classes,
                    info={**record, "metrics": metrics, "threat_model": setup.threat.to_dict(),
                          "space": space.name})
            placement = {"trial/node_id": ray.get_runtime_context().get_node_id(),
                         "trial/device": device}
            metrics[OBJECTIVE] = objective_value(metrics, space)
            # the last evaluation's per-point values: paired comparisons with the baselines
            per_point = ({f"{POINTS}/{key}": values.tolist() for key, values in points.items()}
                         if final else {})
            tune.report({**metrics, **placement, **per_point},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    run_trial(trial_config, shared=shared, report=report, resume=resume, log=_quiet)


def _quiet(_: str) -> None:
    return None
