"""The pool crafted in lockstep (trainables/attacks/stacked.py) against the same attacks
crafted one by one: the same examples up to float round-off, and a trial trained either way
scores the same within a bound."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import spaces
from trainables.attacks import build_attack
from trainables.attacks.stacked import StackedPool
from trainables.defense.models import DefendedModel
from trainables.setting.prepare import Shared
from trainables.train import run_trial

POOL = ["FGSM", "PGD", "MIFGSM", "TPGD", "PGDL2", "Spatial@medium"]


def _pool(model: DefendedModel, smoke_shared: Shared) -> list[Any]:
    setup = smoke_shared.setup
    return [build_attack(name, model, setup.threat, num_classes=10, train_steps=5, seed=0)
            for name in POOL]


def test_lockstep_examples_equal_the_one_by_one_ones(digits_model: DefendedModel,
                                                      smoke_shared: Shared) -> None:
    x, y = digits_model.val_x[:64], digits_model.val_y[:64]  # type: ignore[index]
    torch.manual_seed(3)  # fresh attacks each way: a corruption attack keeps its own generator
    one_by_one = [attack.craft(x, y) for attack in _pool(digits_model, smoke_shared)]
    torch.manual_seed(3)
    stacked = StackedPool(_pool(digits_model, smoke_shared), digits_model).craft(x, y)
    assert len(stacked) == len(POOL)
    for name, a, b in zip(POOL, one_by_one, stacked, strict=True):
        assert a.shape == b.shape
        # sign steps flip only where a gradient entry is (numerically) zero either way
        differing = ((a - b).abs() > 1e-5).float().mean().item()
        assert differing < 0.01, (name, differing)
        with torch.no_grad():
            agree = (digits_model(a).argmax(1) == digits_model(b).argmax(1)).float().mean()
        assert agree >= 0.98, name


def test_only_the_stackable_attacks_are_stacked(digits_model: DefendedModel,
                                                smoke_shared: Shared) -> None:
    kinds = StackedPool(_pool(digits_model, smoke_shared), digits_model).kinds
    assert [k is not None for k in kinds] == [True, True, True, True, True, False]


def test_a_trial_crafted_in_lockstep_scores_like_one_crafted_one_by_one(
        smoke_space: spaces.Space, smoke_shared: Shared) -> None:
    # inexact lever: float round-off in the passes grows through training, so bounded
    def final(stack: bool) -> dict[str, float]:
        config = smoke_space.trial_config(
            {"meta": "off"}, epochs=2, eval_every=1, stack_pool=stack,
            pool=["FGSM", "PGD", "MIFGSM", "TPGD"], pool_combine="worst", masking_samples=0)
        return run_trial(config, shared=smoke_shared, log=lambda _: None).metrics

    stacked, separate = final(True), final(False)
    assert stacked["train/loss"] == pytest.approx(separate["train/loss"], rel=0.02)
    for key in stacked:
        if key.endswith("/acc") or key.endswith("_acc"):
            assert stacked[key] == pytest.approx(separate[key], abs=0.06), key
