"""One trial: train a defended student with MID + PCL, attach UniG, score held-out robustness.

    python -m trainables.trial --space mid --seed 0 --out result.json --save-model model.pt

`run_trial` is usable without Ray: the search wraps it, passing a `report` callback that
forwards each evaluation (and a checkpoint) to Ray Tune.
"""

from __future__ import annotations

import copy
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainables.attacks import BoundAttack, bind_attack
from trainables.config import TrialConfig
from trainables.evaluate import evaluate_groups, group_metrics, transfer_masks
from trainables.losses import (
    channel_kl,
    feature_consistency,
    pixel_consistency,
    prediction_kl,
    prototype_conformity,
)
from trainables.masking import run_masking_checks
from trainables.meta import meta_objective
from trainables.models import ClassifierHead, DefendedModel, build_arch
from trainables.prepare import Shared, prepare_shared
from trainables.runtime import resolve_device, seed_everything, set_threads
from trainables.unig import UniG

__all__ = ["Report", "TrialResult", "build_unig", "run_trial"]

# report(metrics, state, model): called after every evaluation; `state()` returns a resumable
# snapshot, `model` is the defended model (UniG included) the metrics were measured on
Report = Callable[[dict[str, float], Callable[[], dict[str, Any]], DefendedModel], None]
Log = Callable[[str], None]


@dataclass
class TrialResult:
    metrics: dict[str, float]
    model: DefendedModel
    config: TrialConfig
    shared: Shared
    history: list[dict[str, float]] = field(default_factory=list)


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
    if config.unig == "off":
        return None
    return UniG(config.unig, delta=config.unig_delta, steps=config.unig_steps,
                lr=config.unig_lr, init_std=config.unig_init_std)


@torch.no_grad()
def _class_means(student: _Student, x: torch.Tensor, y: torch.Tensor, classes: int,
                 layer: str) -> torch.Tensor:
    z, h, _ = student(x)
    feats = (h if layer == "penultimate" else z).flatten(1)
    return torch.stack([feats[y == k].mean(0) for k in range(classes)])


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
        if config.student_init == "teacher":
            encoder = copy.deepcopy(teacher.encoder)
        else:
            encoder = build_arch(setup.arch, setup.info.image_shape, self.num_classes).encoder
        head = copy.deepcopy(teacher.head)
        encoder.requires_grad_(True)
        head.requires_grad_(config.train_head)
        self.student = _Student(encoder, head).to(device).train()
        self.model = DefendedModel(encoder, head)  # shares weights; what pool attacks target
        layers = {"penultimate": ["penultimate"], "encoder": ["encoder"],
                  "both": ["encoder", "penultimate"]}[config.pcl_layers]
        train_x = shared.data.train_x.to(device)
        train_y = shared.data.train_y.to(device)
        # Prototypes start at the teacher's class means: the head already reads them well.
        teacher_view = _Student(self.t_encoder, self.t_head)
        self.prototypes = nn.ParameterDict({
            layer: nn.Parameter(_class_means(teacher_view, train_x, train_y,
                                             self.num_classes, layer))
            for layer in layers})
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable + list(self.prototypes.parameters()),
                                          lr=config.lr)

    def task_loss_fn(self, tasks: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     parts: dict[str, float]) -> Callable[[dict[str, torch.Tensor], int],
                                                          torch.Tensor]:
        """The multi-consistency + PCL loss of the student (with given weights) on one task."""
        cfg = self.config
        with torch.no_grad():
            z_teacher = self.t_encoder(x)
            logits_teacher = self.t_head(z_teacher)

        def task_loss(params: dict[str, torch.Tensor], task: int) -> torch.Tensor:
            z, h, logits = functional_call(self.student, params, (tasks[task],))
            terms: dict[str, torch.Tensor] = {}
            if cfg.w_ce:
                terms["ce"] = cfg.w_ce * F.cross_entropy(logits, y)
            if cfg.w_pred_kl:
                terms["pred_kl"] = cfg.w_pred_kl * prediction_kl(logits_teacher, logits)
            if cfg.w_feat:
                terms["feat"] = cfg.w_feat * feature_consistency(z_teacher, z, cfg.feat_loss)
            if cfg.w_cyc or cfg.w_pix:
                regenerated = self.t_decoder(z)
                if cfg.w_cyc:
                    terms["cyc"] = cfg.w_cyc * channel_kl(z_teacher, self.t_encoder(regenerated))
                if cfg.w_pix:
                    terms["pix"] = cfg.w_pix * pixel_consistency(regenerated, x)
            if cfg.pcl_weight:
                feats = {"encoder": z, "penultimate": h}
                for layer, protos in self.prototypes.items():
                    pcl, _ = prototype_conformity(feats[layer], y, protos, cfg.pcl_margin)
                    terms[f"pcl_{layer}"] = cfg.pcl_weight * pcl
            for name, value in terms.items():
                parts[name] += float(value.detach())
            return torch.stack(list(terms.values())).sum()

        return task_loss

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


def _pool_attacks(config: TrialConfig, shared: Shared, model: nn.Module) -> list[BoundAttack]:
    setup = shared.setup
    return [bind_attack(name, model, setup.threat, num_classes=setup.info.num_classes,
                        train_steps=config.train_attack_steps, seed=config.seed)
            for name in config.pool]


def _eval_groups(config: TrialConfig, shared: Shared, model: nn.Module
                 ) -> dict[str, list[BoundAttack]]:
    setup = shared.setup

    def bind(names: tuple[str, ...]) -> list[BoundAttack]:
        return [bind_attack(n, model, setup.threat, num_classes=setup.info.num_classes,
                            seed=config.seed) for n in names]

    return {"pool": bind(config.pool), "heldout": bind(config.heldout)}


def _evaluate(config: TrialConfig, shared: Shared, defended: DefendedModel,
              val_x: torch.Tensor, val_y: torch.Tensor, *, final: bool) -> dict[str, float]:
    """White-box pool and held-out groups, the transfer group and, at the end, masking checks."""
    setup = shared.setup
    groups = _eval_groups(config, shared, defended)
    metrics, _ = evaluate_groups(defended, val_x, val_y, groups, split="val",
                                 batch_size=config.eval_batch_size, seed=config.seed)
    if shared.transfer.get("val"):  # crafted on the undefended target: reported apart
        masks = transfer_masks(defended, val_x, val_y, shared.transfer["val"], setup.threat,
                               batch_size=config.eval_batch_size)
        metrics.update(group_metrics("val/transfer", masks))
    if config.masking_samples and setup.threat.norm in ("Linf", "L2"):
        # the cheap checks at every evaluation (the search sees masking from its first rung),
        # the whole checklist at the last one
        count = config.masking_samples
        surrogate = shared.target.to(val_x.device) if shared.target is not None else None
        report = run_masking_checks(defended, val_x[:count], val_y[:count], setup.threat,
                                    num_classes=setup.info.num_classes, surrogate=surrogate,
                                    batch_size=config.eval_batch_size, seed=config.seed,
                                    quick=not final)
        metrics.update(report.metrics("masking"))
    return metrics


def run_trial(config: TrialConfig, *, shared: Shared | None = None, report: Report | None = None,
              resume: dict[str, Any] | None = None, log: Log = print,
              sealed: bool = False) -> TrialResult:
    """Trains one defended model and returns its final metrics and the model.

    Metrics come every `eval_every` epochs (and after the last one) on the validation subset:
    `val/clean/acc`, `val/pool/<attack>/acc`, `val/heldout/<attack>/acc`, and the
    `mean_acc` / `worst_acc` / `union_acc` of each group; `sealed=True` adds the sealed attacks
    on the test split (`test/...`), which a search only does for its final report.
    """
    start = time.perf_counter()
    set_threads(config.threads)
    device = resolve_device(config.device)
    if shared is None:
        shared = prepare_shared(config, log=log)
    recipe = _Recipe(config, shared, device)
    first_epoch = 0
    train_x, train_y = shared.data.train_x.to(device), shared.data.train_y.to(device)
    on_target = ({name: shared.examples_on_target(name, config, log).to(device)
                  for name in config.pool}
                 if config.craft_against == "target" and config.train_on == "adversarial"
                 else None)
    adversarial_training = config.train_on == "adversarial"
    attacks = (_pool_attacks(config, shared, recipe.model)
               if on_target is None and adversarial_training else [])
    defended = DefendedModel(recipe.student.encoder, recipe.student.head, build_unig(config))
    val_x, val_y = (t.to(device) for t in shared.split("val", eval_samples=config.eval_samples,
                                                        seed=config.seed))
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    rng = random.Random(config.seed)
    if resume is not None:  # restore every RNG too, so a resumed trial equals an unbroken one
        recipe.load_state(resume["recipe"])
        first_epoch = int(resume["epoch"]) + 1
        torch.set_rng_state(resume["torch_rng"])
        rng.setstate(resume["task_rng"])
    attack_tasks = list(range(int(config.include_clean), int(config.include_clean)
                              + len(config.pool)))

    for epoch in range(first_epoch, config.epochs):
        # ---- train one epoch: craft the pool on each batch, then the (meta) update
        epoch_start = time.perf_counter()
        parts: dict[str, float] = defaultdict(float)
        order = torch.randperm(len(train_y),
                               generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
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
                adversarial = [attack.craft(x, y) for attack in attacks]
                recipe.student.train()
            tasks = ([x] if config.include_clean else []) + adversarial
            task_loss = recipe.task_loss_fn(tasks, x, y, parts)
            params = recipe.params()
            if config.meta == "off":
                loss = torch.stack([task_loss(params, t) for t in range(len(tasks))]).mean()
                meta_parts = {}
            else:
                meta_test = rng.sample(attack_tasks, config.meta_test_attacks)
                meta_train = [t for t in range(len(tasks)) if t not in meta_test]
                loss, meta_parts = meta_objective(params, task_loss, meta_train, meta_test,
                                                  alpha=config.meta_alpha,
                                                  beta=config.meta_beta, order=config.meta)
            recipe.optimizer.zero_grad()
            loss.backward()
            recipe.optimizer.step()
            parts["loss"] += float(loss.detach())
            for name, value in meta_parts.items():
                parts[name] += value
        train_metrics = {f"train/{k}": v / len(batches) for k, v in parts.items()}
        train_metrics["train/epoch_seconds"] = time.perf_counter() - epoch_start
        line = (f"epoch {epoch + 1}/{config.epochs}  loss {train_metrics['train/loss']:.3f}  "
                f"{train_metrics['train/epoch_seconds']:.1f}s")

        # ---- evaluate (and report) every eval_every epochs and after the last
        last = epoch == config.epochs - 1
        if (epoch + 1) % config.eval_every == 0 or last:
            metrics = _evaluate(config, shared, defended, val_x, val_y, final=last)
            recipe.student.train()
            metrics.update(train_metrics)
            metrics["epoch"] = epoch + 1
            metrics["time/elapsed_s"] = time.perf_counter() - start
            line += (f"  val clean {metrics['val/clean/acc']:.3f}"
                     f"  pool mean {metrics.get('val/pool/mean_acc', float('nan')):.3f}"
                     f"  heldout mean {metrics.get('val/heldout/mean_acc', float('nan')):.3f}"
                     f" union {metrics.get('val/heldout/union_acc', float('nan')):.3f}"
                     f"  transfer mean {metrics.get('val/transfer/mean_acc', float('nan')):.3f}")
            if "masking/any" in metrics:
                raised = [k.split("/")[1] for k, v in metrics.items()
                          if k.count("/") == 1 and k.startswith("masking/") and v
                          and k != "masking/any"]
                line += f"  masking flags: {', '.join(raised) or 'none'}"
            history.append(dict(metrics))
            if report is not None:
                report(dict(metrics), lambda e=epoch: {
                    "epoch": e, "recipe": recipe.state(),
                    "torch_rng": torch.get_rng_state().clone(), "task_rng": rng.getstate()},
                       defended)
        log(line)

    defended.eval()
    if sealed:
        from trainables.sealed import sealed_evaluation  # the final report: test split only

        metrics.update(sealed_evaluation(defended, shared, config, log=log))
    metrics["time/total_s"] = time.perf_counter() - start
    return TrialResult(metrics, defended, config, shared, history)


if __name__ == "__main__":
    from trainables.cli import main

    raise SystemExit(main())
