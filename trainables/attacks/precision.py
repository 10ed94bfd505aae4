"""Crafting in low precision, judging in float32.

A final evaluation spends most of its time in the small CNN's forward and backward passes
inside the non-Lp and L0 attacks. On a CPU with native bfloat16 (AVX512-BF16, AMX) autocast
runs mnist5k's forward pass 1.48x and forward + backward 1.74x faster (bench/precision.py at
batch 256; on 8x8 digits 1.17x and 1.29x, too little to repay the confirmations below). A success
found in bfloat16 is not always one in float32, though: trusted as it was, it stopped the
attack on points float32 still classifies correctly, and the held-out family mean of a
PGD-AT model on mnist5k (1,500 test points) rose 1.3 points: a weaker evaluation. With every
success confirmed in float32 it rose 0.4, from the successes bfloat16 missed. So an attack
that crafts on a `LowPrecision` model takes its verdicts from `verdict`: float32 decides every
claimed success and every sample near the boundary; and the evaluation judges every returned
example in float32 as before. The precision changes the path an attack takes (its gradients,
which candidate looks best), never what counts as a success.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.attacks.base import margin_loss

__all__ = ["LowPrecision", "verdict"]


class LowPrecision(nn.Module):
    """`model` under autocast at `dtype`; its logits come back in float32. The model itself
    is `exact`, what every verdict is asked of."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.exact, self.dtype = model, dtype
        # an attack restores the mode it found: a fresh module's (train) would stay on the model
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.exact(x).float()


# bfloat16 logits of mnist5k's small CNN were within 0.5% of the sample's largest |logit| of
# float32's (512 noisy validation images, a PGD-AT model); 4x that is where a verdict is asked
NEAR_BOUNDARY = 0.02


def verdict(model: nn.Module, images: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
            ) -> torch.Tensor:
    """Per sample: the model misclassifies `images`, given `model`'s `logits` for them. For a
    LowPrecision model, float32 decides every claimed success and every sample whose margin
    is within rounding of the boundary (NEAR_BOUNDARY), so no success is trusted and none is
    missed because of bfloat16; the others are far from the boundary either way."""
    logits = logits.detach()
    wrong = logits.argmax(1) != y
    if not isinstance(model, LowPrecision):
        return wrong
    near = margin_loss(logits, y).abs() <= NEAR_BOUNDARY * logits.abs().amax(1)
    rows = (wrong | near).nonzero().flatten()
    if len(rows) == 0:
        return wrong
    with torch.no_grad():
        exact_wrong = model.exact(images[rows].detach()).argmax(1) != y[rows]
    return wrong.index_put((rows,), exact_wrong)
