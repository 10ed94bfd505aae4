"""The attacker pool: a registry over torchattacks 3.5.1, one small builder per attack.

Every builder takes an AttackContext (model, budget for the attack's norm, number of classes,
strength, training step count, seed) and returns a torchattacks attack, so every attack is
built and called the same way. The traps measured in robustness-notes are handled here:
- TIFGSM / PIFGSM / PIFGSMPP use 3-channel kernels: refused for gray images;
- JSMA hard-codes 10 classes; DLR losses need >= 3 classes, targeted DLR >= 4;
- SPSA's defaults barely perturb (1 iteration): we run 20+ iterations at lr eps/4;
- minimum-norm and sparse attacks are unbounded: a success only counts inside the budget
  (see evaluate.py), and their training outputs are projected or repaired;
- APGD, APGDT, FAB, Square, CW and AutoAttack return the clean input where they fail: those
  points are never fed to training as they are (see BoundAttack.craft);
- FAB with norm L1 crashes inside torchattacks 3.5.1 (UnboundLocalError): not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchattacks as ta
from torch import nn

from trainables.errors import ConfigError
from trainables.registry import Registry
from trainables.threat import ThreatModel, perturbation_norm, project, within_budget

__all__ = [
    "AttackContext",
    "AttackSpec",
    "BoundAttack",
    "attack_spec",
    "bind_attack",
    "check_attack_fits",
    "list_attacks",
]


@dataclass(frozen=True)
class AttackContext:
    """What a builder may use. `strength` scales iterations, queries and restarts."""

    model: nn.Module
    budget: float
    num_classes: int
    strength: float = 1.0
    train_steps: int | None = None  # set when crafting training batches: the step count
    seed: int = 0

    def steps(self, default: int) -> int:
        if self.train_steps is not None:
            return self.train_steps
        return max(1, round(default * self.strength))

    def restarts(self) -> int:
        return max(1, round(self.strength))


@dataclass(frozen=True)
class AttackSpec:
    name: str
    norm: str  # the norm whose budget bounds (or, post hoc, thresholds) the attack
    family: str  # single-step | iterative | min-norm | score-based | sparse | ensemble
    build: Callable[[AttackContext], ta.Attack]
    returns_clean: bool = False  # returns the clean input for points it fails to flip
    needs_rgb: bool = False
    min_classes: int = 2
    exact_classes: int | None = None
    heavy: bool = False  # too slow to craft on every training batch

    @property
    def bounded(self) -> bool:
        """True when the attack itself keeps to the budget (no post-hoc threshold needed)."""
        return self.family in ("single-step", "iterative", "score-based")


_ATTACKS: Registry[AttackSpec] = Registry("attack")


def register_attack(name: str, norm: str, family: str, **flags: object
                    ) -> Callable[[Callable[[AttackContext], ta.Attack]], Callable]:
    def decorate(build: Callable[[AttackContext], ta.Attack]) -> Callable:
        _ATTACKS.add(name, AttackSpec(name, norm, family, build, **flags))  # type: ignore[arg-type]
        return build
    return decorate


def list_attacks() -> list[str]:
    return _ATTACKS.names()


def attack_spec(name: str) -> AttackSpec:
    return _ATTACKS.get(name)


def check_attack_fits(name: str, *, channels: int, num_classes: int, threat: ThreatModel,
                      dataset: str) -> AttackSpec:
    """The attack's spec, or a ConfigError saying why it cannot run on this data set."""
    spec = attack_spec(name)
    if spec.needs_rgb and channels != 3:
        raise ConfigError(
            f"attack {name} crashes on {channels}-channel input (it uses 3-channel kernels); "
            f"data set {dataset} has {channels} channel(s): remove {name} from the space"
        )
    if num_classes < spec.min_classes:
        raise ConfigError(f"attack {name} needs at least {spec.min_classes} classes; "
                          f"data set {dataset} has {num_classes}")
    if spec.exact_classes is not None and num_classes != spec.exact_classes:
        raise ConfigError(f"attack {name} only works with exactly {spec.exact_classes} classes "
                          f"(torchattacks hard-codes it); data set {dataset} has {num_classes}")
    threat.budget(spec.norm)
    return spec


# ---------------------------------------------------------------- Linf, single step / iterative


@register_attack("FGSM", "Linf", "single-step")
def _fgsm(c: AttackContext) -> ta.Attack:
    return ta.FGSM(c.model, eps=c.budget)


@register_attack("FFGSM", "Linf", "single-step")
def _ffgsm(c: AttackContext) -> ta.Attack:
    return ta.FFGSM(c.model, eps=c.budget, alpha=1.25 * c.budget)


@register_attack("RFGSM", "Linf", "iterative")
def _rfgsm(c: AttackContext) -> ta.Attack:
    steps = c.steps(10)
    return ta.RFGSM(c.model, eps=c.budget, alpha=c.budget / 2, steps=steps)


@register_attack("BIM", "Linf", "iterative")
def _bim(c: AttackContext) -> ta.Attack:
    steps = c.steps(20)
    return ta.BIM(c.model, eps=c.budget, alpha=2.5 * c.budget / steps, steps=steps)


@register_attack("PGD", "Linf", "iterative")
def _pgd(c: AttackContext) -> ta.Attack:
    steps = c.steps(20)
    return ta.PGD(c.model, eps=c.budget, alpha=2.5 * c.budget / steps, steps=steps)


@register_attack("EOTPGD", "Linf", "iterative")
def _eotpgd(c: AttackContext) -> ta.Attack:
    steps = c.steps(20)
    return ta.EOTPGD(c.model, eps=c.budget, alpha=2.5 * c.budget / steps, steps=steps,
                     eot_iter=2)


@register_attack("UPGD", "Linf", "iterative")
def _upgd(c: AttackContext) -> ta.Attack:
    # Margin loss and a random start: a differently-shaped loss than the CE family.
    steps = c.steps(20)
    return ta.UPGD(c.model, eps=c.budget, alpha=2.5 * c.budget / steps, steps=steps,
                   random_start=True, loss="margin", decay=0.0)


@register_attack("TPGD", "Linf", "iterative")
def _tpgd(c: AttackContext) -> ta.Attack:
    steps = c.steps(20)
    return ta.TPGD(c.model, eps=c.budget, alpha=2.5 * c.budget / steps, steps=steps)


@register_attack("Jitter", "Linf", "iterative")
def _jitter(c: AttackContext) -> ta.Attack:
    steps = c.steps(20)
    return ta.Jitter(c.model, eps=c.budget, alpha=2.5 * c.budget / steps, steps=steps)


@register_attack("MIFGSM", "Linf", "iterative")
def _mifgsm(c: AttackContext) -> ta.Attack:
    steps = c.steps(20)
    return ta.MIFGSM(c.model, eps=c.budget, alpha=c.budget / steps * 2, steps=steps)


@register_attack("NIFGSM", "Linf", "iterative")
def _nifgsm(c: AttackContext) -> ta.Attack:
    steps = c.steps(20)
    return ta.NIFGSM(c.model, eps=c.budget, alpha=c.budget / steps * 2, steps=steps)


@register_attack("SINIFGSM", "Linf", "iterative")
def _sinifgsm(c: AttackContext) -> ta.Attack:
    steps = c.steps(10)
    return ta.SINIFGSM(c.model, eps=c.budget, alpha=c.budget / steps * 2, steps=steps, m=5)


@register_attack("VMIFGSM", "Linf", "iterative")
def _vmifgsm(c: AttackContext) -> ta.Attack:
    steps = c.steps(10)
    return ta.VMIFGSM(c.model, eps=c.budget, alpha=c.budget / steps * 2, steps=steps)


@register_attack("VNIFGSM", "Linf", "iterative")
def _vnifgsm(c: AttackContext) -> ta.Attack:
    steps = c.steps(10)
    return ta.VNIFGSM(c.model, eps=c.budget, alpha=c.budget / steps * 2, steps=steps)


@register_attack("DIFGSM", "Linf", "iterative")
def _difgsm(c: AttackContext) -> ta.Attack:
    # resize_rate < 1 keeps DIFGSM's random resize range non-empty even at 8x8.
    steps = c.steps(20)
    return ta.DIFGSM(c.model, eps=c.budget, alpha=c.budget / steps * 2, steps=steps,
                     decay=1.0, resize_rate=0.9)


@register_attack("TIFGSM", "Linf", "iterative", needs_rgb=True)
def _tifgsm(c: AttackContext) -> ta.Attack:
    steps = c.steps(20)
    return ta.TIFGSM(c.model, eps=c.budget, alpha=c.budget / steps * 2, steps=steps, decay=1.0,
                     len_kernel=5)


@register_attack("PIFGSM", "Linf", "iterative", needs_rgb=True)
def _pifgsm(c: AttackContext) -> ta.Attack:
    return ta.PIFGSM(c.model, max_epsilon=c.budget, num_iter_set=c.steps(10))


@register_attack("PIFGSMPP", "Linf", "iterative", needs_rgb=True)
def _pifgsmpp(c: AttackContext) -> ta.Attack:
    return ta.PIFGSMPP(c.model, max_epsilon=c.budget, num_iter_set=c.steps(10))


@register_attack("APGD", "Linf", "iterative", returns_clean=True)
def _apgd(c: AttackContext) -> ta.Attack:
    return ta.APGD(c.model, norm="Linf", eps=c.budget, steps=c.steps(50),
                   n_restarts=c.restarts(), loss="ce", seed=c.seed)


@register_attack("APGD-DLR", "Linf", "iterative", returns_clean=True, min_classes=3)
def _apgd_dlr(c: AttackContext) -> ta.Attack:
    return ta.APGD(c.model, norm="Linf", eps=c.budget, steps=c.steps(50),
                   n_restarts=c.restarts(), loss="dlr", seed=c.seed)


@register_attack("APGDT", "Linf", "iterative", returns_clean=True, min_classes=4, heavy=True)
def _apgdt(c: AttackContext) -> ta.Attack:
    return ta.APGDT(c.model, norm="Linf", eps=c.budget, steps=c.steps(50),
                    n_restarts=c.restarts(), seed=c.seed, n_classes=c.num_classes)


@register_attack("FAB", "Linf", "min-norm", returns_clean=True, heavy=True)
def _fab(c: AttackContext) -> ta.Attack:
    return ta.FAB(c.model, norm="Linf", eps=c.budget, steps=c.steps(20),
                  n_restarts=c.restarts(), seed=c.seed, n_classes=c.num_classes)


@register_attack("Square", "Linf", "score-based", returns_clean=True, heavy=True)
def _square(c: AttackContext) -> ta.Attack:
    return ta.Square(c.model, norm="Linf", eps=c.budget, n_queries=c.steps(1000),
                     n_restarts=1, p_init=0.3, seed=c.seed)


@register_attack("SPSA", "Linf", "score-based", heavy=True)
def _spsa(c: AttackContext) -> ta.Attack:
    return ta.SPSA(c.model, eps=c.budget, delta=0.01, lr=c.budget / 4, nb_iter=c.steps(20),
                   nb_sample=32, max_batch_size=256)


@register_attack("AutoAttack", "Linf", "ensemble", returns_clean=True, min_classes=4,
                 heavy=True)
def _autoattack(c: AttackContext) -> ta.Attack:
    # torchattacks' AutoAttack (10-iteration APGD/APGDT/FAB + Square), not the reference one.
    return ta.AutoAttack(c.model, norm="Linf", eps=c.budget, version="standard",
                         n_classes=c.num_classes, seed=c.seed)


# ---------------------------------------------------------------- L2


@register_attack("PGDL2", "L2", "iterative")
def _pgdl2(c: AttackContext) -> ta.Attack:
    steps = c.steps(20)
    return ta.PGDL2(c.model, eps=c.budget, alpha=2.5 * c.budget / steps, steps=steps)


@register_attack("APGD-L2", "L2", "iterative", returns_clean=True)
def _apgd_l2(c: AttackContext) -> ta.Attack:
    return ta.APGD(c.model, norm="L2", eps=c.budget, steps=c.steps(50),
                   n_restarts=c.restarts(), loss="ce", seed=c.seed)


@register_attack("FAB-L2", "L2", "min-norm", returns_clean=True, heavy=True)
def _fab_l2(c: AttackContext) -> ta.Attack:
    return ta.FAB(c.model, norm="L2", eps=c.budget, steps=c.steps(20),
                  n_restarts=c.restarts(), seed=c.seed, n_classes=c.num_classes)


@register_attack("Square-L2", "L2", "score-based", returns_clean=True, heavy=True)
def _square_l2(c: AttackContext) -> ta.Attack:
    return ta.Square(c.model, norm="L2", eps=c.budget, n_queries=c.steps(1000),
                     n_restarts=1, p_init=0.3, seed=c.seed)


@register_attack("CW", "L2", "min-norm", returns_clean=True, heavy=True)
def _cw(c: AttackContext) -> ta.Attack:
    # c >= 1, 100 steps, lr 0.05: the strongest setting inside an L2 budget on digits (probe).
    return ta.CW(c.model, c=1.0, kappa=0.0, steps=c.steps(100), lr=0.05)


@register_attack("DeepFool", "L2", "min-norm", heavy=True)
def _deepfool(c: AttackContext) -> ta.Attack:
    return ta.DeepFool(c.model, steps=c.steps(50), overshoot=0.02)


# ---------------------------------------------------------------- L1 and L0


@register_attack("EADL1", "L1", "min-norm", heavy=True)
def _eadl1(c: AttackContext) -> ta.Attack:
    return ta.EADL1(c.model, kappa=0, lr=0.01, binary_search_steps=c.steps(5),
                    max_iterations=100, initial_const=0.1, beta=0.01)


@register_attack("EADEN", "L1", "min-norm", heavy=True)
def _eaden(c: AttackContext) -> ta.Attack:
    return ta.EADEN(c.model, kappa=0, lr=0.01, binary_search_steps=c.steps(5),
                    max_iterations=100, initial_const=0.1, beta=0.01)


@register_attack("JSMA", "L0", "sparse", exact_classes=10, heavy=True)
def _jsma(c: AttackContext) -> ta.Attack:
    return ta.JSMA(c.model, theta=1.0, gamma=0.1)


@register_attack("SparseFool", "L0", "sparse", heavy=True)
def _sparsefool(c: AttackContext) -> ta.Attack:
    return ta.SparseFool(c.model, steps=c.steps(10), lam=3, overshoot=0.02)


@register_attack("OnePixel", "L0", "sparse", heavy=True)
def _onepixel(c: AttackContext) -> ta.Attack:
    return ta.OnePixel(c.model, pixels=int(c.budget), steps=c.steps(10), popsize=10)


@register_attack("Pixle", "L0", "sparse", heavy=True)
def _pixle(c: AttackContext) -> ta.Attack:
    side = max(1, int(c.budget**0.5))  # patches of at most `budget` pixels
    return ta.Pixle(c.model, x_dimensions=(1, side), y_dimensions=(1, side),
                    restarts=c.steps(20), max_iterations=10)


# ---------------------------------------------------------------- binding an attack to a model


class BoundAttack:
    """An attack bound to a model and budget, with one call: `attack(x, y) -> x_adv`."""

    def __init__(self, spec: AttackSpec, attack: ta.Attack, budget: float,
                 fallback: BoundAttack | None = None) -> None:
        self.spec, self.attack, self.budget, self.fallback = spec, attack, budget, fallback

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attack(x, y).detach().clamp(0, 1)

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples safe to train on: inside the budget, never the clean input.

        Points the attack left (numerically) unchanged or pushed outside the budget (unbounded
        attacks, after projection for Linf/L2) are replaced by the fallback attack: PGD-L2 for
        L2 attacks, Linf PGD otherwise (torchattacks has no L1/L0 PGD, so repaired rows of L1
        and L0 attacks lie inside the Linf budget instead).
        """
        x_adv = self(x, y)
        x_adv = (x + project(x_adv - x, self.spec.norm, self.budget)).clamp(0, 1)
        unchanged = perturbation_norm(x_adv - x, "L0") == 0
        bad = unchanged | ~within_budget(x_adv - x, self.spec.norm, self.budget)
        if bad.any() and self.fallback is not None:
            x_adv = x_adv.clone()
            x_adv[bad] = self.fallback(x[bad], y[bad])
        return x_adv


def bind_attack(name: str, model: nn.Module, threat: ThreatModel, *, num_classes: int,
                strength: float = 1.0, train_steps: int | None = None, seed: int = 0
                ) -> BoundAttack:
    """Builds `name` against `model` at the threat model's budget for the attack's norm.

    Training-time attacks (train_steps set) get a PGD fallback in the attack's own norm, used
    to repair the points a returns-clean or unbounded attack could not turn into an example.
    """
    spec = attack_spec(name)
    budget = threat.budget(spec.norm)
    ctx = AttackContext(model, budget, num_classes, strength, train_steps, seed)
    fallback = None
    if train_steps is not None and spec.name not in ("PGD", "PGDL2"):
        fallback_name = "PGDL2" if spec.norm == "L2" else "PGD"
        fallback = bind_attack(fallback_name, model, threat, num_classes=num_classes,
                               train_steps=train_steps, seed=seed)
    return BoundAttack(spec, spec.build(ctx), budget, fallback)
