"""Gradient-masking checks: deliberately masked models are flagged, honest ones are not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.attacks import build_attack
from trainables.attacks.threat import ThreatModel
from trainables.defense.models import DefendedModel
from trainables.defense.unig import UniG
from trainables.scoring.evaluate import clean_correct, robust_mask
from trainables.scoring.masking import (
    CheckContext,
    MaskingReport,
    both_losses,
    floor_accuracy,
    invalidates,
    list_checks,
    margin_covers,
    more_steps_help,
    one_step_beats_iterative,
    plain_loss,
    run_masking_checks,
)
from trainables.setting.setup import dataset_info
from trainables.vocab import THREAT_PGD10, Access, EvalLosses, masking_claim_key

THREAT = ThreatModel("Linf", {"Linf": 0.2, "L2": 1.0})


class Quantized(nn.Module):
    """Rounds the input to 4 grey levels: a non-differentiable input layer (zero gradients)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x * 4).round() / 4)


class Saturated(nn.Module):
    """Logits x 1e4: softmax saturates, CE gradients vanish (DLR is scale-free)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1e4


class Softmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)


class Noisy(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits + torch.randn_like(logits)


def _check(model: nn.Module, reference: DefendedModel,
           surrogate: nn.Module | None = None) -> MaskingReport:
    x, y = reference.val_x[:128], reference.val_y[:128]  # type: ignore[attr-defined]
    return run_masking_checks(model, x, y, THREAT, num_classes=10, surrogate=surrogate)


def test_the_checklist_is_complete() -> None:
    assert set(list_checks()) == {
        "probability_output", "randomized", "backward_in_forward", "zero_gradient",
        "one_step_beats_iterative", "more_steps_help", "dlr_much_stronger",
        "black_box_beats_white_box", "noise_beats_white_box", "eps_sweep",
        "unbounded_attack_fails", "transfer_beats_white_box", "adaptive_beats_plain",
        "gradient_weaker_than_random", "batch_dependent_output", "adaptive_query_beats_plain",
        "repeated_queries_reveal_label"}


def test_honest_models_raise_no_masking_flag(digits_model: DefendedModel,
                                            at_model: DefendedModel) -> None:
    standard = _check(digits_model, digits_model)
    trained = _check(at_model, digits_model, surrogate=digits_model)
    assert standard.masking == () and not standard.masked, standard.evidence
    assert trained.masking == () and not trained.masked, trained.evidence
    # the adversarially trained model is robust for real: PGD leaves something standing
    assert trained.evidence["pgd10_acc"] > standard.evidence["pgd10_acc"] + 0.1


@pytest.mark.parametrize(("wrap", "expected"), [
    # gradients are zero almost everywhere: score-based, transfer and unbounded attacks tell
    (Quantized, {"zero_gradient", "black_box_beats_white_box", "eps_sweep",
                 "unbounded_attack_fails", "transfer_beats_white_box"}),
    # saturated softmax: CE gradients vanish, the scale-free DLR loss does not
    (Saturated, {"zero_gradient", "dlr_much_stronger", "eps_sweep"}),
    (Softmax, {"probability_output"}),
])
def test_masked_models_are_flagged(digits_model: DefendedModel, wrap: type[nn.Module],
                                   expected: set[str]) -> None:
    report = _check(wrap(digits_model), digits_model, surrogate=digits_model)
    assert expected <= set(report.masking), report.evidence
    assert report.masked and report.metrics()["masking/any"] == 1.0


def test_randomness_is_reported_and_answered_with_eot(digits_model: DefendedModel) -> None:
    report = _check(Noisy(digits_model), digits_model)
    assert report.flags["randomized"] and "randomized" not in report.masking
    assert report.evidence["logit_spread"] > 0.1


def test_unig_is_caught_by_the_adaptive_attack(at_model: DefendedModel,
                                               digits_model: DefendedModel) -> None:
    torch.manual_seed(0)
    defended = DefendedModel(at_model.encoder, at_model.head, UniG("per_sample")).eval()
    report = _check(defended, digits_model, surrogate=digits_model)
    assert report.flags["backward_in_forward"] and report.flags["randomized"]
    assert "adaptive_beats_plain" in report.masking, report.evidence
    assert report.evidence["adaptive_acc"] < report.evidence["white_box_acc"] - 0.02


def _context(model: DefendedModel, results: dict[str, float]) -> CheckContext:
    x, y = model.val_x[:8], model.val_y[:8]  # type: ignore[attr-defined]
    return CheckContext(model, x, y, THREAT, 10, results=dict(results))


# No toy model reliably makes FGSM beat PGD or PGD-50 far beat PGD-10 on digits, so these two
# decisions are checked on given accuracies (the cache the checks share).
def test_one_step_beating_iterative_is_flagged(digits_model: DefendedModel) -> None:
    raised, evidence = one_step_beats_iterative(_context(digits_model,
                                                         {"fgsm": 0.30, "pgd10": 0.50}))
    assert raised and evidence == {"fgsm_acc": 0.30, "pgd10_acc": 0.50}
    assert not one_step_beats_iterative(_context(digits_model,
                                                 {"fgsm": 0.55, "pgd10": 0.50}))[0]


def test_more_steps_helping_a_lot_is_flagged(digits_model: DefendedModel) -> None:
    assert more_steps_help(_context(digits_model, {"pgd10": 0.60, "pgd50": 0.40}))[0]
    assert not more_steps_help(_context(digits_model, {"pgd10": 0.60, "pgd50": 0.58}))[0]


def test_the_margin_pass_breaks_what_a_saturated_ce_cannot(digits_model: DefendedModel) -> None:
    """On logits x 1e4 CE is exactly 0 on confident points, so a CE-gradient family attack
    never moves; the margin loss does (what both_losses adds to every held-out and sealed
    non-Lp score). On the plain model the margin pass can only lower the score."""
    x, y = digits_model.val_x[:128], digits_model.val_y[:128]  # type: ignore[attr-defined]
    threat = ThreatModel("Linf", {"Linf": 0.2, "L2": 1.0}, {"Elastic": {"high": 0.2}})

    def scores(model: nn.Module) -> tuple[float, float]:
        correct = clean_correct(model, x, y, 128)
        attack = build_attack("Elastic@high", model, threat, num_classes=10)
        plain = {"Elastic@high": robust_mask(model, attack, x, y, correct, batch_size=128)}
        both = both_losses(model, plain, x, y, threat, num_classes=10, strength=1.0,
                           batch_size=128, seed=0)
        return (float(plain["Elastic@high"].float().mean()),
                float(both["Elastic@high"].float().mean()))

    saturated_ce, saturated_both = scores(Saturated(digits_model))
    plain_ce, plain_both = scores(digits_model)
    assert saturated_ce > plain_ce + 0.1  # CE is stuck on the saturated copy ...
    assert saturated_both < saturated_ce - 0.1  # ... the margin loss is not
    assert plain_both <= plain_ce


def test_a_stronger_attacks_flag_is_met_by_the_margin_pass_others_are_not() -> None:
    flags = {"dlr_much_stronger": True, "more_steps_help": True, "zero_gradient": False}
    report = MaskingReport(flags, {}, ("dlr_much_stronger", "more_steps_help"))
    assert report.metrics()[masking_claim_key(Access.WHITE_BOX)] == 1.0  # CE alone: zeroed
    report.answered = True
    assert report.metrics()[masking_claim_key(Access.WHITE_BOX)] == 0.0
    assert report.metrics()["masking/any"] == 1.0  # still reported
    assert invalidates("zero_gradient", Access.WHITE_BOX, answered=True)
    assert not invalidates("dlr_much_stronger", Access.WHITE_BOX, answered=True)
    assert invalidates("dlr_much_stronger", Access.WHITE_BOX, answered=False)
    assert not invalidates("dlr_much_stronger", Access.SCORES)


def test_only_a_score_the_margin_pass_covers_meets_a_flag_and_the_floor_reads_the_strongest(
        ) -> None:
    assert margin_covers(["Elastic@medium", "JPEG@medium"])
    assert not margin_covers(["PGDL2", "Elastic@medium"])  # PGDL2 stays on CE alone
    assert not margin_covers([])
    pgd10 = {THREAT_PGD10: 0.6, "masking/any": 1.0, "masking/evidence/pgd50_acc": 0.5,
             "masking/evidence/apgd_ce_acc": 0.55, "masking/evidence/apgd_dlr_acc": 0.4}
    assert floor_accuracy({**pgd10, "masking/dlr_much_stronger": 0.0}) == 0.6
    assert floor_accuracy({**pgd10, "masking/dlr_much_stronger": 1.0}) == 0.4


class _Passes(nn.Module):
    """`model` counting the points it is asked about (each attack step asks once)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.points = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.points += len(x)
        return self.model(x)


def test_margin_first_scores_as_ce_first_does_at_less_work(at_model: DefendedModel,
                                                          digits_model: DefendedModel) -> None:
    """`margin-ce` (the margin loss, then CE at half the iterations on what it left) against
    `ce-margin` (CE, then margin at the same iterations): on 256 points of a PGD-trained CNN
    at the final's strength, each family's score within 5 points of the other order's and
    their mean within 2, with fewer passes. On mnist5k's 1,500 test points the family means
    of two trained models moved -0.4 to +0.0 points, the final evaluation without AutoAttack
    1.35-1.37x faster (docs/speed.md, "Margin first")."""
    x, y = digits_model.val_x[:256], digits_model.val_y[:256]  # type: ignore[index]
    threat = dataset_info("digits").threat_model
    names = ("Elastic@medium", "Fog@medium", "JPEG@medium", "Snow@medium")
    model = _Passes(at_model)
    correct = clean_correct(model, x, y, 128)
    scores, passes = {}, {}
    for losses in EvalLosses:
        model.points = 0
        plain = {n: robust_mask(model, build_attack(n, model, threat, num_classes=10,
                                                    strength=2.0, **plain_loss(n, losses)),
                                x, y, correct, batch_size=128) for n in names}
        both = both_losses(model, plain, x, y, threat, num_classes=10, strength=2.0,
                           batch_size=128, seed=0, losses=losses)
        scores[losses] = {n: float(both[n].float().mean()) for n in names}
        passes[losses] = model.points
    first, second = (scores[losses] for losses in EvalLosses)
    gaps = [second[n] - first[n] for n in names]
    assert max(abs(g) for g in gaps) <= 0.05, (first, second)
    assert abs(sum(gaps) / len(gaps)) <= 0.02, (first, second)
    assert passes[EvalLosses.MARGIN_CE] < passes[EvalLosses.CE_MARGIN], passes
    assert min(first.values()) < float(correct.float().mean())  # the attacks break something


def test_the_first_pass_takes_the_margin_loss_only_for_margin_first_non_lp_attacks() -> None:
    assert plain_loss("Elastic@medium", EvalLosses.MARGIN_CE) == {"loss": "margin"}
    assert plain_loss("Elastic@medium", EvalLosses.CE_MARGIN) == {}  # CE: build_attack's own
    assert plain_loss("PGD", EvalLosses.MARGIN_CE) == {}
    assert plain_loss("Pixle", EvalLosses.MARGIN_CE) == {}


def test_the_adaptive_pass_takes_the_first_loss_of_the_order(
        at_model: DefendedModel, digits_model: DefendedModel,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a UniG model's scores are what an attacker who knows it reaches: under margin-ce that
    # attacker's first pass is the margin loss too (both_losses then adds CE)
    from trainables.scoring import masking

    losses_seen: list[object] = []

    def recording(*args: object, **kwargs: object) -> object:
        losses_seen.append(kwargs.get("loss", "ce"))
        return build_attack(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(masking, "build_attack", recording)
    defended = DefendedModel(at_model.encoder, at_model.head, UniG("per_sample")).eval()
    x, y = digits_model.val_x[:32], digits_model.val_y[:32]  # type: ignore[index]
    threat = dataset_info("digits").threat_model
    plain = {"Fog@medium": clean_correct(defended, x, y, 32)}
    for order, loss in ((EvalLosses.MARGIN_CE, "margin"), (EvalLosses.CE_MARGIN, "ce")):
        losses_seen.clear()
        masking.adaptive_and(defended, plain, x, y, threat, num_classes=10, strength=0.25,
                             batch_size=32, seed=0, losses=order)
        assert losses_seen == [loss, loss]  # through BPDA and on the model without UniG
