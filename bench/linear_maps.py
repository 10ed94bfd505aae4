"""Do the non-Lp families' linear maps as matrices pay (trainables/attacks/linear_maps.py)?

    python bench/linear_maps.py                      # mnist5k's small CNN, batch 64 and 256
    python bench/linear_maps.py --dataset digits --batches 32 256

Elastic, Blur and Fog ran kornia's Gaussian blur and diamond-square plasma, whose
convolutions' backward pass is slow on the CPU; they now run the same maps as matrix products.
For each family this times kornia's map against ours, alternating the two in every repeat
(median): the corruption alone (forward + backward w.r.t. its latents), one attack step (the
model too), and the whole held-out attack at medium on the batch (the model's own predictions
as labels). It checks what the lever promises: the corrupted images and the latents'
gradients equal to float32 round-off (the largest difference relative to the largest entry),
and the attack's outcome the same on all but a few points (round-off can flip a signed step).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import kornia.filters as KF
import kornia.geometry.transform as KT
import torch
import torch.nn.functional as F
from kornia.contrib import diamond_square
from pool import layer_setup, race

from trainables.attacks import build_attack
from trainables.attacks.unforeseen import (
    Blur,
    Elastic,
    Family,
    Fog,
    Latents,
    TransformAttack,
    smoothing,
)
from trainables.defense.models import DefendedModel
from trainables.scoring.evaluate import predict


class KorniaElastic(Elastic):
    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        size, sigma = smoothing(self.width)
        return KT.elastic_transform2d(x, latents[0], kernel_size=(size, size),
                                      sigma=(sigma, sigma), alpha=(1.0, 1.0),
                                      align_corners=True, padding_mode="border")


class KorniaBlur(Blur):
    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        size, sigma = smoothing(self.width)
        mix = KF.gaussian_blur2d(latents[0], (size, size), (sigma, sigma), "replicate")
        blurred = KF.gaussian_blur2d(x, (size, size), (sigma, sigma), "replicate")
        return x + mix * (blurred - x)


class KorniaFog(Fog):
    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        strength, *draws = latents
        replay = iter(draws)
        fog = diamond_square((len(x), 1, self.height, self.width), roughness=0.6,
                             random_fn=lambda *_, **__: next(replay), dtype=x.dtype)
        k = strength.view(-1, 1, 1, 1)
        return (x + k * fog) / (1 + k)


KORNIA = {"Elastic": KorniaElastic, "Blur": KorniaBlur, "Fog": KorniaFog}
Run = Callable[[], list[torch.Tensor]]


def _step(family: Family, model: DefendedModel | None, x: torch.Tensor, y: torch.Tensor,
          latents: Latents) -> Run:
    """Forward + backward w.r.t. the latents: of the corrupted images (a fixed weighting of
    them) or, with a model, of its loss on them, as an attack step runs it."""
    weights = torch.linspace(-1, 1, x.numel()).view_as(x)

    def run() -> list[torch.Tensor]:
        leaves = [latent.detach().requires_grad_(True) for latent in latents]
        out = family.apply(x, leaves).clamp(0, 1)
        loss = (out * weights).sum() if model is None else F.cross_entropy(model(out), y)
        return [out.detach(), *torch.autograd.grad(loss, leaves)]

    return run


def _gap(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> str:
    gaps = [float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
            for a, b in zip(ours, theirs, strict=True)]
    return f"images within {gaps[0]:.1e}, gradients within {max(gaps[1:]):.1e}"


def main() -> None:
    args, info, parts = layer_setup(__doc__)
    model = DefendedModel(parts.encoder, parts.head).eval()
    threat = info.threat_model
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {args.dataset} {info.default_arch}, "
          f"{args.threads} thread(s), median of {args.repeats}; ms, kornia's map vs ours")
    for batch in args.batches:
        x = torch.rand(batch, *info.image_shape)
        y = predict(model, x, batch).clone()  # out of inference mode: the loss needs it
        for name, kornia_family in KORNIA.items():
            attack = build_attack(f"{name}@medium", model, threat,
                                  num_classes=info.num_classes, seed=0)
            assert isinstance(attack, TransformAttack)
            ours = attack.corruption
            theirs = kornia_family(ours.budget)
            for family in (ours, theirs):
                family.prepare(x, torch.Generator().manual_seed(0))
            latents = ours.sample(batch, x.device, torch.Generator().manual_seed(1))
            for label, net in (("corruption, forward + backward", None),
                               ("attack step (model too)", model)):
                slow, fast = _step(theirs, net, x, y, latents), _step(ours, net, x, y, latents)
                verdict = _gap(fast(), slow())
                before, after = race(slow, fast, args.repeats)
                print(f"  batch {batch:4d}  {name:<8} {label:<31} {before * 1e3:8.2f} -> "
                      f"{after * 1e3:8.2f}  ({before / after:.2f}x; {verdict})")
            outcomes = [_attack(attack, family, x, y, batch) for family in (theirs, ours)]
            (before, was), (after, now) = outcomes
            _, halves = _attack(attack, theirs, x, y, max(1, batch // 2))
            label = f"whole attack ({attack.steps} steps)"
            print(f"  batch {batch:4d}  {name:<8} {label:<31} {before * 1e3:8.2f} -> "
                  f"{after * 1e3:8.2f}  ({before / after:.2f}x; fooled {int(was.sum())} vs "
                  f"{int(now.sum())} of {batch}, outcome differs on {int((was != now).sum())}; "
                  f"kornia's against itself at half the batch: {int((was != halves).sum())})")


def _attack(attack: TransformAttack, family: Family, x: torch.Tensor, y: torch.Tensor,
            batch: int) -> tuple[float, torch.Tensor]:
    """Seconds, and which points the attack with `family`'s map fools, `batch` at a time."""
    shipped, attack.corruption = attack.corruption, family
    start, fooled = time.perf_counter(), []
    try:
        for i in range(0, len(x), batch):
            x_adv = attack(x[i:i + batch], y[i:i + batch])
            fooled.append(predict(attack.model, x_adv, batch) != y[i:i + batch])
    finally:
        attack.corruption = shipped
    return time.perf_counter() - start, torch.cat(fooled)


if __name__ == "__main__":
    main()
