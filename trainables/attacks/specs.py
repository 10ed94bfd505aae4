"""Every attack the project knows, as data: what it is, what it needs, how it is built.

A row names the implementation (`torchattacks:PGD`) and its keyword arguments, where symbolic
values (EPS, Steps(20), Alpha(2.5), ...) are filled in when the attack is built against a model
and a budget (trainables/attacks/lp.py). The table itself imports nothing heavy, so a space is
checked without torch.

The traps of torchattacks 3.5.1 measured in robustness-notes are recorded here:
- TIFGSM / PIFGSM / PIFGSMPP use 3-channel kernels: refused for gray images (`needs_rgb`);
- JSMA hard-codes 10 classes; DLR losses need >= 3 classes, targeted DLR >= 4;
- SPSA's defaults barely perturb (1 iteration): we run 20+ iterations at lr eps/4;
- minimum-norm and sparse attacks are unbounded: a success only counts inside the budget
  (evaluate.py), and their training outputs are projected or repaired (base.py);
- APGD, APGDT, FAB, Square, CW and AutoAttack return the clean input where they fail
  (`returns_clean`): those points are never fed to training as they are;
- FAB with norm L1 crashes inside torchattacks 3.5.1 (UnboundLocalError): not offered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainables.attacks.threat import ThreatModel
from trainables.errors import ConfigError
from trainables.registry import Registry
from trainables.vocab import Level, Norm

__all__ = [
    "EPS",
    "Alpha",
    "AttackContext",
    "AttackSpec",
    "Scaled",
    "Steps",
    "attack_budget",
    "attack_spec",
    "check_attack_fits",
    "list_attacks",
    "list_families",
    "list_lp_attacks",
    "split_name",
]


# ---------------------------------------------------------------- symbolic argument values


@dataclass(frozen=True)
class AttackContext:
    """What a built attack may depend on. `strength` scales iterations, queries, restarts."""

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


class Symbol:
    """An argument value that depends on the context (and on the arguments resolved so far)."""

    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Scaled(Symbol):
    """`factor` x the budget (EPS is Scaled(1))."""

    factor: float = 1.0

    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> float:
        return self.factor * ctx.budget


EPS = Scaled(1.0)


@dataclass(frozen=True)
class Steps(Symbol):
    """An iteration (or query) count: `default` x strength, or the training step count."""

    default: int

    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> int:
        return ctx.steps(self.default)


@dataclass(frozen=True)
class Alpha(Symbol):
    """A step size of `factor` x budget / steps (resolved after the `steps_key` argument)."""

    factor: float
    steps_key: str = "steps"

    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> float:
        return self.factor * ctx.budget / resolved[self.steps_key]


@dataclass(frozen=True)
class _Restarts(Symbol):
    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> int:
        return ctx.restarts()


@dataclass(frozen=True)
class _Seed(Symbol):
    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> int:
        return ctx.seed


@dataclass(frozen=True)
class _Classes(Symbol):
    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> int:
        return ctx.num_classes


@dataclass(frozen=True)
class _Pixels(Symbol):
    """An L0 budget as a whole number of pixels."""

    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> int:
        return int(ctx.budget)


@dataclass(frozen=True)
class _PatchSide(Symbol):
    """Pixle's patch size range: patches of at most `budget` pixels."""

    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> tuple[int, int]:
        return (1, max(1, int(ctx.budget**0.5)))


RESTARTS, SEED, CLASSES, PIXELS, PATCH_SIDE = _Restarts(), _Seed(), _Classes(), _Pixels(), \
    _PatchSide()


def resolve_args(args: Mapping[str, Any], ctx: AttackContext) -> dict[str, Any]:
    """Fills in the symbolic values, in order (an Alpha reads the steps resolved before it)."""
    resolved: dict[str, Any] = {}
    for key, value in args.items():
        resolved[key] = value.resolve(ctx, resolved) if isinstance(value, Symbol) else value
    return resolved


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class AttackSpec:
    name: str
    norm: Norm | None  # an Lp attack's norm, whose budget bounds (or thresholds) it; else None
    kind: str  # single-step | iterative | min-norm | score-based | sparse | ensemble | transform
    #            | search (a non-Lp family's gradient-free companion)
    impl: str  # "torchattacks:<Class>" | "unforeseen:<Family>"
    args: Mapping[str, Any] = field(default_factory=dict)
    returns_clean: bool = False  # returns the clean input for points it fails to flip
    needs_rgb: bool = False
    min_classes: int = 2
    exact_classes: int | None = None
    heavy: bool = False  # too slow to craft on every training batch
    unforeseen: str | None = None  # the non-Lp family (threat model) a transform attack belongs to

    @property
    def family(self) -> str:
        """The threat model the attack belongs to: its norm, or its non-Lp family."""
        return self.unforeseen if self.unforeseen is not None else str(self.norm)

    @property
    def bounded(self) -> bool:
        """True when the attack itself keeps to the budget (no post-hoc threshold needed)."""
        return self.kind in ("single-step", "iterative", "score-based", "transform", "search",
                             "noise")

    @property
    def gradient_based(self) -> bool:
        return self.kind in ("single-step", "iterative", "min-norm", "transform")


_ATTACKS: Registry[AttackSpec] = Registry("attack")


def _row(name: str, norm: Norm, kind: str, impl: str, /, **args: Any) -> None:
    flags = {k: args.pop(k) for k in ("returns_clean", "needs_rgb", "min_classes",
                                      "exact_classes", "heavy") if k in args}
    _ATTACKS.add(name, AttackSpec(name, norm, kind, f"torchattacks:{impl}", args, **flags))


LINF, L2, L1, L0 = Norm.LINF, Norm.L2, Norm.L1, Norm.L0
# ---- Linf, single step / iterative
_row("FGSM", LINF, "single-step", "FGSM", eps=EPS)
_row("FFGSM", LINF, "single-step", "FFGSM", eps=EPS, alpha=Scaled(1.25))
_row("RFGSM", LINF, "iterative", "RFGSM", eps=EPS, alpha=Scaled(0.5), steps=Steps(10))
_row("BIM", LINF, "iterative", "BIM", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("PGD", LINF, "iterative", "PGD", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("EOTPGD", LINF, "iterative", "EOTPGD", eps=EPS, steps=Steps(20), alpha=Alpha(2.5),
     eot_iter=2)
# margin loss and a random start: a differently-shaped loss than the CE family
_row("UPGD", LINF, "iterative", "UPGD", eps=EPS, steps=Steps(20), alpha=Alpha(2.5),
     random_start=True, loss="margin", decay=0.0)
_row("TPGD", LINF, "iterative", "TPGD", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("Jitter", LINF, "iterative", "Jitter", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("MIFGSM", LINF, "iterative", "MIFGSM", eps=EPS, steps=Steps(20), alpha=Alpha(2.0))
_row("NIFGSM", LINF, "iterative", "NIFGSM", eps=EPS, steps=Steps(20), alpha=Alpha(2.0))
_row("SINIFGSM", LINF, "iterative", "SINIFGSM", eps=EPS, steps=Steps(10), alpha=Alpha(2.0),
     m=5)
_row("VMIFGSM", LINF, "iterative", "VMIFGSM", eps=EPS, steps=Steps(10), alpha=Alpha(2.0))
_row("VNIFGSM", LINF, "iterative", "VNIFGSM", eps=EPS, steps=Steps(10), alpha=Alpha(2.0))
# resize_rate < 1 keeps DIFGSM's random resize range non-empty even at 8x8
_row("DIFGSM", LINF, "iterative", "DIFGSM", eps=EPS, steps=Steps(20), alpha=Alpha(2.0),
     decay=1.0, resize_rate=0.9)
_row("TIFGSM", LINF, "iterative", "TIFGSM", eps=EPS, steps=Steps(20), alpha=Alpha(2.0),
     decay=1.0, len_kernel=5, needs_rgb=True)
_row("PIFGSM", LINF, "iterative", "PIFGSM", max_epsilon=EPS, num_iter_set=Steps(10),
     needs_rgb=True)
_row("PIFGSMPP", LINF, "iterative", "PIFGSMPP", max_epsilon=EPS, num_iter_set=Steps(10),
     needs_rgb=True)
_row("APGD", LINF, "iterative", "APGD", norm="Linf", eps=EPS, steps=Steps(50),
     n_restarts=RESTARTS, loss="ce", seed=SEED, returns_clean=True)
_row("APGD-DLR", LINF, "iterative", "APGD", norm="Linf", eps=EPS, steps=Steps(50),
     n_restarts=RESTARTS, loss="dlr", seed=SEED, returns_clean=True, min_classes=3)
_row("APGDT", LINF, "iterative", "APGDT", norm="Linf", eps=EPS, steps=Steps(50),
     n_restarts=RESTARTS, seed=SEED, n_classes=CLASSES, returns_clean=True, min_classes=4,
     heavy=True)
_row("FAB", LINF, "min-norm", "FAB", norm="Linf", eps=EPS, steps=Steps(20),
     n_restarts=RESTARTS, seed=SEED, n_classes=CLASSES, returns_clean=True, heavy=True)
_row("Square", LINF, "score-based", "Square", norm="Linf", eps=EPS, n_queries=Steps(1000),
     n_restarts=1, p_init=0.3, seed=SEED, returns_clean=True, heavy=True)
_row("SPSA", LINF, "score-based", "SPSA", eps=EPS, delta=0.01, lr=Scaled(0.25),
     nb_iter=Steps(20), nb_sample=32, max_batch_size=256, heavy=True)
# torchattacks' AutoAttack (10-iteration APGD/APGDT/FAB + Square), not the reference one
_row("AutoAttack", LINF, "ensemble", "AutoAttack", norm="Linf", eps=EPS, version="standard",
     n_classes=CLASSES, seed=SEED, returns_clean=True, min_classes=4, heavy=True)
# ---- L2
_row("PGDL2", L2, "iterative", "PGDL2", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("APGD-L2", L2, "iterative", "APGD", norm="L2", eps=EPS, steps=Steps(50),
     n_restarts=RESTARTS, loss="ce", seed=SEED, returns_clean=True)
_row("FAB-L2", L2, "min-norm", "FAB", norm="L2", eps=EPS, steps=Steps(20),
     n_restarts=RESTARTS, seed=SEED, n_classes=CLASSES, returns_clean=True, heavy=True)
_row("Square-L2", L2, "score-based", "Square", norm="L2", eps=EPS, n_queries=Steps(1000),
     n_restarts=1, p_init=0.3, seed=SEED, returns_clean=True, heavy=True)
# c >= 1, 100 steps, lr 0.05: the strongest setting inside an L2 budget on digits (probe)
_row("CW", L2, "min-norm", "CW", c=1.0, kappa=0.0, steps=Steps(100), lr=0.05,
     returns_clean=True, heavy=True)
_row("DeepFool", L2, "min-norm", "DeepFool", steps=Steps(50), overshoot=0.02, heavy=True)
# ---- no attack: noise at the budget (what a masking check compares gradient attacks with)
_ATTACKS.add("Noise", AttackSpec("Noise", LINF, "noise", "noise:uniform"))
_ATTACKS.add("Noise-L2", AttackSpec("Noise-L2", L2, "noise", "noise:uniform"))
# ---- L1 and L0
_row("EADL1", L1, "min-norm", "EADL1", kappa=0, lr=0.01, binary_search_steps=Steps(5),
     max_iterations=100, initial_const=0.1, beta=0.01, heavy=True)
_row("EADEN", L1, "min-norm", "EADEN", kappa=0, lr=0.01, binary_search_steps=Steps(5),
     max_iterations=100, initial_const=0.1, beta=0.01, heavy=True)
_row("JSMA", L0, "sparse", "JSMA", theta=1.0, gamma=0.1, exact_classes=10, heavy=True)
_row("SparseFool", L0, "sparse", "SparseFool", steps=Steps(10), lam=3, overshoot=0.02,
     heavy=True)
_row("OnePixel", L0, "sparse", "OnePixel", pixels=PIXELS, steps=Steps(10), popsize=10,
     heavy=True)
_row("Pixle", L0, "sparse", "Pixle", x_dimensions=PATCH_SIDE, y_dimensions=PATCH_SIDE,
     restarts=Steps(20), max_iterations=10, heavy=True)


# ---- non-Lp families (trainables/attacks/unforeseen.py): each registers its gradient attack
# (`<Family>`, named with a level: `Elastic@medium`) and its gradient-free companion
# (`<Family>-RS`: random search over the same latents with as many model evaluations);
# Spatial also has `Spatial-Grid`, the worst-of-k grid of Engstrom et al. 2019, which beats
# first-order attacks on rotations and translations (their loss is far from concave)
FAMILY_MAX_BUDGET: dict[str, float] = {}  # families whose budget has a ceiling (a mixing weight)


def _family(name: str, *, steps: int = 20, max_budget: float | None = None) -> None:
    impl = f"unforeseen:{name}"
    _ATTACKS.add(name, AttackSpec(name, None, "transform", impl, {"steps": Steps(steps)},
                                  unforeseen=name))
    _ATTACKS.add(f"{name}-RS", AttackSpec(f"{name}-RS", None, "search", impl,
                                          {"steps": Steps(steps), "search": "random"},
                                          unforeseen=name))
    if max_budget is not None:
        FAMILY_MAX_BUDGET[name] = max_budget


for _name in ("Spatial", "Flow", "Elastic", "JPEG", "Contrast", "Fog", "Snow", "Gabor"):
    _family(_name)
_family("Blur", max_budget=1.0)
_ATTACKS.add("Spatial-Grid", AttackSpec("Spatial-Grid", None, "search", "unforeseen:Spatial",
                                        {"search": "grid"}, unforeseen="Spatial"))


def list_attacks() -> list[str]:
    """Every attack's name (a non-Lp family's attacks are named with a level when used)."""
    return _ATTACKS.names()


def list_lp_attacks() -> list[str]:
    return [name for name in _ATTACKS.names() if _ATTACKS.get(name).norm is not None]


def list_families() -> list[str]:
    """The non-Lp families."""
    return sorted({spec.unforeseen for spec in map(_ATTACKS.get, _ATTACKS.names())
                   if spec.unforeseen is not None})


def split_name(name: str) -> tuple[str, Level | None]:
    """`Elastic@medium` -> ("Elastic", Level.MEDIUM); `PGD` -> ("PGD", None)."""
    base, sep, level = name.partition("@")
    if not sep:
        return name, None
    try:
        return base, Level(level)
    except ValueError:
        raise ConfigError(f"attack {name!r}: level {level!r} does not exist; choose "
                          f"{', '.join(lv.value for lv in Level)}") from None


def attack_spec(name: str) -> AttackSpec:
    """The spec of attack `name`; a non-Lp family's attack needs a level (`Elastic@medium`),
    an Lp attack takes none (its budget is the threat model's eps for its norm)."""
    base, level = split_name(name)
    spec = _ATTACKS.get(base)
    if spec.unforeseen is not None and level is None:
        raise ConfigError(f"attack {name!r} needs a distortion level: "
                          f"{', '.join(f'{name}@{lv.value}' for lv in Level)}")
    if spec.unforeseen is None and level is not None:
        raise ConfigError(f"attack {name!r}: an Lp attack takes no level; its budget is "
                          f"threat_model.eps.{spec.norm}")
    return spec


def attack_budget(name: str, threat: ThreatModel) -> float:
    """The budget of attack `name` under `threat`: its norm's eps, or its family's level."""
    spec = attack_spec(name)
    if spec.norm is not None:
        return threat.budget(spec.norm)
    level = split_name(name)[1]
    assert level is not None and spec.unforeseen is not None
    return threat.level_budget(spec.unforeseen, level)


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
    budget = attack_budget(name, threat)
    ceiling = FAMILY_MAX_BUDGET.get(spec.family)
    if ceiling is not None and budget > ceiling:
        raise ConfigError(f"attack {name}: the {spec.family} budget {budget:g} is above its "
                          f"ceiling {ceiling:g} (a mixing weight); lower threat_model.levels."
                          f"{spec.family}")
    return spec
