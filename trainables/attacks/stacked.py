"""A training batch's pool crafted in lockstep: every step of every iterative attack in one
forward and one backward pass over all the attacks' current examples.

Crafting the pool is most of a trial's time, and on a CPU a small batch leaves much of each
pass in per-call overhead; one pass over (attacks x batch) images does the same arithmetic
with less of it. The update rules are torchattacks 3.5.1's, step for step, for the classes
below (the random starts are drawn in pool order, as the attacks one after the other draw
them); every other attack of a pool is crafted on its own. Per-sample results equal the
one-by-one ones up to float round-off (batch composition changes summation order), which
tests/trainables_tests/test_stacked.py bounds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchattacks as ta
from torch import nn

from trainables.attacks.base import Attack, CallableAttack

__all__ = ["StackedPool"]


class _Stepper(ABC):
    """One attack's state while the pool is crafted in lockstep."""

    def __init__(self, attack: ta.Attack, x: torch.Tensor, y: torch.Tensor) -> None:
        self.attack, self.x, self.y = attack, x, y
        self.steps = int(getattr(attack, "steps", 1))
        self.x_adv = self.start()

    def start(self) -> torch.Tensor:
        return self.x.clone()

    @abstractmethod
    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """The attack's loss on its current examples (a sum or mean, as torchattacks')."""

    def update(self, grad: torch.Tensor) -> None:
        eps, alpha = self.attack.eps, self.attack.alpha
        moved = self.x_adv + alpha * grad.sign()
        delta = torch.clamp(moved - self.x, min=-eps, max=eps)
        self.x_adv = torch.clamp(self.x + delta, min=0, max=1)


class _PGD(_Stepper):
    def start(self) -> torch.Tensor:
        if not self.attack.random_start:
            return self.x.clone()
        eps = self.attack.eps
        return torch.clamp(self.x + torch.empty_like(self.x).uniform_(-eps, eps), 0, 1)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, self.y)


class _FGSM(_Stepper):
    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, self.y)

    def update(self, grad: torch.Tensor) -> None:
        self.x_adv = torch.clamp(self.x + self.attack.eps * grad.sign(), min=0, max=1)


class _MIFGSM(_Stepper):
    def start(self) -> torch.Tensor:
        self.momentum = torch.zeros_like(self.x)
        return self.x.clone()

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, self.y)

    def update(self, grad: torch.Tensor) -> None:
        grad = grad / torch.mean(torch.abs(grad), dim=(1, 2, 3), keepdim=True)
        grad = grad + self.momentum * self.attack.decay
        self.momentum = grad
        super().update(grad)


class _TPGD(_Stepper):
    """TRADES' attack: KL of the prediction on x_adv from the prediction on the clean x."""

    def start(self) -> torch.Tensor:
        with torch.no_grad():
            self.clean = F.softmax(self.attack.get_logits(self.x), dim=1)
        return torch.clamp(self.x + 0.001 * torch.randn_like(self.x), min=0, max=1)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, dim=1), self.clean, reduction="sum")


class _PGDL2(_Stepper):
    def start(self) -> torch.Tensor:
        if not self.attack.random_start:
            return self.x.clone()
        delta = torch.empty_like(self.x).normal_()
        norm = delta.view(len(self.x), -1).norm(p=2, dim=1).view(-1, 1, 1, 1)
        radius = torch.zeros_like(norm).uniform_(0, 1)
        delta *= radius / norm * self.attack.eps
        return torch.clamp(self.x + delta, min=0, max=1)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, self.y)

    def update(self, grad: torch.Tensor) -> None:
        batch, eps = len(self.x), self.attack.eps
        norms = torch.norm(grad.view(batch, -1), p=2, dim=1) + self.attack.eps_for_division
        moved = self.x_adv + self.attack.alpha * grad / norms.view(batch, 1, 1, 1)
        delta = moved - self.x
        factor = torch.min(eps / torch.norm(delta.view(batch, -1), p=2, dim=1),
                           torch.ones(batch, device=delta.device))
        self.x_adv = torch.clamp(self.x + delta * factor.view(-1, 1, 1, 1), min=0, max=1)


# torchattacks classes whose update this module replays (subclasses are not: they differ)
_STEPPERS: dict[type, type[_Stepper]] = {ta.PGD: _PGD, ta.FGSM: _FGSM, ta.MIFGSM: _MIFGSM,
                                         ta.TPGD: _TPGD, ta.PGDL2: _PGDL2}


def _stepper_of(attack: Attack) -> type[_Stepper] | None:
    run = getattr(attack, "run", None)
    if not isinstance(attack, CallableAttack) or getattr(run, "targeted", False):
        return None
    return _STEPPERS.get(type(run))


class StackedPool:
    """A pool's attacks, crafted as training examples (`Attack.craft`): the stackable ones
    in lockstep, the others one by one, in pool order."""

    def __init__(self, attacks: Sequence[Attack], model: nn.Module) -> None:
        self.attacks, self.model = list(attacks), model
        self.kinds = [_stepper_of(a) for a in self.attacks]

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        training = self.model.training
        self.model.eval()
        try:
            raw = self._lockstep(x, y)
        finally:
            self.model.train(training)
        out = []
        for attack, kind in zip(self.attacks, self.kinds, strict=True):
            if kind is None:
                out.append(attack.craft(x, y))
            else:  # projected, and points it could not move repaired, as Attack.craft does
                out.append(attack.finish(x, y, raw.pop(0).detach().clamp(0, 1)))
        return out

    def _lockstep(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """The stackable attacks' examples, before projection and repair."""
        steppers = [kind(attack.run, x, y)  # type: ignore[attr-defined]
                    for attack, kind in zip(self.attacks, self.kinds, strict=True)
                    if kind is not None]
        for step in range(max((s.steps for s in steppers), default=0)):
            active = [s for s in steppers if step < s.steps]
            images = torch.cat([s.x_adv for s in active]).requires_grad_(True)
            logits = self.model(images).split(len(x))
            loss = torch.stack([s.loss(out) for s, out in zip(active, logits, strict=True)])
            (grad,) = torch.autograd.grad(loss.sum(), images)
            for stepper, part in zip(active, grad.split(len(x)), strict=True):
                stepper.update(part)
        return [s.x_adv for s in steppers]
