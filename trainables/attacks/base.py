"""One interface for every attack: `attack(x, y) -> x_adv` in [0, 1], the same for all.

The base class owns what every attack must get right: the model in eval mode while it is
attacked (and its mode restored), outputs clamped to [0, 1] and detached, and which examples
lie inside the threat model's budget. Subclasses implement `forward` only.
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from trainables.attacks.norms import perturbation_norm, project, within_budget
from trainables.attacks.specs import AttackSpec

__all__ = ["Attack", "CallableAttack", "SeededAttack", "UniformNoise", "couples_batch",
           "margin_loss"]


class Attack(ABC):
    """An attack bound to a model and a budget."""

    def __init__(self, spec: AttackSpec, model: nn.Module, budget: float, *,
                 fallback: Attack | None = None, name: str | None = None) -> None:
        self.spec, self.model, self.budget, self.fallback = spec, model, budget, fallback
        self._name = name or spec.name

    @property
    def name(self) -> str:
        """The name it was built by: `PGD`, or with a level, `Elastic@medium`."""
        return self._name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, budget={self.budget:g})"

    @abstractmethod
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for images `x` (in [0, 1]) with labels `y`."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        training = self.model.training
        self.model.eval()
        try:
            x_adv = self.forward(x, y)
        finally:
            self.model.train(training)
        return x_adv.detach().clamp(0, 1)

    @property
    def norm(self) -> str:
        """The Lp norm of the budget (the non-Lp families override `within_budget`)."""
        if self.spec.norm is None:
            raise TypeError(f"{self.name} has no Lp budget")
        return str(self.spec.norm)

    def within_budget(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Which examples lie inside the budget: only those can count as a success."""
        return within_budget(x_adv - x, self.norm, self.budget)

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples safe to train on: inside the budget, never the clean input."""
        return self.finish(x, y, self(x, y))

    def finish(self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """`x_adv` made safe to train on. Points the attack left (numerically) unchanged or
        pushed outside the budget (unbounded attacks, after projection for Linf/L2) are
        replaced by the fallback attack: PGD-L2 for L2 attacks, Linf PGD otherwise
        (torchattacks has no L1/L0 PGD, so repaired rows of L1 and L0 attacks lie inside the
        Linf budget instead)."""
        x_adv = (x + project(x_adv - x, self.norm, self.budget)).clamp(0, 1)
        unchanged = perturbation_norm(x_adv - x, "L0") == 0
        bad = unchanged | ~self.within_budget(x, x_adv)
        if bad.any() and self.fallback is not None:
            x_adv = x_adv.clone()
            x_adv[bad] = self.fallback(x[bad], y[bad])
        return x_adv


class SeededAttack(Attack):
    """An attack that draws from its own random stream: seeded by `seed` and its name (so
    adding an attack leaves the others' draws alone), continued from one call to the next."""

    def __init__(self, spec: AttackSpec, model: nn.Module, budget: float, *, seed: int = 0,
                 name: str | None = None) -> None:
        super().__init__(spec, model, budget, name=name)
        self.seed = seed + zlib.crc32(self.name.encode())
        self._generator: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator


class CallableAttack(Attack):
    """An attack whose work a plain callable does (a torchattacks object, a noise function)."""

    def __init__(self, spec: AttackSpec, model: nn.Module, budget: float,
                 run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 fallback: Attack | None = None, name: str | None = None) -> None:
        super().__init__(spec, model, budget, fallback=fallback, name=name)
        self.run = run

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(x, y)


class UniformNoise(Attack):
    """No attack: uniform noise in the Linf box, or a random direction of the L2 budget's
    length (the baseline every attack must beat; a masking check uses it)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = torch.empty_like(x).uniform_(-1, 1)
        if self.spec.norm != "Linf":  # a random direction of L2 length budget
            delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return x + self.budget * delta


def couples_batch(model: nn.Module) -> bool:
    """Whether a sample's output depends on the other samples of its batch (a module that
    says so, as UniG does): attacks then judge the whole batch at every step, as a served
    model would see it, instead of dropping the samples they already fooled."""
    return any(getattr(module, "couples_batch", False) for module in model.modules())


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the best other logit minus the true one (> 0: fooled)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    return other - true
