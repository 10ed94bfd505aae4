"""The small CNN's own 2x2 max-pool gives nn.MaxPool2d(2)'s answers, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.defense.models import DefendedModel, MaxPool2x2, build_arch, with_torch_layers


def _inputs(seed: int) -> torch.Tensor:
    """ReLU outputs (windows of zeros: ties) with a few positive ties planted."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(6, 5, 8, 10, generator=gen))
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = x[0, 0, 1, 0] = 2.5  # a three-way tie for the max
    x[1, 2, 4:6, 6:8] = 0.75  # a four-way tie
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outputs_gradients_and_second_order_gradients_are_the_originals(seed: int) -> None:
    x = _inputs(seed)
    ours, theirs = MaxPool2x2(), nn.MaxPool2d(2)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    upstream = torch.randn(6, 5, 4, 5, generator=torch.Generator().manual_seed(seed + 10))
    found = []
    for pool in (ours, theirs):
        leaf, grad = x.clone().requires_grad_(True), upstream.clone().requires_grad_(True)
        out = pool(leaf)
        (dx,) = torch.autograd.grad(out, leaf, grad, create_graph=True)
        # second order, as UniG and the meta step take it: through the input gradient
        (ddgrad,) = torch.autograd.grad((dx * torch.linspace(-1, 1, dx.numel()).view_as(dx))
                                        .sum(), grad)
        found.append((out.detach(), dx.detach(), ddgrad))
    for a, b in zip(*found, strict=True):
        assert torch.equal(a, b)


def test_odd_sides_fall_back_to_the_original() -> None:
    x = torch.rand(2, 3, 7, 9)
    assert torch.equal(MaxPool2x2()(x), F.max_pool2d(x, 2))


def test_a_training_step_of_the_small_cnn_is_bitwise_the_same() -> None:
    torch.manual_seed(0)
    parts = build_arch("small_cnn", (1, 28, 28), 10)
    ours = DefendedModel(parts.encoder, parts.head)
    theirs = with_torch_layers(copy.deepcopy(ours), convolution=False)
    assert sum(isinstance(m, nn.MaxPool2d) for m in theirs.modules()) == 2
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for model in (ours, theirs):
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            leaf = x.clone().requires_grad_(True)  # an input-gradient step, then a weight step
            (dx,) = torch.autograd.grad(F.cross_entropy(model(leaf), y), leaf)
            optimiser.zero_grad()
            F.cross_entropy(model((x + 0.1 * dx.sign()).clamp(0, 1)), y).backward()
            optimiser.step()
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_small_cnn_pools_before_its_relu_and_the_order_changes_no_bit() -> None:
    """max and ReLU commute: pooling first gives the user's model (ReLU, then pool) outputs,
    input gradients and second-order gradients bit for bit, and the same state dict keys
    (models and teachers saved before the reorder load as they were)."""
    torch.manual_seed(1)
    parts = build_arch("small_cnn", (1, 28, 28), 10)
    kinds = [type(m) for m in parts.encoder]
    assert kinds == [type(parts.encoder[0]), MaxPool2x2, nn.ReLU, nn.Conv2d, MaxPool2x2,
                     nn.ReLU]
    ours = DefendedModel(parts.encoder, parts.head)
    theirs = with_torch_layers(copy.deepcopy(ours), pooling=False, convolution=False)
    assert [type(m) for m in theirs.encoder] == [kinds[0], nn.ReLU, MaxPool2x2, nn.Conv2d,
                                                 nn.ReLU, MaxPool2x2]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.rand(8, 1, 28, 28)
    x[:2, :, :10] = 0.0  # blank rows: equal convolution outputs, ties in every window
    y = torch.randint(0, 10, (8,))
    found = []
    for model in (ours, theirs):
        leaf = x.clone().requires_grad_(True)
        out = model(leaf)
        (dx,) = torch.autograd.grad(F.cross_entropy(out, y), leaf, create_graph=True)
        params = [p for p in model.parameters() if p.requires_grad]
        second = torch.autograd.grad((dx * dx).sum(), params)  # the meta step's kind
        found.append((out.detach(), dx.detach(), *second))
    for a, b in zip(*found, strict=True):
        assert torch.equal(a, b)
