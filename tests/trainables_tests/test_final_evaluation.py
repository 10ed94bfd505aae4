"""The final evaluation's AutoAttack is the official code (pyautoattack), run as such."""

from __future__ import annotations

from typing import Any

import pyautoattack
import pytest
import torch

from trainables.defense.models import DefendedModel
from trainables.defense.unig import UniG
from trainables.scoring.final import autoattack_robust
from trainables.setting.prepare import Shared


def test_autoattack_is_the_official_code_and_its_dynamic_check_starts_clean(
        digits_model: DefendedModel, smoke_shared: Shared) -> None:
    x, y = digits_model.val_x[:8], digits_model.val_y[:8]  # type: ignore[index]
    unig = DefendedModel(digits_model.encoder, digits_model.head, UniG("per_sample"))
    # pyautoattack's own check, once on a model with a test-time optimisation, leaves its
    # module-level call counter raised: every later model would be "dynamic" without a reset
    pyautoattack.checks.check_dynamic(unig, x)
    assert any(c > 0 for c in pyautoattack.checks.funcs.values())
    found = autoattack_robust(digits_model, x, y, smoke_shared.setup.threat, num_classes=10,
                              seed=0, batch_size=8)
    assert found is not None
    robust, notes, version = found
    assert version == "standard" and robust.dtype == torch.bool and len(robust) == 8
    assert not any("dynamic" in note for note in notes), notes
    assert pyautoattack.AutoAttack.__module__ == "pyautoattack.autoattack"


def test_the_adaptive_union_attacks_only_points_still_standing(
        digits_model: DefendedModel, smoke_shared: Shared) -> None:
    """Early exit: a point the plain attack already broke is not attacked again by BPDA or the
    module-free attack; the union is what attacking every point and AND-ing would give, up to
    the attacks' randomness (the random starts of fewer points), which this bounds."""
    from trainables.attacks import build_attack
    from trainables.scoring.evaluate import clean_correct, evaluate_groups, robust_mask
    from trainables.scoring.masking import StraightThrough, adaptive_and

    model = DefendedModel(digits_model.encoder, digits_model.head, UniG("per_sample")).eval()
    x, y = digits_model.val_x[:96], digits_model.val_y[:96]  # type: ignore[index]
    threat = smoke_shared.setup.threat
    plain = build_attack("PGDL2", model, threat, num_classes=10, strength=2.0, seed=0)
    _, masks = evaluate_groups(model, x, y, {"heldout": [plain]}, split="test",
                               batch_size=64, seed=0)
    early = adaptive_and(model, {"PGDL2": masks["heldout/PGDL2"]}, x, y, threat,
                         num_classes=10, strength=2.0, batch_size=64, seed=0)["PGDL2"]
    assert not (early & ~masks["heldout/PGDL2"]).any()  # never more robust than plain
    base = DefendedModel(digits_model.encoder, digits_model.head).eval()
    full = masks["heldout/PGDL2"].clone()
    correct = clean_correct(model, x, y, 64)
    for via in (StraightThrough(model, base), base):
        attack = build_attack("PGDL2", via, threat, num_classes=10, strength=2.0, seed=0)
        full &= robust_mask(model, attack, x, y, correct, batch_size=64, seed=0)
    assert abs(early.float().mean() - full.float().mean()) <= 0.08


def test_each_seed_runs_autoattack_on_its_own_block_of_points() -> None:
    from trainables.config import TrialConfig
    from trainables.scoring.final import autoattack_points

    blocks = [set(autoattack_points(TrialConfig(seed=s, autoattack_samples=100), 449).tolist())
              for s in (0, 1, 2)]
    assert all(len(b) == 100 for b in blocks)
    assert not (blocks[0] & blocks[1] or blocks[1] & blocks[2] or blocks[0] & blocks[2])
    for seed in range(50):  # always a whole block inside the points
        block = autoattack_points(TrialConfig(seed=seed, autoattack_samples=100), 449)
        assert len(set(block.tolist())) == 100 and block.min() >= 0 and block.max() < 449
    assert autoattack_points(TrialConfig(seed=7, autoattack_samples=0), 64).tolist() == list(
        range(64))
    # every recipe of a seed on the same points (paired), whatever else differs
    assert autoattack_points(TrialConfig(seed=1, autoattack_samples=100, lr=0.01), 449).equal(
        autoattack_points(TrialConfig(seed=1, autoattack_samples=100), 449))


def test_autoattack_points_are_not_one_class_of_a_class_sorted_split() -> None:
    """mnist5k's test split is in the data set's order, sorted by class: a block of its
    first points was all zeros and ones, and AutoAttack scored those digits only."""
    from trainables.config import TrialConfig
    from trainables.scoring.final import autoattack_points

    labels = torch.arange(10).repeat_interleave(150)  # 1,500 points sorted by class
    for seed in (0, 1, 2):
        block = autoattack_points(TrialConfig(seed=seed, autoattack_samples=100), len(labels))
        counts = torch.bincount(labels[block], minlength=10)
        assert (counts > 0).all() and counts.max() <= 25, (seed, counts.tolist())


def test_a_final_task_gives_the_same_answer_twice(smoke_space: object,
                                                  smoke_shared: Shared) -> None:
    """What the final comparison's verdict is made of, train and evaluate one recipe and seed,
    is bitwise repeatable on the CPU: two runs of one final comparison (its winner fixed)
    give the same table and verdict. (The search before it is not: with 2 trials at once,
    which reports first moves ASHA's cutoffs and the sampler's next proposal.)"""
    import numpy as np

    from trainables.scoring.final import final_evaluation
    from trainables.train import run_trial

    # UniG off: its test-time optimisation makes every attack step ~10x dearer here
    config = smoke_space.trial_config(  # type: ignore[attr-defined]
        {"unig": "off"}, epochs=1, masking_samples=0, autoattack_samples=8, seed=1)
    answers = []
    for _ in range(2):
        model = run_trial(config, shared=smoke_shared, log=lambda _: None).model
        answers.append(final_evaluation(model, smoke_shared, config, log=lambda _: None))
    first, second = ({k: v for k, v in a.metrics.items() if not k.startswith("time/")}
                     for a in answers)
    assert first == second and len(first) > 20
    assert answers[0].points.keys() == answers[1].points.keys()
    for key, values in answers[0].points.items():
        assert np.array_equal(values, answers[1].points[key]), key
    # each held-out and sealed family's per-point values: what a per-family difference pairs
    points, metrics = answers[0].points, answers[0].metrics
    for group in ("heldout", "sealed"):
        families = [k for k in points if k.startswith(f"test/{group}/") and k.count("/") == 3]
        assert families, group
        for key in families:
            assert float(points[key].mean()) == pytest.approx(metrics[key]), key
        assert np.allclose(np.mean([points[k] for k in families], axis=0),
                           points[f"test/{group}/family_mean_acc"])


Masks = dict[str, torch.Tensor]
Call = tuple[Masks, Masks]  # an AND's plain masks, and what it returned


def _passthrough(model: Any, plain: Masks, *_: Any, **__: Any) -> Masks:
    return dict(plain)


def _recording(real: Any, calls: list[Call]) -> Any:
    """`real` (adaptive_and, both_losses) that also keeps each call's input and output."""
    def spy(model: Any, plain: Masks, *args: Any, **kwargs: Any) -> Masks:
        calls.append((dict(plain), real(model, plain, *args, **kwargs)))
        return calls[-1][1]
    return spy


def _assert_scored_by(calls: list[Call], test: dict[str, float]) -> None:
    """The final report's held-out, then sealed, scores are those of the AND's output."""
    from trainables.scoring.evaluate import group_metrics

    assert len(calls) == 2  # the held-out group, then the sealed one
    for group, (_, anded) in zip(("heldout", "sealed"), calls, strict=True):
        for name, value in group_metrics("test", group, anded).items():
            assert test[name] == value, name


def test_a_unig_models_held_out_and_sealed_scores_are_the_adaptive_and(
        smoke_space: object, smoke_shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    """UniG's plain white-box score overstates it (its own gradients hide the way): the
    validation objective and the test split's held-out and sealed scores of a UniG model are
    the AND of the plain attack with BPDA and the module-free attack."""
    from trainables.config import Fidelity
    from trainables.runtime import Stopwatch
    from trainables.scoring import validation
    from trainables.scoring.evaluate import group_metrics
    from trainables.scoring.final import final_evaluation
    from trainables.train import run_trial

    config = smoke_space.trial_config(  # type: ignore[attr-defined]
        {"unig": "per_sample"}, epochs=1, masking_samples=0)
    model = run_trial(config, shared=smoke_shared, log=lambda _: None).model.eval()
    rung = validation.Rungs.of(config, Fidelity(), smoke_shared, torch.device("cpu")).last
    key, real, anded = "val/heldout/family_mean_acc", validation.adaptive_and, []
    from trainables.scoring import final
    for module in (validation, final):  # this test is about adaptive_and alone
        monkeypatch.setattr(module, "both_losses", _passthrough)

    def spy(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        anded.append(real(*args, **kwargs))
        return anded[-1]

    def score() -> float:
        return validation.validate(model, smoke_shared, config, rung, final=False,
                                   watch=Stopwatch())[0][key]

    monkeypatch.setattr(validation, "adaptive_and", spy)
    adaptive = score()
    assert len(anded) == 1 and adaptive == group_metrics("val", "heldout", anded[0])[key]
    monkeypatch.setattr(validation, "adaptive_and", _passthrough)
    assert adaptive < score()  # the plain attacks alone overstate this UniG model
    calls: list[Call] = []
    monkeypatch.setattr(final, "adaptive_and", _recording(real, calls))
    test = final_evaluation(model, smoke_shared, config, autoattack=False,
                            log=lambda _: None).metrics
    _assert_scored_by(calls, test)
    for plain, anded_masks in calls:
        assert all(bool((anded_masks[n] <= plain[n]).all()) for n in plain)
    held = "test/heldout/family_mean_acc"
    assert test[held] < group_metrics("test", "heldout", calls[0][0])[held]
    # judged as deployed throughout: BatchNorm (resnet) must not end in training mode
    assert not any(module.training for module in model.modules())
    # every held-out attack of smoke is gradient-based: the adaptive group is the held-out one
    assert test["test/adaptive/union_acc"] == test["test/heldout/union_acc"]
    base = DefendedModel(model.encoder, model.head).eval()  # without UniG: plain scores only
    assert "test/adaptive/union_acc" not in final_evaluation(
        base, smoke_shared, config, autoattack=False, log=lambda _: None).metrics


def test_every_models_held_out_and_sealed_scores_include_the_margin_pass(
        smoke_space: object, smoke_shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    """CE saturates on a confident model: the validation objective and the test split's
    held-out and sealed scores of every model (no UniG here) are the AND of each non-Lp
    attack on CE with the same attack on the margin loss (masking.both_losses)."""
    from trainables.config import Fidelity
    from trainables.runtime import Stopwatch
    from trainables.scoring import final, validation
    from trainables.scoring.evaluate import group_metrics
    from trainables.scoring.final import final_evaluation
    from trainables.train import run_trial

    config = smoke_space.trial_config({}, epochs=1, masking_samples=16)  # type: ignore[attr-defined]
    model = run_trial(config, shared=smoke_shared, log=lambda _: None,
                      validation=False).model.eval()
    rung = validation.Rungs.of(config, Fidelity(), smoke_shared, torch.device("cpu")).last
    calls: list[Call] = []
    spy = _recording(validation.both_losses, calls)
    monkeypatch.setattr(validation, "both_losses", spy)
    metrics = validation.validate(model, smoke_shared, config, rung, final=False,
                                  watch=Stopwatch())[0]
    assert len(calls) == 1 and "Elastic@medium" in calls[0][0]
    for name, value in group_metrics("val", "heldout", calls[0][1]).items():
        assert metrics[name] == value, name
    # smoke's held-out PGDL2 is an Lp attack the margin pass leaves alone: no flag is met
    assert metrics["masking/answered"] == 0.0
    calls.clear()
    monkeypatch.setattr(final, "both_losses", spy)
    test = final_evaluation(model, smoke_shared, config, autoattack=False,
                            log=lambda _: None).metrics
    _assert_scored_by(calls, test)
    assert all(anded.keys() == plain.keys() for plain, anded in calls)
