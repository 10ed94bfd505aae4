"""The Ray Tune trainable: one trial of the space, reported (and checkpointed) per evaluation.

The function runs in a Ray worker process, on whichever node Ray placed it; it talks to Tune
only through `tune.report` and `tune.get_checkpoint`, and never to MLflow (the driver logs).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search.vocab import (
    ARTIFACT,
    FAILURE_LINES,
    FAILURE_REASON,
    OBJECTIVE,
    TRIAL_DEVICE,
    TRIAL_NODE,
    TRIAL_RESTARTED,
    points_key,
)
from spaces import RECORD_KEY, Mode, Space, TrialRecord
from trainables.defense.export import save_defended_model
from trainables.defense.models import DefendedModel
from trainables.errors import ConfigError, TrialFailedError
from trainables.scoring.masking import floor_accuracy
from trainables.setting.prepare import Shared
from trainables.train import Points, run_trial
from trainables.vocab import (
    EPOCH,
    MASKING_ANY,
    THREAT_PGD10,
    high_key,
    low_key,
    masking_claim_key,
)

__all__ = ["assigned_device", "objective_metrics", "objective_value", "robust_shortfall",
           "train_recipe"]

LAST_LINES = 20  # of a trial's log, kept for its failure report


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


def objective_value(metrics: Mapping[str, float], space: Space, *, final: bool = True
                    ) -> float:
    """The space's objective, zeroed when a masking check raised a flag that invalidates the
    space's claim (search.penalize_flags): a score that only looks robust against the attacker
    the space assumes must not win the search. A gradient-masking flag does not zero a query
    claim, nor a query flag a white-box one, nor a stronger attack's flag an objective that
    includes one (masking.invalidates; every flag stays reported). A `final` evaluation
    also pays for its shortfall below search.robust_floor."""
    value = metrics[space.search.objective]
    claim = masking_claim_key(space.access)
    raised = metrics.get(claim, metrics.get(MASKING_ANY, 0.0))  # results of older versions
    if space.search.penalize_flags and raised > 0:
        return 0.0 if space.search.mode == Mode.MAX else float("inf")
    shortfall = robust_shortfall(metrics, space) if final else 0.0
    return max(0.0, value - shortfall) if shortfall > 0 else value


def robust_shortfall(metrics: Mapping[str, float], space: Space) -> float:
    """How far a recipe's PGD-10 accuracy (masking.floor_accuracy) is below the space's robust
    floor (0 without one).
    Only a full-length trial pays it: at an early rung every recipe is still far below the
    floor, and ASHA compares recipes at the same rung anyway."""
    floor = space.search.robust_floor
    if floor is None:
        return 0.0
    measured = floor_accuracy(metrics)  # PGD-10, or a stronger attack's where one is flagged
    if not math.isfinite(measured):  # the space's checks make it reported: a bug, not a retry
        raise TrialFailedError(f"search.robust_floor={floor} needs {THREAT_PGD10}, which this "
                               f"evaluation did not report ({measured})")
    return max(0.0, floor - measured)


def objective_metrics(metrics: Mapping[str, float], space: Space, *, final: bool = True
                      ) -> dict[str, float]:
    """The objective ASHA and the sampler see, with its 95% interval (ASHA's interval rule,
    spaces.RungStop): the space's objective metric's shifted by the floor's shortfall, or a
    point where a flag zeroed it."""
    name, value = space.search.objective, objective_value(metrics, space, final=final)
    raw = metrics[name]
    if value != raw and value in (0.0, float("inf")):  # zeroed by a flag (or the shortfall)
        return {OBJECTIVE: value, low_key(OBJECTIVE): value, high_key(OBJECTIVE): value}
    shift = raw - value  # the floor's shortfall (0 without one): the interval moves with it
    low, high = metrics.get(low_key(name), raw) - shift, metrics.get(high_key(name), raw) - shift
    return {OBJECTIVE: value, low_key(OBJECTIVE): max(0.0, low) if shift else low,
            high_key(OBJECTIVE): high}


def train_recipe(config: dict[str, Any], *, space: Space, shared: Shared, cpus: float,
                 gpu_memory_fraction: float = 1.0) -> None:
    """Trains one recipe: `config[RECORD_KEY]` is the record the searcher built for it.

    A failure a retry would meet again (the recipe diverged, or is invalid) ends the trial
    with its reason reported (FAILURE_REASON) instead of an error Tune would retry; any other
    error carries the trial's last lines into Ray's error file."""
    lines: deque[str] = deque(maxlen=LAST_LINES)
    try:
        _train(config[RECORD_KEY], space, shared, cpus, gpu_memory_fraction, lines)
    except (TrialFailedError, ConfigError) as err:
        tune.report({OBJECTIVE: 0.0 if space.search.mode == Mode.MAX else float("inf"),
                     FAILURE_REASON: f"{type(err).__name__}: {err}",
                     FAILURE_LINES: "\n".join(lines)})
    except Exception as err:
        err.add_note("last lines of the trial:\n" + "\n".join(lines))
        raise


def _train(record: TrialRecord, space: Space, shared: Shared, cpus: float,
           gpu_memory_fraction: float, lines: deque[str]) -> None:
    if record.invalid is not None:
        raise ConfigError(record.invalid)
    device, threads = _device_and_threads(cpus, gpu_memory_fraction)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    trial_config = record.config.replace(device=device, threads=threads)
    resume, restarted = _resume_state(lines)

    def report(metrics: dict[str, float], points: Points, state: Callable[[], dict[str, Any]],
               model: DefendedModel) -> None:
        final = metrics[EPOCH] >= trial_config.epochs
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state(), Path(folder) / ARTIFACT.STATE)
            if final:  # the driver exports the best one
                setup = shared.setup
                save_defended_model(
                    Path(folder) / ARTIFACT.MODEL, model, arch=setup.arch,
                    image_shape=setup.info.image_shape, num_classes=setup.info.num_classes,
                    info=record.model_info(threat=setup.threat.to_dict(), metrics=metrics,
                                           space=space.name))
            placement = {TRIAL_NODE: ray.get_runtime_context().get_node_id(),
                         TRIAL_DEVICE: device, TRIAL_RESTARTED: float(restarted)}
            metrics.update(objective_metrics(metrics, space, final=final))
            # the last evaluation's per-point values: paired comparisons with the baselines
            per_point = ({points_key(key): values.tolist() for key, values in points.items()}
                         if final else {})
            tune.report({**metrics, **placement, **per_point},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    run_trial(trial_config, fidelity=record.fidelity, shared=shared, report=report,
              resume=resume, log=lines.append)


def _resume_state(lines: deque[str]) -> tuple[dict[str, Any] | None, bool]:
    """The state of the trial's last checkpoint, if any; an unreadable one (a node died while
    writing it, a disk error) is dropped and the trial starts over, which it says."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, False
    try:
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / ARTIFACT.STATE, map_location="cpu",
                              weights_only=False), False
    except Exception as err:
        lines.append(f"checkpoint unreadable ({type(err).__name__}: {err}); starting over")
        return None, True
