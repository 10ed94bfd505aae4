"""One trial: train a defended student with MID + PCL, attach UniG, score held-out robustness.

`run_trial` is usable without Ray (`python -m search.trial` runs one from a space); the search
wraps it, passing a `report` callback that forwards each evaluation (and a checkpoint) to Tune.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainables.attacks import build_attack
from trainables.attacks.base import Attack
from trainables.config import TrialConfig
from trainables.errors import TrialFailedError
from trainables.scoring.evaluate import (
    evaluate_groups,
    group_metrics,
    group_points,
    transfer_masks,
)
from trainables.defense.losses import (
    channel_kl,
    feature_consistency,
    pixel_consistency,
    prediction_kl,
    prototype_conformity,
)
from trainables.scoring.masking import raised_flags, run_masking_checks
from trainables.defense.meta import TasksLoss, meta_objective
from trainables.defense.models import ClassifierHead, DefendedModel, build_arch
from trainables.setting.prepare import Shared, prepare_shared
from trainables.runtime import Stopwatch, resolve_device, seed_everything, set_threads
from trainables.defense.unig import UniG
from trainables.vocab import (
    CHANCE_MARGIN,
    CLEAN_ACC,
    DIVERGED_LOSS_FACTOR,
    EPOCH_SEED_STRIDE,
    MASKING,
    CraftAgainst,
    Group,
    MetaOrder,
    PclLayers,
    PoolCombine,
    Split,
    StudentInit,
    TrainOn,
    UniGSize,
    group_metric,
)

__all__ = ["Report", "TrialResult", "build_unig", "run_trial"]

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
    points: Points = field(default_factory=dict)  # of the last evaluation (and sealed one)


# what an epoch's log line shows: (label, group, statistic)
_SHOWN = (("pool mean", Group.POOL, "mean_acc"), ("heldout mean", Group.HELDOUT, "mean_acc"),
          ("union", Group.HELDOUT, "union_acc"), ("transfer mean", Group.TRANSFER, "mean_acc"))


class _Student(nn.Module):
    """Student encoder + head returning every stage the losses need: (z, h, logits)."""

    def __init__(self, encoder: nn.Module, head: ClassifierHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        h = self.head.penultimate(z)
        return z, h, self.head.logits(h)


def build_unig(config: TrialConfig) -> UniG | None:
    if config.unig == UniGSize.OFF:
        return None
    return UniG(config.unig, delta=config.unig_delta, steps=config.unig_steps,
                lr=config.unig_lr, init_std=config.unig_init_std)


@torch.no_grad()
def _class_means(student: _Student, x: torch.Tensor, y: torch.Tensor, classes: int,
                 layer: str, batch_size: int) -> torch.Tensor:
    """Each class's mean feature, in batches and without a graph (a whole training set in one
    pass does not fit a GPU). A class with no training image starts at the overall mean, moved
    by a little seeded noise so that two such prototypes are not equal."""
    sums: torch.Tensor | None = None
    counts = torch.bincount(y, minlength=classes).to(x.dtype)
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            z, h, _ = student(x[start:start + batch_size])
            feats = (h if layer == PclLayers.PENULTIMATE else z).flatten(1)
            part = torch.zeros((classes, feats.shape[1]), dtype=feats.dtype, device=feats.device)
            part.index_add_(0, y[start:start + batch_size], feats)
            sums = part if sums is None else sums + part
    assert sums is not None
    means = sums / counts.clamp_min(1).unsqueeze(1)
    missing = counts == 0
    if missing.any():
        overall = sums.sum(0) / counts.sum()
        noise = torch.randn((int(missing.sum()), sums.shape[1]),
                            generator=torch.Generator().manual_seed(0)).to(sums.device)
        means[missing] = overall + 0.01 * overall.abs().mean() * noise
    return means


class _Recipe:
    """The student, its frozen teacher and the losses of one trial, on one device."""

    def __init__(self, config: TrialConfig, shared: Shared, device: torch.device) -> None:
        self.config, self.device = config, device
        setup, teacher = shared.setup, shared.teacher
        self.num_classes = setup.info.num_classes
        self.t_encoder = copy.deepcopy(teacher.encoder).to(device).eval()
        self.t_decoder = copy.deepcopy(teacher.decoder).to(device).eval()
        self.t_head = copy.deepcopy(teacher.head).to(device).eval()
        seed_everything(config.seed)
        if config.student_init == StudentInit.TEACHER:
            encoder = copy.deepcopy(teacher.encoder)
        else:
            encoder = build_arch(setup.arch, setup.info.image_shape, self.num_classes).encoder
        head = copy.deepcopy(teacher.head)
        encoder.requires_grad_(True)
        head.requires_grad_(config.train_head)
        self.student = _Student(encoder, head).to(device).train()
        self.model = DefendedModel(encoder, head)  # shares weights; what pool attacks target
        layers = {PclLayers.PENULTIMATE: ["penultimate"], PclLayers.ENCODER: ["encoder"],
                  PclLayers.BOTH: ["encoder", "penultimate"]}[config.pcl_layers]
        train_x = shared.data.train_x.to(device)
        train_y = shared.data.train_y.to(device)
        # Prototypes start at the teacher's class means: the head already reads them well.
        teacher_view = _Student(self.t_encoder, self.t_head)
        self.prototypes = nn.ParameterDict({
            layer: nn.Parameter(_class_means(teacher_view, train_x, train_y,
                                             self.num_classes, layer, config.eval_batch_size))
            for layer in layers})
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable + list(self.prototypes.parameters()),
                                          lr=config.lr)

    def tasks_loss_fn(self, tasks: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      parts: dict[str, torch.Tensor]) -> TasksLoss:
        """The loss of the student (with given weights) on each of some tasks: CE, TRADES'
        consistency with its own clean prediction, MID's multi-consistency distillation and
        PCL. Task 0 is the clean images when include_clean (no TRADES term there: it is 0).
        With fuse_tasks the tasks share one forward pass (one batch of all their images)."""
        cfg = self.config
        clean_task = 0 if cfg.include_clean else None
        with torch.no_grad():
            z_teacher = self.t_encoder(x)
            logits_teacher = self.t_head(z_teacher)
        own_clean: dict[int, torch.Tensor] = {}  # the student's clean logits, per weight set

        def forward(params: dict[str, torch.Tensor], indices: Sequence[int]
                    ) -> list[tuple[torch.Tensor, ...]]:
            """(z, h, logits, regenerated or None) of each task."""
            if cfg.fuse_tasks:
                chunks = [functional_call(self.student, params,
                                          (torch.cat([tasks[t] for t in indices]),))]
            else:
                chunks = [functional_call(self.student, params, (tasks[t],)) for t in indices]
            if cfg.w_cyc or cfg.w_pix:  # the pixel level: the teacher decoder's regeneration
                chunks = [(*c, self.t_decoder(c[0])) for c in chunks]
            if cfg.fuse_tasks:
                return list(zip(*(part.split(len(x)) for part in chunks[0]), strict=True))
            return chunks

        def tasks_loss(params: dict[str, torch.Tensor], indices: Sequence[int]
                       ) -> torch.Tensor:
            losses = []
            outputs = forward(params, indices)
            if clean_task is not None and clean_task in indices:  # TRADES' clean side: the
                # clean task's own pass
                own_clean[id(params)] = outputs[list(indices).index(clean_task)][2]
            for task, (z, h, logits, *pixel) in zip(indices, outputs, strict=True):
                terms: dict[str, torch.Tensor] = {}
                ce_weight = cfg.w_ce_clean if task == clean_task else cfg.w_ce
                if ce_weight:
                    terms["ce"] = ce_weight * F.cross_entropy(logits, y)
                if cfg.w_trades and task != clean_task:
                    if id(params) not in own_clean:  # TRADES differentiates through both
                        own_clean[id(params)] = functional_call(self.student, params, (x,))[2]
                    terms["trades"] = cfg.w_trades * prediction_kl(own_clean[id(params)],
                                                                   logits)
                if cfg.w_pred_kl:
                    terms["pred_kl"] = cfg.w_pred_kl * prediction_kl(logits_teacher, logits)
                if cfg.w_feat:
                    terms["feat"] = cfg.w_feat * feature_consistency(z_teacher, z, cfg.feat_loss)
                if cfg.w_cyc:
                    terms["cyc"] = cfg.w_cyc * channel_kl(z_teacher, self.t_encoder(pixel[0]))
                if cfg.w_pix:
                    terms["pix"] = cfg.w_pix * pixel_consistency(pixel[0], x)
                if cfg.pcl_weight:
                    feats = {"encoder": z, "penultimate": h}
                    for layer, protos in self.prototypes.items():
                        pcl, _ = prototype_conformity(feats[layer], y, protos, cfg.pcl_margin)
                        terms[f"pcl_{layer}"] = cfg.pcl_weight * pcl
                for name, value in terms.items():  # summed on the device: no sync per batch
                    parts[name] = parts[name] + value.detach().double()
                # a task without a term (e.g. a clean task without CE) trains nothing
                losses.append(torch.stack(list(terms.values())).sum() if terms
                              else logits.new_zeros(()))
            return torch.stack(losses)

        return tasks_loss

    def params(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.student.named_parameters() if p.requires_grad}

    def state(self) -> dict[str, Any]:
        """A snapshot (copied: the live tensors keep changing as training goes on)."""
        return copy.deepcopy({"student": self.student.state_dict(),
                              "prototypes": self.prototypes.state_dict(),
                              "optimizer": self.optimizer.state_dict()})

    def load_state(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.prototypes.load_state_dict(state["prototypes"])
        self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def _worst(model: nn.Module, candidates: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Per sample, the candidate of highest CE loss (MSD's "max" strategy over the pool)."""
    losses = torch.stack([F.cross_entropy(model(c), y, reduction="none") for c in candidates])
    stacked = torch.stack(candidates)
    return stacked[losses.argmax(0), torch.arange(len(y), device=y.device)]


def _cuda_ids(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [torch.cuda.current_device() if device.index is None else device.index]


def _check_training(loss: float, first: float, epoch: int) -> None:
    """Stops a trial whose training loss is not finite or exploded (TrialFailedError)."""
    if not math.isfinite(loss):
        raise TrialFailedError(f"diverged: the training loss is {loss} after epoch {epoch + 1}")
    if first > 0 and loss > DIVERGED_LOSS_FACTOR * first:
        raise TrialFailedError(f"diverged: the training loss grew from {first:.3g} to "
                               f"{loss:.3g} by epoch {epoch + 1}")


def _check_clean(accuracy: float, classes: int, epoch: int) -> None:
    """Stops a trial whose clean accuracy fell to chance (TrialFailedError)."""
    if accuracy <= 1 / classes + CHANCE_MARGIN:
        raise TrialFailedError(f"diverged: clean validation accuracy {accuracy:.3f} is at "
                               f"chance (1/{classes}) after epoch {epoch + 1}")


def _snapshot(epoch: int, recipe: _Recipe, rng: random.Random) -> dict[str, Any]:
    """A resumable state: weights, optimiser and every RNG (so a resumed trial equals an
    unbroken one)."""
    return {"epoch": epoch, "recipe": recipe.state(), "torch_rng": torch.get_rng_state().clone(),
            "task_rng": rng.getstate()}


def _pool_attacks(config: TrialConfig, shared: Shared, model: nn.Module) -> list[Attack]:
    setup = shared.setup
    return [build_attack(name, model, setup.threat, num_classes=setup.info.num_classes,
                         train_steps=config.train_attack_steps, seed=config.seed,
                         scale=config.train_eps_scale)
            for name in config.pool]


@dataclass(frozen=True)
class _Fidelity:
    """What an evaluation scores: on which points, at what attack strength, which groups."""

    x: torch.Tensor
    y: torch.Tensor
    strength: float
    heldout_only: bool


def _fidelities(config: TrialConfig, shared: Shared, device: torch.device
                ) -> tuple[_Fidelity, _Fidelity]:
    """The evaluations before the last (ASHA's early rungs), and the last one (the full one).
    The rungs' points are the first of the same seeded order, so a subset of the last's."""
    x, y = (t.to(device) for t in shared.points(Split.VAL, config))
    last = _Fidelity(x, y, 1.0, False)
    if config.rung_samples:
        x, y = (t.to(device) for t in shared.split(Split.VAL, samples=config.rung_samples,
                                                   seed=config.data_seed))
    return _Fidelity(x, y, config.rung_strength, config.rung_heldout_only), last


def _evaluate(config: TrialConfig, shared: Shared, defended: DefendedModel, fidelity: _Fidelity,
              *, final: bool, watch: Stopwatch) -> tuple[dict[str, float], Points]:
    """White-box pool and held-out groups, the transfer group and masking checks (the cheap
    ones at every evaluation, all at the last); and the per-point values of clean accuracy
    and the held-out statistics."""
    setup, val_x, val_y = shared.setup, fidelity.x, fidelity.y

    def bind(names: tuple[str, ...]) -> list[Attack]:
        return [build_attack(n, defended, setup.threat, num_classes=setup.info.num_classes,
                             seed=config.seed, strength=fidelity.strength) for n in names]

    groups: dict[str, list[Attack]] = {Group.HELDOUT: bind(config.heldout)}
    if not fidelity.heldout_only:
        groups = {Group.POOL: bind(config.pool), **groups}
    with watch.phase("eval_attacks"):
        metrics, masks = evaluate_groups(defended, val_x, val_y, groups, split=Split.VAL,
                                         batch_size=config.eval_batch_size, seed=config.seed)
    metrics.update({"fidelity/points": float(len(val_y)),
                    "fidelity/strength": fidelity.strength})
    heldout = {name.split("/", 1)[1]: mask for name, mask in masks.items()
               if name.startswith(f"{Group.HELDOUT}/")}
    points = {group_metric(Split.VAL, Group.HELDOUT, stat): values
              for stat, values in group_points(heldout).items()}
    points[CLEAN_ACC] = masks[Group.CLEAN].float().cpu().numpy()
    transfer = shared.transfer.get(Split.VAL)
    if transfer and not fidelity.heldout_only:  # crafted on the undefended target: apart
        sets = {n: t[:len(val_y)] for n, t in transfer.items()}  # the same first points
        masks = transfer_masks(defended, val_x, val_y, sets, setup.threat,
                               batch_size=config.eval_batch_size)
        metrics.update(group_metrics(Split.VAL, Group.TRANSFER, masks))
    if config.masking_samples and setup.threat.norm in ("Linf", "L2"):
        # the cheap checks at every evaluation (the search sees masking from its first rung),
        # the whole checklist at the last one
        count = min(config.masking_samples, len(val_y))
        surrogate = shared.target.to(val_x.device) if shared.target is not None else None
        with watch.phase("masking"):
            report = run_masking_checks(defended, val_x[:count], val_y[:count], setup.threat,
                                        num_classes=setup.info.num_classes,
                                        surrogate=surrogate, batch_size=config.eval_batch_size,
                                        seed=config.seed, quick=not final,
                                        attacks=(*config.pool, *config.heldout))
        metrics.update(report.metrics(MASKING))
    return metrics, points


def run_trial(config: TrialConfig, *, shared: Shared | None = None, report: Report | None = None,
              resume: dict[str, Any] | None = None, log: Log = print,
              sealed: bool = False, validate: bool = True) -> TrialResult:
    """Trains one defended model and returns its final metrics and the model.

    Metrics come every `eval_every` epochs (and after the last one) on the validation subset:
    `val/clean/acc`, `val/pool/<attack>/acc`, `val/heldout/<attack>/acc`, and the
    `mean_acc` / `worst_acc` / `union_acc` of each group; `sealed=True` adds the sealed attacks
    on the test split (`test/...`), which a search only does for its final report;
    `validate=False` trains without any validation (the final stage retraining a recipe).
    """
    start = time.perf_counter()
    set_threads(config.threads)
    device = resolve_device(config.device)
    if shared is None:
        shared = prepare_shared(config, log=log)
    recipe = _Recipe(config, shared, device)
    first_epoch = 0
    train_x, train_y = shared.data.train_x.to(device), shared.data.train_y.to(device)
    adversarial_training = config.train_on == TrainOn.ADVERSARIAL
    on_target = ({name: shared.examples_on_target(name, config, log).to(device)
                  for name in config.pool}
                 if config.craft_against == CraftAgainst.TARGET and adversarial_training
                 else None)
    attacks = (_pool_attacks(config, shared, recipe.model)
               if on_target is None and adversarial_training else [])
    defended = DefendedModel(recipe.student.encoder, recipe.student.head, build_unig(config))
    rung, full = _fidelities(config, shared, device)
    watch = Stopwatch()
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    points: Points = {}
    rng = random.Random(config.seed)
    if resume is not None:  # restore every RNG too, so a resumed trial equals an unbroken one
        recipe.load_state(resume["recipe"])
        first_epoch = int(resume["epoch"]) + 1
        torch.set_rng_state(resume["torch_rng"])
        rng.setstate(resume["task_rng"])
    attack_tasks = list(range(int(config.include_clean), int(config.include_clean)
                              + len(config.pool)))
    first_loss = 0.0

    for epoch in range(first_epoch, config.epochs):
        # ---- train one epoch: craft the pool on each batch, then the (meta) update
        epoch_start = time.perf_counter()
        parts: dict[str, torch.Tensor] = defaultdict(
            lambda: torch.zeros((), dtype=torch.float64, device=device))
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(
            config.seed * EPOCH_SEED_STRIDE + epoch))
        batches = order.split(config.batch_size)
        for index in batches:
            index = index.to(device)
            x, y = train_x[index], train_y[index]
            if not adversarial_training:
                adversarial = []
            elif on_target is not None:
                adversarial = [on_target[name][index] for name in config.pool]
            else:
                recipe.student.eval()
                with watch.phase("craft"):
                    adversarial = [attack.craft(x, y) for attack in attacks]
                    if config.pool_combine == PoolCombine.WORST and len(adversarial) > 1:
                        adversarial = [_worst(recipe.model, adversarial, y)]
                recipe.student.train()
            tasks = ([x] if config.include_clean else []) + adversarial
            with watch.phase("step"):  # the losses, the (meta) gradient and the update
                tasks_loss = recipe.tasks_loss_fn(tasks, x, y, parts)
                params = recipe.params()
                meta_parts: dict[str, torch.Tensor] = {}
                if config.meta == MetaOrder.OFF:
                    loss = tasks_loss(params, range(len(tasks))).mean()
                else:
                    meta_test = rng.sample(attack_tasks, config.meta_test_attacks)
                    meta_train = [t for t in range(len(tasks)) if t not in meta_test]
                    loss, meta_parts = meta_objective(params, tasks_loss, meta_train,
                                                      meta_test, alpha=config.meta_alpha,
                                                      beta=config.meta_beta, order=config.meta)
                recipe.optimizer.zero_grad()
                loss.backward()
                recipe.optimizer.step()
            parts["loss"] = parts["loss"] + loss.detach().double()
            for name, value in meta_parts.items():
                parts[name] = parts[name] + value
        # one host-device transfer per epoch for all the loss parts
        train_metrics = {f"{Split.TRAIN}/{k}": v / len(batches)
                         for k, v in zip(parts, torch.stack(list(parts.values())).tolist(),
                                         strict=True)}
        train_metrics["train/epoch_seconds"] = time.perf_counter() - epoch_start
        first_loss = first_loss or train_metrics["train/loss"]
        _check_training(train_metrics["train/loss"], first_loss, epoch)
        line = (f"epoch {epoch + 1}/{config.epochs}  loss {train_metrics['train/loss']:.3f}  "
                f"{train_metrics['train/epoch_seconds']:.1f}s")

        # ---- evaluate (and report) every eval_every epochs and after the last
        last = epoch == config.epochs - 1
        if validate and ((epoch + 1) % config.eval_every == 0 or last):
            # evaluations draw from a fork of the RNG: how much a rung evaluates (its points,
            # strength, masking checks) leaves the training stream, and so the model, as it was
            with torch.random.fork_rng(devices=_cuda_ids(device)):
                metrics, points = _evaluate(config, shared, defended, full if last else rung,
                                            final=last, watch=watch)
            recipe.student.train()
            _check_clean(metrics[CLEAN_ACC], shared.setup.info.num_classes, epoch)
            metrics.update(train_metrics)
            metrics["epoch"] = epoch + 1
            metrics["time/elapsed_s"] = time.perf_counter() - start
            metrics.update(watch.metrics())
            line += f"  val clean {metrics[CLEAN_ACC]:.3f}" + "".join(
                f"  {label} {metrics.get(group_metric(Split.VAL, group, stat), float('nan')):.3f}"
                for label, group, stat in _SHOWN)
            raised = raised_flags(metrics, informational=True)
            if raised is not None:
                line += f"  masking flags: {', '.join(raised) or 'none'}"
            history.append(dict(metrics))
            if report is not None:
                report(dict(metrics), points, partial(_snapshot, epoch, recipe, rng), defended)
        log(line)

    defended.eval()
    if sealed:
        from trainables.scoring.final import sealed_evaluation  # the final report: test split only

        with watch.phase("sealed"):
            evaluation = sealed_evaluation(defended, shared, config, log=log)
        metrics.update(evaluation.metrics)
        points.update(evaluation.points)
    metrics.update(watch.metrics())
    metrics["time/total_s"] = time.perf_counter() - start
    return TrialResult(metrics, defended, config, shared, history, points)

