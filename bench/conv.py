"""Does the small CNN's first convolution (trainables/defense/models.py, ThinConv2d) pay?

    python bench/conv.py                       # mnist5k's small CNN, batch 64 and 256, 1 thread
    python bench/conv.py --dataset digits --batches 32 256

Times nn.Conv2d against ThinConv2d, alone on the first layer (forward + backward w.r.t. its
input) and inside the whole model (forward + backward w.r.t. the input, as gradient attacks
run it; and w.r.t. the input and the weights), alternating the two in every repeat so a noisy
machine moves both alike; median of the repeats. It checks what the lever promises: outputs
and weight gradients bitwise equal, the input gradient equal to float32 round-off (its
largest difference relative to its largest entry is printed).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pool import layer_setup, race
from torch import nn

from trainables.defense.models import DefendedModel, with_torch_layers

Grads = Callable[[], list[torch.Tensor]]


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, weights: bool) -> Grads:
    """Forward + backward of `model`: the output, then the gradients w.r.t. the input (and the
    parameters, with `weights`)."""
    params = list(model.parameters()) if weights else []

    def run() -> list[torch.Tensor]:
        leaf = x.detach().requires_grad_(True)
        out = model(leaf)
        loss = F.cross_entropy(out, y) if out.dim() == 2 else (out * y).sum()
        return [out.detach(), *torch.autograd.grad(loss, [leaf, *params])]

    return run


def _verdict(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> str:
    out, dx, *dw = ours
    same = torch.equal(out, theirs[0]) and all(
        torch.equal(a, b) for a, b in zip(dw, theirs[2:], strict=True))
    gap = float((dx - theirs[1]).abs().max() / theirs[1].abs().max())
    return (f"outputs{' and weight gradients' if dw else ''} bitwise equal: "
            f"{'yes' if same else 'NO'}, input gradient within {gap:.1e}")


def main() -> None:
    args, info, parts = layer_setup(__doc__)
    plain = with_torch_layers(copy.deepcopy(parts.encoder), pooling=False)
    ours = DefendedModel(parts.encoder, parts.head).eval()
    theirs = DefendedModel(plain, parts.head).eval()  # the same head
    first = (next(parts.encoder.children()), next(plain.children()))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {args.dataset} {info.default_arch}, "
          f"{args.threads} thread(s), median of {args.repeats}; ms, nn.Conv2d vs ThinConv2d")
    for batch in args.batches:
        x = torch.rand(batch, *info.image_shape)
        y = torch.randint(0, info.num_classes, (batch,))
        upstream = torch.randn_like(first[0](x))
        rows = {f"first convolution {tuple(upstream.shape)}, forward + backward (input)":
                [_grads(layer, x, upstream, weights=False) for layer in reversed(first)]}
        for weights, label in ((False, "input"), (True, "input and weights")):
            rows[f"whole model, forward + backward ({label})"] = [
                _grads(model, x, y, weights=weights) for model in (theirs, ours)]
        for label, (torch_pass, thin_pass) in rows.items():
            verdict = _verdict(thin_pass(), torch_pass())
            before, after = race(torch_pass, thin_pass, args.repeats)
            print(f"  batch {batch:4d}  {label:<58} {before * 1e3:8.2f} -> {after * 1e3:8.2f}"
                  f"  ({before / after:.2f}x; {verdict})")


if __name__ == "__main__":
    main()
