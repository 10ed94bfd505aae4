"""One trial, as the papers' algorithm reads: prepare, then every epoch craft the pool on each
batch and take a (meta) step, and every `eval_every` epochs evaluate and report.

`run_trial` is usable without Ray (`python -m search.trial` runs one from a space); the search
wraps it, passing a `report` callback that forwards each evaluation (and a checkpoint) to Tune.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.attacks import attack_spec, build_attack
from trainables.attacks.base import Attack
from trainables.attacks.stacked import StackedPool
from trainables.config import Fidelity, TrialConfig
from trainables.defense.models import DefendedModel
from trainables.defense.student import Defense, Parts
from trainables.errors import ConfigError, TrialFailedError
from trainables.runtime import Stopwatch, resolve_device, set_threads
from trainables.scoring.validation import Rungs, validate
from trainables.setting.prepare import Shared, prepare_shared
from trainables.vocab import (
    BEST_EPOCH,
    CHANCE_MARGIN,
    CLEAN_ACC,
    DIVERGED_LOSS_FACTOR,
    EPOCH,
    EPOCH_SECONDS,
    EPOCH_SEED_STRIDE,
    TIME_ELAPSED,
    TIME_TOTAL,
    TRAIN_LOSS,
    CraftAgainst,
    Group,
    Norm,
    PoolCombine,
    Split,
    TrainOn,
    group_metric,
    train_key,
)

__all__ = ["Points", "Report", "TrialResult", "run_trial"]

# report(metrics, points, state, model): called after every evaluation; `points` holds each
# point's value of the summary metrics (what a paired comparison needs), `state()` returns a
# resumable snapshot, `model` is the defended model (UniG included) the metrics were measured on
Points = dict[str, np.ndarray]
Report = Callable[[dict[str, float], Points, Callable[[], dict[str, Any]], DefendedModel],
                  None]
Log = Callable[[str], None]


@dataclass
class TrialResult:
    metrics: dict[str, float]
    model: DefendedModel
    config: TrialConfig
    shared: Shared
    history: list[dict[str, float]] = field(default_factory=list)
    points: Points = field(default_factory=dict)  # of the last evaluation (and final one)


# what an epoch's log line shows: (label, group, statistic)
_SHOWN = (("pool mean", Group.POOL, "mean_acc"), ("heldout mean", Group.HELDOUT, "mean_acc"),
          ("union", Group.HELDOUT, "union_acc"), ("transfer mean", Group.TRANSFER, "mean_acc"))


@dataclass
class _Best:
    """Early stopping: the evaluated weights of the best evaluation so far."""

    value: float = -math.inf
    epoch: int = 0
    weights: dict[str, torch.Tensor] | None = None


@dataclass
class _Run:
    """Everything one trial holds while it trains."""

    config: TrialConfig
    shared: Shared
    device: torch.device
    defense: Defense
    rungs: Rungs
    pool: list[Attack]  # crafted against the student on every batch ([]: none)
    stacked: StackedPool | None  # the same pool, crafted in lockstep (stack_pool)
    on_target: dict[str, torch.Tensor] | None  # MID's protocol: crafted once on the target
    report: Report | None
    log: Log
    rng: random.Random
    first_epoch: int = 0
    first_loss: float = 0.0
    best: _Best = field(default_factory=_Best)
    watch: Stopwatch = field(default_factory=Stopwatch)
    history: list[dict[str, float]] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)
    train_metrics: dict[str, float] = field(default_factory=dict)  # of the last epoch
    metrics: dict[str, float] = field(default_factory=dict)  # of the last evaluation
    points: Points = field(default_factory=dict)
    model: DefendedModel | None = None  # the model the last evaluation scored

    @property
    def attack_tasks(self) -> range:
        """The indices of the pool attacks' tasks (after the clean one, if any)."""
        first = int(self.config.include_clean)
        return range(first, first + len(self.config.pool))


def run_trial(config: TrialConfig, *, fidelity: Fidelity | None = None,
              shared: Shared | None = None, report: Report | None = None,
              resume: dict[str, Any] | None = None, log: Log = print,
              validation: bool = True) -> TrialResult:
    """Trains one defended model and returns its last evaluation's metrics and the model.

    Metrics come every `eval_every` epochs (and after the last one) on the validation subset:
    `val/clean/acc`, `val/pool/<attack>/acc`, `val/heldout/<attack>/acc`, and the
    `mean_acc` / `worst_acc` / `union_acc` / `family_mean_acc` of each group; the evaluations
    before the last one are scored at `fidelity` (ASHA's cheaper early rungs).
    `validation=False` trains without any validation (the final comparison retraining a
    recipe, which scores it on the test split itself).
    """
    run = _prepare(config, fidelity or Fidelity(), shared, report, resume, log)
    for epoch in range(run.first_epoch, config.epochs):
        line = _train_epoch(run, epoch)
        if validation and ((epoch + 1) % config.eval_every == 0
                           or epoch == config.epochs - 1):
            line += _evaluate(run, epoch)
        log(line)
    return _finish(run)


# ---------------------------------------------------------------- prepare


def _prepare(config: TrialConfig, fidelity: Fidelity, shared: Shared | None,
             report: Report | None, resume: dict[str, Any] | None, log: Log) -> _Run:
    """Device, shared state, the defense and its pool attacks; restored from `resume`."""
    set_threads(config.threads)
    device = resolve_device(config.device)
    if shared is None:
        shared = prepare_shared(config, log=log)
    setup, data = shared.setup, shared.data
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    defense = Defense(config, shared.teacher, train_x, train_y, arch=setup.arch,
                      image_shape=setup.info.image_shape, num_classes=setup.info.num_classes,
                      threat_eps=(setup.threat.norm, setup.threat.eps),
                      steps_per_epoch=math.ceil(len(train_y) / config.batch_size),
                      device=device)
    adversarial = config.train_on == TrainOn.ADVERSARIAL
    on_target = ({name: shared.examples_on_target(name, config, log).to(device)
                  for name in config.pool}
                 if config.craft_against == CraftAgainst.TARGET and adversarial else None)
    pool = (_pool_attacks(config, shared, defense) if on_target is None and adversarial
            else [])
    stacked = StackedPool(pool, defense.model) if pool and config.stack_pool else None
    run = _Run(config, shared, device, defense, Rungs.of(config, fidelity, shared, device),
               pool, stacked, on_target, report, log, random.Random(config.seed))
    if resume is not None:
        _restore(run, resume)
    return run


def _pool_attacks(config: TrialConfig, shared: Shared, defense: Defense) -> list[Attack]:
    """The pool's attacks against the live student, each at its training budget (L2 and L1
    attacks at their own extra scale: L2 training at a large budget is a lever of its own)."""
    setup = shared.setup
    return [build_attack(name, defense.model, setup.threat, num_classes=setup.info.num_classes,
                         train_steps=config.train_attack_steps, seed=config.seed,
                         scale=config.train_eps_scale * (
                             config.train_eps_scale_l2
                             if attack_spec(name).norm in (Norm.L2, Norm.L1) else 1.0),
                         feature_model=defense.t_encoder)
            for name in config.pool]


def _snapshot(run: _Run, epoch: int) -> dict[str, Any]:
    """A resumable state: weights, optimiser, early stopping's best and every RNG (so a
    resumed trial equals an unbroken one)."""
    return {"epoch": epoch, "recipe": run.defense.state(),
            "torch_rng": torch.get_rng_state().clone(), "task_rng": run.rng.getstate(),
            "first_loss": run.first_loss,
            "best": (run.best.value, run.best.epoch, run.best.weights)}


def _restore(run: _Run, state: dict[str, Any]) -> None:
    run.defense.load_state(state["recipe"])
    run.first_epoch = int(state["epoch"]) + 1
    torch.set_rng_state(state["torch_rng"])
    run.rng.setstate(state["task_rng"])
    run.first_loss = float(state.get("first_loss", 0.0))
    run.best = _Best(*state["best"]) if "best" in state else _Best()


# ---------------------------------------------------------------- train


def _train_epoch(run: _Run, epoch: int) -> str:
    """One epoch: on each batch craft the pool, then take the (meta) step. Keeps the epoch's
    loss parts in `run.train_metrics` and returns the start of its log line."""
    config, device = run.config, run.device
    start = time.perf_counter()
    parts: Parts = defaultdict(lambda: torch.zeros((), dtype=torch.float64, device=device))
    data = run.shared.data
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(
        config.seed * EPOCH_SEED_STRIDE + epoch))
    batches = order.split(config.batch_size)
    for index in batches:
        index = index.to(device)
        x, y = train_x[index], train_y[index]
        with run.watch.phase("craft"), run.defense.passes():  # train_precision
            adversarial = _craft(run, x, y, index)
        with run.watch.phase("step"):  # the losses, the (meta) gradient and the update
            tasks = ([x] if config.include_clean else []) + adversarial
            step_loss = run.defense.step(tasks, x, y, parts, run.attack_tasks, run.rng)
        parts["loss"] = parts["loss"] + step_loss.double()
    # one host-device transfer per epoch for all the loss parts
    run.train_metrics = {train_key(k): v / len(batches) for k, v in zip(
        parts, torch.stack(list(parts.values())).tolist(), strict=True)}
    run.train_metrics[EPOCH_SECONDS] = time.perf_counter() - start
    loss = run.train_metrics[TRAIN_LOSS]
    run.first_loss = run.first_loss or loss
    _check_training(loss, run.first_loss, epoch)
    return (f"epoch {epoch + 1}/{config.epochs}  loss {loss:.3f}  "
            f"{run.train_metrics[EPOCH_SECONDS]:.1f}s")


def _craft(run: _Run, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor
           ) -> list[torch.Tensor]:
    """The batch's adversarial tasks: each pool attack's examples (or, pool_combine=worst,
    per sample the pool example of highest loss), crafted on the student in eval mode."""
    if run.on_target is not None:
        return [run.on_target[name][index] for name in run.config.pool]
    if not run.pool:
        return []
    student = run.defense.student
    student.eval()
    if run.stacked is not None:
        examples = run.stacked.craft(x, y)
    else:
        examples = [attack.craft(x, y) for attack in run.pool]
    if run.config.pool_combine == PoolCombine.WORST and len(examples) > 1:
        examples = [_worst(run.defense.model, examples, y, stacked=run.stacked is not None)]
    student.train()
    return examples


@torch.no_grad()
def _worst(model: torch.nn.Module, candidates: list[torch.Tensor], y: torch.Tensor, *,
           stacked: bool) -> torch.Tensor:
    """Per sample, the candidate of highest CE loss (MSD's "max" strategy over the pool);
    `stacked`: all candidates in one forward pass."""
    if stacked:
        logits = model(torch.cat(candidates))
        losses = F.cross_entropy(logits, y.repeat(len(candidates)), reduction="none")
        losses = losses.view(len(candidates), len(y))
    else:
        losses = torch.stack([F.cross_entropy(model(c), y, reduction="none")
                              for c in candidates])
    return torch.stack(candidates)[losses.argmax(0), torch.arange(len(y), device=y.device)]


def _check_training(loss: float, first: float, epoch: int) -> None:
    """Stops a trial whose training loss is not finite or exploded (TrialFailedError)."""
    if not math.isfinite(loss):
        raise TrialFailedError(f"diverged: the training loss is {loss} after epoch {epoch + 1}")
    if first > 0 and loss > DIVERGED_LOSS_FACTOR * first:
        raise TrialFailedError(f"diverged: the training loss grew from {first:.3g} to "
                               f"{loss:.3g} by epoch {epoch + 1}")


# ---------------------------------------------------------------- evaluate and report


def _evaluate(run: _Run, epoch: int) -> str:
    """Scores the model, checks it did not collapse, reports; returns the rest of the log
    line. Early stopping keeps the best weights and scores those at the last evaluation."""
    config, last = run.config, epoch == run.config.epochs - 1
    model = run.defense.evaluated()
    if config.early_stopping and last:  # the last weights compared like the others were
        _keep_if_best(run, validate(model, run.shared, config, run.rungs.early, final=False,
                                    watch=run.watch)[0], epoch)
        run.defense.load_evaluated_weights(run.best.weights or run.defense.evaluated_weights())
    metrics, points = validate(model, run.shared, config, run.rungs.last if last
                               else run.rungs.early, final=last, watch=run.watch)
    if config.early_stopping and not last:
        _keep_if_best(run, metrics, epoch)
    run.defense.student.train()
    _check_clean(metrics[CLEAN_ACC], run.shared.setup.info.num_classes, epoch)
    metrics.update(run.train_metrics)
    metrics[EPOCH] = epoch + 1
    if config.early_stopping:
        metrics[BEST_EPOCH] = run.best.epoch
    metrics[TIME_ELAPSED] = time.perf_counter() - run.start
    metrics.update(run.watch.metrics())
    run.history.append(dict(metrics))
    run.metrics, run.points, run.model = metrics, points, model
    if run.report is not None:
        run.report(dict(metrics), points, partial(_snapshot, run, epoch), model)
    return f"  val clean {metrics[CLEAN_ACC]:.3f}" + "".join(
        f"  {label} {metrics.get(group_metric(Split.VAL, group, stat), float('nan')):.3f}"
        for label, group, stat in _SHOWN) + _flags_text(metrics)


def _keep_if_best(run: _Run, metrics: dict[str, float], epoch: int) -> None:
    """Early stopping: the evaluated weights after `epoch`, if their `select_by` value (at the
    early rungs' fidelity, the same for every evaluation) is the best so far."""
    key = run.config.select_by
    if key not in metrics:
        raise ConfigError(f"select_by={key!r} is not a metric the evaluations report; early "
                          "stopping needs a val/heldout/... or val/clean/acc metric")
    if metrics[key] > run.best.value:
        run.best = _Best(metrics[key], epoch + 1, run.defense.evaluated_weights())


def _flags_text(metrics: dict[str, float]) -> str:
    from trainables.scoring.masking import raised_flags

    raised = raised_flags(metrics, informational=True)
    return "" if raised is None else f"  masking flags: {', '.join(raised) or 'none'}"


def _check_clean(accuracy: float, classes: int, epoch: int) -> None:
    """Stops a trial whose clean accuracy fell to chance (TrialFailedError)."""
    if accuracy <= 1 / classes + CHANCE_MARGIN:
        raise TrialFailedError(f"diverged: clean validation accuracy {accuracy:.3f} is at "
                               f"chance (1/{classes}) after epoch {epoch + 1}")


def _finish(run: _Run) -> TrialResult:
    model = run.model if run.model is not None else run.defense.evaluated()
    model.eval()
    metrics = {**run.metrics, **run.watch.metrics(), TIME_TOTAL: time.perf_counter() - run.start}
    return TrialResult(metrics, model, run.config, run.shared, run.history, dict(run.points))
