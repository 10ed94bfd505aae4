"""Threat model: the perturbation budget per norm. Imports nothing heavy (no torch)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from trainables.errors import ConfigError
from trainables.vocab import Level, Norm

__all__ = ["LEVELS", "NORMS", "ThreatModel"]

NORMS = tuple(n.value for n in Norm)
LEVELS = tuple(lv.value for lv in Level)


@dataclass(frozen=True)
class ThreatModel:
    """The budget of every threat model a trial may meet.

    `norm` is the primary norm (the one `eps` and AutoAttack use); `budgets` holds one budget
    per Lp norm (L0 counts changed pixel positions, a pixel once whatever its channels);
    `levels` holds, per non-Lp family, its budget at each distortion level (low, medium,
    high), in the family's own unit (trainables/attacks/unforeseen.py says which).
    """

    norm: str
    budgets: Mapping[str, float] = field(default_factory=dict)
    levels: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

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

    def level_budget(self, family: str, level: str) -> float:
        if level not in self.levels.get(family, {}):
            raise ConfigError(f"the threat model has no {family} budget at level {level}; add "
                              f"threat_model.levels.{family}.{level}")
        return self.levels[family][level]

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
            _number(f"threat_model.eps.{norm}", value)
            if not 0 < value <= limits[norm]:
                raise ConfigError(
                    f"threat_model.eps.{norm}={value} is out of range: it must lie in "
                    f"(0, {limits[norm]:g}] for images of shape {image_shape}"
                )
            if norm == "L0" and float(value) != int(value):
                raise ConfigError(f"threat_model.eps.L0={value} must be a whole number of pixels")
        for family, levels in self.levels.items():
            if not isinstance(levels, Mapping):
                raise ConfigError(f"threat_model.levels.{family} must map levels to budgets")
            for level, value in levels.items():
                if level not in LEVELS:
                    raise ConfigError(f"threat_model.levels.{family}.{level}: level {level!r} "
                                      f"does not exist; choose {', '.join(LEVELS)}")
                _number(f"threat_model.levels.{family}.{level}", value)
                if not value > 0:
                    raise ConfigError(f"threat_model.levels.{family}.{level}={value} must be "
                                      "> 0")
            ordered = [levels[lv] for lv in LEVELS if lv in levels]
            if ordered != sorted(ordered):
                raise ConfigError(f"threat_model.levels.{family}: budgets must grow from low to "
                                  f"high, got {dict(levels)}")

    def to_dict(self) -> dict[str, object]:
        return {"norm": self.norm, "eps": dict(self.budgets),
                "levels": {family: dict(levels) for family, levels in self.levels.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ThreatModel:
        unknown = set(data) - {"norm", "eps", "levels"}
        if unknown:
            raise ConfigError(f"threat_model has unknown keys {sorted(unknown)}; "
                              "allowed: norm, eps, levels")
        eps, levels = data.get("eps", {}), data.get("levels", {})
        if not isinstance(eps, Mapping):
            raise ConfigError(f"threat_model.eps must map norms to budgets, got {eps!r}")
        if not isinstance(levels, Mapping) or not all(isinstance(v, Mapping)
                                                      for v in levels.values()):
            raise ConfigError("threat_model.levels must map families to {low, medium, high} "
                              f"budgets, got {levels!r}")
        return cls(norm=str(data.get("norm", "Linf")), budgets=dict(eps),
                   levels={str(k): dict(v) for k, v in levels.items()})

    def merged(self, override: Mapping[str, object]) -> ThreatModel:
        """This threat model with a partial threat_model mapping `override` applied."""
        partial = ThreatModel.from_dict({"norm": self.norm, **override})  # checks the keys
        levels = {family: dict(budgets) for family, budgets in self.levels.items()}
        for family, budgets in partial.levels.items():
            levels[family] = {**levels.get(family, {}), **budgets}
        return ThreatModel(partial.norm, {**self.budgets, **partial.budgets}, levels)

    def describe(self) -> str:
        return f"{self.norm} eps={self.eps:g}"


def _number(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
