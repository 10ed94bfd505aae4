"""Builds the torchattacks attacks of the table (specs.py) against a model and a budget."""

from __future__ import annotations

from typing import Any

import torchattacks as ta
from torch import nn

from trainables.attacks.base import CallableAttack
from trainables.attacks.specs import AttackContext, AttackSpec, Impl, resolve_args

__all__ = ["torchattack"]


def torchattack(spec: AttackSpec, model: nn.Module, ctx: AttackContext,
                args: dict[str, Any] | None = None) -> CallableAttack:
    """The torchattacks object of `spec`'s row against `model`, its symbolic arguments filled
    in from `ctx` (or `args`, already resolved), behind the one attack interface."""
    if spec.impl != Impl.TORCHATTACKS:
        raise ValueError(f"{spec.name}: its implementation is {spec.impl}, not torchattacks")
    args = resolve_args(spec.args, ctx) if args is None else args
    return CallableAttack(spec, model, ctx.budget, getattr(ta, spec.target)(model, **args))
