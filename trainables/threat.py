"""Threat model: the perturbation budget per norm, and how to measure a perturbation against it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from trainables.errors import ConfigError

NORMS = ("Linf", "L2", "L1", "L0")
# A minimum-norm attack's perturbation may exceed the budget by float round-off only.
NORM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ThreatModel:
    """`norm` is the primary norm (the one pool attacks use); `budgets` holds one budget per norm.

    L0 budgets count changed pixel positions (a pixel counts once, whatever its channels).
    """

    norm: str
    budgets: Mapping[str, float] = field(default_factory=dict)

    @property
    def eps(self) -> float:
        return self.budgets[self.norm]

    def budget(self, norm: str) -> float:
        if norm not in self.budgets:
            raise ConfigError(
                f"the threat model has no {norm} budget (it has {', '.join(self.budgets)}); "
                f"add one under threat_model.eps.{norm}"
            )
        return self.budgets[norm]

    def validate(self, image_shape: tuple[int, int, int]) -> None:
        """Raises ConfigError unless every budget is meaningful for images of `image_shape`."""
        if self.norm not in NORMS:
            raise ConfigError(f"threat_model.norm {self.norm!r} is unknown; choose one of {NORMS}")
        if self.norm not in self.budgets:
            raise ConfigError(f"threat_model.eps has no budget for its own norm {self.norm}")
        channels, height, width = image_shape
        dim = channels * height * width
        limits = {"Linf": 1.0, "L2": math.sqrt(dim), "L1": float(dim), "L0": float(height * width)}
        for norm, value in self.budgets.items():
            if norm not in NORMS:
                raise ConfigError(f"threat_model.eps.{norm}: unknown norm; choose from {NORMS}")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"threat_model.eps.{norm} must be a number, got {value!r}")
            if not 0 < value <= limits[norm]:
                raise ConfigError(
                    f"threat_model.eps.{norm}={value} is out of range: it must lie in "
                    f"(0, {limits[norm]:g}] for images of shape {image_shape}"
                )
            if norm == "L0" and float(value) != int(value):
                raise ConfigError(f"threat_model.eps.L0={value} must be a whole number of pixels")

    def to_dict(self) -> dict[str, object]:
        return {"norm": self.norm, "eps": dict(self.budgets)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ThreatModel:
        unknown = set(data) - {"norm", "eps"}
        if unknown:
            raise ConfigError(f"threat_model has unknown keys {sorted(unknown)}; "
                              "allowed: norm, eps")
        eps = data.get("eps", {})
        if not isinstance(eps, Mapping):
            raise ConfigError(f"threat_model.eps must map norms to budgets, got {eps!r}")
        return cls(norm=str(data.get("norm", "Linf")), budgets=dict(eps))

    def merged(self, override: Mapping[str, object]) -> ThreatModel:
        """This threat model with a partial threat_model mapping `override` applied."""
        partial = ThreatModel.from_dict({"norm": self.norm, **override})  # checks the keys
        return ThreatModel(partial.norm, {**self.budgets, **partial.budgets})

    def describe(self) -> str:
        return f"{self.norm} eps={self.eps:g}"


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
