"""The non-Lp families: registered with their companions, inside their budget, in [0, 1],
repeatable, strong at medium on a standard model, refused with one clear line where they
cannot run, and (Spatial) in agreement with foolbox's implementation of the same threat."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.trainables_tests.coupled import Coupled
from trainables.attacks import attack_spec, build_attack, check_attack_fits, list_families
from trainables.attacks.specs import CORRUPTIONS, PERCEPTUAL
from trainables.attacks.threat import ThreatModel
from trainables.attacks.unforeseen import FAMILIES, TransformAttack, warp
from trainables.defense.models import DefendedModel
from trainables.errors import ConfigError
from trainables.setting.setup import dataset_info

# Families that mean little on 8x8 digits (README, "Unforeseen attacks"): tested on mnist5k
ON_MNIST = {"Blur"}
POINTS = 200


def _standard(name: str, digits_model: DefendedModel, mnist_model: DefendedModel
              ) -> tuple[DefendedModel, torch.Tensor, torch.Tensor, ThreatModel]:
    dataset = "mnist5k" if name in ON_MNIST else "digits"
    model = mnist_model if dataset == "mnist5k" else digits_model
    x, y = model.val_x[:POINTS], model.val_y[:POINTS]  # type: ignore[attr-defined]
    return model, x, y, dataset_info(dataset).threat_model


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def test_at_least_eight_families_each_with_a_gradient_free_companion() -> None:
    families = list(CORRUPTIONS)
    assert len(families) >= 8
    assert set(families) == set(FAMILIES)
    assert set(list_families()) == {*families, PERCEPTUAL}  # the other non-Lp threat model
    for family in families:
        assert attack_spec(f"{family}@medium").kind == "transform"
        companion = attack_spec(f"{family}-RS@medium")
        assert companion.kind == "search" and companion.family == family
    assert attack_spec("Spatial-Grid@low").family == "Spatial"


@pytest.mark.slow
@pytest.mark.parametrize("family", list(CORRUPTIONS))
def test_family_budget_range_determinism_and_strength(
        family: str, digits_model: DefendedModel, mnist_model: DefendedModel) -> None:
    model, x, y, threat = _standard(family, digits_model, mnist_model)
    name = f"{family}@medium"
    attack = build_attack(name, model, threat, num_classes=10, seed=0)
    assert isinstance(attack, TransformAttack)
    x_adv = attack(x, y)
    # inside the budget: every kept latent in its box, and re-applying it gives x_adv
    assert attack.last_latents is not None
    assert attack.corruption.inside(attack.last_latents).all()
    assert attack.within_budget(x, x_adv).all()
    # in range, and not the clean input
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().amax() > 0
    # seeded: the same seed gives the same examples, another seed others
    again = build_attack(name, model, threat, num_classes=10, seed=0)(x, y)
    assert torch.equal(again, x_adv)
    other = build_attack(name, model, threat, num_classes=10, seed=1)(x, y)
    assert not torch.equal(other, x_adv)
    # at medium a standard model loses at least 30 points
    clean, robust = _accuracy(model, x, y), _accuracy(model, x_adv, y)
    assert clean - robust >= 0.30, f"{name}: clean {clean:.3f}, attacked {robust:.3f}"


@pytest.mark.parametrize("family", list(CORRUPTIONS))
def test_a_success_outside_the_budget_does_not_count(family: str, digits_model: DefendedModel
                                                    ) -> None:
    x, y = digits_model.val_x[:16], digits_model.val_y[:16]  # type: ignore[attr-defined]
    threat = dataset_info("digits").threat_model
    attack = build_attack(f"{family}@low", digits_model, threat, num_classes=10, seed=0,
                          steps=2)
    assert isinstance(attack, TransformAttack)
    x_adv = attack(x, y)
    assert attack.within_budget(x, x_adv).all()
    assert attack.last_latents is not None
    boxes = attack.corruption.boxes()  # every latent pushed above its box
    too_far = [latent + box.high - box.low + 1
               for latent, box in zip(attack.last_latents, boxes, strict=True)]
    attack.last_latents = too_far
    with torch.no_grad():
        x_far = attack.corruption.apply(x, too_far).clamp(0, 1)
    assert not attack.within_budget(x, x_far).any()
    attack.last_latents = copy.deepcopy(too_far)
    assert not attack.within_budget(x, x_adv).any()  # the examples do not match the latents


@pytest.mark.parametrize(("name", "message"), [
    ("Elastic", "needs a distortion level: Elastic@low, Elastic@medium, Elastic@high"),
    ("Elastic@extreme", "level 'extreme' does not exist; choose low, medium, high"),
    ("Kaleidoscope@medium", "unknown attack 'Kaleidoscope'"),
    ("PGD@high", "an Lp attack takes no level"),
])
def test_bad_attack_names_are_one_clear_line(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        attack_spec(name)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_level_the_threat_model_lacks_and_a_budget_above_its_ceiling() -> None:
    bare = ThreatModel("Linf", {"Linf": 0.2})
    with pytest.raises(ConfigError,
                       match=r"no Snow budget at level low; add threat_model\.levels"):
        check_attack_fits("Snow@low", channels=1, num_classes=10, threat=bare, dataset="digits")
    blur = ThreatModel("Linf", {"Linf": 0.2}, {"Blur": {"medium": 1.5}})
    with pytest.raises(ConfigError, match=r"Blur budget 1\.5 is above its ceiling 1"):
        check_attack_fits("Blur@medium", channels=1, num_classes=10, threat=blur,
                          dataset="digits")
    with pytest.raises(ConfigError, match="must grow from low to high"):
        ThreatModel("Linf", {"Linf": 0.2}, {"Fog": {"low": 0.5, "high": 0.2}}).validate(
            (1, 8, 8))


# ---------------------------------------------------------------- foolbox agreement


@pytest.mark.slow
@pytest.mark.parametrize("degrees", [15.0, 30.0])
def test_spatial_grid_agrees_with_foolbox(degrees: float, digits_model: DefendedModel) -> None:
    """foolbox's SpatialAttack (a worst-of-k grid of rotations, the same threat model) and ours
    on the same standard model and points: within 3 points."""
    import foolbox

    x, y = digits_model.val_x[:300], digits_model.val_y[:300]  # type: ignore[attr-defined]
    fmodel = foolbox.PyTorchModel(digits_model.eval(), bounds=(0, 1))
    theirs = foolbox.attacks.SpatialAttack(max_translation=0, max_rotation=degrees,
                                           num_translations=1, num_rotations=5,
                                           grid_search=True)
    _, _, success = theirs(fmodel, x, foolbox.criteria.Misclassification(y))
    foolbox_acc = 1 - float(success.float().mean())
    # our grid: the same 5 rotations about the centre, bilinear, zeros outside
    worst = torch.ones(len(y), dtype=torch.bool)
    for angle in torch.linspace(-degrees, degrees, 5).tolist():
        rotated = warp(x, torch.full((len(x),), angle), torch.zeros(len(x), 2))
        with torch.no_grad():
            worst &= digits_model(rotated.clamp(0, 1)).argmax(1) == y
    ours = float(worst.float().mean())
    assert abs(ours - foolbox_acc) <= 0.03, (ours, foolbox_acc)
    # and the registered grid attack at this budget finds at least what rotations alone find
    threat = ThreatModel("Linf", {"Linf": 0.2}, {"Spatial": {"medium": degrees}})
    grid = build_attack("Spatial-Grid@medium", digits_model, threat, num_classes=10)
    assert _accuracy(digits_model, grid(x, y), y) <= ours + 1e-9


def _judged(model: torch.nn.Module) -> list[int]:
    """Records the batch size of every forward call of `model`."""
    sizes: list[int] = []
    model.register_forward_hook(lambda _m, args, _out: sizes.append(len(args[0])))
    return sizes


@pytest.mark.parametrize("name", [*(f"{f}@medium" for f in CORRUPTIONS), "Elastic-RS@medium",
                                  "Spatial-Grid@medium"])
def test_early_exit_judges_only_unfooled_samples_and_finds_the_same_examples(
        name: str, digits_model: DefendedModel, mnist_model: DefendedModel) -> None:
    # A fooled sample keeps its first fooling latents, so dropping it from later steps changes
    # nothing but round-off (a smaller batch): bounded here at 2% of the points' outcomes.
    model, x, y, threat = _standard(name.split("@")[0].split("-")[0], digits_model,
                                    mnist_model)
    x, y = x[:96], y[:96]
    early, whole = copy.deepcopy(model), Coupled(copy.deepcopy(model))
    sizes_early, sizes_whole = _judged(early), _judged(whole.model)
    attack = build_attack(name, early, threat, num_classes=10, seed=0, steps=6)
    x_early = attack(x, y)
    x_whole = build_attack(name, whole, threat, num_classes=10, seed=0, steps=6)(x, y)
    with torch.no_grad():
        fooled_early, fooled_whole = model(x_early).argmax(1) != y, model(x_whole).argmax(1) != y
    assert fooled_early.any()
    assert (fooled_early != fooled_whole).float().mean() <= 0.02
    # and the same examples: the kept latents of the fooled and of the others alike
    same = (x_early - x_whole).flatten(1).abs().amax(1) <= 1e-4
    assert same.float().mean() >= 0.98
    assert attack.within_budget(x, x_early).all()
    assert sum(sizes_early) < sum(sizes_whole)  # fewer samples judged
    assert set(sizes_whole) == {len(x)}


def test_a_unig_model_couples_its_batch(digits_model: DefendedModel) -> None:
    from trainables.attacks.base import couples_batch
    from trainables.defense.unig import UniG

    assert not couples_batch(digits_model)
    with_unig = DefendedModel(digits_model.encoder, digits_model.head, UniG("per_sample"))
    assert couples_batch(with_unig)
