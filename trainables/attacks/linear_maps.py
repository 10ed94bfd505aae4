"""Fixed linear image maps of the non-Lp families, as matrix products.

On the CPU the backward pass of a depthwise convolution (what kornia's separable Gaussian blur
and its diamond-square plasma run) is 10-20x slower than its forward pass, and an attack that
steps through Elastic, Blur or Fog runs it at every step. The same linear maps as matrices make
both passes GEMMs. Each matrix is read off kornia's own function applied to basis vectors, so
the map is kornia's by construction (its kernel, its borders, its draws), equal to float32
round-off; tests/trainables_tests/test_linear_maps.py bounds the difference.
"""

from __future__ import annotations

from functools import lru_cache

import kornia.filters as KF
import torch
from kornia.contrib import diamond_square
from kornia.filters.kernels import get_gaussian_kernel1d

__all__ = ["gaussian_blur", "plasma", "plasma_draw_shapes"]

# The plasma's matrix has (draws x pixels) entries, about 2 x pixels^2: 6 MB at 32 x 32, 0.8 GB
# at 96 x 96. Past this many entries kornia's own convolutions run instead.
MAX_PLASMA_ENTRIES = 2**24


@lru_cache(maxsize=32)
@torch.inference_mode(False)  # a cached inference tensor could not be saved for backward
@torch.no_grad()
def _gaussian_axis(n: int, size: int, sigma: float, border: str, dtype: torch.dtype,
                   device: str) -> torch.Tensor:
    """(n, n): kornia's 1-D Gaussian filter along an axis of length n, with its border."""
    kernel = get_gaussian_kernel1d(size, torch.tensor([[sigma]], dtype=dtype))
    basis = torch.eye(n, dtype=dtype)[:, None, None, :]  # one image row per basis vector
    columns = KF.filter2d(basis, kernel[:, None, :], border_type=border)
    return columns[:, 0, 0, :].T.contiguous().to(device)


def gaussian_blur(x: torch.Tensor, size: int, sigma: float, border: str) -> torch.Tensor:
    """kornia's `gaussian_blur2d(x, (size, size), (sigma, sigma), border)`: the same separable
    filter, one matrix per axis."""
    height, width = x.shape[-2:]
    key = (size, float(sigma), border, x.dtype, str(x.device))
    return _gaussian_axis(height, *key) @ (x @ _gaussian_axis(width, *key).T)


@lru_cache(maxsize=8)
def _plasma_shapes(height: int, width: int) -> tuple[tuple[int, ...], ...]:
    """The shape of each random draw of kornia's diamond-square plasma, for one map."""
    shapes: list[tuple[int, ...]] = []

    def record(shape: tuple[int, ...], device: object = None, dtype: object = None
               ) -> torch.Tensor:
        shapes.append(tuple(shape)[1:])  # the first axis is the batch's
        return torch.zeros(tuple(shape))

    diamond_square((1, 1, height, width), random_fn=record)
    return tuple(shapes)


@lru_cache(maxsize=8)
@torch.inference_mode(False)
@torch.no_grad()
def _plasma(height: int, width: int, roughness: float, dtype: torch.dtype, device: str
            ) -> torch.Tensor:
    """kornia's diamond-square plasma of one (height, width) map is linear in its random
    draws (its scales are fixed): the matrix (draws, height * width)."""
    shapes = _plasma_shapes(height, width)
    sizes = [int(torch.Size(shape).numel()) for shape in shapes]
    basis = torch.eye(sum(sizes), dtype=dtype).split(sizes, dim=1)
    replay = iter(block.reshape(len(block), *shape) for block, shape in
                  zip(basis, shapes, strict=True))
    maps = diamond_square((sum(sizes), 1, height, width), roughness=roughness,
                          random_fn=lambda *_, **__: next(replay), dtype=dtype)
    return maps.reshape(sum(sizes), height * width).to(device)


def plasma_draw_shapes(height: int, width: int, batch: int) -> list[tuple[int, ...]]:
    """The shapes of the draws `plasma` takes for `batch` maps."""
    return [(batch, *shape) for shape in _plasma_shapes(height, width)]


def plasma(draws: list[torch.Tensor], height: int, width: int, roughness: float
           ) -> torch.Tensor:
    """kornia's `diamond_square((batch, 1, height, width), roughness, random_fn=<the draws in
    order>)`: (batch, 1, height, width)."""
    first = draws[0]
    count = sum(int(torch.Size(shape).numel()) for shape in _plasma_shapes(height, width))
    if count * height * width > MAX_PLASMA_ENTRIES:
        replay = iter(draws)
        return diamond_square((len(first), 1, height, width), roughness=roughness,
                              random_fn=lambda *_, **__: next(replay), dtype=first.dtype)
    matrix = _plasma(height, width, float(roughness), first.dtype, str(first.device))
    flat = torch.cat([draw.reshape(len(draw), -1) for draw in draws], dim=1)
    return (flat @ matrix).view(len(first), 1, height, width)
