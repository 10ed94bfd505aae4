"""TrialConfig: everything one trial needs, each value declared once, validated where it enters.

Every field of the dataclass carries its allowed range (or choices) and its doc; FIELDS and
RECIPE_FIELDS are read off the dataclass, and the space validator checks searched ranges
against the same declarations. Defaults are the papers' defaults where the papers have one
(see method-notes), scaled to a minutes-long CPU budget where they are schedule values.
Imports nothing heavy: the space validator uses it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any

from trainables.errors import ConfigError
from trainables.vocab import (
    HELDOUT_FAMILY_MEAN,
    Access,
    CraftAgainst,
    EvalLosses,
    FeatLoss,
    LrSchedule,
    MetaOrder,
    Optimizer,
    PclLayers,
    PoolCombine,
    Precision,
    StudentInit,
    TaskSide,
    TrainOn,
    UniGSize,
)

__all__ = ["CLAIMS", "FIDELITY_FIELDS", "FIELDS", "LOSS_WEIGHTS", "RECIPE_FIELDS", "RENAMED",
           "RUNTIME_KEYS", "Fidelity", "Field", "TrialConfig", "plain"]

# The accesses an objective may assume (no decision-based attack is offered yet)
CLAIMS = (Access.WHITE_BOX, Access.SCORES)
# Where a trial runs, not what it trains: never part of a logged recipe.
RUNTIME_KEYS = ("device", "threads", "cache_dir")


@dataclass(frozen=True)
class Field:
    """How one config value is checked: its kind, range or choices, and what it means."""

    kind: str  # float | int | bool | choice | str | attacks | mapping
    low: float | None = None
    high: float | None = None
    choices: type[StrEnum] | None = None
    optional: bool = False  # None allowed
    doc: str = ""
    recipe: bool = False  # searchable: part of a defense recipe, not of the setting
    # a loss term's weight: the tasks its term is computed on (a reference recipe leaves every
    # weight it does not name at 0); None for any other value
    applies: TaskSide | None = None

    @property
    def loss(self) -> bool:
        return self.applies is not None

    def check(self, name: str, value: Any) -> Any:
        """Returns the value in canonical form, or raises ConfigError naming what is allowed."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{name} must be set (got null)")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
            return value
        if self.kind in ("float", "int"):
            return self._number(name, value)
        if self.kind == "choice":
            assert self.choices is not None
            try:
                return self.choices(value)
            except ValueError:
                raise ConfigError(f"{name}={value!r} is not allowed; choose one of "
                                  f"{', '.join(c.value for c in self.choices)}") from None
        if self.kind == "attacks":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of attack names, got {value!r}")
            if len(set(value)) != len(value):
                raise ConfigError(f"{name} lists an attack twice: {list(value)}")
            return tuple(value)
        if self.kind == "mapping":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name} must be a mapping, got {value!r}")
            return dict(value)
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value

    def _number(self, name: str, value: Any) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if self.kind == "int":
            if not math.isfinite(value) or float(value) != int(value):
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if not math.isfinite(value) or (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high):
            raise ConfigError(f"{name}={value!r} is out of range: allowed "
                              f"[{self.low:g}, {self.high:g}]")
        return value


def _kind_of(default: Any) -> tuple[str, type[StrEnum] | None]:
    if isinstance(default, bool):
        return "bool", None
    if isinstance(default, StrEnum):
        return "choice", type(default)
    if isinstance(default, int):
        return "int", None
    if isinstance(default, float):
        return "float", None
    if isinstance(default, tuple):
        return "attacks", None
    return "str", None


def _value(default: Any, doc: str, *, low: float | None = None, high: float | None = None,
           recipe: bool = False, applies: TaskSide | None = None, kind: str | None = None,
           optional: bool = False) -> Any:
    """A dataclass field whose metadata says how it is checked (kind inferred from default)."""
    inferred, choices = _kind_of(default)
    spec = Field(kind or inferred, low, high, choices, optional, doc,
                 recipe or applies is not None, applies)
    return field(default=default, metadata={"spec": spec})


def _recipe(default: Any, doc: str, **kwargs: Any) -> Any:
    return _value(default, doc, recipe=True, **kwargs)


def _weight(default: float, doc: str, applies: TaskSide = TaskSide.ALL) -> Any:
    """The weight of one loss term (trainables/defense/losses.py computes it on the tasks of
    `applies`): a recipe value in [0, 100]."""
    return _value(default, doc, applies=applies, low=0.0, high=100.0)


@dataclass(frozen=True)
class TrialConfig:
    # ---- setup: the setting a recipe is trained and scored in
    dataset: str = _value("digits", "data set name (trainables.setting.setup.list_datasets())")
    data_dir: str | None = _value(None, "directory holding a data set's standard files",
                                  kind="str", optional=True)
    download: bool = _value(False, "download missing data set files (needs a network)")
    arch: str = _value("auto", "architecture, or 'auto' for the data set's default")
    threat_model: dict[str, Any] | None = _value(
        None, "{norm, eps: {Linf, L2, L1, L0}} overriding the data set's default",
        kind="mapping", optional=True)
    pool: tuple[str, ...] = _value(("PGD", "MIFGSM", "FGSM"),
                                   "the attacker pool this trial trains against")
    heldout: tuple[str, ...] = _value(("APGD-DLR", "Square", "CW"),
                                      "held-out attacks: the search objective")
    sealed: tuple[str, ...] = _value((), "sealed attacks: final report only")
    access: Access = _value(
        Access.WHITE_BOX, "the attacker the objective assumes (the claim): white-box "
        "(gradients) or scores (a served model: output scores under a query budget); the "
        "masking checks that invalidate that claim zero a search objective")
    craft_against: CraftAgainst = _value(
        CraftAgainst.STUDENT, "white-box against the student, or transfer from a fixed target")
    epochs: int = _value(20, "training epochs", low=1, high=100000)
    batch_size: int = _value(128, "training batch size", low=2, high=100000)
    eval_every: int = _value(4, "epochs between evaluations (one report each)",
                             low=1, high=100000)
    eval_samples: int = _value(256, "validation points for robust accuracy; 0 = all",
                               low=0, high=10_000_000)
    test_samples: int = _value(0, "test points of the final evaluation; 0 = all",
                               low=0, high=10_000_000)
    autoattack_samples: int = _value(0, "of those, how many AutoAttack runs on, a block per seed "
                                     "(its cost dominates a final evaluation); 0 = all",
                                     low=0, high=10_000_000)
    eval_batch_size: int = _value(256, "evaluation batch size", low=2, high=100000)
    masking_samples: int = _value(
        128, "validation points for the final gradient-masking checks; 0 = off",
        low=0, high=100000)
    teacher_epochs: int = _value(30, "epochs of the teacher and target", low=1, high=100000)
    select_by: str = _value(HELDOUT_FAMILY_MEAN, "the validation metric early stopping selects "
                            "by (a search sets it to its objective)")
    seed: int = _value(0, "initialisation, batch order and attack seed", low=0, high=2**31 - 1)
    data_seed: int = _value(0, "data split, teacher, target and transfer-set seed (what every "
                            "trial of a search shares)", low=0, high=2**31 - 1)
    device: str = _value("auto", "auto | cpu | cuda | cuda:N")
    threads: int = _value(0, "torch CPU threads; 0 = torch's default", low=0, high=1024)
    cache_dir: str | None = _value(None, "where teachers and targets are cached",
                                   kind="str", optional=True)
    # ---- speed switches (what they change is stated; tests bound it)
    fuse_tasks: bool = _value(True, "the tasks of a step share one forward pass (per-sample "
                              "results are the same; batch sums differ by float round-off)")
    stack_pool: bool = _value(True, "the pool's iterative attacks are crafted in lockstep, one "
                              "pass per step over all of them, and the worst of the pool is "
                              "picked in one pass (the same up to float round-off)")
    eval_precision: Precision = _value(
        Precision.AUTO, "what the evaluations' (validation and final) non-Lp and L0 attacks "
        "craft in: float32, bfloat16 (autocast; every success they find is confirmed in "
        "float32 and every point judged in float32, so only the search path changes: a test "
        "bounds it) or auto (bfloat16 where the device computes it natively); AutoAttack and "
        "the masking checks are float32 always")
    eval_losses: EvalLosses = _value(
        EvalLosses.CE_MARGIN, "the two passes of the evaluations' non-Lp gradient attacks: "
        "ce-margin (CE, then the margin loss at the same iterations on the points CE left) or "
        "margin-ce (the margin loss, then CE at half the iterations on the points it left: "
        "a final evaluation without AutoAttack 1.35x faster at mnist5k size, family means "
        "within half a point; a test bounds the difference)")
    train_precision: Precision = _value(
        Precision.AUTO, "what training (the pool's crafting and the update's passes) computes "
        "in: float32, bfloat16 (autocast on the networks' passes, mixed precision: the "
        "weights, the optimiser's state, the loss terms and the update stay float32; the "
        "trained model differs from float32's by about a seed's "
        "spread: a test bounds it) or auto (bfloat16 where the device computes it natively)")

    # ---- recipe: optimisation and training hygiene (Rice et al. 2020, Pang et al. 2021,
    # Gowal et al. 2020: early stopping, weight decay and weight averaging move robust
    # accuracy as much as most algorithmic changes)
    # MID uses lr 1e-4 over 120 MNIST epochs; ours are ~100x fewer steps
    lr: float = _recipe(1e-3, "outer learning rate of the student", low=1e-6, high=1.0)
    optimizer: Optimizer = _recipe(Optimizer.ADAM, "adam, adamw (decoupled weight decay) or sgd "
                                   "(momentum 0.9, Nesterov)")
    weight_decay: float = _recipe(0.0, "weight decay of the student's weights (L2 for adam and "
                                  "sgd, decoupled for adamw)", low=0.0, high=0.1)
    lr_schedule: LrSchedule = _recipe(LrSchedule.CONSTANT, "constant; cosine to 0 over the "
                                      "updates; piecewise: x0.1 at half and at 3/4 of the epochs")
    ema: float = _recipe(0.0, "decay of an exponential moving average of the student's weights, "
                         "which is then the model evaluated and exported (0: off)",
                         low=0.0, high=0.9999)
    label_smoothing: float = _recipe(0.0, "label smoothing of the CE terms", low=0.0, high=0.5)
    early_stopping: bool = _recipe(False, "keep the weights of the evaluation with the best "
                                   "select_by value (evaluations every eval_every epochs), "
                                   "score and export those")
    train_attack_steps: int = _recipe(5, "iterations of each pool attack per batch",
                                      low=1, high=100)
    train_on: TrainOn = _recipe(TrainOn.ADVERSARIAL,
                                "clean: no pool attack is crafted (the standard-training "
                                "baseline)")
    student_init: StudentInit = _recipe(StudentInit.TEACHER, "start the student encoder from "
                                        "the teacher's or from scratch (MID)")
    train_head: bool = _recipe(False, "train a copy of the head instead of reusing it frozen")
    pool_combine: PoolCombine = _recipe(
        PoolCombine.EACH, "each: one task per pool attack; worst: per sample, the pool example "
        "of highest loss (MSD's max)")
    train_eps_scale: float = _recipe(1.0, "pool attacks craft at this times their budget",
                                     low=0.25, high=4.0)
    # L2 training at a larger budget is the strongest simple lever on ImageNet-UA's UA2
    train_eps_scale_l2: float = _recipe(1.0, "L2 and L1 pool attacks craft at this times their "
                                        "budget (on top of train_eps_scale)",
                                        low=0.25, high=8.0)
    # ---- recipe: loss weights. MID's multi-consistency distillation (meta-train: CE + 1.5
    # KL_feat + 0.8 KL_cyc), TRADES' self-consistency, PCL (below)
    w_ce: float = _weight(1.0, "prediction level: CE of the student on each x_adv",
                          TaskSide.ADVERSARIAL)
    w_ce_clean: float = _weight(1.0, "CE of the student on the clean task (include_clean)",
                                TaskSide.CLEAN)
    w_trades: float = _weight(0.0, "TRADES' beta: KL of the student's clean prediction to its "
                              "prediction on x_adv", TaskSide.ADVERSARIAL)
    # Dai et al. 2022: variation regularisation; +5.5 UA2 on top of PAT on ImageNet-100
    w_vr: float = _weight(0.0, "variation regularisation: squared distance between the "
                          "student's softmax outputs at x_adv and at a random point of the "
                          "same threat region", TaskSide.ADVERSARIAL)
    w_pred_kl: float = _weight(0.0, "prediction level: KL to the teacher's prediction")
    w_feat: float = _weight(1.5, "feature level: teacher E(x) vs student E(x_adv)")
    feat_loss: FeatLoss = _recipe(FeatLoss.KL, "feature-level distance")
    w_cyc: float = _weight(0.8, "pixel level, cyclic: E_t(D_t(E_s(x_adv))) vs E_t(x)")
    # MID computes the L1 regeneration loss but never adds it
    w_pix: float = _weight(0.0, "pixel level: L1 of D_t(E_s(x_adv)) vs x")
    # ---- recipe: MID meta step
    meta: MetaOrder = _recipe(MetaOrder.FIRST, "meta-gradient order")
    meta_alpha: float = _recipe(1e-4, "inner step size for the fast weights",
                                low=1e-8, high=10.0)
    meta_beta: float = _recipe(1.0, "weight of the meta-test loss", low=0.0, high=100.0)
    meta_test_attacks: int = _recipe(1, "pool attacks held out per batch as meta-test",
                                     low=1, high=10)
    include_clean: bool = _recipe(True, "clean images are a meta-train task too")
    # ---- recipe: PCL
    w_pcl: float = _weight(1.0, "weight of the prototype conformity loss")
    pcl_margin: float = _recipe(1.0, "polytope margin (RMS feature distance)",
                                low=0.0, high=100.0)
    pcl_layers: PclLayers = _recipe(PclLayers.PENULTIMATE,
                                    "which feature layers PCL constrains (both = ganged)")
    # ---- recipe: UniG (the CIFAR-10 setting: delta 0.5, 1 step, lr 10, init std 0.5)
    unig: UniGSize = _recipe(UniGSize.PER_SAMPLE, "UniG module size / granularity")
    unig_delta: float = _recipe(0.5, "bound: multiplier stays in [1-delta, 1+delta]",
                                low=1e-3, high=1.0)
    unig_steps: int = _recipe(1, "inner optimisation steps per forward call", low=1, high=50)
    unig_lr: float = _recipe(10.0, "inner SGD learning rate", low=1e-4, high=1e4)
    unig_init_std: float = _recipe(0.5, "std of the random multiplier initialisation",
                                   low=0.0, high=2.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, FIELDS[f.name].check(f.name, getattr(self, f.name)))
        if not self.pool:
            raise ConfigError("pool is empty: a trial needs at least one pool attack")
        if self.access not in CLAIMS:
            raise ConfigError(f"access={self.access.value!r} cannot be a defense's claim; choose "
                              f"{' or '.join(c.value for c in CLAIMS)}")
        for first, second in (("pool", "heldout"), ("pool", "sealed"), ("heldout", "sealed")):
            overlap = set(getattr(self, first)) & set(getattr(self, second))
            if overlap:
                raise ConfigError(f"attacks {sorted(overlap)} are in both {first} and {second}; "
                                  "the three attack sets must be disjoint")
        if self.train_on == TrainOn.CLEAN and (self.meta != MetaOrder.OFF
                                               or not self.include_clean):
            raise ConfigError("train_on=clean trains on clean images only: it needs meta: off "
                              "and include_clean: true")
        self._check_it_trains()
        if self.pool_combine == PoolCombine.WORST and self.meta != MetaOrder.OFF:
            raise ConfigError("pool_combine=worst trains on one (the worst) pool example per "
                              "sample, which leaves no attack to hold out: it needs meta: off")
        if self.meta != MetaOrder.OFF and self.meta_test_attacks >= len(self.pool):
            raise ConfigError(
                f"meta_test_attacks={self.meta_test_attacks} needs a pool of at least "
                f"{self.meta_test_attacks + 1} attacks (got {len(self.pool)}: "
                f"{', '.join(self.pool)}); enlarge the pool or set meta: off"
            )

    def _check_it_trains(self) -> None:
        """Some task has a loss term with a positive weight (else there is no gradient); which
        weights apply follows from each weight's declared tasks (`_weight(..., applies)`)."""
        sides = {TaskSide.ALL}
        if self.train_on == TrainOn.ADVERSARIAL:
            sides.add(TaskSide.ADVERSARIAL)
        if self.include_clean or self.train_on == TrainOn.CLEAN:
            sides.add(TaskSide.CLEAN)
        applies = [name for name in LOSS_WEIGHTS if FIELDS[name].applies in sides]
        if not any(getattr(self, name) > 0 for name in applies):
            raise ConfigError(
                f"the recipe trains nothing: with train_on={self.train_on.value} and "
                f"include_clean={self.include_clean}, every loss weight that applies "
                f"({', '.join(applies)}) is 0; give one of them a positive weight")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialConfig:
        renamed = sorted(set(data) & set(RENAMED))
        if renamed:
            raise ConfigError(", ".join(f"{old} is now called {RENAMED[old]}" for old in renamed)
                              + ": rename it")
        _known_keys(data, FIELDS, "config")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types: enums as their strings, attack sets as lists."""
        return {k: plain(v) for k, v in asdict(self).items()}

    def replace(self, **changes: Any) -> TrialConfig:
        return TrialConfig.from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True)
class Fidelity:
    """How the evaluations before a trial's last one (ASHA's early rungs) score it: cheaper
    than the last one, which always uses every validation point of the config at full
    strength. Not part of what a trial trains: the same recipe at another fidelity trains
    bitwise the same model (evaluations draw from a fork of the RNG)."""

    rung_samples: int = _value(0, "validation points of the evaluations before the last (ASHA's "
                               "early rungs); 0 = eval_samples", low=0, high=10_000_000)
    rung_strength: float = _value(1.0, "attack iterations and queries of those evaluations, as a "
                                  "multiple of the attacks' own", low=0.05, high=10.0)
    rung_heldout_only: bool = _value(False, "those evaluations score the held-out group (the "
                                     "objective) only; pool and transfer groups at the last")

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name,
                               FIDELITY_FIELDS[f.name].check(f.name, getattr(self, f.name)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fidelity:
        _known_keys(data, FIDELITY_FIELDS, "fidelity")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _known_keys(data: Mapping[str, Any], known: Mapping[str, Field], what: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {unknown}; known keys: "
                          f"{', '.join(sorted(known))}")


def plain(value: Any) -> Any:
    """A value as plain JSON/YAML types: enums as their strings, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


FIELDS: dict[str, Field] = {f.name: f.metadata["spec"] for f in fields(TrialConfig)}
FIDELITY_FIELDS: dict[str, Field] = {f.name: f.metadata["spec"] for f in fields(Fidelity)}
# old names of values, refused with the new one named (a space file written before a rename)
RENAMED = {"pcl_weight": "w_pcl"}
RECIPE_FIELDS: dict[str, Field] = {k: v for k, v in FIELDS.items() if v.recipe}
LOSS_WEIGHTS: tuple[str, ...] = tuple(k for k, v in FIELDS.items() if v.loss)
