"""Scoring: clean AND adversarial correct, budget thresholds, per-sample union."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.attacks import AttackKind, AttackSpec, Impl
from trainables.attacks.base import Attack, CallableAttack
from trainables.scoring.evaluate import evaluate_groups, group_metrics, robust_mask
from trainables.vocab import Norm


class _MeanThreshold(nn.Module):
    """Class 1 when the mean pixel exceeds 0.5, else class 0 (as two logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1).mean(1) - 0.5
        return torch.stack([-score, score], dim=1) * 100


def _attack(name: str, norm: str, budget: float, shift: float) -> Attack:
    spec = AttackSpec(name, Norm(norm), AttackKind.MIN_NORM, Impl.TORCHATTACKS, "shift")
    return CallableAttack(
        spec, _MeanThreshold(), budget,
        lambda x, y: x + torch.where(y == 0, shift, -shift).view(-1, 1, 1, 1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([0.3, 0.4, 0.7, 0.45]).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    y = torch.tensor([0, 0, 1, 1])  # the last point is misclassified on clean input
    return x, y


def test_success_outside_the_budget_does_not_count() -> None:
    x, y = _data()
    model = _MeanThreshold()
    correct = model(x).argmax(1) == y
    assert correct.tolist() == [True, True, True, False]
    inside = _attack("inside", "Linf", budget=0.15, shift=0.15)  # flips points 2 (0.4) only
    assert robust_mask(model, inside, x, y, correct, batch_size=2).tolist() == [
        True, False, True, False]
    outside = _attack("outside", "Linf", budget=0.15, shift=0.3)  # flips all, but too far
    assert robust_mask(model, outside, x, y, correct, batch_size=2).tolist() == [
        True, True, True, False]


def test_group_metrics_mean_worst_and_union() -> None:
    masks = {"PGD": torch.tensor([True, True, False, False]),
             "PGDL2": torch.tensor([True, False, True, False])}
    metrics = group_metrics("val", "heldout", masks)
    assert metrics["val/heldout/PGD/acc"] == 0.5
    assert metrics["val/heldout/mean_acc"] == 0.5
    assert metrics["val/heldout/worst_acc"] == 0.5
    assert metrics["val/heldout/union_acc"] == 0.25  # only the first sample survives both


def test_family_scores_are_the_union_per_threat_model_at_medium() -> None:
    masks = {"PGD": torch.tensor([True, True, True, False]),
             "FGSM": torch.tensor([True, True, False, True]),  # Linf too: AND-ed with PGD
             "Elastic@medium": torch.tensor([True, False, False, False]),
             "Elastic@high": torch.tensor([False, False, False, False])}  # not in the score
    metrics = group_metrics("val", "heldout", masks)
    assert metrics["val/heldout/Linf/acc"] == 0.5
    assert metrics["val/heldout/Elastic/acc"] == 0.25
    assert metrics["val/heldout/Elastic.medium/acc"] == 0.25  # MLflow keys allow no `@`
    assert metrics["val/heldout/Elastic.high/acc"] == 0.0
    assert metrics["val/heldout/family_mean_acc"] == pytest.approx((0.5 + 0.25) / 2)
    assert metrics["val/heldout/mean_acc"] == pytest.approx((0.75 + 0.75 + 0.25 + 0) / 4)


def test_evaluate_groups_names_split_group_and_attack() -> None:
    x, y = _data()
    groups = {"pool": [_attack("FGSM", "Linf", 0.15, 0.15)],
              "heldout": [_attack("PGDL2", "L2", 0.1, 0.3)]}
    metrics, masks = evaluate_groups(_MeanThreshold(), x, y, groups, split="val", batch_size=4)
    assert metrics["val/clean/acc"] == 0.75
    assert metrics["val/pool/FGSM/acc"] == 0.5
    assert metrics["val/heldout/PGDL2/acc"] == pytest.approx(0.75)
    assert set(masks) == {"clean", "pool/FGSM", "heldout/PGDL2"}
    assert {"val/heldout/mean_acc", "val/heldout/worst_acc", "val/heldout/union_acc"} <= set(
        metrics)
