"""The defense a trial trains: MID's student encoder (read out by a head), its frozen teacher,
PCL's prototypes, the optimiser with its schedule and an optional weight average, and one
training step over a batch's tasks (the clean images and each pool attack's examples).

A step's loss is the recipe's weighted terms (trainables/defense/losses.py) on each task,
averaged, or MID's meta objective over meta-train and meta-test tasks.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from trainables.config import FIELDS, LOSS_WEIGHTS, TrialConfig
from trainables.defense.losses import TERMS, TaskView, part_name
from trainables.defense.meta import TasksLoss, meta_objective
from trainables.defense.models import ClassifierHead, DefendedModel, ModelParts, build_arch
from trainables.defense.unig import UniG
from trainables.runtime import autocast_dtype, seed_everything
from trainables.vocab import (
    LrSchedule,
    MetaOrder,
    Norm,
    Optimizer,
    PclLayers,
    StudentInit,
    TaskSide,
    UniGSize,
)

__all__ = ["Defense", "Student", "build_unig", "class_means"]

Parts = dict[str, torch.Tensor]  # a training step's loss parts, summed over an epoch
SGD_MOMENTUM = 0.9
PIECEWISE = ((0.5, 0.1), (0.75, 0.01))  # at this share of the updates, lr x this factor


class Student(nn.Module):
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
def class_means(student: Student, x: torch.Tensor, y: torch.Tensor, classes: int,
                layer: str, batch_size: int) -> torch.Tensor:
    """Each class's mean feature, in batches and without a graph (a whole training set in one
    pass does not fit a GPU). A class with no training image starts at the overall mean, moved
    by a little seeded noise so that two such prototypes are not equal."""
    sums: torch.Tensor | None = None
    counts = torch.bincount(y, minlength=classes).to(x.dtype)
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


def _lr_factor(schedule: LrSchedule, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier after `step` of `total` updates."""
    if schedule == LrSchedule.COSINE:
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if schedule == LrSchedule.PIECEWISE:
        return lambda step: min([f for share, f in PIECEWISE if step >= share * total],
                                default=1.0)
    return lambda step: 1.0


def _optimizer(config: TrialConfig, weights: list[nn.Parameter],
               prototypes: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The student's optimiser; weight decay on the network's weights, not on prototypes."""
    groups: list[dict[str, Any]] = [{"params": weights, "weight_decay": config.weight_decay},
                                    {"params": prototypes, "weight_decay": 0.0}]
    if config.optimizer == Optimizer.SGD:
        return torch.optim.SGD(groups, lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True)
    if config.optimizer == Optimizer.ADAMW:
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.Adam(groups, lr=config.lr)


class Defense:
    """The student, its frozen teacher, PCL's prototypes and the optimiser of one trial."""

    def __init__(self, config: TrialConfig, teacher: ModelParts, train_x: torch.Tensor,
                 train_y: torch.Tensor, *, arch: str, image_shape: tuple[int, int, int],
                 num_classes: int, threat_eps: tuple[str, float], steps_per_epoch: int,
                 device: torch.device) -> None:
        self.config, self.device, self.num_classes = config, device, num_classes
        self.precision = autocast_dtype(config.train_precision, device)
        self.norm, self.eps = threat_eps  # the primary threat region (variation's 2nd point)
        self.t_encoder = copy.deepcopy(teacher.encoder).to(device).eval()
        self.t_decoder = copy.deepcopy(teacher.decoder).to(device).eval()
        self.t_head = copy.deepcopy(teacher.head).to(device).eval()
        seed_everything(config.seed)
        if config.student_init == StudentInit.TEACHER:
            encoder = copy.deepcopy(teacher.encoder)
        else:
            encoder = build_arch(arch, image_shape, num_classes).encoder
        head = copy.deepcopy(teacher.head)
        encoder.requires_grad_(True)
        head.requires_grad_(config.train_head)
        self.student = Student(encoder, head).to(device).train()
        self.model = DefendedModel(encoder, head)  # shares weights; what pool attacks target
        layers = {PclLayers.PENULTIMATE: ["penultimate"], PclLayers.ENCODER: ["encoder"],
                  PclLayers.BOTH: ["encoder", "penultimate"]}[config.pcl_layers]
        # Prototypes start at the teacher's class means: the head already reads them well.
        teacher_view = Student(self.t_encoder, self.t_head)
        self.prototypes = nn.ParameterDict({
            layer: nn.Parameter(class_means(teacher_view, train_x, train_y, num_classes, layer,
                                            config.eval_batch_size))
            for layer in layers})
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = _optimizer(config, trainable, list(self.prototypes.parameters()))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_factor(config.lr_schedule, config.epochs * steps_per_epoch))
        # the weight average: a copy of encoder and head, evaluated and exported instead
        self.average = (Student(copy.deepcopy(encoder), copy.deepcopy(head)).eval()
                        .requires_grad_(False) if config.ema > 0 else None)

    # ---- the model that is evaluated, attacked and exported
    def evaluated(self) -> DefendedModel:
        """The defended model a trial scores and exports: the student (or its weight
        average), UniG attached when the recipe has it; shares the live weights."""
        net = self.average if self.average is not None else self.student
        return DefendedModel(net.encoder, net.head, build_unig(self.config))

    # ---- one training step
    def passes(self) -> torch.autocast:
        """The networks' forward passes in `train_precision` (mixed precision: autocast). The
        loss terms take float32 outputs and compute in float32, and the backward pass and the
        update run outside: on a CPU, autocast leaves softmax and log-softmax in bfloat16,
        three significant digits for a KL between two close distributions."""
        return torch.autocast(self.device.type, dtype=self.precision,
                              enabled=self.precision is not None)

    def step(self, tasks: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, parts: Parts,
             attack_tasks: Sequence[int], rng: random.Random) -> torch.Tensor:
        """One update on a batch's tasks (the clean images first when include_clean); returns
        the loss (detached)."""
        config = self.config
        params: dict[str, torch.Tensor] = {
            n: p for n, p in self.student.named_parameters() if p.requires_grad}
        with self.passes():
            tasks_loss = self.tasks_loss(tasks, x, y, parts)
            if config.meta == MetaOrder.OFF:
                loss = tasks_loss(params, range(len(tasks))).mean()
                meta_parts: Parts = {}
            else:
                meta_test = rng.sample(list(attack_tasks), config.meta_test_attacks)
                meta_train = [t for t in range(len(tasks)) if t not in meta_test]
                loss, meta_parts = meta_objective(params, tasks_loss, meta_train, meta_test,
                                                  alpha=config.meta_alpha,
                                                  beta=config.meta_beta, order=config.meta)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self._average()
        for name, value in meta_parts.items():
            parts[name] = parts[name] + value
        return loss.detach()

    @torch.no_grad()
    def _average(self) -> None:
        if self.average is None:
            return
        decay = self.config.ema
        live = dict(self.student.named_parameters())
        for name, value in self.average.named_parameters():
            value.mul_(decay).add_(live[name].detach(), alpha=1 - decay)
        for (_, buffer), (_, source) in zip(self.average.named_buffers(),
                                            self.student.named_buffers(), strict=True):
            buffer.copy_(source)

    def tasks_loss(self, tasks: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   parts: Parts) -> TasksLoss:
        """The recipe's loss on each of some tasks, for a given set of student weights: every
        term whose weight is positive, on the tasks its weight field names. Task 0 is the clean
        images when include_clean. With fuse_tasks the tasks share one forward pass."""
        config = self.config
        clean_task = 0 if config.include_clean else None
        with torch.no_grad():
            teacher_z = self.t_encoder(x)
            teacher_logits = self.t_head(teacher_z).float()
            teacher_z = teacher_z.float()
        weights = [(name, getattr(config, name), FIELDS[name].applies) for name in LOSS_WEIGHTS
                   if getattr(config, name)]
        random_point = _Lazy(lambda: self._random_point(x))

        def reencoded(images: torch.Tensor) -> torch.Tensor:
            return self._float_pass(lambda: self.t_encoder(images))
        prototypes: dict[str, torch.Tensor] = dict(self.prototypes.items())

        def loss(params: dict[str, torch.Tensor], indices: Sequence[int]) -> torch.Tensor:
            outputs = [tuple(t.float() for t in task) for task in self._forward(
                params, [tasks[t] for t in indices], len(x))]
            clean_logits = _Lazy(lambda: self._float_pass(
                lambda: functional_call(self.student, params, (x,))[2]))
            if clean_task is not None and clean_task in indices:  # TRADES' clean side: the
                clean_logits.value = outputs[list(indices).index(clean_task)][2]  # task's own
            random_logits = _Lazy(lambda: self._float_pass(
                lambda: functional_call(self.student, params, (random_point(),))[2]))
            losses = []
            for task, (z, h, logits, *pixel) in zip(indices, outputs, strict=True):
                side = TaskSide.CLEAN if task == clean_task else TaskSide.ADVERSARIAL
                view = TaskView(
                    side == TaskSide.CLEAN, x, y, z, h, logits, teacher_z, teacher_logits,
                    config, prototypes, partial(_first, pixel), reencoded, clean_logits,
                    random_logits)
                terms = []
                with torch.autocast(x.device.type, enabled=False):  # the terms in float32
                    for name, weight, applies in weights:
                        if applies in (TaskSide.ALL, side):
                            value = weight * TERMS[name](view)
                            key = part_name(name)  # summed on the device: no sync per batch
                            parts[key] = parts[key] + value.detach().double()
                            terms.append(value)
                # a task without a term (e.g. a clean task without CE) trains nothing
                losses.append(torch.stack(terms).sum() if terms else logits.new_zeros(()))
            return torch.stack(losses)

        return loss

    def _float_pass(self, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`run()`, a network's pass that a loss term asks for, in `train_precision`; its
        output in float32."""
        with self.passes():
            return run().float()

    def _forward(self, params: dict[str, torch.Tensor], images: list[torch.Tensor],
                 size: int) -> list[tuple[torch.Tensor, ...]]:
        """(z, h, logits[, regenerated]) of the student with `params` on each task's images."""
        config = self.config
        if config.fuse_tasks:
            chunks = [functional_call(self.student, params, (torch.cat(images),))]
        else:
            chunks = [functional_call(self.student, params, (image,)) for image in images]
        if config.w_cyc or config.w_pix:  # the pixel level: the teacher decoder's regeneration
            chunks = [(*c, self.t_decoder(c[0])) for c in chunks]
        if config.fuse_tasks:
            return list(zip(*(part.split(size) for part in chunks[0]), strict=True))
        return chunks

    def _random_point(self, x: torch.Tensor) -> torch.Tensor:
        """A uniformly random point of the primary threat region around `x`: the second point
        of variation regularisation (an Linf box, or an L2 ball's sphere)."""
        delta = torch.empty_like(x).uniform_(-1, 1)
        if self.norm != Norm.LINF:
            delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + self.eps * delta).clamp(0, 1)

    # ---- resumable state
    def state(self) -> dict[str, Any]:
        """A snapshot (copied: the live tensors keep changing as training goes on)."""
        return copy.deepcopy({
            "student": self.student.state_dict(), "prototypes": self.prototypes.state_dict(),
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "average": None if self.average is None else self.average.state_dict()})

    def load_state(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.prototypes.load_state_dict(state["prototypes"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])

    def evaluated_weights(self) -> dict[str, torch.Tensor]:
        """A copy of the weights the evaluated model uses (early stopping keeps the best)."""
        net = self.average if self.average is not None else self.student
        return copy.deepcopy(net.state_dict())

    def load_evaluated_weights(self, weights: dict[str, torch.Tensor]) -> None:
        net = self.average if self.average is not None else self.student
        net.load_state_dict(weights)


def _first(items: list[torch.Tensor]) -> torch.Tensor:
    return items[0]


class _Lazy:
    """A value computed on first use (a term that is off never pays for its inputs)."""

    def __init__(self, make: Callable[[], torch.Tensor]) -> None:
        self.make = make
        self.value: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        if self.value is None:
            self.value = self.make()
        return self.value
