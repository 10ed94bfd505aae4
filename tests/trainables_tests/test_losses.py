"""Loss values on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.defense.losses import (
    channel_kl,
    feature_consistency,
    pixel_consistency,
    prediction_kl,
    prototype_conformity,
)


def test_channel_kl_matches_hand_computed_value() -> None:
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # p_t = (1/4, 3/4)
    student = torch.tensor([[0.0, 0.0]])  # p_s = (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(channel_kl(teacher, student)) == pytest.approx(expected, abs=1e-6)
    # the same numbers as a 1 x 2 x 1 x 1 feature map: softmax runs over the channel axis
    assert float(channel_kl(teacher.view(1, 2, 1, 1), student.view(1, 2, 1, 1))) == (
        pytest.approx(expected, abs=1e-6))


def test_channel_kl_is_zero_for_equal_maps_and_averages_positions() -> None:
    maps = torch.randn(3, 5, 2, 2)
    assert float(channel_kl(maps, maps)) == pytest.approx(0.0, abs=1e-6)
    teacher = torch.zeros(1, 2, 1, 2)
    teacher[0, 1, 0, 1] = math.log(3.0)  # second position differs, first is equal
    student = torch.zeros(1, 2, 1, 2)
    one_position = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert float(channel_kl(teacher, student)) == pytest.approx(one_position / 2, abs=1e-6)


def test_channel_kl_is_a_proper_kl_unlike_the_official_cyclic_term() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(8, 6, 3, 3), torch.randn(8, 6, 3, 3)
    ours = float(channel_kl(teacher, student))
    # MID's code passes log-probabilities as KLDivLoss's (probability) target: the "target"
    # is negative, so the term is no divergence at all (torch now returns NaN for it)
    official = float(nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(student, 1),
                                                         torch.log_softmax(teacher, 1)))
    assert ours > 0
    assert math.isnan(official)


def test_feature_pixel_and_prediction_terms() -> None:
    t = torch.zeros(2, 3)
    s = torch.ones(2, 3)
    assert float(feature_consistency(t, s, "mse")) == pytest.approx(1.0)
    assert float(feature_consistency(t, t, "kl")) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="feature loss"):
        feature_consistency(t, s, "cosine")
    assert float(pixel_consistency(torch.full((1, 1, 2, 2), 0.25), torch.zeros(1, 1, 2, 2))) == (
        pytest.approx(0.25))
    logits_t = torch.tensor([[2.0, 0.0]])
    logits_s = torch.tensor([[0.0, 2.0]])
    at_two = float(prediction_kl(logits_t, logits_s, temperature=2.0))
    assert at_two == pytest.approx(4 * float(channel_kl(logits_t / 2, logits_s / 2)), rel=1e-6)


def _two_prototypes() -> torch.Tensor:
    # D = 4, so distances are ||a - b|| / 2; the prototypes are 1.0 apart
    return torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])


def test_pcl_parts_match_hand_computed_values() -> None:
    features = torch.tensor([[0.2, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0])
    total, parts = prototype_conformity(features, labels, _two_prototypes(), margin=1.0)
    assert float(parts["pull"]) == pytest.approx(0.1)  # 0.2 / 2
    assert float(parts["push"]) == pytest.approx(0.1)  # 1.0 - 1.8 / 2
    assert float(parts["separation"]) == pytest.approx(1.0)  # 2 * 1.0 - 1.0
    assert float(total) == pytest.approx(1.2)
    total, parts = prototype_conformity(features, labels, _two_prototypes(), margin=0.4)
    assert float(parts["push"]) == 0.0 and float(parts["separation"]) == 0.0
    assert float(total) == pytest.approx(0.1)


def test_pcl_is_bounded_below_where_the_released_loss_is_not() -> None:
    features = torch.tensor([[500.0, 0.0, 0.0, 0.0], [0.0, -800.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1])
    prototypes = torch.tensor([[500.0, 0.0, 0.0, 0.0], [0.0, -800.0, 0.0, 0.0]])
    total, _ = prototype_conformity(features, labels, prototypes, margin=1.0)
    assert float(total) == pytest.approx(0.0, abs=1e-4)
    # pushing away without a hinge (the released contrastive term) rewards any distance
    unbounded = -torch.cdist(features, prototypes)[0, 1]
    assert float(unbounded) < -900


def test_pcl_gradients_are_finite_where_a_distance_is_zero() -> None:
    # a lone sample equal to its prototype, and two prototypes that coincide
    prototypes = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    features = torch.tensor([[1.0, 0.0]], requires_grad=True)
    total, _ = prototype_conformity(features, torch.tensor([0]), prototypes, margin=1.0)
    total.backward()
    assert prototypes.grad is not None and features.grad is not None
    assert torch.isfinite(prototypes.grad).all() and torch.isfinite(features.grad).all()


def test_pcl_gradient_pulls_to_own_prototype_and_pushes_from_others() -> None:
    features = torch.tensor([[1.6, 0.0, 0.0, 0.0]], requires_grad=True)  # nearer prototype 1
    total, _ = prototype_conformity(features, torch.tensor([0]), _two_prototypes(), margin=1.0)
    total.backward()
    assert features.grad is not None
    assert float(features.grad[0, 0]) > 0  # descent moves it toward 0: own prototype, away from 1
