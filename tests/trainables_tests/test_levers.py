"""The field's levers as recipe values (issue 15): each changes what it claims, and the
reference recipes leave every new loss weight at 0."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import spaces
from trainables.attacks import build_attack
from trainables.attacks.perceptual import feature_distance
from trainables.config import LOSS_WEIGHTS, TrialConfig
from trainables.defense.baselines import BASELINES, baseline_config
from trainables.defense.losses import variation
from trainables.defense.models import DefendedModel
from trainables.errors import ConfigError
from trainables.setting.prepare import Shared
from trainables.setting.setup import resolve_setup
from trainables.train import run_trial
from trainables.vocab import BEST_EPOCH, CLEAN_ACC


def _quiet(_: str) -> None:
    return None


def _config(space: spaces.Space, **values: Any) -> TrialConfig:
    settings = {"epochs": 3, "eval_every": 1, "masking_samples": 0, "pool": ["FGSM"],
                **values}
    return space.trial_config({"meta": "off", "unig": "off"}, **settings)


def test_ema_weights_differ_from_the_raw_ones_and_are_the_ones_evaluated(
        smoke_space: spaces.Space, smoke_shared: Shared) -> None:
    models: list[DefendedModel] = []
    result = run_trial(_config(smoke_space, ema=0.9), shared=smoke_shared, log=_quiet,
                       report=lambda m, p, s, model: models.append(model))
    raw = _config(smoke_space)
    plain = run_trial(raw, shared=smoke_shared, log=_quiet)
    averaged = dict(result.model.encoder.named_parameters())
    live = dict(plain.model.encoder.named_parameters())
    # the same seed trains the same raw weights; the evaluated model is their average
    assert any(not torch.equal(averaged[k], live[k]) for k in live)
    assert models[-1] is result.model
    x = smoke_shared.data.val_x[:64]
    with torch.no_grad():
        assert not torch.equal(result.model(x), plain.model(x))


def test_early_stopping_keeps_the_best_epoch_and_scores_its_weights(
        smoke_space: spaces.Space, smoke_shared: Shared) -> None:
    reports: list[dict[str, float]] = []
    config = _config(smoke_space, early_stopping=True, lr=0.05, epochs=4)
    result = run_trial(config, shared=smoke_shared, log=_quiet,
                       report=lambda m, *_: reports.append(m))
    best = int(result.metrics[BEST_EPOCH])
    assert 1 <= best <= 4 and [r["epoch"] for r in reports] == [1, 2, 3, 4]
    # the kept epoch has the best select_by value among the early evaluations compared
    scores = [r[config.select_by] for r in reports[:-1]]
    if best < 4:
        assert scores[best - 1] == max(scores)
    # the last report scores the kept weights: the model returned is the one it measured
    with torch.no_grad():
        x, y = (t for t in smoke_shared.split("val", samples=config.eval_samples))
        clean = float((result.model(x).argmax(1) == y).float().mean())
    assert clean == pytest.approx(result.metrics[CLEAN_ACC])


def test_variation_is_zero_exactly_when_outputs_do_not_vary() -> None:
    logits = torch.randn(16, 10)
    assert variation(logits, logits.clone()).item() == 0.0
    assert variation(logits, logits + 5.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax
    assert variation(logits, torch.randn(16, 10)).item() > 0


def test_the_perceptual_attack_stays_within_its_feature_bound(
        digits_model: DefendedModel, smoke_shared: Shared) -> None:
    x, y = digits_model.val_x[:64], digits_model.val_y[:64]  # type: ignore[index]
    teacher = smoke_shared.teacher.encoder
    attack = build_attack("Perceptual@medium", digits_model, smoke_shared.setup.threat,
                          num_classes=10, feature_model=teacher)
    x_adv = attack(x, y)
    distance = feature_distance(teacher, x, x_adv)
    assert (distance <= attack.budget * 1.0001).all()
    assert attack.within_budget(x, x_adv).all()
    assert distance.max() > 0.5 * attack.budget  # it used its budget
    with torch.no_grad():
        fooled = (digits_model(x_adv).argmax(1) != y).float().mean()
    assert fooled > 0.2  # and it attacks


def test_the_perceptual_bound_needs_the_trials_teacher(smoke_space: spaces.Space,
                                                       digits_model: DefendedModel) -> None:
    with pytest.raises(ConfigError, match="teacher"):
        build_attack("Perceptual@medium", digits_model, smoke_space.setup().threat,
                     num_classes=10)
    held_out = smoke_space.trial_config(heldout=["PGDL2", "Perceptual@medium"])
    with pytest.raises(ConfigError, match="pool only"):
        resolve_setup(held_out)


def test_random_corruptions_draw_inside_the_box_without_asking_the_model(
        smoke_shared: Shared) -> None:
    calls = {"n": 0}

    class Counting(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return torch.zeros(len(x), 10)

    attack = build_attack("Contrast-Rand@medium", Counting(), smoke_shared.setup.threat,
                          num_classes=10)
    x = smoke_shared.data.val_x[:32]
    y = smoke_shared.data.val_y[:32]
    x_adv = attack.craft(x, y)
    assert calls["n"] == 0 and not torch.equal(x_adv, x)
    assert attack.within_budget(x, x_adv).all()


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_leave_every_loss_weight_they_do_not_use_at_zero(name: str) -> None:
    config = baseline_config(TrialConfig(), name)
    used = set(BASELINES[name].weights)
    assert all(getattr(config, w) == 0 for w in LOSS_WEIGHTS if w not in used)
    assert {"w_vr", "w_pcl", "w_feat", "w_cyc"} - used <= {
        w for w in LOSS_WEIGHTS if getattr(config, w) == 0}


@pytest.mark.parametrize(("changes", "message"), [
    ({"optimizer": "rmsprop"}, "optimizer='rmsprop' is not allowed; choose one of adam, adamw"),
    ({"lr_schedule": "step"}, "lr_schedule='step' is not allowed"),
    ({"weight_decay": 0.5}, "weight_decay=0.5 is out of range"),
    ({"ema": 1.0}, "ema=1.0 is out of range"),
    ({"label_smoothing": -0.1}, "label_smoothing=-0.1 is out of range"),
    ({"w_vr": -1}, "w_vr=-1.0 is out of range"),
    ({"train_eps_scale_l2": 20}, "train_eps_scale_l2=20.0 is out of range"),
])
def test_a_bad_lever_value_is_one_clear_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        TrialConfig.from_dict(changes)
