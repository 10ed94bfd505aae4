"""TrialConfig: everything one trial needs, validated once where it enters.

FIELDS is the single table of every config value's type, allowed range or choices and default;
the space validator (spaces/) checks searched ranges against the same table.
Defaults are the papers' defaults where the papers have one (see method-notes), scaled to a
minutes-long CPU budget where they are schedule values (epochs, learning rate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from trainables.errors import ConfigError

__all__ = ["FIELDS", "RECIPE_FIELDS", "Field", "TrialConfig"]


@dataclass(frozen=True)
class Field:
    kind: str  # float | int | bool | choice | str | attacks | mapping
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # None allowed
    doc: str = ""

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
        if self.kind == "choice":
            if value not in self.choices:  # type: ignore[operator]
                raise ConfigError(f"{name}={value!r} is not allowed; choose one of "
                                  f"{', '.join(map(str, self.choices or ()))}")
            return value
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


F = Field
# Searchable recipe values: the four dimensions (pool composition is its own list, `pool`).
RECIPE_FIELDS: dict[str, Field] = {
    # optimisation
    "lr": F("float", 1e-6, 1.0, doc="outer Adam learning rate of the student"),
    "train_attack_steps": F("int", 1, 100, doc="iterations of each pool attack per batch"),
    "train_on": F("choice", choices=("adversarial", "clean"),
                  doc="clean: no pool attack is crafted (the standard-training baseline)"),
    "student_init": F("choice", choices=("teacher", "random"),
                      doc="start the student encoder from the teacher's or from scratch (MID)"),
    "train_head": F("bool", doc="train a copy of the head instead of reusing it frozen (MID)"),
    # MID multi-consistency distillation weights
    "w_ce": F("float", 0.0, 100.0, doc="prediction level: CE of the student on x_adv"),
    "w_pred_kl": F("float", 0.0, 100.0, doc="prediction level: KL to the teacher's prediction"),
    "w_feat": F("float", 0.0, 100.0, doc="feature level: teacher E(x) vs student E(x_adv)"),
    "feat_loss": F("choice", choices=("kl", "mse"), doc="feature-level distance"),
    "w_cyc": F("float", 0.0, 100.0, doc="pixel level, cyclic: E_t(D_t(E_s(x_adv))) vs E_t(x)"),
    "w_pix": F("float", 0.0, 100.0, doc="pixel level: L1 of D_t(E_s(x_adv)) vs x"),
    # MID meta step
    "meta": F("choice", choices=("first", "second", "off"), doc="meta-gradient order"),
    "meta_alpha": F("float", 1e-8, 10.0, doc="inner step size for the fast weights"),
    "meta_beta": F("float", 0.0, 100.0, doc="weight of the meta-test loss"),
    "meta_test_attacks": F("int", 1, 10, doc="pool attacks held out per batch as meta-test"),
    "include_clean": F("bool", doc="clean images are a meta-train task too"),
    # PCL
    "pcl_weight": F("float", 0.0, 100.0, doc="weight of the prototype conformity loss"),
    "pcl_margin": F("float", 0.0, 100.0, doc="polytope margin (RMS feature distance)"),
    "pcl_layers": F("choice", choices=("penultimate", "encoder", "both"),
                    doc="which feature layers PCL constrains (both = ganged)"),
    # UniG
    "unig": F("choice", choices=("off", "shared", "per_sample", "per_channel"),
              doc="UniG module size / granularity"),
    "unig_delta": F("float", 1e-3, 1.0, doc="bound: multiplier stays in [1-delta, 1+delta]"),
    "unig_steps": F("int", 1, 50, doc="inner optimisation steps per forward call"),
    "unig_lr": F("float", 1e-4, 1e4, doc="inner SGD learning rate"),
    "unig_init_std": F("float", 0.0, 2.0, doc="std of the random multiplier initialisation"),
}

SETUP_FIELDS: dict[str, Field] = {
    "dataset": F("str", doc="data set name (trainables.data.list_datasets())"),
    "data_dir": F("str", optional=True, doc="directory holding a data set's standard files"),
    "download": F("bool", doc="download missing data set files (needs a network)"),
    "arch": F("str", doc="architecture, or 'auto' for the data set's default"),
    "threat_model": F("mapping", optional=True,
                      doc="{norm, eps: {Linf, L2, L1, L0}} overriding the data set's default"),
    "pool": F("attacks", doc="the attacker pool this trial trains against"),
    "heldout": F("attacks", doc="held-out attacks: the search objective"),
    "sealed": F("attacks", doc="sealed attacks: final report only"),
    "craft_against": F("choice", choices=("student", "target"),
                       doc="white-box against the student, or transfer from a fixed target"),
    "epochs": F("int", 1, 100000),
    "batch_size": F("int", 2, 100000),
    "eval_every": F("int", 1, 100000, doc="epochs between evaluations (one report each)"),
    "eval_samples": F("int", 0, 10_000_000, doc="validation points for robust accuracy; 0 = all"),
    "eval_batch_size": F("int", 2, 100000),
    "masking_samples": F("int", 0, 100000,
                         doc="validation points for the final gradient-masking checks; 0 = off"),
    "teacher_epochs": F("int", 1, 100000),
    "seed": F("int", 0, 2**31 - 1),
    "device": F("str", doc="auto | cpu | cuda | cuda:N"),
    "threads": F("int", 0, 1024, doc="torch CPU threads; 0 = torch's default"),
    "cache_dir": F("str", optional=True, doc="where teachers and targets are cached"),
}
FIELDS: dict[str, Field] = {**SETUP_FIELDS, **RECIPE_FIELDS}


@dataclass(frozen=True)
class TrialConfig:
    # setup
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    arch: str = "auto"
    threat_model: dict[str, Any] | None = None
    pool: tuple[str, ...] = ("PGD", "MIFGSM", "FGSM")
    heldout: tuple[str, ...] = ("APGD-DLR", "Square", "CW")
    sealed: tuple[str, ...] = ()
    craft_against: str = "student"
    epochs: int = 20
    batch_size: int = 128
    eval_every: int = 4
    eval_samples: int = 256
    eval_batch_size: int = 256
    masking_samples: int = 128
    teacher_epochs: int = 30
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    cache_dir: str | None = None
    # recipe
    lr: float = 1e-3  # MID uses 1e-4 over 120 MNIST epochs; ours are ~100x fewer steps
    train_attack_steps: int = 5
    train_on: str = "adversarial"
    student_init: str = "teacher"
    train_head: bool = False
    w_ce: float = 1.0
    w_pred_kl: float = 0.0
    w_feat: float = 1.5  # MID meta-train weights: CE + 1.5 KL_feat + 0.8 KL_cyc
    feat_loss: str = "kl"
    w_cyc: float = 0.8
    w_pix: float = 0.0  # MID computes the L1 regeneration loss but never adds it
    meta: str = "first"
    meta_alpha: float = 1e-4
    meta_beta: float = 1.0
    meta_test_attacks: int = 1
    include_clean: bool = True
    pcl_weight: float = 1.0
    pcl_margin: float = 1.0
    pcl_layers: str = "penultimate"
    unig: str = "per_sample"
    unig_delta: float = 0.5  # UniG's CIFAR-10 setting: delta 0.5, 1 step, lr 10, init std 0.5
    unig_steps: int = 1
    unig_lr: float = 10.0
    unig_init_std: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, FIELDS[f.name].check(f.name, getattr(self, f.name)))
        if not self.pool:
            raise ConfigError("pool is empty: a trial needs at least one pool attack")
        for first, second in (("pool", "heldout"), ("pool", "sealed"), ("heldout", "sealed")):
            overlap = set(getattr(self, first)) & set(getattr(self, second))
            if overlap:
                raise ConfigError(f"attacks {sorted(overlap)} are in both {first} and {second}; "
                                  "the three attack sets must be disjoint")
        if self.train_on == "clean" and (self.meta != "off" or not self.include_clean):
            raise ConfigError("train_on=clean trains on clean images only: it needs meta: off "
                              "and include_clean: true")
        if self.meta != "off" and self.meta_test_attacks >= len(self.pool):
            raise ConfigError(
                f"meta_test_attacks={self.meta_test_attacks} needs a pool of at least "
                f"{self.meta_test_attacks + 1} attacks (got {len(self.pool)}: "
                f"{', '.join(self.pool)}); enlarge the pool or set meta: off"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialConfig:
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: "
                              f"{', '.join(sorted(FIELDS))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("pool", "heldout", "sealed"):
            out[key] = list(out[key])
        return out

    def replace(self, **changes: Any) -> TrialConfig:
        return TrialConfig.from_dict({**self.to_dict(), **changes})
