"""Robust accuracy, scored the same way for every attack.

A sample is robust to an attack when the model is right on the clean input AND on the
adversarial one; an adversarial example whose perturbation exceeds the threat model's budget
for the attack's norm is no success (that is how minimum-norm and sparse attacks are scored).
The per-sample union over a group of attacks is the AND of their robust masks.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from trainables.attacks import attack_spec, split_name
from trainables.attacks.base import Attack
from trainables.attacks.norms import within_budget
from trainables.attacks.threat import ThreatModel
from trainables.runtime import autocast_dtype, seed_everything
from trainables.scoring.stats import Interval, mean_interval, wilson
from trainables.vocab import (
    Group,
    Level,
    Stat,
    attack_metric,
    group_metric,
    high_key,
    key_name,
    low_key,
    time_key,
)

__all__ = ["attack_precision", "clean_correct", "evaluate_groups", "family_masks",
           "group_metrics", "group_points", "robust_mask", "transfer_masks"]


@torch.inference_mode()  # no autograd state at all (UniG opens its own inside)
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1)
                      for i in range(0, len(x), batch_size)])


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
                  ) -> torch.Tensor:
    return predict(model, x, batch_size) == y


def robust_mask(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor,
                correct: torch.Tensor, *, batch_size: int, seed: int = 0,
                stream: str | None = None) -> torch.Tensor:
    """Which samples stay correctly classified under `attack` (only clean-correct ones can)."""
    # Each attack (or `stream`) seeds its own random stream, so adding an attack leaves the
    # others' results alone.
    seed_everything(seed + zlib.crc32((stream or attack.name).encode()))
    robust = correct.clone()
    index = correct.nonzero().flatten()
    for start in range(0, len(index), batch_size):
        batch = index[start:start + batch_size]
        x_adv = attack(x[batch], y[batch])
        fooled = (predict(model, x_adv, batch_size) != y[batch]) & attack.within_budget(
            x[batch], x_adv)
        robust[batch[fooled]] = False
    return robust


def group_metrics(split: str, group: str, masks: Mapping[str, torch.Tensor]
                  ) -> dict[str, float]:
    """Per-attack accuracy plus mean, worst single attack and per-sample union of a group, and
    the UA-style score: per family (threat model), the union over its attacks at medium
    distortion, and the mean over families. Each with its 95% interval over the points
    (`<key>_lo`, `<key>_hi`: Wilson for 0/1 outcomes, a bootstrap for means)."""
    if not masks:
        return {}
    intervals = {attack_metric(split, group, name): _accuracy(mask)
                 for name, mask in masks.items()}
    worst = min(intervals.values(), key=lambda i: i.value)
    families = family_masks(masks)
    intervals.update({attack_metric(split, group, family): _accuracy(mask)
                      for family, mask in families.items()})
    intervals[group_metric(split, group, Stat.WORST)] = worst
    intervals[group_metric(split, group, Stat.UNION)] = _accuracy(
        torch.stack(list(masks.values())).all(dim=0))
    # means of accuracies, their intervals from a bootstrap of the per-point values
    points = group_points(masks)
    means = {Stat.MEAN: [intervals[attack_metric(split, group, n)].value for n in masks],
             Stat.FAMILY_MEAN: [intervals[attack_metric(split, group, f)].value
                                for f in families]}
    for stat, accs in means.items():
        if accs:
            spread = mean_interval(points[stat])
            intervals[group_metric(split, group, stat)] = Interval(
                sum(accs) / len(accs), spread.low, spread.high)
    out: dict[str, float] = {}
    for key, interval in intervals.items():
        out.update({key: interval.value, low_key(key): interval.low,
                    high_key(key): interval.high})
    return out


def _accuracy(mask: torch.Tensor) -> Interval:
    """A robust mask's accuracy (as the mean of the mask, in its precision) and its Wilson
    interval."""
    interval = wilson(mask.cpu().numpy())
    return Interval(float(mask.float().mean()), interval.low, interval.high)


def group_points(masks: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Each point's value of a group's statistics, whose mean over points is the statistic:
    the share of the attacks it survives, whether it survives all of them, and the share of
    the families (at medium distortion) it survives."""
    stacked = torch.stack(list(masks.values())).float()
    points = {Stat.MEAN: stacked.mean(0), Stat.UNION: stacked.amin(0)}
    families = family_masks(masks)
    if families:
        points[Stat.FAMILY_MEAN] = torch.stack(list(families.values())).float().mean(0)
    return {stat: values.cpu().numpy() for stat, values in points.items()}


def family_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per family, the AND of its attacks' robust masks at medium distortion (or at eps)."""
    families: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        level = split_name(name)[1]
        if level not in (None, Level.MEDIUM):
            continue
        family = attack_spec(name).family
        families[family] = families[family] & mask if family in families else mask
    return families


def evaluate_groups(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    groups: Mapping[str, Sequence[Attack]], *, split: str,
                    batch_size: int, seed: int = 0) -> tuple[dict[str, float],
                                                              dict[str, torch.Tensor]]:
    """Clean accuracy and every group's robust accuracies on one split.

    Returns the metrics (`{split}/clean/acc`, `{split}/{group}/{attack}/acc`, and per group
    `mean_acc`, `worst_acc`, `union_acc`; each attack's seconds under `time/`) and the robust
    masks keyed `{group}/{attack}`, with the clean-correct mask they were judged against
    under `clean`.
    """
    model.eval()
    correct = clean_correct(model, x, y, batch_size)
    clean = _accuracy(correct)
    key = group_metric(split, Group.CLEAN, Stat.ACC)
    metrics = {key: clean.value, low_key(key): clean.low, high_key(key): clean.high}
    all_masks: dict[str, torch.Tensor] = {Group.CLEAN: correct}
    for group, attacks in groups.items():
        masks = {}
        for attack in attacks:
            start = time.perf_counter()
            masks[attack.name] = robust_mask(model, attack, x, y, correct,
                                             batch_size=batch_size, seed=seed)
            seconds = time.perf_counter() - start
            metrics[time_key(split, group, key_name(attack.name))] = seconds
        metrics.update(group_metrics(split, group, masks))
        all_masks.update({f"{group}/{name}": m for name, m in masks.items()})
    return metrics, all_masks


def transfer_masks(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   adversarials: Mapping[str, torch.Tensor], threat: ThreatModel, *,
                   batch_size: int) -> dict[str, torch.Tensor]:
    """Robust masks against adversarial examples crafted elsewhere (on a surrogate model)."""
    correct = clean_correct(model, x, y, batch_size)
    masks = {}
    for name, x_adv in adversarials.items():
        x_adv = x_adv.to(x.device)
        spec = attack_spec(name)
        fooled = predict(model, x_adv, batch_size) != y
        if spec.norm is not None:  # non-Lp sets were checked against their budget when crafted
            fooled &= within_budget(x_adv - x, spec.norm, threat.budget(spec.norm))
        masks[name] = correct & ~fooled
    return masks


def attack_precision(model: nn.Module, precision: str, device: torch.device
                     ) -> torch.dtype | None:
    """What an evaluation's attacks on `model` craft in (`eval_precision`, build_attack's
    `precision`): UniG's test-time optimisation runs in float32, so its model's attacks do too."""
    if getattr(model, "unig", None) is not None:
        return None
    return autocast_dtype(precision, device)
