"""The small CNN's first convolution (ThinConv2d) gives nn.Conv2d's outputs and weight gradients
bit for bit, and its input gradient to float32 round-off, first and second order."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.attacks import build_attack
from trainables.attacks.threat import ThreatModel
from trainables.defense.models import DefendedModel, ThinConv2d, build_arch, with_torch_layers
from trainables.scoring.evaluate import clean_correct, robust_mask
from trainables.vocab import Norm


def _pair(cin: int = 1, cout: int = 8, **kwargs: object) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    ours = ThinConv2d(cin, cout, 3, **kwargs)  # type: ignore[arg-type]
    theirs = nn.Conv2d(cin, cout, 3, **kwargs)  # type: ignore[arg-type]
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("cin", [1, 3])
def test_outputs_and_weight_gradients_are_bitwise_the_input_gradient_to_round_off(cin: int
                                                                                   ) -> None:
    ours, theirs = _pair(cin, padding=1)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, cin, 12, 10, generator=gen)
    upstream = torch.randn(5, 8, 12, 10, generator=gen)
    found = []
    for conv in (ours, theirs):
        leaf = x.clone().requires_grad_(True)
        out = conv(leaf)
        assert conv.bias is not None
        grads = torch.autograd.grad(out, [leaf, conv.weight, conv.bias], upstream)
        found.append((out.detach(), *grads))
    (out_a, dx_a, dw_a, db_a), (out_b, dx_b, dw_b, db_b) = found
    assert torch.equal(out_a, out_b)
    assert torch.equal(dw_a, dw_b) and torch.equal(db_a, db_b)
    assert _close(dx_a, dx_b)
    assert not torch.equal(dx_a, torch.zeros_like(dx_a))


def test_second_order_gradients_match_through_the_input_gradient() -> None:
    # what UniG and the meta step take: a loss on the input gradient, differentiated w.r.t.
    # the weights and the upstream gradient
    ours, theirs = _pair(padding=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(4, 1, 8, 8, generator=gen)
    upstream = torch.randn(4, 8, 8, 8, generator=gen)
    found = []
    for conv in (ours, theirs):
        leaf, grad = x.clone().requires_grad_(True), upstream.clone().requires_grad_(True)
        (dx,) = torch.autograd.grad(conv(leaf), leaf, grad, create_graph=True)
        penalty = (dx * torch.linspace(-1, 1, dx.numel()).view_as(dx)).square().sum()
        found.append(torch.autograd.grad(penalty, [grad, conv.weight]))
    for a, b in zip(*found, strict=True):
        assert _close(a, b)


def test_without_an_input_gradient_or_with_strides_it_is_nn_conv2d() -> None:
    ours, theirs = _pair(padding=1)
    x = torch.rand(3, 1, 9, 9)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert torch.equal(ours(x), theirs(x))  # the input needs no gradient: PyTorch's path
    strided, plain = _pair(stride=2)
    leaf = x.clone().requires_grad_(True)
    (dx_a,) = torch.autograd.grad(strided(leaf).sum(), leaf)
    (dx_b,) = torch.autograd.grad(plain(leaf).sum(), leaf)
    assert torch.equal(dx_a, dx_b)


def test_the_small_cnn_uses_it_first_and_with_torch_layers_takes_it_out() -> None:
    parts = build_arch("small_cnn", (1, 28, 28), 10)
    first = next(parts.encoder.children())
    assert isinstance(first, ThinConv2d)
    plain = with_torch_layers(copy.deepcopy(parts.encoder))
    assert not any(isinstance(m, ThinConv2d) for m in plain.modules())
    kept = with_torch_layers(copy.deepcopy(parts.encoder), convolution=False)
    assert isinstance(next(kept.children()), ThinConv2d)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(parts.encoder(x), plain(x))


def test_pgd_breaks_the_same_points_of_a_small_cnn() -> None:
    """The attack-level bound: PGD on the small CNN with and without it; the input gradients'
    round-off may move a step's sign where a gradient entry is near 0, so a few points may
    change their fate, never more than 2% of them."""
    torch.manual_seed(3)
    parts = build_arch("small_cnn", (1, 28, 28), 10)
    ours = DefendedModel(parts.encoder, parts.head).eval()
    theirs = with_torch_layers(copy.deepcopy(ours))
    x, y = torch.rand(200, 1, 28, 28), torch.randint(0, 10, (200,))
    with torch.no_grad():  # labels the model gets right, so the attack has work to do
        y = ours(x).argmax(1)
    threat = ThreatModel(Norm.LINF, {Norm.LINF: 0.04})
    masks = []
    for model in (ours, theirs):
        attack = build_attack("PGD", model, threat, num_classes=10, seed=0)
        correct = clean_correct(model, x, y, 64)
        masks.append(robust_mask(model, attack, x, y, correct, batch_size=64, seed=0))
    assert 0.05 < masks[1].float().mean() < 0.95  # the attack breaks some points, not all
    assert (masks[0] != masks[1]).float().mean() <= 0.02
    assert F.cross_entropy(ours(x), y).item() == F.cross_entropy(theirs(x), y).item()


def test_the_weight_gradients_derivative_wrt_the_input_is_nn_conv2ds() -> None:
    # what a loss on the weight gradient differentiated w.r.t. the images takes (the
    # convolution on a detached input alone would drop it)
    ours, theirs = _pair(padding=1)
    x0 = torch.rand(2, 1, 5, 6, generator=torch.Generator().manual_seed(4))
    found = []
    for conv in (ours, theirs):
        x = x0.clone().requires_grad_(True)
        loss = torch.tanh(conv(x)).square().sum()
        (dw,) = torch.autograd.grad(loss, conv.weight, create_graph=True)
        (d2,) = torch.autograd.grad(dw.square().sum(), x)
        found.append((dw.detach(), d2))
    assert torch.equal(found[0][0], found[1][0])
    assert _close(found[0][1], found[1][1])
