"""UniG (Unifying Gradients, Wu et al., ACM TIST 2023, arXiv 2208.06228).

A Hadamard multiplier P on a feature stage, re-optimised at test time inside every forward
call so that the batch's feature gradients become alike; score-based query attacks then
only see a weak, near-universal attack direction. The base model stays frozen.

Granularities ("module size"):
- ``shared``: one 1 x D multiplier on the penultimate features for the whole batch;
- ``per_sample``: a B x D multiplier on the penultimate features (the official code's choice);
- ``per_channel``: a B x C x 1 x 1 multiplier on the encoder's output channels (earlier stage).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainables.defense.models import ClassifierHead
from trainables.errors import ConfigError
from trainables.vocab import UniGSize

__all__ = ["UniG", "feature_gradients"]


class UniG(nn.Module):
    """Test-time gradient-unifying multiplier; see the module docstring for granularities."""

    # one multiplier is optimised over the whole batch: a sample's output depends on the others
    couples_batch = True

    def __init__(
        self,
        granularity: str = UniGSize.PER_SAMPLE,
        *,
        delta: float = 0.5,
        steps: int = 1,
        lr: float = 10.0,
        init_std: float = 0.5,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__()
        sizes = [s.value for s in UniGSize if s != UniGSize.OFF]
        if granularity not in sizes:
            raise ConfigError(f"UniG granularity {granularity!r} is unknown; choose one of "
                              f"{sizes}")
        if not 0 < delta <= 1:
            raise ConfigError(f"unig_delta={delta} must lie in (0, 1]")
        if steps < 1:
            raise ConfigError(f"unig_steps={steps} must be at least 1")
        self.granularity = UniGSize(granularity)
        self.delta, self.steps, self.lr, self.init_std = delta, steps, lr, init_std
        self.momentum, self.weight_decay = momentum, weight_decay

    def settings(self) -> dict[str, object]:
        return {"granularity": self.granularity.value, "delta": self.delta, "steps": self.steps,
                "lr": self.lr, "init_std": self.init_std}

    def split(self, z: torch.Tensor, head: ClassifierHead
              ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The feature stage P multiplies, and the rest of the network after it."""
        if self.granularity == UniGSize.PER_CHANNEL:
            return z, head
        return head.penultimate(z), head.logits

    def forward(self, z: torch.Tensor, head: ClassifierHead) -> torch.Tensor:
        features, rest = self.split(z, head)
        multiplier = self.optimise(features, rest)
        return rest(multiplier * features)

    def _init_multiplier(self, features: torch.Tensor) -> torch.Tensor:
        if self.granularity == UniGSize.SHARED:
            shape = (1, *features.shape[1:])
        elif self.granularity == UniGSize.PER_SAMPLE:
            shape = tuple(features.shape)
        else:
            shape = (features.shape[0], features.shape[1], *([1] * (features.dim() - 2)))
        noise = torch.randn(shape, device=features.device, dtype=features.dtype)
        return (1 + self.init_std * noise).clamp(1 - self.delta, 1 + self.delta)

    def optimise(self, features: torch.Tensor,
                 rest: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Runs the inner steps on a fresh multiplier and returns it detached.

        Works under no_grad and inference_mode callers: the inner problem needs autograd
        whatever the caller asked for, and it never touches the caller's graph.
        """
        with torch.inference_mode(False), torch.enable_grad():
            base = features.detach().clone()
            multiplier = self._init_multiplier(base).requires_grad_(True)
            with torch.no_grad():
                pseudo_labels = rest(base).argmax(dim=1)
            velocity = torch.zeros_like(multiplier)
            low: torch.Tensor | None = None
            high = torch.zeros(())
            for _ in range(self.steps):
                grads = feature_gradients(base, multiplier, rest, pseudo_labels)
                if low is None:  # normalise with the first step's range, as the paper does
                    low, high = grads.min().detach(), grads.max().detach()
                normed = (grads - low) / (high - low + 1e-12)
                spread = (normed[1:] - normed[:-1]).norm(dim=1).sum()
                if not spread.requires_grad:  # batch of one: nothing to unify
                    break
                (step,) = torch.autograd.grad(spread, multiplier)
                with torch.no_grad():
                    step = step + self.weight_decay * multiplier
                    velocity.mul_(self.momentum).add_(step)
                    multiplier -= self.lr * velocity
                    multiplier.clamp_(1 - self.delta, 1 + self.delta)
        return multiplier.detach()


def feature_gradients(features: torch.Tensor, multiplier: torch.Tensor,
                      rest: Callable[[torch.Tensor], torch.Tensor],
                      labels: torch.Tensor) -> torch.Tensor:
    """Per-sample d CE / d features (flattened), kept differentiable w.r.t. the multiplier."""
    leaf = features.detach().requires_grad_(True)
    loss = F.cross_entropy(rest(multiplier * leaf), labels, reduction="sum")
    (grads,) = torch.autograd.grad(loss, leaf, create_graph=True)
    return grads.flatten(1)
