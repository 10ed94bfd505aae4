"""MID's meta step: attacks are domains; learn on meta-train attacks, check on a held-out one.

    theta' = theta - alpha * grad_theta L_mtr(theta)
    L      = L_mtr(theta) + beta * L_mte(theta')

The fast weights theta' are used through torch.func.functional_call, so L_mte(theta') keeps
its autograd link to theta. (The official code loads theta' into a new module with
load_state_dict, which cuts that link: its meta-test term never reaches the student.)
First order treats grad L_mtr as a constant (d theta'/d theta = I); second order
differentiates through it (MAML-style Hessian-vector products).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trainables.vocab import MetaOrder

__all__ = ["TaskLoss", "TasksLoss", "each", "meta_objective"]

# task_loss(params, task_index) -> scalar loss of the student with `params` on that task
TaskLoss = Callable[[dict[str, torch.Tensor], int], torch.Tensor]
# tasks_loss(params, task_indices) -> the loss on each of those tasks, as a vector (so that one
# forward pass can serve several tasks)
TasksLoss = Callable[[dict[str, torch.Tensor], Sequence[int]], torch.Tensor]


def each(task_loss: TaskLoss) -> TasksLoss:
    """A per-task loss as a TasksLoss, one call per task."""
    def tasks_loss(params: dict[str, torch.Tensor], tasks: Sequence[int]) -> torch.Tensor:
        return torch.stack([task_loss(params, t) for t in tasks])
    return tasks_loss


def meta_objective(
    params: dict[str, torch.Tensor],
    tasks_loss: TasksLoss,
    meta_train: Sequence[int],
    meta_test: Sequence[int],
    *,
    alpha: float,
    beta: float,
    order: str = "first",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_mtr(theta) + beta * L_mte(theta'), and its parts (detached, float64) for logging."""
    if order not in (MetaOrder.FIRST, MetaOrder.SECOND):
        raise ValueError(f"meta order {order!r} is unknown; choose 'first' or 'second'")
    names = list(params)
    loss_train = tasks_loss(params, meta_train).mean()
    if not meta_test or beta == 0:
        return loss_train, {"meta_train": loss_train.detach().double(),
                            "meta_test": torch.zeros((), dtype=torch.float64,
                                                     device=loss_train.device)}
    grads = torch.autograd.grad(loss_train, [params[n] for n in names],
                                create_graph=order == MetaOrder.SECOND, retain_graph=True,
                                allow_unused=True)
    fast = {}
    for name, grad in zip(names, grads, strict=True):
        if grad is None:
            fast[name] = params[name]
        else:
            fast[name] = params[name] - alpha * (grad if order == MetaOrder.SECOND
                                                 else grad.detach())
    loss_test = tasks_loss(fast, meta_test).mean()
    total = loss_train + beta * loss_test
    parts = {"meta_train": loss_train.detach().double(), "meta_test": loss_test.detach().double()}
    return total, parts
