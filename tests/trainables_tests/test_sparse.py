"""Pixle, batched (trainables/attacks/sparse.py): inside its L0 budget, at least as strong
inside that budget as torchattacks' per-image Pixle with the same search, seeded, and asking
the model only about samples it has not fooled yet (unless the model couples its batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchattacks as ta

from tests.trainables_tests.coupled import Coupled
from trainables.attacks import build_attack, sparse
from trainables.attacks.norms import within_budget
from trainables.attacks.sparse import Pixle
from trainables.defense.models import DefendedModel
from trainables.setting.setup import dataset_info

POINTS = 120


@pytest.fixture(scope="module")
def points(digits_model: DefendedModel) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_model.val_x[:POINTS], digits_model.val_y[:POINTS]  # type: ignore[attr-defined]
    with torch.no_grad():
        correct = digits_model(x).argmax(1) == y
    return x[correct], y[correct]


def _fooled_inside(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   x_adv: torch.Tensor, budget: float) -> torch.Tensor:
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    return fooled & within_budget(x_adv - x, "L0", budget)


def test_pixle_stays_inside_its_budget_and_matches_torchattacks_inside_it(
        digits_model: DefendedModel, points: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = points
    threat = dataset_info("digits").threat_model
    attack = build_attack("Pixle", digits_model, threat, num_classes=10, seed=0)
    assert isinstance(attack, Pixle)
    x_adv = attack(x, y)
    assert within_budget(x_adv - x, "L0", attack.budget).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    ours = _fooled_inside(digits_model, x, y, x_adv, attack.budget).float().mean()
    np.random.seed(0)
    theirs_attack = ta.Pixle(digits_model, x_dimensions=attack.x_dimensions,
                             y_dimensions=attack.y_dimensions, restarts=attack.restarts,
                             max_iterations=attack.iterations)
    theirs = _fooled_inside(digits_model, x, y, theirs_attack(x, y), attack.budget)
    assert ours > 0
    assert ours >= theirs.float().mean() - 0.03, (float(ours), float(theirs.float().mean()))


def test_smallest_is_argsorts_first_columns_but_where_keys_tie() -> None:
    keys = torch.rand(4096, 784, generator=torch.Generator().manual_seed(0))
    for count in (1, 9, 25):
        ours, theirs = sparse.smallest(keys, count), keys.argsort(1)[:, :count]
        ordered = keys.sort(1).values[:, :count + 1]
        tied = (ordered[:, 1:] == ordered[:, :-1]).any(1)
        assert torch.equal(ours[~tied], theirs[~tied])
        assert tied.float().mean() < 1e-2  # the bound: rows with a tie at the edge are rare
        # where they tie, both pick keys of the same values
        assert torch.equal(keys.gather(1, ours), keys.gather(1, theirs))


def test_pixle_gives_the_images_of_the_argsort_draw(
        digits_model: DefendedModel, points: tuple[torch.Tensor, torch.Tensor],
        monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = points
    threat = dataset_info("digits").threat_model

    def run() -> torch.Tensor:
        return build_attack("Pixle", digits_model, threat, num_classes=10, seed=0,
                            restarts=4)(x, y)

    ours = run()
    monkeypatch.setattr(sparse, "smallest", lambda keys, count: keys.argsort(1)[:, :count])
    assert torch.equal(ours, run())


def test_pixle_is_seeded(digits_model: DefendedModel,
                         points: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = points
    threat = dataset_info("digits").threat_model

    def run(seed: int) -> torch.Tensor:
        return build_attack("Pixle", digits_model, threat, num_classes=10, seed=seed,
                            restarts=4)(x, y)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_pixle_asks_only_about_unfooled_samples_inside_the_budget(
        digits_model: DefendedModel, points: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = points
    threat = dataset_info("digits").threat_model
    asked: list[int] = []
    shown: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], _o: torch.Tensor) -> None:
        asked.append(len(args[0]))
        shown.append(args[0].detach().clone())

    handle = digits_model.register_forward_hook(hook)
    try:
        attack = build_attack("Pixle", digits_model, threat, num_classes=10, seed=0,
                              restarts=4)
        attack(x, y)
        early = list(asked)
        # every candidate shown lies inside the budget around some clean point
        for candidates in shown[1:]:
            changed = (candidates[:, None] != x[None]).any(2).flatten(2).sum(2)
            assert (changed.amin(1) <= attack.budget).all()
        shown.clear()
        asked.clear()
        build_attack("Pixle", Coupled(digits_model), threat, num_classes=10, seed=0,
                     restarts=4)(x, y)
    finally:
        handle.remove()
    assert set(asked) == {len(x)}  # a coupled model: the whole batch at every step
    assert len(asked) == 1 + 4 * 10
    assert sum(early) < sum(asked)


def test_pixle_as_a_pool_attack_has_the_pgd_fallback(digits_model: DefendedModel) -> None:
    # it returns the clean image where it fails; a training example must never be clean
    threat = dataset_info("digits").threat_model
    attack = build_attack("Pixle", digits_model, threat, num_classes=10, train_steps=3)
    assert attack.fallback is not None and attack.fallback.name == "PGD"
