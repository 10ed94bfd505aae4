"""Architectures: encoder / decoder / classifier head per data-set family, and the defended model.

MID's teacher is encoder + decoder + head; the student is a second encoder of the same
architecture read out by the (frozen) teacher head. UniG attaches to the head's penultimate
features or to the encoder's channels, so the head exposes both stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import ConfigError
from trainables.registry import Registry
from trainables.vocab import Arch

__all__ = [
    "ClassifierHead",
    "DefendedModel",
    "MaxPool2x2",
    "ModelParts",
    "ThinConv2d",
    "build_arch",
    "list_archs",
    "with_torch_layers",
]


class ClassifierHead(nn.Module):
    """Maps encoder features to logits through a penultimate feature vector."""

    def __init__(self, trunk: nn.Module, penultimate_dim: int, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.out = nn.Linear(penultimate_dim, num_classes)
        self.penultimate_dim = penultimate_dim

    def penultimate(self, z: torch.Tensor) -> torch.Tensor:
        return self.trunk(z)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(z))


@dataclass
class ModelParts:
    """A freshly initialised encoder, decoder and head for one architecture."""

    encoder: nn.Module
    decoder: nn.Module
    head: ClassifierHead
    feature_shape: tuple[int, int, int]  # encoder output (C, H, W)


_ARCHS: Registry[Callable[..., ModelParts]] = Registry("architecture")
register_arch = _ARCHS.register


def list_archs() -> list[str]:
    return _ARCHS.names()


def build_arch(
    name: str, image_shape: tuple[int, int, int], num_classes: int, **kwargs: Any
) -> ModelParts:
    """Builds a fresh set of parts; every architecture takes the same leading arguments."""
    return _ARCHS.get(name)(image_shape, num_classes, **kwargs)


# ---------------------------------------------------------------- small CNN (digits, MNIST)


class MaxPool2x2(nn.Module):
    """nn.MaxPool2d(2) with the same outputs and gradients, bit for bit, and a faster CPU path.

    PyTorch's CPU max-pool kernel for NCHW tensors is slow for small kernels: on mnist5k's
    first pooling, (256, 32, 28, 28), 34 ms forward against 4 ms for the elementwise max of
    the four strided quarters, which was about a third of the small CNN's forward-backward
    (bench/pool.py). Without a gradient this takes that max; with one it pools a channels_last
    copy (its kernel is fast there) for the output and the indices, and hands both to the NCHW
    backward kernel, so gradients (second order included: UniG, the meta step) are the
    original's. Elsewhere (a GPU, odd sides) it is nn.MaxPool2d(2).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            return F.max_pool2d(x, 2)
        if not (torch.is_grad_enabled() and x.requires_grad):
            # max is exact (and NaN wins, as in the kernel): the same values
            return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                                 torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))
        out: torch.Tensor = _Pool2x2.apply(x)
        return out


def with_torch_layers(module: nn.Module, *, pooling: bool = True, convolution: bool = True,
                      order: bool = True) -> nn.Module:
    """`module`, changed in place, with nn.MaxPool2d(2) for each MaxPool2x2, nn.Conv2d for
    each ThinConv2d (same weights) and each ReLU back before the pool it follows: the same
    model as a user writes it with PyTorch's own layers (the benchmarks' reference loop,
    tests); `pooling`, `convolution` or `order` False keeps that part of the project's model
    (to measure one at a time)."""
    for parent in module.modules():
        children = list(parent.named_children())
        for name, child in children:
            if pooling and isinstance(child, MaxPool2x2):
                setattr(parent, name, nn.MaxPool2d(2))
            elif convolution and isinstance(child, ThinConv2d):
                conv: nn.Module = child
                conv.__class__ = nn.Conv2d  # it adds no state: the same parameters
        if order and isinstance(parent, nn.Sequential):
            for (first, pool), (second, relu) in pairwise(children):
                if isinstance(pool, MaxPool2x2) and isinstance(relu, nn.ReLU):
                    # the slots keep their names, so a state dict loads either way
                    pooled = getattr(parent, first)
                    setattr(parent, first, relu)
                    setattr(parent, second, pooled)
    return module


class _Pool2x2(torch.autograd.Function):
    _ARGS = ([2, 2], [2, 2], [0, 0], [1, 1], False)  # kernel, stride, padding, dilation, ceil

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out, index = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), *_Pool2x2._ARGS)
        index = index.contiguous()  # flat h * W + w per plane: the same in either layout
        ctx.save_for_backward(x, index)
        return out.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        x, index = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x.contiguous(), *_Pool2x2._ARGS, index)


class ThinConv2d(nn.Conv2d):
    """nn.Conv2d whose input gradient, on a CPU, is one batched GEMM and a fold.

    oneDNN's CPU kernel for the input gradient of a convolution of a thin input (the small
    CNN's first layer: 1 channel in, 32 out) took about 20 ms on mnist5k's batch of 256
    where the GEMM (the weights against the output gradient) and the fold back onto the image
    take about 5 (bench/conv.py): a sixth of the forward + backward w.r.t. the input that every
    gradient attack runs. The output and the weight and bias gradients are nn.Conv2d's, bit
    for bit (its forward on a detached input, so PyTorch computes the weight gradient only
    where it is asked for); the input gradient is the same sum in another order, equal to
    float32 round-off (tests/trainables_tests/test_thin_conv.py), so answers move only as a
    change of summation order moves them. Second-order gradients match nn.Conv2d's, the weight
    gradient's derivative w.r.t. the input included. The output is a view: an in-place
    operation on it raises (nn.ReLU() is not in place). Elsewhere (a GPU, strides, dilation,
    groups, an input that needs no gradient) it is nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or not (torch.is_grad_enabled() and x.requires_grad)
                or x.dim() != 4 or self.groups != 1 or self.stride != (1, 1)
                or self.dilation != (1, 1) or self.padding_mode != "zeros"
                or isinstance(self.padding, str)):
            return super().forward(x)
        out = F.conv2d(x.detach(), self.weight, self.bias, padding=self.padding)
        result: torch.Tensor = _InputGrad.apply(out, x, self.weight, self.padding)
        return result


class _InputGrad(torch.autograd.Function):
    """The identity on a convolution's output that adds the gradient w.r.t. its input."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            # per image: (C_in k k, C_out) @ (C_out, H W) columns, summed back onto the image
            taps = weight.flatten(1).t().to(grad.dtype)
            columns = torch.bmm(taps.expand(len(grad), *taps.shape), grad.flatten(2))
            grad_x = F.fold(columns, x.shape[-2:], weight.shape[-2:], padding=ctx.padding)
        if torch.is_grad_enabled() and ctx.needs_input_grad[1] and ctx.needs_input_grad[2]:
            # a graph of this gradient is being built (create_graph): the weight gradient that
            # the convolution on the detached input gives lacks its derivative w.r.t. the input;
            # this adds it (its value is 0, its derivative w.r.t. the output gradient is none)
            upstream = grad.detach()
            found = torch.ops.aten.convolution_backward(
                upstream, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1,
                [False, True, False])[1]
            grad_weight = found - found.detach()
        return grad, grad_x, grad_weight, None


@register_arch
def small_cnn(
    image_shape: tuple[int, int, int], num_classes: int, *, width: int = 32, hidden: int = 200
) -> ModelParts:
    """MID's LeNet-style autoencoder: two conv/pool stages, transposed-conv decoder, MLP head."""
    return _cnn(image_shape, num_classes, width=width, hidden=hidden)


@register_arch
def wide_cnn(image_shape: tuple[int, int, int], num_classes: int) -> ModelParts:
    """small_cnn at twice the width (64 and 128 filters, 400 hidden units, ~2.5x the compute):
    capacity is what Madry et al. 2018 found robust MNIST training needs most."""
    return _cnn(image_shape, num_classes, width=64, hidden=400)


def _cnn(image_shape: tuple[int, int, int], num_classes: int, *, width: int, hidden: int
         ) -> ModelParts:
    channels, height, width_px = image_shape
    if height % 4 or width_px % 4:
        raise ConfigError(f"small_cnn and wide_cnn need image sides divisible by 4, got "
                          f"{height}x{width_px}")
    # each pool before its ReLU: max and ReLU commute (the same outputs and gradients, bit
    # for bit: both pick the window's first largest value), and the ReLU then runs on a
    # quarter of the values, forward and backward: 1.09-1.13x on the forward + backward
    # w.r.t. the input that every gradient attack runs (bench/pool.py --repeats 60)
    encoder = nn.Sequential(
        ThinConv2d(channels, width, 3, padding=1), MaxPool2x2(), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), MaxPool2x2(), nn.ReLU(),
    )
    decoder = nn.Sequential(
        nn.ConvTranspose2d(2 * width, width, 2, stride=2), nn.ReLU(),
        nn.ConvTranspose2d(width, channels, 2, stride=2), nn.Sigmoid(),
    )
    feature_shape = (2 * width, height // 4, width_px // 4)
    flat = feature_shape[0] * feature_shape[1] * feature_shape[2]
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
    return ModelParts(encoder, decoder, ClassifierHead(trunk, hidden, num_classes), feature_shape)


# ---------------------------------------------------------------- ResNet (CIFAR-10, SVHN)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


@register_arch
def resnet(
    image_shape: tuple[int, int, int], num_classes: int, *, width: int = 64,
    blocks_per_stage: int = 1,
) -> ModelParts:
    """MID's CIFAR ResNet encoder (4 stages to 8x width at 1/8 size), conv decoder, pooled head."""
    channels, height, width_px = image_shape
    if height % 8 or width_px % 8:
        raise ConfigError(f"resnet needs image sides divisible by 8, got {height}x{width_px}")
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for stage, mult in enumerate((1, 2, 4, 8)):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(_BasicBlock(cin, width * mult, stride))
            cin = width * mult
    encoder = nn.Sequential(*layers)
    decoder = nn.Sequential(
        nn.ConvTranspose2d(8 * width, 4 * width, 4, 2, 1), nn.BatchNorm2d(4 * width), nn.ReLU(),
        nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, channels, 3, 1, 1), nn.Sigmoid(),
    )
    trunk = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    feature_shape = (8 * width, height // 8, width_px // 8)
    return ModelParts(encoder, decoder, ClassifierHead(trunk, 8 * width, num_classes),
                      feature_shape)


# ---------------------------------------------------------------- the defended model


class DefendedModel(nn.Module):
    """[0,1] images -> logits: encoder, head and, when the recipe uses one, the UniG module.

    UniG is re-optimised inside every forward call, so attacks see the whole defence.
    """

    # set by load_defended_model: the file's metadata, and the card beside it (or None)
    info: dict[str, Any]
    card: dict[str, Any] | None

    def __init__(self, encoder: nn.Module, head: ClassifierHead,
                 unig: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.unig = unig

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        if self.unig is None:
            return self.head(z)
        return self.unig(z, self.head)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder features and penultimate features (no UniG): what PCL constrains."""
        z = self.encoder(x)
        return z, self.head.penultimate(z)


if set(list_archs()) != {a.value for a in Arch}:
    raise ImportError(f"architectures {list_archs()} and the vocabulary's "
                      f"{[a.value for a in Arch]} differ: build each one here")
