"""Robust accuracy, scored the same way for every attack.

A sample is robust to an attack when the model is right on the clean input AND on the
adversarial one; an adversarial example whose perturbation exceeds the threat model's budget
for the attack's norm is no success (that is how minimum-norm and sparse attacks are scored).
The per-sample union over a group of attacks is the AND of their robust masks.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from trainables.attacks import BoundAttack, attack_spec
from trainables.runtime import seed_everything
from trainables.threat import ThreatModel, within_budget

__all__ = ["clean_correct", "evaluate_groups", "group_metrics", "robust_mask", "transfer_masks"]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1)
                      for i in range(0, len(x), batch_size)])


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
                  ) -> torch.Tensor:
    return predict(model, x, batch_size) == y


def robust_mask(model: nn.Module, attack: BoundAttack, x: torch.Tensor, y: torch.Tensor,
                correct: torch.Tensor, *, batch_size: int, seed: int = 0) -> torch.Tensor:
    """Which samples stay correctly classified under `attack` (only clean-correct ones can)."""
    # Attack names seed their own stream, so adding an attack leaves the others' results alone.
    seed_everything(seed + zlib.crc32(attack.name.encode()))
    robust = correct.clone()
    index = correct.nonzero().flatten()
    for start in range(0, len(index), batch_size):
        batch = index[start:start + batch_size]
        x_adv = attack(x[batch], y[batch])
        fooled = (predict(model, x_adv, batch_size) != y[batch]) & within_budget(
            x_adv - x[batch], attack.spec.norm, attack.budget)
        robust[batch[fooled]] = False
    return robust


def group_metrics(prefix: str, masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-attack accuracy plus mean, worst single attack and per-sample union of a group."""
    if not masks:
        return {}
    out = {f"{prefix}/{name}/acc": float(mask.float().mean()) for name, mask in masks.items()}
    accs = [out[f"{prefix}/{name}/acc"] for name in masks]
    union = torch.stack(list(masks.values())).all(dim=0)
    out[f"{prefix}/mean_acc"] = sum(accs) / len(accs)
    out[f"{prefix}/worst_acc"] = min(accs)
    out[f"{prefix}/union_acc"] = float(union.float().mean())
    return out


def evaluate_groups(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    groups: Mapping[str, Sequence[BoundAttack]], *, split: str,
                    batch_size: int, seed: int = 0) -> tuple[dict[str, float],
                                                              dict[str, torch.Tensor]]:
    """Clean accuracy and every group's robust accuracies on one split.

    Returns the metrics (`{split}/clean/acc`, `{split}/{group}/{attack}/acc`, and per group
    `mean_acc`, `worst_acc`, `union_acc`) and the robust masks keyed `{group}/{attack}`.
    """
    model.eval()
    correct = clean_correct(model, x, y, batch_size)
    metrics = {f"{split}/clean/acc": float(correct.float().mean())}
    all_masks: dict[str, torch.Tensor] = {}
    for group, attacks in groups.items():
        masks = {a.name: robust_mask(model, a, x, y, correct, batch_size=batch_size, seed=seed)
                 for a in attacks}
        metrics.update(group_metrics(f"{split}/{group}", masks))
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
        fooled = (predict(model, x_adv, batch_size) != y) & within_budget(
            x_adv - x, spec.norm, threat.budget(spec.norm))
        masks[name] = correct & ~fooled
    return masks
