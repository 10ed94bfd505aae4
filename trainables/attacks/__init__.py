"""The attacks: one table of what exists (specs.py) and one front door to build them.

    from trainables.attacks import build_attack, list_attacks
    attack = build_attack("PGD", model, threat, num_classes=10)
    x_adv = attack(x, y)                       # every attack is called the same way
    attack = build_attack("Elastic@medium", model, threat, num_classes=10)

Lp attacks come from torchattacks (lp.py), non-Lp families are ours on kornia
(unforeseen.py). The table and the checks import no torch; building an attack does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainables.attacks.specs import (
    FAMILY_MAX_BUDGET,
    Access,
    AttackContext,
    AttackKind,
    AttackSpec,
    Impl,
    attack_budget,
    attack_spec,
    check_attack_fits,
    list_attacks,
    list_families,
    list_lp_attacks,
    query_budget,
    resolve_args,
    split_name,
)
from trainables.attacks.threat import ThreatModel
from trainables.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trainables.attacks.base import Attack
    from trainables.attacks.query import Adaptive

__all__ = ["Access", "AttackContext", "AttackKind", "AttackSpec", "Impl", "attack_budget",
           "attack_spec", "build_attack", "check_attack_fits", "list_attacks", "list_families",
           "list_lp_attacks", "query_budget", "split_name"]

# The attacks that repair what another attack could not turn into a training example
_FALLBACKS = {"L2": "PGDL2"}
_DEFAULT_FALLBACK = "PGD"
# The query budget per point of a query attack of ART or ours named without one (x strength)
DEFAULT_QUERIES = 1000


def _queries(name: str, spec: AttackSpec, strength: float, adaptive: Adaptive | None
             ) -> int | None:
    """The query budget per point of a query attack (None: not one, or a torchattacks row
    named without a budget, which keeps its row's query count)."""
    queries = query_budget(name)
    if queries is None and spec.impl in (Impl.ART, Impl.OURS):
        queries = max(1, round(DEFAULT_QUERIES * strength))
    if adaptive is not None and queries is None:
        raise ValueError(f"{name}: only a query attack with a query budget can be adaptive")
    return queries


def build_attack(name: str, model: nn.Module, threat: ThreatModel, *, num_classes: int,
                 strength: float = 1.0, train_steps: int | None = None, seed: int = 0,
                 budget: float | None = None, scale: float = 1.0,
                 feature_model: nn.Module | None = None, adaptive: Adaptive | None = None,
                 precision: torch.dtype | None = None, **overrides: Any) -> Attack:
    """Builds `name` against `model` at the threat model's budget for it (or `budget`).

    `strength` scales iterations, queries and restarts; `train_steps` sets the step count of
    a training-time attack, and gives an Lp attack a PGD fallback in its own norm, used to
    repair the points a returns-clean or unbounded attack could not turn into an example;
    `scale` multiplies the budget (a family's ceiling still holds); `feature_model` is the
    network whose features bound a perceptual attack (a trial's frozen teacher encoder; other
    attacks ignore it); `overrides` replace arguments of the attack's row. A query attack
    (`Square@q1000`) runs behind a counter of its queries (query.py); `adaptive` says how an
    adaptive attacker asks at the same budget (repeated queries averaged, points alone).
    `precision`: an autocast dtype the non-Lp families and Pixle craft in (they confirm each
    success in float32, precision.py); other attacks ignore it.
    """
    spec = attack_spec(name)
    budget = (attack_budget(name, threat) if budget is None else budget) * scale
    budget = min(budget, FAMILY_MAX_BUDGET.get(spec.family, budget))
    queries = _queries(name, spec, strength, adaptive)
    repeats = adaptive.repeats if adaptive is not None else 1
    ctx = AttackContext(budget, num_classes, strength, train_steps, seed,
                        None if queries is None else max(1, queries // repeats))
    args = {**resolve_args(spec.args, ctx), **overrides}
    if queries is not None:
        from trainables.attacks.query import Adaptive, query_attack

        return query_attack(spec, model, ctx, args, queries=queries,
                            adaptive=adaptive or Adaptive(), name=name)
    if spec.impl == Impl.CORRUPTION:
        from trainables.attacks.unforeseen import TransformAttack, family

        return TransformAttack(spec, _crafting_model(spec, model, precision),
                               family(spec.target, ctx.budget), seed=seed, name=name, **args)
    if spec.impl == Impl.PERCEPTUAL:
        from trainables.attacks.perceptual import PerceptualAttack

        if feature_model is None:
            raise ConfigError(f"attack {name} bounds the change of a frozen network's features "
                              "(a trial's teacher encoder) and none was given: it can only "
                              "be a pool attack of a trial")
        # one step's pixel length: the threat model's L2 budget (its scale for these images)
        return PerceptualAttack(spec, model, ctx.budget, feature_model,
                                pixel_step=2.5 * threat.budgets.get("L2", 1.0), name=name,
                                **args)
    if spec.impl == Impl.NOISE:
        from trainables.attacks.base import UniformNoise

        return UniformNoise(spec, model, ctx.budget)
    attack = _pixel_attack(spec, _crafting_model(spec, model, precision), ctx, args, name)
    fallback_name = _FALLBACKS.get(str(spec.norm), _DEFAULT_FALLBACK)
    if train_steps is not None and name not in (_DEFAULT_FALLBACK, *_FALLBACKS.values()):
        attack.fallback = build_attack(fallback_name, model, threat, num_classes=num_classes,
                                       train_steps=train_steps, seed=seed, scale=scale)
    return attack


def _crafting_model(spec: AttackSpec, model: nn.Module, precision: torch.dtype | None
                    ) -> nn.Module:
    """What `spec`'s attack crafts on: `model` in `precision` for the attacks that ask float32
    for their verdicts (the non-Lp families and Pixle), else `model` itself; a model that
    couples its batch (UniG) too, since a verdict asked of some of its rows is another one."""
    from trainables.attacks.base import couples_batch
    from trainables.attacks.precision import LowPrecision

    if precision is None or spec.impl not in (Impl.CORRUPTION, Impl.SPARSE) or \
            couples_batch(model):
        return model
    return LowPrecision(model, precision)


def _pixel_attack(spec: AttackSpec, model: nn.Module, ctx: AttackContext, args: dict[str, Any],
                  name: str) -> Attack:
    """A torchattacks attack, or ours batched where torchattacks' loops over images."""
    if spec.impl == Impl.SPARSE:
        from trainables.attacks.sparse import Pixle

        return Pixle(spec, model, ctx.budget, seed=ctx.seed, name=name, **args)
    from trainables.attacks.lp import torchattack

    return torchattack(spec, model, ctx, args)
