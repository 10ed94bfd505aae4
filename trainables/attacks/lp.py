"""Builds the torchattacks attacks of the table (specs.py) against a model and a budget."""

from __future__ import annotations

from typing import Any

import torchattacks as ta
from torch import nn

from trainables.attacks.base import CallableAttack
from trainables.attacks.specs import AttackContext, AttackSpec, resolve_args

__all__ = ["torchattack"]


def torchattack(spec: AttackSpec, model: nn.Module, ctx: AttackContext,
                args: dict[str, Any] | None = None) -> CallableAttack:
    """The torchattacks object of `spec`'s row against `model`, its symbolic arguments filled
    in from `ctx` (or `args`, already resolved), behind the one attack interface."""
    package, _, cls_name = spec.impl.partition(":")
    if package != "torchattacks":
        raise ValueError(f"{spec.name}: {spec.impl!r} is not a torchattacks row")
    args = resolve_args(spec.args, ctx) if args is None else args
    return CallableAttack(spec, model, ctx.budget, getattr(ta, cls_name)(model, **args))
