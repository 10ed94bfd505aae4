"""Tests for trainables.attacks (threat model included): the registry, building and calling every
attack, the data-set fit checks, training-safe crafting and the budget arithmetic."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from trainables.attacks import (
    AttackContext,
    attack_spec,
    build_attack,
    check_attack_fits,
    list_attacks,
    list_lp_attacks,
)
from trainables.attacks.norms import perturbation_norm, project, within_budget
from trainables.attacks.threat import ThreatModel
from trainables.errors import ConfigError

ALL_ATTACKS = {  # the Lp attacks (torchattacks, and noise); the non-Lp families: test_unforeseen
    "FGSM", "FFGSM", "RFGSM", "BIM", "PGD", "EOTPGD", "UPGD", "TPGD", "Jitter", "MIFGSM",
    "NIFGSM", "SINIFGSM", "VMIFGSM", "VNIFGSM", "DIFGSM", "TIFGSM", "PIFGSM", "PIFGSMPP",
    "APGD", "APGD-DLR", "APGDT", "FAB", "Square", "SPSA", "AutoAttack",
    "PGDL2", "APGD-L2", "FAB-L2", "Square-L2", "CW", "DeepFool",
    "EADL1", "EADEN", "JSMA", "SparseFool", "OnePixel", "Pixle", "Noise", "Noise-L2",
    "SimBA", "SimBA-DCT", "RandomSearch",  # query attacks (ART, and our own random search)
}
RGB_ONLY = ("TIFGSM", "PIFGSM", "PIFGSMPP")
BUDGETS = {"Linf": 0.2, "L2": 1.0, "L1": 4.0, "L0": 4}
THREAT = ThreatModel("Linf", dict(BUDGETS))
NUM_CLASSES = 10
# Per-attack build + call seconds, printed by the last parametrized case (`pytest -s`).
TIMINGS: dict[str, float] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny tensors: one intra-op thread is fastest, and avoids the huge slow-downs of
    # spinning OpenMP threads when the two CPU cores are shared with other work.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_cnn(channels: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, NUM_CLASSES),
    ).eval()


def _batch(shape: tuple[int, int, int], n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


# ---------------------------------------------------------------- registry


def test_registry_holds_exactly_the_expected_attacks() -> None:
    names = list_attacks()
    assert len(names) == len(set(names))
    assert set(list_lp_attacks()) == ALL_ATTACKS


def test_attack_specs_use_known_norms_and_families() -> None:
    for name in list_lp_attacks():
        spec = attack_spec(name)
        assert spec.name == name
        assert spec.norm in BUDGETS and spec.family == spec.norm
        assert spec.kind in ("single-step", "iterative", "min-norm", "score-based", "sparse",
                             "ensemble", "noise")
    assert {n for n in list_lp_attacks() if attack_spec(n).needs_rgb} == set(RGB_ONLY)


def test_unknown_attack_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown attack 'Nope'") as err:
        attack_spec("Nope")
    assert "PGD" in str(err.value) and "Square" in str(err.value)
    with pytest.raises(ConfigError, match="choose one of"):
        check_attack_fits("Nope", channels=1, num_classes=10, threat=THREAT, dataset="digits")
    with pytest.raises(ConfigError, match="FGSM"):
        build_attack("Nope", _tiny_cnn(1), THREAT, num_classes=NUM_CLASSES)


def test_attack_context_steps_scale_with_strength() -> None:
    weak = AttackContext(0.2, NUM_CLASSES, strength=0.1)
    assert weak.steps(20) == 2
    assert weak.steps(3) == 1  # never below one iteration
    assert weak.restarts() == 1
    assert AttackContext(0.2, NUM_CLASSES, strength=3.0).restarts() == 3
    training = AttackContext(0.2, NUM_CLASSES, strength=0.1, train_steps=7)
    assert training.steps(20) == training.steps(1000) == 7


# ---------------------------------------------------------------- every attack builds and runs


@pytest.mark.parametrize("name", sorted(ALL_ATTACKS))
def test_every_attack_builds_and_runs(name: str) -> None:
    spec = attack_spec(name)
    # 8x8 is enough for the 3-channel kernels of TIFGSM / PIFGSM / PIFGSMPP (len_kernel=5).
    shape = (3, 8, 8) if spec.needs_rgb else (1, 8, 8)
    model = _tiny_cnn(shape[0])
    x = _batch(shape)
    y = _predictions(model, x)  # correctly classified: every attack has work to do
    start = time.perf_counter()
    attack = build_attack(name, model, THREAT, num_classes=NUM_CLASSES, strength=0.1, seed=0)
    x_adv = attack(x, y)
    TIMINGS[name] = time.perf_counter() - start

    assert attack.name == name
    assert attack.budget == BUDGETS[spec.norm]
    assert attack.fallback is None  # only training-time attacks get one
    assert x_adv.shape == x.shape
    assert x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if spec.bounded:
        delta = x_adv - x
        assert within_budget(delta, spec.norm, attack.budget).all(), (
            f"{name}: {spec.norm} sizes {perturbation_norm(delta, spec.norm).tolist()} "
            f"exceed the budget {attack.budget}")
    if len(TIMINGS) == len(ALL_ATTACKS):
        slowest = sorted(TIMINGS.items(), key=lambda kv: -kv[1])[:5]
        print("slowest attacks:", ", ".join(f"{n} {t:.2f}s" for n, t in slowest))


# ---------------------------------------------------------------- fit checks


@pytest.mark.parametrize("name", RGB_ONLY)
def test_rgb_only_attacks_refused_on_gray_data(name: str) -> None:
    with pytest.raises(ConfigError, match="channel") as err:
        check_attack_fits(name, channels=1, num_classes=10, threat=THREAT, dataset="digits")
    assert name in str(err.value)
    assert "digits" in str(err.value)
    assert check_attack_fits(name, channels=3, num_classes=10, threat=THREAT,
                             dataset="cifar10").name == name


def test_jsma_needs_exactly_ten_classes() -> None:
    with pytest.raises(ConfigError, match=r"JSMA.*exactly 10 classes.*has 9"):
        check_attack_fits("JSMA", channels=1, num_classes=9, threat=THREAT, dataset="toy")
    assert check_attack_fits("JSMA", channels=1, num_classes=10, threat=THREAT,
                             dataset="digits").norm == "L0"


def test_apgdt_needs_four_classes() -> None:
    with pytest.raises(ConfigError, match=r"APGDT needs at least 4 classes.*has 3"):
        check_attack_fits("APGDT", channels=1, num_classes=3, threat=THREAT, dataset="toy")
    check_attack_fits("APGDT", channels=1, num_classes=4, threat=THREAT, dataset="toy")


def test_attack_without_a_budget_for_its_norm_is_refused() -> None:
    linf_only = ThreatModel("Linf", {"Linf": 0.2})
    with pytest.raises(ConfigError, match=r"no L0 budget.*threat_model\.eps\.L0"):
        check_attack_fits("JSMA", channels=1, num_classes=10, threat=linf_only, dataset="digits")


# ---------------------------------------------------------------- training-safe crafting


def test_craft_repairs_points_a_returns_clean_attack_leaves_unchanged() -> None:
    model = _tiny_cnn(1)
    x = _batch((1, 8, 8), n=8)
    y = _predictions(model, x)
    y[:4] = (y[:4] + 1) % NUM_CLASSES  # already misclassified: APGD returns them clean
    attack = build_attack("APGD", model, THREAT, num_classes=NUM_CLASSES, train_steps=3)
    assert attack.spec.returns_clean
    assert attack.fallback is not None and attack.fallback.name == "PGD"
    raw = attack(x, y)
    assert (raw[:4] == x[:4]).flatten(1).all(dim=1).all()  # the trap craft() must handle

    crafted = attack.craft(x, y)
    delta = crafted - x
    assert crafted.shape == x.shape
    assert (perturbation_norm(delta, "Linf") > 1e-6).all(), "a crafted row is the clean input"
    assert within_budget(delta, "Linf", BUDGETS["Linf"]).all()
    assert crafted.min() >= 0 and crafted.max() <= 1


def test_craft_keeps_a_min_norm_l2_attack_inside_the_l2_budget() -> None:
    # CW is unbounded: craft() projects its output into the L2 ball, and the points CW leaves
    # unchanged are repaired by the fallback; every crafted row must still fit the L2 budget.
    model = _tiny_cnn(1)
    x = _batch((1, 8, 8), n=8)
    y = _predictions(model, x)
    y[:4] = (y[:4] + 1) % NUM_CLASSES
    attack = build_attack("CW", model, THREAT, num_classes=NUM_CLASSES, train_steps=3)
    crafted = attack.craft(x, y)
    sizes = perturbation_norm(crafted - x, "L2")
    assert bool(within_budget(crafted - x, "L2", BUDGETS["L2"]).all()), (
        f"crafted CW rows have L2 sizes {sizes.tolist()} over the L2 budget {BUDGETS['L2']} "
        f"(fallback: {attack.fallback.name if attack.fallback else None})")


def test_craft_never_returns_a_numerically_clean_row() -> None:
    # For points the model already misclassifies, CW "succeeds" at step one and returns the
    # input up to float round-off (tanh-space reconstruction): still the clean input.
    model = _tiny_cnn(1)
    x = _batch((1, 8, 8), n=8)
    y = _predictions(model, x)
    y[:4] = (y[:4] + 1) % NUM_CLASSES
    attack = build_attack("CW", model, THREAT, num_classes=NUM_CLASSES, train_steps=3)
    changed_pixels = perturbation_norm(attack.craft(x, y) - x, "L0")
    assert bool((changed_pixels > 0).all()), (
        f"rows changing no pixel (by more than 1e-6): {(changed_pixels == 0).nonzero().tolist()}")


def test_pgd_needs_no_fallback_when_crafting() -> None:
    model = _tiny_cnn(1)
    assert build_attack("PGD", model, THREAT, num_classes=NUM_CLASSES,
                       train_steps=2).fallback is None
    fgsm = build_attack("FGSM", model, THREAT, num_classes=NUM_CLASSES, train_steps=2)
    assert fgsm.fallback is not None and fgsm.fallback.fallback is None
    x = _batch((1, 8, 8))
    crafted = fgsm.craft(x, _predictions(model, x))
    assert within_budget(crafted - x, "Linf", BUDGETS["Linf"]).all()
    assert (perturbation_norm(crafted - x, "Linf") > 0).all()


# ---------------------------------------------------------------- budget arithmetic


def test_perturbation_norms_of_hand_made_deltas() -> None:
    delta = torch.zeros(2, 1, 2, 2)
    delta[0, 0, 0, 0], delta[0, 0, 1, 1] = 0.3, -0.4  # Linf .4, L2 .5, L1 .7, L0 2
    delta[1, 0, 0, 1] = 0.1
    assert torch.allclose(perturbation_norm(delta, "Linf"), torch.tensor([0.4, 0.1]))
    assert torch.allclose(perturbation_norm(delta, "L2"), torch.tensor([0.5, 0.1]))
    assert torch.allclose(perturbation_norm(delta, "L1"), torch.tensor([0.7, 0.1]))
    assert perturbation_norm(delta, "L0").tolist() == [2.0, 1.0]
    assert within_budget(delta, "Linf", 0.4).tolist() == [True, True]
    assert within_budget(delta, "Linf", 0.3).tolist() == [False, True]
    assert within_budget(delta, "L2", 0.49).tolist() == [False, True]
    assert within_budget(delta, "L1", 0.7).tolist() == [True, True]
    assert within_budget(delta, "L1", 0.69).tolist() == [False, True]
    assert within_budget(delta, "L0", 1).tolist() == [False, True]


def test_l0_counts_a_pixel_once_whatever_its_channels() -> None:
    delta = torch.zeros(1, 3, 4, 4)
    delta[0, :, 0, 0] = 0.5  # one pixel, all three channels changed
    delta[0, 1, 2, 3] = -0.2  # another pixel, one channel
    delta[0, 2, 3, 3] = 1e-8  # below the change threshold: not counted
    assert perturbation_norm(delta, "L0").tolist() == [2.0]
    assert within_budget(delta, "L0", 2).item()
    assert not within_budget(delta, "L0", 1).item()


def test_within_budget_tolerates_round_off_only() -> None:
    delta = torch.full((1, 1, 1, 1), 0.2 * (1 + 1e-5))
    assert within_budget(delta, "Linf", 0.2).item()
    assert not within_budget(torch.full((1, 1, 1, 1), 0.201), "Linf", 0.2).item()


def test_unknown_norm_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown norm 'L3'"):
        perturbation_norm(torch.zeros(1, 1, 2, 2), "L3")


def test_project_linf_and_l2() -> None:
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(4, 1, 8, 8, generator=gen)
    small = 0.01 * torch.rand(4, 1, 8, 8, generator=gen)

    linf = project(big, "Linf", 0.2)
    assert within_budget(linf, "Linf", 0.2).all()
    assert torch.allclose(perturbation_norm(linf, "Linf"), torch.full((4,), 0.2))
    assert torch.equal(project(small, "Linf", 0.2), small)

    l2 = project(big, "L2", 1.0)
    assert within_budget(l2, "L2", 1.0).all()
    assert torch.allclose(perturbation_norm(l2, "L2"), torch.ones(4), atol=1e-5)
    # the direction is kept: projection only rescales
    assert torch.allclose(l2 / l2.flatten(1).norm(dim=1).view(-1, 1, 1, 1),
                          big / big.flatten(1).norm(dim=1).view(-1, 1, 1, 1), atol=1e-6)
    assert torch.equal(project(small, "L2", 1.0), small)


def test_project_leaves_l1_and_l0_alone() -> None:
    big = torch.ones(2, 1, 4, 4)
    assert torch.equal(project(big, "L1", 1.0), big)
    assert torch.equal(project(big, "L0", 1.0), big)
