"""UniG: the inner steps make the batch's input gradients alike; it runs in any caller mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables.defense.models import DefendedModel
from trainables.defense.unig import UniG
from trainables.errors import ConfigError


def _input_gradients(model: DefendedModel, unig: UniG, x: torch.Tensor,
                     multiplier: torch.Tensor | None) -> torch.Tensor:
    """d CE(pseudo-label) / d x with UniG's multiplier held at `multiplier` (None: no UniG)."""
    x = x.clone().requires_grad_(True)
    features, rest = unig.split(model.encoder(x), model.head)
    logits = rest(features if multiplier is None else multiplier * features)
    loss = F.cross_entropy(logits, logits.argmax(1).detach(), reduction="sum")
    (grads,) = torch.autograd.grad(loss, x)
    return grads.flatten(1)


def _dissimilarity(grads: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> float:
    """UniG's criterion: summed L2 distance of consecutive min-max normalised gradients."""
    normed = (grads - low) / (high - low)
    return float((normed[1:] - normed[:-1]).norm(dim=1).sum())


@pytest.mark.parametrize(("granularity", "steps", "lr", "factor"), [
    ("per_sample", 1, 10.0, 0.5),  # the paper's CIFAR-10 setting
    ("per_channel", 1, 10.0, 0.5),
    # one multiplier for all samples can do less (about 0.8 on the digits teacher); lr 10
    # overshoots it
    ("shared", 10, 0.1, 0.9),
])
def test_inner_steps_make_input_gradients_alike(digits_model: DefendedModel, granularity: str,
                                                steps: int, lr: float, factor: float) -> None:
    torch.manual_seed(0)
    x = digits_model.val_x[:64]  # type: ignore[attr-defined]
    unig = UniG(granularity, steps=steps, lr=lr)
    with torch.no_grad():
        features, rest = unig.split(digits_model.encoder(x), digits_model.head)
    multiplier = unig.optimise(features, rest)
    before = _input_gradients(digits_model, unig, x, None)
    after = _input_gradients(digits_model, unig, x, multiplier)
    low, high = before.min(), before.max()  # one normalisation for both, as UniG's loss uses
    assert _dissimilarity(after, low, high) < factor * _dissimilarity(before, low, high)
    assert float(multiplier.min()) >= 1 - unig.delta - 1e-6
    assert float(multiplier.max()) <= 1 + unig.delta + 1e-6


def test_multiplier_shapes_follow_the_granularity(digits_model: DefendedModel) -> None:
    x = digits_model.val_x[:8]  # type: ignore[attr-defined]
    with torch.no_grad():
        z = digits_model.encoder(x)
    expected = {"shared": (1, 200), "per_sample": (8, 200), "per_channel": (8, z.shape[1], 1, 1)}
    for granularity, shape in expected.items():
        unig = UniG(granularity)
        features, rest = unig.split(z, digits_model.head)
        assert tuple(unig.optimise(features, rest).shape) == shape


@pytest.mark.parametrize("granularity", ["shared", "per_sample", "per_channel"])
def test_works_under_no_grad_inference_mode_and_attacks(digits_model: DefendedModel,
                                                        granularity: str) -> None:
    model = DefendedModel(digits_model.encoder, digits_model.head, UniG(granularity)).eval()
    x = digits_model.val_x[:16]  # type: ignore[attr-defined]
    with torch.no_grad():
        assert model(x).shape == (16, 10)
    with torch.inference_mode():
        assert model(x).shape == (16, 10)
    # an attack needs d logits / d x through the whole defended model
    x_attack = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_attack), digits_model.val_y[:16])  # type: ignore[attr-defined]
    (grad,) = torch.autograd.grad(loss, x_attack)
    assert float(grad.abs().sum()) > 0
    # the inner problem never leaks into the frozen network's parameter gradients
    assert all(p.grad is None for p in model.parameters())


def test_batch_of_one_and_clean_accuracy_kept(digits_model: DefendedModel) -> None:
    torch.manual_seed(0)
    model = DefendedModel(digits_model.encoder, digits_model.head, UniG("per_sample")).eval()
    x, y = digits_model.val_x[:256], digits_model.val_y[:256]  # type: ignore[attr-defined]
    assert model(x[:1]).shape == (1, 10)
    with torch.no_grad():
        plain = (digits_model(x).argmax(1) == y).float().mean()
        defended = (model(x).argmax(1) == y).float().mean()
    assert float(defended) >= float(plain) - 0.02  # UniG must not cost clean accuracy


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="granularity"):
        UniG("per_pixel")
    with pytest.raises(ConfigError, match="unig_delta"):
        UniG("shared", delta=1.5)
    with pytest.raises(ConfigError, match="unig_steps"):
        UniG("shared", steps=0)
