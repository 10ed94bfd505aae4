"""Pixle (Pomponi et al. 2022), batched: an L0 attack that only reads the model's scores.

torchattacks' Pixle attacks one image at a time with two forward passes per candidate (about
800 single-image passes for a point it cannot break at strength 2), which made it the largest
part of a final evaluation on mnist5k (70 s of 198 s on 300 test points). This is the same
search on the whole batch, one pass per candidate:

- each restart starts from the best image so far (the clean one at first);
- each iteration draws, per sample, a patch of the *clean* image (each side in
  `x_dimensions` / `y_dimensions`, clipped at the border) and writes its pixels at distinct
  random positions of the restart's start;
- a candidate is kept if it lowers the true class's probability and changes at most `budget`
  pixels of the clean image (torchattacks' changes pile up across restarts without a bound,
  so its successes beyond the budget did not count; here a candidate beyond it is not even
  shown to the model);
- a sample stops at its first candidate the model misclassifies (early exit), unless the
  model couples its batch (UniG): then every sample is judged at every step.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.attacks.base import SeededAttack, couples_batch
from trainables.attacks.precision import verdict
from trainables.attacks.specs import AttackSpec

__all__ = ["Pixle", "smallest"]


class Pixle(SeededAttack):
    """Random patch relocation under an L0 budget, batched (see the module docstring)."""

    def __init__(self, spec: AttackSpec, model: nn.Module, budget: float, *,
                 x_dimensions: tuple[int, int], y_dimensions: tuple[int, int], restarts: int,
                 max_iterations: int, seed: int = 0, name: str | None = None) -> None:
        super().__init__(spec, model, budget, seed=seed, name=name)
        self.x_dimensions, self.y_dimensions = x_dimensions, y_dimensions
        self.restarts, self.iterations = restarts, max_iterations

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        generator = self.generator(x.device)
        batch = len(x)
        best = x.clone()
        best_p = self._true_probability(x, y)
        fooled = torch.zeros(batch, dtype=torch.bool, device=x.device)
        whole = couples_batch(self.model)
        for _ in range(self.restarts):
            start = best.clone()
            for _ in range(self.iterations):
                rows = torch.arange(batch, device=x.device) if whole else \
                    (~fooled).nonzero().flatten()
                if len(rows) == 0:
                    return best
                candidate = self._candidates(x[rows], start[rows], generator)
                inside = (candidate != x[rows]).any(1).flatten(1).sum(1) <= self.budget
                if not whole:  # a candidate beyond the budget cannot be kept: not asked
                    rows, candidate = rows[inside], candidate[inside]
                    if len(rows) == 0:
                        continue
                    inside = inside[inside]
                logits = self.model(candidate)
                p = logits.softmax(1).gather(1, y[rows, None]).squeeze(1)
                wrong = verdict(self.model, candidate, y[rows], logits)
                take = ~fooled[rows] & inside & (wrong | (p < best_p[rows]))
                best[rows[take]] = candidate[take]
                best_p[rows[take]] = p[take]
                fooled[rows[take & wrong]] = True
        return best

    def _true_probability(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1).gather(1, y[:, None]).squeeze(1)

    def _candidates(self, clean: torch.Tensor, start: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
        """Per sample, `start` with a random patch of `clean` written at random pixels."""
        n, channels, height, width = clean.shape
        device = clean.device

        def draw(low: int, high: int) -> torch.Tensor:
            return torch.randint(low, high + 1, (n,), generator=generator, device=device)

        # the patch's corner and sides (torchattacks: a uniform corner, sides clipped at the
        # border)
        left = (torch.rand(n, generator=generator, device=device) * (width - 1)).long()
        top = (torch.rand(n, generator=generator, device=device) * (height - 1)).long()
        sides_x = torch.minimum(draw(*self.x_dimensions), width - left)
        sides_y = torch.minimum(draw(*self.y_dimensions), height - top)
        side_x, side_y = self.x_dimensions[1], self.y_dimensions[1]
        dx = torch.arange(side_x, device=device).repeat(side_y)  # slot -> offset in the patch
        dy = torch.arange(side_y, device=device).repeat_interleave(side_x)
        used = (dx[None] < sides_x[:, None]) & (dy[None] < sides_y[:, None])  # (n, slots)
        source = ((top[:, None] + dy).clamp(max=height - 1) * width
                  + (left[:, None] + dx).clamp(max=width - 1))
        slots = len(dx)
        # distinct destinations: no two writes race for a pixel (scatter's winner among
        # repeated indices is not defined, and on a GPU it changes from run to run)
        target = smallest(torch.rand(n, height * width, generator=generator, device=device),
                          slots)
        index = target[:, None].expand(n, channels, slots)
        out = start.flatten(2).clone()
        values = clean.flatten(2).gather(2, source[:, None].expand(n, channels, slots))
        values = torch.where(used[:, None], values, out.gather(2, index))  # unused: no change
        out.scatter_(2, index, values)
        return out.view_as(clean)


def smallest(keys: torch.Tensor, count: int) -> torch.Tensor:
    """Per row, the columns of the `count` smallest keys, smallest first: `keys.argsort(1)[:,
    :count]` at a twentieth of its cost on a 28x28 image's 784 keys (it was a third of a
    Pixle run). Rows whose keys tie at that edge (about 1 in 10,000 of uniform float32 keys)
    may order the tied columns otherwise; argsort's order among ties is not defined either."""
    return keys.topk(count, 1, largest=False).indices
