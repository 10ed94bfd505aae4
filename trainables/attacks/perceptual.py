"""A perceptual attack in the spirit of PAT (Laidlaw et al. 2021, "Perceptual Adversarial
Robustness"): the budget bounds how far the image moves in a frozen network's feature space,
not in pixels. PAT measures with LPIPS on an AlexNet; here the frozen network is the trial's
teacher encoder, which every trial already has, and the distance is the relative L2 change of
its features, ||E(x') - E(x)|| / ||E(x)||.

The attack is a self-bounded projected gradient ascent (PAT's PPGD shape): a normalised
gradient step on the CE loss in pixel space, then, if the feature distance exceeds the bound,
a bisection on the segment between the clean image and the step back inside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.attacks.base import Attack
from trainables.attacks.specs import AttackSpec

__all__ = ["PerceptualAttack", "feature_distance"]

BISECTION_STEPS = 10  # the bound is met to 2**-10 of the step's length
TOLERANCE = 1e-4  # relative slack of the bound, for float round-off


@torch.no_grad()
def feature_distance(features: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per sample, ||E(x_adv) - E(x)|| / ||E(x)|| with E the frozen feature network."""
    clean, moved = features(x).flatten(1), features(x_adv).flatten(1)
    return (moved - clean).norm(dim=1) / clean.norm(dim=1).clamp_min(1e-12)


class PerceptualAttack(Attack):
    """Maximises the CE loss of `model` inside a feature-space ball of `features`."""

    def __init__(self, spec: AttackSpec, model: nn.Module, budget: float, features: nn.Module,
                 *, steps: int = 10, pixel_step: float = 1.0, name: str | None = None) -> None:
        super().__init__(spec, model, budget, name=name)
        self.features, self.steps, self.pixel_step = features.eval(), steps, pixel_step

    def within_budget(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return feature_distance(self.features, x, x_adv) <= self.budget * (1 + TOLERANCE)

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self(x, y)  # always inside its bound; a point it could not move stays clean

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        x_adv = self._inside(x, x_adv)
        size = self.pixel_step / self.steps  # L2 length of one step, in pixels
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            loss = F.cross_entropy(self.model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x_adv = self._inside(x, (x_adv.detach() + size * grad / norm).clamp(0, 1))
        return x_adv.detach()

    @torch.no_grad()
    def _inside(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """`x_adv` pulled back toward `x` along the segment until inside the bound."""
        outside = feature_distance(self.features, x, x_adv) > self.budget
        if not outside.any():
            return x_adv
        low = torch.zeros(int(outside.sum()), device=x.device)
        high = torch.ones_like(low)
        start, step = x[outside], x_adv[outside] - x[outside]
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            inside = feature_distance(self.features, start, start + middle.view(-1, 1, 1, 1)
                                      * step) <= self.budget
            low, high = torch.where(inside, middle, low), torch.where(inside, high, middle)
        x_adv = x_adv.clone()
        x_adv[outside] = start + low.view(-1, 1, 1, 1) * step
        return x_adv
