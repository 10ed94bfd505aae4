"""MID's meta step: the meta-test term must reach the student's weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from trainables.defense.meta import each, meta_objective


def _setup() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    tasks = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(3)]
    return model, tasks


def _loss_fn(model: nn.Module, tasks: list[tuple[torch.Tensor, torch.Tensor]]):
    def task_loss(params: dict[str, torch.Tensor], task: int) -> torch.Tensor:
        x, y = tasks[task]
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)
    return task_loss


def _grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]


def test_meta_test_term_changes_the_gradient_reaching_theta() -> None:
    model, tasks = _setup()
    task_loss = _loss_fn(model, tasks)
    params = dict(model.named_parameters())
    without, _ = meta_objective(params, each(task_loss), [0, 1], [2], alpha=0.1, beta=0.0)
    with_test, parts = meta_objective(params, each(task_loss), [0, 1], [2], alpha=0.1, beta=1.0)
    g0, g1 = _grads(model, without), _grads(model, with_test)
    difference = sum(float((a - b).norm()) for a, b in zip(g0, g1, strict=True))
    assert difference > 1e-3
    assert parts["meta_test"] > 0


def test_first_order_gradient_is_grad_mtr_plus_beta_grad_mte_at_fast_weights() -> None:
    model, tasks = _setup()
    task_loss = _loss_fn(model, tasks)
    params = dict(model.named_parameters())
    alpha, beta = 0.05, 0.7
    total, _ = meta_objective(params, each(task_loss), [0, 1], [2], alpha=alpha, beta=beta)
    ours = _grads(model, total)
    # by hand: theta' = theta - alpha * grad L_mtr (constant), then chain rule with identity
    mtr = (task_loss(params, 0) + task_loss(params, 1)) / 2
    g_mtr = torch.autograd.grad(mtr, list(params.values()))
    fast = {n: (p - alpha * g).detach().requires_grad_(True)
            for (n, p), g in zip(params.items(), g_mtr, strict=True)}
    g_mte = torch.autograd.grad(task_loss(fast, 2), list(fast.values()))
    for mine, a, b in zip(ours, g_mtr, g_mte, strict=True):
        torch.testing.assert_close(mine, a + beta * b, rtol=1e-5, atol=1e-6)


def test_official_load_state_dict_version_loses_the_meta_test_term() -> None:
    model, tasks = _setup()
    task_loss = _loss_fn(model, tasks)
    params = dict(model.named_parameters())
    # The official code: theta' copied into a new module with load_state_dict
    mtr = (task_loss(params, 0) + task_loss(params, 1)) / 2
    g_mtr = torch.autograd.grad(mtr, list(params.values()), retain_graph=True)
    fast_module = copy.deepcopy(model)
    fast_module.load_state_dict({n: p - 0.1 * g for (n, p), g in
                                 zip(params.items(), g_mtr, strict=True)})
    x, y = tasks[2]
    mte = nn.functional.cross_entropy(fast_module(x), y)
    plain = [g.clone() for g in torch.autograd.grad(mtr, list(model.parameters()),
                                                    retain_graph=True)]
    official = _grads(model, mtr + 1.0 * mte)
    for a, b in zip(official, plain, strict=True):
        torch.testing.assert_close(a, b)  # the meta-test term contributed nothing
    ours = _grads(model, meta_objective(params, each(task_loss), [0, 1], [2], alpha=0.1,
                                        beta=1.0)[0])
    assert any(float((a - b).norm()) > 1e-3 for a, b in zip(ours, plain, strict=True))


def test_second_order_matches_differentiating_through_the_inner_step() -> None:
    model, tasks = _setup()
    task_loss = _loss_fn(model, tasks)
    params = dict(model.named_parameters())
    alpha, beta = 0.3, 1.0
    total, _ = meta_objective(params, each(task_loss), [0], [1], alpha=alpha, beta=beta,
                              order="second")
    ours = _grads(model, total)

    def objective(p: dict[str, torch.Tensor]) -> torch.Tensor:
        inner = torch.func.grad(lambda q: task_loss(q, 0))(p)
        return task_loss(p, 0) + beta * task_loss({n: p[n] - alpha * inner[n] for n in p}, 1)

    detached = {n: p.detach() for n, p in params.items()}
    reference = torch.func.grad(objective)(detached)
    for mine, name in zip(ours, params, strict=True):
        torch.testing.assert_close(mine, reference[name], rtol=1e-4, atol=1e-6)
    first = _grads(model, meta_objective(params, each(task_loss), [0], [1], alpha=alpha,
                                         beta=beta)[0])
    assert any(float((a - b).norm()) > 1e-5 for a, b in zip(ours, first, strict=True))


def test_unknown_order_is_refused() -> None:
    model, tasks = _setup()
    with pytest.raises(ValueError, match="order"):
        meta_objective(dict(model.named_parameters()), each(_loss_fn(model, tasks)), [0], [1],
                       alpha=0.1, beta=1.0, order="third")
