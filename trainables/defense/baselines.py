"""The reference recipes every search has to beat, defined once as recipe values.

A baseline names the loss terms it uses; every other loss weight of the recipe table is 0
(so a loss term added to TrialConfig later is off in every baseline without touching this
file), and its other recipe values switch MID's and UniG's machinery off. What a baseline does
not set (lr, attack steps, epochs...) is the space's, as for any trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainables.config import FIELDS, Field, TrialConfig
from trainables.errors import ConfigError
from trainables.vocab import MetaOrder, PoolCombine, StudentInit, TrainOn, UniGSize

__all__ = ["BASELINES", "Baseline", "baseline_config", "baseline_values"]

ALL = "all"  # a baseline pool of every candidate of the space


@dataclass(frozen=True)
class Baseline:
    name: str
    doc: str
    weights: Mapping[str, float]  # the loss terms it uses; every other weight is 0
    pool: tuple[str, ...] | str = ()  # its attacks, ALL candidates, or () for the space's
    values: Mapping[str, Any] = field(default_factory=dict)  # its other recipe values


# A plain network trained from scratch: no meta step, no test-time module, its own head.
_PLAIN = {"meta": MetaOrder.OFF, "unig": UniGSize.OFF, "student_init": StudentInit.RANDOM,
          "train_head": True, "train_on": TrainOn.ADVERSARIAL, "pool_combine": PoolCombine.EACH,
          "train_eps_scale": 1.0}
BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("standard", "clean training (CE on clean images only)", {"w_ce_clean": 1.0},
             values={**_PLAIN, "train_on": TrainOn.CLEAN, "include_clean": True}),
    Baseline("pgd-at", "PGD adversarial training (Madry et al. 2018): CE on PGD examples",
             {"w_ce": 1.0}, ("PGD",), {**_PLAIN, "include_clean": False}),
    Baseline("pgd-l2-at", "PGD adversarial training at the L2 budget (Madry et al. 2018): CE "
             "on PGD-L2 examples; L2 training is the strongest simple lever on ImageNet-UA's "
             "UA2 and MultiRobustBench", {"w_ce": 1.0}, ("PGDL2",),
             {**_PLAIN, "include_clean": False}),
    Baseline("trades", "TRADES (Zhang et al. 2019): CE on clean images + 6 KL(clean || "
             "adversarial), examples from TRADES' KL attack (TPGD)",
             {"w_ce_clean": 1.0, "w_trades": 6.0}, ("TPGD",),
             {**_PLAIN, "include_clean": True}),
    Baseline("multi-at", "multi-attack AT, MSD's max strategy (Maini et al. 2020): per "
             "sample the worst example of the whole candidate pool", {"w_ce": 1.0}, ALL,
             {**_PLAIN, "include_clean": False, "pool_combine": PoolCombine.WORST}),
)}


def baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]


def baseline_values(name: str, *, candidates: Sequence[str], default_pool: Sequence[str],
                    fields: Mapping[str, Field] = FIELDS) -> dict[str, Any]:
    """The recipe values of baseline `name`: its own, 0 for every loss weight of `fields` it
    does not use, and its pool (from the space's `candidates`; the space's `default_pool`
    where it trains on no pool attack)."""
    spec = baseline(name)
    values: dict[str, Any] = {key: 0.0 for key, f in fields.items() if f.loss}
    values.update(spec.weights)
    values.update({k: v.value if hasattr(v, "value") else v for k, v in spec.values.items()})
    if spec.pool == ALL:
        values["pool"] = list(candidates)
    elif spec.pool:
        missing = sorted(set(spec.pool) - set(candidates))
        if missing:
            raise ConfigError(f"baseline {name} trains on {missing}, which are not pool "
                              f"candidates ({', '.join(candidates)}): add them to the pool")
        values["pool"] = list(spec.pool)
    else:
        values["pool"] = list(default_pool)
    return values


def baseline_config(config: TrialConfig, name: str) -> TrialConfig:
    """`config` with baseline `name`'s recipe (its pool among the config's pool attacks and
    the space-independent attacks it names)."""
    spec = baseline(name)
    candidates = config.pool if spec.pool == ALL else tuple(dict.fromkeys(
        (*config.pool, *(spec.pool if isinstance(spec.pool, tuple) else ()))))
    return config.replace(**baseline_values(name, candidates=candidates,
                                            default_pool=config.pool))
