"""A trial's evaluation on the validation split: the white-box pool and held-out groups (a UniG
model's held-out attacks also adaptive, masking.adaptive_and: the objective is what an attacker
who knows the defense reaches; every non-Lp one also on the margin loss, masking.both_losses),
the transfer group and the gradient-masking checks (the cheap
ones at every evaluation, the whole list at the last one), at the fidelity of the evaluation
(ASHA's early rungs score fewer points at a lower attack strength than the last one). The
non-Lp and L0 attacks craft in `eval_precision`, as the final evaluation's do (every point
judged in float32: attacks/precision.py); the masking checks stay float32."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from trainables.attacks import AttackKind, attack_spec, build_attack
from trainables.attacks.base import Attack
from trainables.config import Fidelity, TrialConfig
from trainables.defense.models import DefendedModel
from trainables.runtime import Stopwatch
from trainables.scoring.evaluate import (
    attack_precision,
    evaluate_groups,
    group_metrics,
    group_points,
    transfer_masks,
)
from trainables.scoring.masking import (
    adaptive_and,
    both_losses,
    margin_covers,
    plain_loss,
    run_masking_checks,
)
from trainables.scoring.served import output_change
from trainables.setting.prepare import Shared
from trainables.vocab import (
    CLEAN_ACC,
    FIDELITY_POINTS,
    FIDELITY_STRENGTH,
    MASKING,
    EvalLosses,
    Group,
    Norm,
    Split,
    group_metric,
)

__all__ = ["Rung", "Rungs", "validate"]

Points = dict[str, np.ndarray]


@dataclass(frozen=True)
class Rung:
    """What one evaluation scores: on which points, at what attack strength, which groups."""

    x: torch.Tensor
    y: torch.Tensor
    strength: float
    heldout_only: bool


@dataclass(frozen=True)
class Rungs:
    """The evaluations before the last (ASHA's early rungs), and the last one (the full one).
    The early rungs' points are the first of the same seeded order: a subset of the last's."""

    early: Rung
    last: Rung

    @classmethod
    def of(cls, config: TrialConfig, fidelity: Fidelity, shared: Shared, device: torch.device
           ) -> Rungs:
        x, y = (t.to(device) for t in shared.points(Split.VAL, config))
        last = Rung(x, y, 1.0, False)
        if fidelity.rung_samples:
            x, y = (t.to(device) for t in shared.split(Split.VAL, samples=fidelity.rung_samples,
                                                       seed=config.data_seed))
        return cls(Rung(x, y, fidelity.rung_strength, fidelity.rung_heldout_only), last)


def validate(model: DefendedModel, shared: Shared, config: TrialConfig, rung: Rung, *,
             final: bool, watch: Stopwatch) -> tuple[dict[str, float], Points]:
    """The metrics of one evaluation, and the per-point values of clean accuracy and the
    held-out statistics (what paired comparisons need).

    It draws from a fork of the RNG: how much an evaluation scores (its points, strength,
    masking checks) leaves the training stream, and so the model, as it was."""
    device = rung.x.device
    cuda = ([device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=cuda):
        return _validate(model, shared, config, rung, final=final, watch=watch)


def _validate(model: DefendedModel, shared: Shared, config: TrialConfig, rung: Rung, *,
              final: bool, watch: Stopwatch) -> tuple[dict[str, float], Points]:
    setup, x, y = shared.setup, rung.x, rung.y
    teacher = (copy.deepcopy(shared.teacher.encoder).to(x.device)  # a perceptual attack's
               if any(attack_spec(n).kind == AttackKind.PERCEPTUAL for n in config.pool)
               else None)

    precision = attack_precision(model, config.eval_precision, x.device)

    def bind(names: tuple[str, ...], first: EvalLosses | None) -> list[Attack]:
        return [build_attack(n, model, setup.threat, num_classes=setup.info.num_classes,
                             seed=config.seed, strength=rung.strength, feature_model=teacher,
                             precision=precision, **plain_loss(n, first))
                for n in names]

    # the held-out group's first loss as eval_losses says (both_losses adds the other); the
    # pool's attacks, which nothing strengthens, on their own loss as before
    groups: dict[str, list[Attack]] = {Group.HELDOUT: bind(config.heldout, config.eval_losses)}
    if not rung.heldout_only:
        groups = {Group.POOL: bind(config.pool, None), **groups}
    with watch.phase("eval_attacks"):
        metrics, masks = evaluate_groups(model, x, y, groups, split=Split.VAL,
                                         batch_size=config.eval_batch_size, seed=config.seed)
        heldout = {name.split("/", 1)[1]: mask for name, mask in masks.items()
                   if name.startswith(f"{Group.HELDOUT}/")}
        if model.unig is not None:  # the objective is what an attacker who knows UniG reaches
            heldout = adaptive_and(model, heldout, x, y, setup.threat,
                                   num_classes=setup.info.num_classes, strength=rung.strength,
                                   batch_size=config.eval_batch_size, seed=config.seed,
                                   losses=config.eval_losses)
        heldout = both_losses(model, heldout, x, y, setup.threat,
                              num_classes=setup.info.num_classes, strength=rung.strength,
                              batch_size=config.eval_batch_size, seed=config.seed,
                              precision=precision, losses=config.eval_losses)
        metrics.update(group_metrics(Split.VAL, Group.HELDOUT, heldout))
    metrics.update({FIDELITY_POINTS: float(len(y)), FIDELITY_STRENGTH: rung.strength})
    teacher = DefendedModel(shared.teacher.encoder, shared.teacher.head).to(x.device)
    metrics.update(output_change(model, teacher, x, split=Split.VAL,
                                 batch_size=config.eval_batch_size)[0])
    transfer = shared.transfer.get(Split.VAL)
    if transfer and not rung.heldout_only:  # crafted on the undefended target: apart
        sets = {n: t[:len(y)] for n, t in transfer.items()}  # the same first points
        metrics.update(group_metrics(Split.VAL, Group.TRANSFER, transfer_masks(
            model, x, y, sets, setup.threat, batch_size=config.eval_batch_size)))
    if config.masking_samples and setup.threat.norm in (Norm.LINF, Norm.L2):
        count = min(config.masking_samples, len(y))
        surrogate = shared.target.to(x.device) if shared.target is not None else None
        with watch.phase("masking"):
            report = run_masking_checks(model, x[:count], y[:count], setup.threat,
                                        num_classes=setup.info.num_classes,
                                        surrogate=surrogate, batch_size=config.eval_batch_size,
                                        seed=config.seed, quick=not final,
                                        attacks=(*config.pool, *config.heldout),
                                        claim=config.access)
        report.answered = margin_covers(config.heldout)  # the objective is not CE's alone
        metrics.update(report.metrics(MASKING))
    points = {group_metric(Split.VAL, Group.HELDOUT, stat): values
              for stat, values in group_points(heldout).items()}
    points[CLEAN_ACC] = masks[Group.CLEAN].float().cpu().numpy()
    return metrics, points
