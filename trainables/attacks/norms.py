"""Measuring a perturbation against an Lp budget, and projecting onto the budget's ball."""

from __future__ import annotations

import torch

from trainables.attacks.threat import NORMS
from trainables.errors import ConfigError

__all__ = ["NORM_TOLERANCE", "perturbation_norm", "project", "within_budget"]

# A minimum-norm attack's perturbation may exceed the budget by float round-off only.
NORM_TOLERANCE = 1e-4


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample size of `delta` (N x C x H x W) in `norm`; L0 counts changed pixel positions."""
    flat = delta.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    if norm == "L1":
        return flat.abs().sum(dim=1)
    if norm == "L0":
        return (delta.abs() > 1e-6).any(dim=1).flatten(1).sum(dim=1).to(delta.dtype)
    raise ConfigError(f"unknown norm {norm!r}; choose one of {NORMS}")


def within_budget(delta: torch.Tensor, norm: str, budget: float) -> torch.Tensor:
    """Boolean mask: which perturbations fit inside `budget` (up to float round-off)."""
    return perturbation_norm(delta, norm) <= budget * (1 + NORM_TOLERANCE) + 1e-6


def project(delta: torch.Tensor, norm: str, budget: float) -> torch.Tensor:
    """Projects `delta` onto the `norm` ball of radius `budget` (Linf, L2; others unchanged)."""
    if norm == "Linf":
        return delta.clamp(-budget, budget)
    if norm == "L2":
        size = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
        scale = (budget / size).clamp(max=1.0)
        return delta * scale.view(-1, *([1] * (delta.dim() - 1)))
    return delta
