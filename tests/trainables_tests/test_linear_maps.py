"""The non-Lp families' linear maps as matrices (trainables/attacks/linear_maps.py) are
kornia's maps: the same images and the same gradients, to float32 round-off."""

from __future__ import annotations

import kornia.filters as KF
import pytest
import torch
from kornia.contrib import diamond_square

from trainables.attacks import linear_maps
from trainables.attacks.linear_maps import gaussian_blur, plasma, plasma_draw_shapes


def _both(ours: torch.Tensor, theirs: torch.Tensor, leaf: torch.Tensor) -> tuple[float, float]:
    """The largest difference of the outputs, and of the gradients w.r.t. `leaf` of a fixed
    weighting of them, each relative to the largest entry of kornia's."""
    weights = torch.linspace(-1, 1, ours.numel()).view_as(ours)
    grads = [torch.autograd.grad((out * weights).sum(), leaf)[0] for out in (ours, theirs)]
    return (float((ours - theirs).detach().abs().max() / theirs.detach().abs().max()),
            float((grads[0] - grads[1]).abs().max() / grads[1].abs().max()))


@pytest.mark.parametrize("border", ["constant", "reflect", "replicate"])
@pytest.mark.parametrize(("shape", "size", "sigma"), [((3, 2, 28, 28), 15, 3.5),
                                                      ((2, 1, 8, 12), 5, 1.0)])
def test_the_gaussian_blur_is_kornias(border: str, shape: tuple[int, ...], size: int,
                                      sigma: float) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ours = gaussian_blur(x, size, sigma, border)
    theirs = KF.gaussian_blur2d(x, (size, size), (sigma, sigma), border_type=border)
    images, gradients = _both(ours, theirs, x)
    assert images < 1e-6 and gradients < 1e-6


@pytest.mark.parametrize(("height", "width"), [(28, 28), (8, 8), (32, 32), (12, 20)])
def test_the_plasma_is_kornias_diamond_square(height: int, width: int) -> None:
    generator = torch.Generator().manual_seed(1)
    draws = [torch.rand(shape, generator=generator).requires_grad_(True)
             for shape in plasma_draw_shapes(height, width, 5)]
    replay = iter(draws)
    theirs = diamond_square((5, 1, height, width), roughness=0.6,
                            random_fn=lambda *_, **__: next(replay))
    ours = plasma(draws, height, width, roughness=0.6)
    assert ours.shape == theirs.shape == (5, 1, height, width)
    weights = torch.linspace(-1, 1, ours.numel()).view_as(ours)
    for mine, kornias in zip(torch.autograd.grad((ours * weights).sum(), draws),
                             torch.autograd.grad((theirs * weights).sum(), draws), strict=True):
        assert float((mine - kornias).abs().max()) < 1e-6 * float(kornias.abs().max()) + 1e-7
    assert float((ours - theirs).detach().abs().max()) < 1e-6 * float(theirs.detach().abs().max())


def test_a_plasma_too_large_for_a_matrix_runs_kornias_convolutions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the matrix grows as the square of the pixels (0.8 GB at 96 x 96): past the bound, none
    monkeypatch.setattr(linear_maps, "MAX_PLASMA_ENTRIES", 1000)
    monkeypatch.setattr(linear_maps, "_plasma", None)  # never built
    generator = torch.Generator().manual_seed(2)
    draws = [torch.rand(shape, generator=generator) for shape in plasma_draw_shapes(8, 8, 3)]
    replay = iter(draws)
    theirs = diamond_square((3, 1, 8, 8), roughness=0.6, random_fn=lambda *_, **__: next(replay))
    assert torch.equal(plasma(draws, 8, 8, roughness=0.6), theirs)
