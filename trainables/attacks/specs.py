"""Every attack the project knows, as data: what it is, what it needs, how it is built.

A row names the implementation (torchattacks' `PGD`) and its keyword arguments, where symbolic
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

Query attacks (access `scores` or `decisions`) take their query budget as their level:
`Square@q2500` may ask the model for at most 2,500 outputs per attacked point (query.py
counts them and refuses beyond); without a level they keep their row's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from trainables.attacks.threat import ThreatModel
from trainables.errors import ConfigError
from trainables.registry import Registry
from trainables.vocab import Access, Level, Norm

__all__ = [
    "ACCESS_ORDER",
    "CORRUPTIONS",
    "EPS",
    "PERCEPTUAL",
    "Access",
    "Alpha",
    "AttackContext",
    "AttackKind",
    "AttackSpec",
    "Impl",
    "Queries",
    "QueryBudget",
    "Scaled",
    "Steps",
    "attack_budget",
    "attack_spec",
    "check_attack_fits",
    "list_attacks",
    "list_families",
    "list_lp_attacks",
    "query_budget",
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
    queries: int | None = None  # a query attack's budget per point (its level), if named

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
class Queries(Symbol):
    """An iteration count that spends a query budget: (budget - `fixed`) // `per` iterations
    when the attack is named with a budget (`Square@q1000`), else `default` x strength. `per`
    is the queries one iteration makes per point, `fixed` those made once (initial scores)."""

    default: int
    per: int = 1
    fixed: int = 0

    def resolve(self, ctx: AttackContext, resolved: Mapping[str, Any]) -> int:
        if ctx.queries is None:
            return ctx.steps(self.default)
        return max(1, (ctx.queries - self.fixed) // self.per)


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


class AttackKind(StrEnum):
    """How an attack works, which says how it is scored and checked."""

    SINGLE_STEP = "single-step"
    ITERATIVE = "iterative"
    MIN_NORM = "min-norm"  # unbounded: a success counts only inside the budget
    SCORE_BASED = "score-based"  # queries output scores only
    DECISION_BASED = "decision-based"  # queries output labels only
    SPARSE = "sparse"  # L0
    ENSEMBLE = "ensemble"
    TRANSFORM = "transform"  # a non-Lp family's gradient attack on its corruption's latents
    SEARCH = "search"  # a non-Lp family's gradient-free companion (random or grid search)
    NOISE = "noise"  # no attack: random noise at the budget
    RANDOM = "random"  # one random corruption inside the family's box (augmentation)
    PERCEPTUAL = "perceptual"  # bounded in a frozen network's feature space (PAT's idea)


class Impl(StrEnum):
    """Where an attack's code comes from."""

    TORCHATTACKS = "torchattacks"  # `target` is the torchattacks class
    CORRUPTION = "corruption"  # trainables/attacks/unforeseen.py; `target` is the family
    NOISE = "noise"  # trainables/attacks/base.py's UniformNoise
    PERCEPTUAL = "perceptual"  # trainables/attacks/perceptual.py
    ART = "art"  # the adversarial-robustness-toolbox; `target` is its evasion attack class
    OURS = "ours"  # trainables/attacks/query.py (a random-search baseline no library has)
    SPARSE = "sparse"  # trainables/attacks/sparse.py (batched; torchattacks' is per image)


_GRADIENT_KINDS = (AttackKind.SINGLE_STEP, AttackKind.ITERATIVE, AttackKind.MIN_NORM,
                   AttackKind.TRANSFORM, AttackKind.PERCEPTUAL)
_BOUNDED_KINDS = (AttackKind.SINGLE_STEP, AttackKind.ITERATIVE, AttackKind.SCORE_BASED,
                  AttackKind.TRANSFORM, AttackKind.SEARCH, AttackKind.NOISE, AttackKind.RANDOM,
                  AttackKind.PERCEPTUAL)
# What each access lets an attacker do, weakest first: an attack needing one access runs for
# an attacker who has it or any stronger one
ACCESS_ORDER = (Access.DECISIONS, Access.SCORES, Access.WHITE_BOX)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    norm: Norm | None  # an Lp attack's norm, whose budget bounds (or thresholds) it; else None
    kind: AttackKind
    impl: Impl
    target: str  # the implementation's class (torchattacks) or corruption family
    args: Mapping[str, Any] = field(default_factory=dict)
    returns_clean: bool = False  # returns the clean input for points it fails to flip
    needs_rgb: bool = False
    min_classes: int = 2
    exact_classes: int | None = None
    heavy: bool = False  # too slow to craft on every training batch
    non_lp: str | None = None  # the non-Lp family (threat model) the attack belongs to
    access: Access = Access.WHITE_BOX

    @property
    def family(self) -> str:
        """The threat model the attack belongs to: its norm, or its non-Lp family."""
        return self.non_lp if self.non_lp is not None else str(self.norm)

    @property
    def bounded(self) -> bool:
        """True when the attack itself keeps to the budget (no post-hoc threshold needed)."""
        return self.kind in _BOUNDED_KINDS

    @property
    def gradient_based(self) -> bool:
        return self.kind in _GRADIENT_KINDS

    @property
    def query_based(self) -> bool:
        """An attack that only queries the model's outputs, so takes a query budget
        (`Square@q1000`): score- or decision-based. Non-Lp random searches do not: their
        evaluations are tied to their latent grid."""
        return self.kind in (AttackKind.SCORE_BASED, AttackKind.DECISION_BASED) \
            and self.access in (Access.SCORES, Access.DECISIONS)

    def runs_with(self, access: Access) -> bool:
        """Whether an attacker with `access` can run this attack (transfer attacks and random
        corruptions need nothing from the model; a white-box attacker can also query)."""
        if self.access in (Access.TRANSFER, Access.NONE):
            return True
        if access not in ACCESS_ORDER:
            return False
        return ACCESS_ORDER.index(access) >= ACCESS_ORDER.index(self.access)


_ATTACKS: Registry[AttackSpec] = Registry("attack")


def _row(name: str, norm: Norm, kind: AttackKind, cls: str, /, **args: Any) -> None:
    """A torchattacks attack: `cls` built with `args` (symbolic values filled in later)."""
    flags = {k: args.pop(k) for k in ("returns_clean", "needs_rgb", "min_classes",
                                      "exact_classes", "heavy") if k in args}
    access = Access.SCORES if kind in (AttackKind.SCORE_BASED, AttackKind.SPARSE) and \
        cls in ("Square", "SPSA", "OnePixel") else Access.WHITE_BOX
    _ATTACKS.add(name, AttackSpec(name, norm, kind, Impl.TORCHATTACKS, cls, args,
                                  access=access, **flags))


def _query(name: str, norm: Norm, kind: AttackKind, impl: Impl, target: str, /,
           **args: Any) -> None:
    """A query attack of another library than torchattacks (or ours): it sees the outputs
    only (scores, or labels for a decision-based one)."""
    access = Access.DECISIONS if kind == AttackKind.DECISION_BASED else Access.SCORES
    _ATTACKS.add(name, AttackSpec(name, norm, kind, impl, target, args, heavy=True,
                                  access=access))


LINF, L2, L1, L0 = Norm.LINF, Norm.L2, Norm.L1, Norm.L0
SINGLE, ITER, MINNORM = AttackKind.SINGLE_STEP, AttackKind.ITERATIVE, AttackKind.MIN_NORM
SCORE, SPARSE, ENSEMBLE = AttackKind.SCORE_BASED, AttackKind.SPARSE, AttackKind.ENSEMBLE
# ---- Linf, single step / iterative
_row("FGSM", LINF, SINGLE, "FGSM", eps=EPS)
_row("FFGSM", LINF, SINGLE, "FFGSM", eps=EPS, alpha=Scaled(1.25))
_row("RFGSM", LINF, ITER, "RFGSM", eps=EPS, alpha=Scaled(0.5), steps=Steps(10))
_row("BIM", LINF, ITER, "BIM", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("PGD", LINF, ITER, "PGD", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("EOTPGD", LINF, ITER, "EOTPGD", eps=EPS, steps=Steps(20), alpha=Alpha(2.5),
     eot_iter=2)
# margin loss and a random start: a differently-shaped loss than the CE family
_row("UPGD", LINF, ITER, "UPGD", eps=EPS, steps=Steps(20), alpha=Alpha(2.5),
     random_start=True, loss="margin", decay=0.0)
_row("TPGD", LINF, ITER, "TPGD", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("Jitter", LINF, ITER, "Jitter", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("MIFGSM", LINF, ITER, "MIFGSM", eps=EPS, steps=Steps(20), alpha=Alpha(2.0))
_row("NIFGSM", LINF, ITER, "NIFGSM", eps=EPS, steps=Steps(20), alpha=Alpha(2.0))
_row("SINIFGSM", LINF, ITER, "SINIFGSM", eps=EPS, steps=Steps(10), alpha=Alpha(2.0),
     m=5)
_row("VMIFGSM", LINF, ITER, "VMIFGSM", eps=EPS, steps=Steps(10), alpha=Alpha(2.0))
_row("VNIFGSM", LINF, ITER, "VNIFGSM", eps=EPS, steps=Steps(10), alpha=Alpha(2.0))
# resize_rate < 1 keeps DIFGSM's random resize range non-empty even at 8x8
_row("DIFGSM", LINF, ITER, "DIFGSM", eps=EPS, steps=Steps(20), alpha=Alpha(2.0),
     decay=1.0, resize_rate=0.9)
_row("TIFGSM", LINF, ITER, "TIFGSM", eps=EPS, steps=Steps(20), alpha=Alpha(2.0),
     decay=1.0, len_kernel=5, needs_rgb=True)
_row("PIFGSM", LINF, ITER, "PIFGSM", max_epsilon=EPS, num_iter_set=Steps(10),
     needs_rgb=True)
_row("PIFGSMPP", LINF, ITER, "PIFGSMPP", max_epsilon=EPS, num_iter_set=Steps(10),
     needs_rgb=True)
_row("APGD", LINF, ITER, "APGD", norm="Linf", eps=EPS, steps=Steps(50),
     n_restarts=RESTARTS, loss="ce", seed=SEED, returns_clean=True)
_row("APGD-DLR", LINF, ITER, "APGD", norm="Linf", eps=EPS, steps=Steps(50),
     n_restarts=RESTARTS, loss="dlr", seed=SEED, returns_clean=True, min_classes=3)
_row("APGDT", LINF, ITER, "APGDT", norm="Linf", eps=EPS, steps=Steps(50),
     n_restarts=RESTARTS, seed=SEED, n_classes=CLASSES, returns_clean=True, min_classes=4,
     heavy=True)
_row("FAB", LINF, MINNORM, "FAB", norm="Linf", eps=EPS, steps=Steps(20),
     n_restarts=RESTARTS, seed=SEED, n_classes=CLASSES, returns_clean=True, heavy=True)
# Square asks for every point's scores 3 times besides its iterations (torchattacks 3.5.1:
# the clean check, the initial margin, the final check); SPSA 2 x nb_sample per iteration
_row("Square", LINF, SCORE, "Square", norm="Linf", eps=EPS, n_queries=Queries(1000, fixed=3),
     n_restarts=1, p_init=0.3, seed=SEED, returns_clean=True, heavy=True)
_row("SPSA", LINF, SCORE, "SPSA", eps=EPS, delta=0.01, lr=Scaled(0.25),
     nb_iter=Queries(20, per=64), nb_sample=32, max_batch_size=256, heavy=True)
# torchattacks' AutoAttack (10-iteration APGD/APGDT/FAB + Square), not the reference one
_row("AutoAttack", LINF, ENSEMBLE, "AutoAttack", norm="Linf", eps=EPS, version="standard",
     n_classes=CLASSES, seed=SEED, returns_clean=True, min_classes=4, heavy=True)
# ---- L2
_row("PGDL2", L2, ITER, "PGDL2", eps=EPS, steps=Steps(20), alpha=Alpha(2.5))
_row("APGD-L2", L2, ITER, "APGD", norm="L2", eps=EPS, steps=Steps(50),
     n_restarts=RESTARTS, loss="ce", seed=SEED, returns_clean=True)
_row("FAB-L2", L2, MINNORM, "FAB", norm="L2", eps=EPS, steps=Steps(20),
     n_restarts=RESTARTS, seed=SEED, n_classes=CLASSES, returns_clean=True, heavy=True)
_row("Square-L2", L2, SCORE, "Square", norm="L2", eps=EPS, n_queries=Queries(1000, fixed=3),
     n_restarts=1, p_init=0.3, seed=SEED, returns_clean=True, heavy=True)
# c >= 1, 100 steps, lr 0.05: the strongest setting inside an L2 budget on digits (probe)
_row("CW", L2, MINNORM, "CW", c=1.0, kappa=0.0, steps=Steps(100), lr=0.05,
     returns_clean=True, heavy=True)
_row("DeepFool", L2, MINNORM, "DeepFool", steps=Steps(50), overshoot=0.02, heavy=True)
# ---- score-based query attacks of the adversarial-robustness-toolbox (ART 1.20): SimBA asks
# for every point's scores once, then twice per iteration; its steps are not bounded by a
# budget, so only the queries inside it can count (query.py keeps the first that fooled)
_query("SimBA", LINF, SCORE, Impl.ART, "SimBA", attack="px", epsilon=EPS,
       max_iter=Queries(1000, per=2, fixed=1), order="random")
# the DCT basis: an L2 step of 1/4 of the budget per accepted direction (freq_dim 4, stride 2
# fit 8x8 and 28x28 images)
_query("SimBA-DCT", L2, SCORE, Impl.ART, "SimBA", attack="dct", epsilon=Scaled(0.25),
       max_iter=Queries(1000, per=2, fixed=1), freq_dim=4, stride=2, order="random")
# the baseline every query attack must beat: random vertices of the Linf ball
_query("RandomSearch", LINF, SCORE, Impl.OURS, "vertices", queries=Queries(1000))
# ---- no attack: noise at the budget (what a masking check compares gradient attacks with)
_ATTACKS.add("Noise", AttackSpec("Noise", LINF, AttackKind.NOISE, Impl.NOISE, "uniform",
                                 access=Access.SCORES))
_ATTACKS.add("Noise-L2", AttackSpec("Noise-L2", L2, AttackKind.NOISE, Impl.NOISE, "uniform",
                                    access=Access.SCORES))
# ---- L1 and L0
_row("EADL1", L1, MINNORM, "EADL1", kappa=0, lr=0.01, binary_search_steps=Steps(5),
     max_iterations=100, initial_const=0.1, beta=0.01, heavy=True)
_row("EADEN", L1, MINNORM, "EADEN", kappa=0, lr=0.01, binary_search_steps=Steps(5),
     max_iterations=100, initial_const=0.1, beta=0.01, heavy=True)
_row("JSMA", L0, SPARSE, "JSMA", theta=1.0, gamma=0.1, exact_classes=10, heavy=True)
_row("SparseFool", L0, SPARSE, "SparseFool", steps=Steps(10), lam=3, overshoot=0.02,
     heavy=True)
_row("OnePixel", L0, SPARSE, "OnePixel", pixels=PIXELS, steps=Steps(10), popsize=10,
     heavy=True)
# Pixle's search batched (sparse.py), with torchattacks' row of arguments; it reads scores only
_ATTACKS.add("Pixle", AttackSpec("Pixle", L0, SPARSE, Impl.SPARSE, "Pixle", {
    "x_dimensions": PATCH_SIDE, "y_dimensions": PATCH_SIDE, "restarts": Steps(20),
    "max_iterations": 10}, heavy=True, access=Access.SCORES))


# ---- non-Lp families (trainables/attacks/unforeseen.py): each registers its gradient attack
# (`<Family>`, named with a level: `Elastic@medium`) and its gradient-free companion
# (`<Family>-RS`: random search over the same latents with as many model evaluations);
# Spatial also has `Spatial-Grid`, the worst-of-k grid of Engstrom et al. 2019, which beats
# first-order attacks on rotations and translations (their loss is far from concave)
# The non-Lp families, and the budget ceiling of those whose budget is a mixing weight
CORRUPTIONS: dict[str, float | None] = {
    "Spatial": None, "Flow": None, "Elastic": None, "JPEG": None, "Contrast": None,
    "Fog": None, "Snow": None, "Gabor": None, "Blur": 1.0,
    "Whirlpool": None, "Glitch": None, "Prison": None}
FAMILY_MAX_BUDGET: dict[str, float] = {k: v for k, v in CORRUPTIONS.items() if v is not None}


def _family(name: str, *, steps: int = 20) -> None:
    _ATTACKS.add(name, AttackSpec(name, None, AttackKind.TRANSFORM, Impl.CORRUPTION, name,
                                  {"steps": Steps(steps)}, non_lp=name))
    _ATTACKS.add(f"{name}-RS", AttackSpec(f"{name}-RS", None, AttackKind.SEARCH,
                                          Impl.CORRUPTION, name,
                                          {"steps": Steps(steps), "search": "random"},
                                          non_lp=name, access=Access.SCORES))
    # a random corruption (no optimisation): augmentation the search can weigh against attacks
    _ATTACKS.add(f"{name}-Rand", AttackSpec(f"{name}-Rand", None, AttackKind.RANDOM,
                                            Impl.CORRUPTION, name, {"search": "draw"},
                                            non_lp=name, access=Access.NONE))


for _name in CORRUPTIONS:
    _family(_name)
_ATTACKS.add("Spatial-Grid", AttackSpec("Spatial-Grid", None, AttackKind.SEARCH,
                                        Impl.CORRUPTION, "Spatial", {"search": "grid"},
                                        non_lp="Spatial", access=Access.SCORES))
# PAT's idea (Laidlaw et al. 2021) with the trial's frozen teacher encoder as the perceptual
# network: the budget bounds the relative change of the teacher's features, not pixels
PERCEPTUAL = "Perceptual"
_ATTACKS.add(PERCEPTUAL, AttackSpec(PERCEPTUAL, None, AttackKind.PERCEPTUAL, Impl.PERCEPTUAL,
                                    PERCEPTUAL, {"steps": Steps(10)}, non_lp=PERCEPTUAL))


def list_attacks() -> list[str]:
    """Every attack's name (a non-Lp family's attacks are named with a level when used)."""
    return _ATTACKS.names()


def list_lp_attacks() -> list[str]:
    return [name for name in _ATTACKS.names() if _ATTACKS.get(name).norm is not None]


def list_families() -> list[str]:
    """The non-Lp families: the corruptions and the perceptual threat model."""
    return sorted([*CORRUPTIONS, PERCEPTUAL])


@dataclass(frozen=True)
class QueryBudget:
    """A query attack's level: at most `count` model outputs per attacked point."""

    count: int

    PREFIX = "q"

    def __str__(self) -> str:
        return f"{self.PREFIX}{self.count}"


def _levels_text() -> str:
    return f"{', '.join(lv.value for lv in Level)} (non-Lp families) or q<N> (a query budget)"


def split_name(name: str) -> tuple[str, Level | QueryBudget | None]:
    """`Elastic@medium` -> ("Elastic", Level.MEDIUM); `Square@q2500` -> ("Square",
    QueryBudget(2500)); `PGD` -> ("PGD", None)."""
    base, sep, level = name.partition("@")
    if not sep:
        return name, None
    count = level.removeprefix(QueryBudget.PREFIX)
    if level.startswith(QueryBudget.PREFIX) and count.lstrip("-").isdigit():
        if int(count) < 1:
            raise ConfigError(f"attack {name!r}: a query budget must be at least 1 query per "
                              f"point, got {count}")
        return base, QueryBudget(int(count))
    try:
        return base, Level(level)
    except ValueError:
        raise ConfigError(f"attack {name!r}: level {level!r} does not exist; choose "
                          f"{_levels_text()}") from None


def attack_spec(name: str) -> AttackSpec:
    """The spec of attack `name`; a non-Lp family's attack needs a level (`Elastic@medium`),
    a query attack may take a query budget (`Square@q1000`), any other Lp attack takes none
    (its budget is the threat model's eps for its norm)."""
    base, level = split_name(name)
    spec = _ATTACKS.get(base)
    if isinstance(level, QueryBudget):
        if not spec.query_based:
            raise ConfigError(f"attack {name!r}: a query budget applies to score- or "
                              f"decision-based attacks only; {base} needs {spec.access} "
                              "access, its budget is its iterations")
        return spec
    if spec.non_lp is not None and level is None:
        raise ConfigError(f"attack {name!r} needs a distortion level: "
                          f"{', '.join(f'{name}@{lv.value}' for lv in Level)}")
    if spec.non_lp is None and level is not None:
        raise ConfigError(f"attack {name!r}: an Lp attack takes no level; its budget is "
                          f"threat_model.eps.{spec.norm}")
    return spec


def query_budget(name: str) -> int | None:
    """The query budget per point an attack was named with (`Square@q1000` -> 1000)."""
    level = split_name(name)[1]
    return level.count if isinstance(level, QueryBudget) else None


def attack_budget(name: str, threat: ThreatModel) -> float:
    """The perturbation budget of attack `name` under `threat`: its norm's eps, or its
    family's level."""
    spec = attack_spec(name)
    if spec.norm is not None:
        return threat.budget(spec.norm)
    level = split_name(name)[1]
    assert isinstance(level, Level) and spec.non_lp is not None
    return threat.level_budget(spec.non_lp, level)


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
