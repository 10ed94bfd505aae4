"""Search spaces: YAML files parsed into a validated, typed Space.

A space fixes the setting (data set, threat model, the three attack sets, training budget),
names the searched recipe values with their ranges, conditions and defaults, and says how to
search (trials, concurrency, objective). Everything is checked here, before Ray starts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from spaces.record import INACTIVE, ORIGIN, TrialRecord
from trainables.attacks import attack_spec, query_budget
from trainables.config import (
    FIDELITY_FIELDS,
    FIELDS,
    RECIPE_FIELDS,
    RENAMED,
    Fidelity,
    TrialConfig,
)
from trainables.defense.baselines import BASELINES, baseline_values
from trainables.errors import ConfigError
from trainables.setting.setup import Setup, resolve_setup
from trainables.vocab import (
    CLEAN_ACC,
    GROUP_STATS,
    HELDOUT_MEAN,
    Access,
    Group,
    MetaOrder,
    Norm,
    Split,
    attack_metric,
    group_metric,
    key_name,
)

__all__ = ["INACTIVE", "RECORD_KEY", "Mode", "ParamSpec", "PoolSpec", "SearchAlg",
           "SearchSettings", "Space",
           "SpaceError", "TrialLike", "TrialRecord"]

TOP_KEYS = {"name", "description", "dataset", "data_dir", "threat_model", "access", "attacks",
            "craft_against", "budget", "fixed", "params", "search", "baselines"}
# searched before the pool flags, which then keep the pool large enough for the meta step
BEFORE_POOL = ("meta", "meta_test_attacks", "include_clean")
SPLIT_BY = ("family", "name")  # attacks.split_by: what the three attack sets may not share
FIELD_DEFAULTS = TrialConfig().to_dict()
BUDGET_KEYS = {"epochs", "batch_size", "eval_every", "eval_samples", "test_samples",
               "autoattack_samples", "eval_batch_size", "eval_precision", "eval_losses",
               "train_precision",
               "teacher_epochs", "masking_samples", *FIDELITY_FIELDS}
RECORD_KEY = "trial"  # where a Tune trial's config holds the record Space.sample built


class Mode(StrEnum):
    """Whether the search objective is maximised or minimised."""

    MAX = "max"
    MIN = "min"


class SearchAlg(StrEnum):
    """Optuna's sampler: TPE (independent per value), multivariate TPE over groups of values
    that appear together (Optuna's `group`), the Gaussian-process sampler, random sampling,
    or NSGA-II for the clean vs held-out front; `local` changes one or two values of the best
    recipe so far (search/local.py), `local-cover` the least explored of them first,
    `local-stack` the moves that helped elsewhere in the study first."""

    TPE = "tpe"
    TPE_MV = "tpe-mv"
    GP = "gp"
    RANDOM = "random"
    NSGA2 = "nsga2"
    LOCAL = "local"
    LOCAL_COVER = "local-cover"
    LOCAL_STACK = "local-stack"

    @property
    def is_local(self) -> bool:
        """Moves the best recipe so far, of one objective (search/local.py)."""
        return self in (SearchAlg.LOCAL, SearchAlg.LOCAL_COVER, SearchAlg.LOCAL_STACK)


class RungStop(StrEnum):
    """When ASHA stops a searched recipe at an early rung: `quantile`, ASHA's own rule (below
    the rung's top 1/reduction_factor); `interval`, only when the upper end of the recipe's
    95% interval there is below that cutoff too, so a recipe level with the best within the
    rung's noise (a few hundred points at low fidelity) runs on."""

    QUANTILE = "quantile"
    INTERVAL = "interval"


class SpaceError(ConfigError):
    """A space file is malformed or inconsistent; the message names the key at fault."""


class TrialLike(Protocol):
    """The part of optuna.trial.Trial that define-by-run sampling uses."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = ...) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, log: bool = ...) -> int: ...
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


def _require(mapping: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(mapping, Mapping):
        raise SpaceError(f"{where} must be a mapping, got {mapping!r}")
    return mapping


def _no_unknown(mapping: Mapping[str, Any], allowed: set[str], where: str) -> None:
    renamed = sorted(set(mapping) & set(RENAMED))
    if renamed:
        raise SpaceError(f"{where}: " + ", ".join(f"{old} is now called {RENAMED[old]}"
                                                  for old in renamed) + ": rename it")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


@dataclass(frozen=True)
class ParamSpec:
    """One searched recipe value."""

    name: str
    type: str  # float | int | categorical
    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    when: Mapping[str, tuple[Any, ...]] | None = None  # active only if parent value in tuple

    @classmethod
    def parse(cls, name: str, raw: Any) -> ParamSpec:
        where = f"params.{name}"
        raw = _require(raw, where)
        _no_unknown(raw, {"type", "low", "high", "log", "choices", "default", "when"}, where)
        if name in RENAMED:
            raise SpaceError(f"{where}: {name} is now called {RENAMED[name]}: rename it")
        if name not in RECIPE_FIELDS:
            hint = " (a setup value: put it under budget/fixed)" if name in FIELDS else ""
            raise SpaceError(f"{where}: {name!r} is not a searchable recipe value{hint}; "
                             f"searchable: {', '.join(RECIPE_FIELDS)}")
        spec = RECIPE_FIELDS[name]
        kind = raw.get("type")
        if kind not in ("float", "int", "categorical"):
            raise SpaceError(f"{where}.type={kind!r}; choose float, int or categorical")
        when = raw.get("when")
        if when is not None:
            when = {k: tuple(v) if isinstance(v, list) else (v,)
                    for k, v in _require(when, f"{where}.when").items()}
        if "default" not in raw:
            raise SpaceError(f"{where} needs a default (the papers' value, used by the first "
                             "trial and by the standalone trial)")
        if kind == "categorical":
            choices = raw.get("choices")
            if not isinstance(choices, list) or not choices:
                raise SpaceError(f"{where}.choices must be a non-empty list")
            for choice in choices:
                spec.check(where, choice)
            if raw["default"] not in choices:
                raise SpaceError(f"{where}.default={raw['default']!r} is not among its choices "
                                 f"{choices}")
            return cls(name, kind, raw["default"], choices=tuple(choices), when=when)
        if spec.kind != kind:
            raise SpaceError(f"{where}.type={kind!r} but {name} is a {spec.kind} value")
        low, high = raw.get("low"), raw.get("high")
        if low is None or high is None:
            raise SpaceError(f"{where} needs low and high")
        low, high = spec.check(f"{where}.low", low), spec.check(f"{where}.high", high)
        if not low < high:
            raise SpaceError(f"{where}: low < high must hold, got low={low}, high={high}")
        log = bool(raw.get("log", False))
        if log and low <= 0:
            raise SpaceError(f"{where}: a log range needs low > 0, got low={low}")
        default = spec.check(f"{where}.default", raw["default"])
        if not low <= default <= high:
            raise SpaceError(f"{where}.default={default} lies outside [{low}, {high}]")
        return cls(name, kind, default, low, high, log, when=when)

    def value(self, value: Any) -> Any:
        """`value` in canonical form if the space allows it, else SpaceError naming the
        space's range or choices."""
        value = RECIPE_FIELDS[self.name].check(self.name, value)
        if not self.allows(value):
            allowed = (f"choices {list(self.choices)}" if self.choices is not None
                       else f"range [{self.low:g}, {self.high:g}]")
            raise SpaceError(f"{self.name}={value!r} is outside the space's {allowed}")
        return value

    def allows(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high

    def active(self, values: Mapping[str, Any]) -> bool:
        return self.when is None or all(values.get(k) in v for k, v in self.when.items())

    def suggest(self, trial: TrialLike) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices or ()))
        assert self.low is not None and self.high is not None  # numeric specs have both
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class PoolSpec:
    """Pool composition: which candidates are in, as one include flag per candidate."""

    candidates: tuple[str, ...]
    min_size: int
    max_size: int
    default: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Any) -> PoolSpec:
        if isinstance(raw, list):  # a fixed pool
            raw = {"candidates": raw, "min_size": len(raw), "max_size": len(raw)}
        raw = _require(raw, "attacks.pool")
        _no_unknown(raw, {"candidates", "min_size", "max_size", "default"}, "attacks.pool")
        candidates = FIELDS["pool"].check("attacks.pool.candidates", raw.get("candidates", []))
        if not candidates:
            raise SpaceError("attacks.pool.candidates must list at least one attack")
        min_size = raw.get("min_size", 1)
        max_size = raw.get("max_size", len(candidates))
        if not (isinstance(min_size, int) and isinstance(max_size, int)
                and 1 <= min_size <= max_size <= len(candidates)):
            raise SpaceError(f"attacks.pool: need 1 <= min_size <= max_size <= "
                             f"{len(candidates)} candidates, got min_size={min_size}, "
                             f"max_size={max_size}")
        default = FIELDS["pool"].check("attacks.pool.default",
                                       raw.get("default", candidates[:max_size]))
        if set(default) - set(candidates):
            raise SpaceError(f"attacks.pool.default has {sorted(set(default) - set(candidates))}"
                             " which are not candidates")
        if not min_size <= len(default) <= max_size:
            raise SpaceError(f"attacks.pool.default has {len(default)} attacks; it must have "
                             f"between {min_size} and {max_size}")
        return cls(candidates, min_size, max_size, default)

    @property
    def searched(self) -> bool:
        return not (self.min_size == self.max_size == len(self.candidates))

    @staticmethod
    def key(name: str) -> str:
        """A candidate's include flag: `pool.PGD`, `pool.Elastic.medium`."""
        return f"pool.{key_name(name)}"

    def flags(self, chosen: Sequence[str]) -> dict[str, bool]:
        return {self.key(name): name in chosen for name in self.candidates}

    def chosen(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        if not self.searched:
            return self.candidates
        return tuple(name for name in self.candidates if values.get(self.key(name)))

    def suggest(self, trial: TrialLike, *, at_least: int = 1) -> dict[str, bool]:
        """Include flags that always satisfy min/max size (and `at_least`, what the recipe's
        values sampled before need), without any after-the-fact repair.

        Walking the candidates in order, a flag is forced (not suggested) once the size bounds
        leave no choice, so every suggested combination is feasible and Optuna learns from
        exactly what ran.
        """
        if not self.searched:
            return {}
        low = max(self.min_size, at_least)
        picked, flags = 0, {}
        for index, name in enumerate(self.candidates):
            remaining, key = len(self.candidates) - index, self.key(name)
            if picked >= self.max_size:
                flags[key] = False
            elif picked + remaining <= low:
                flags[key] = True
            else:
                flags[key] = trial.suggest_categorical(key, [True, False])
            picked += flags[key]
        return flags


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 24
    max_concurrent: int = 2
    objective: str = HELDOUT_MEAN
    mode: Mode = Mode.MAX
    grace_period: int = 1  # ASHA, in evaluations (one every budget.eval_every epochs)
    reduction_factor: int = 3
    penalize_flags: bool = True  # gradient-masking flags zero a trial's objective
    sampler: SearchAlg = SearchAlg.TPE  # the default of --search-alg
    startup_trials: int = 10  # trials a model-based sampler samples at random first
    # whether the baselines' results set ASHA's cutoffs (they run to the end either way)
    baselines_in_rungs: bool = True
    rung_stop: RungStop = RungStop.QUANTILE
    # the threat model's PGD-10 accuracy on validation (trainables.vocab.THREAT_PGD10) a
    # full-length recipe must keep: each point below it costs a point of its objective, so a
    # recipe does not buy unforeseen families with its Lp robustness (off: null)
    robust_floor: float | None = None

    @classmethod
    def parse(cls, raw: Any) -> SearchSettings:
        raw = _require(raw or {}, "search")
        _no_unknown(raw, set(cls.__dataclass_fields__), "search")
        settings = cls(**raw)
        for key in ("num_samples", "max_concurrent", "grace_period", "startup_trials"):
            value = getattr(settings, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpaceError(f"search.{key}={value!r} must be a whole number >= 1")
        for key in ("penalize_flags", "baselines_in_rungs"):
            if not isinstance(getattr(settings, key), bool):
                raise SpaceError(f"search.{key}={getattr(settings, key)!r} must be true or false")
        floor = settings.robust_floor
        if floor is not None and (isinstance(floor, bool) or not isinstance(floor, int | float)
                                  or not 0 <= floor <= 1):
            raise SpaceError(f"search.robust_floor={floor!r} must be an accuracy in [0, 1] "
                             "or null (off)")
        if not isinstance(settings.reduction_factor, int) or settings.reduction_factor < 2:
            raise SpaceError(f"search.reduction_factor={settings.reduction_factor!r} must be >= 2")
        try:
            settings = replace(settings, mode=Mode(settings.mode))
        except ValueError:
            raise SpaceError(f"search.mode={settings.mode!r}; choose max or min") from None
        try:
            settings = replace(settings, rung_stop=RungStop(settings.rung_stop))
        except ValueError:
            raise SpaceError(f"search.rung_stop={settings.rung_stop!r}; choose one of "
                             f"{', '.join(r.value for r in RungStop)}") from None
        try:
            return replace(settings, sampler=SearchAlg(settings.sampler))
        except ValueError:
            raise SpaceError(f"search.sampler={settings.sampler!r}; choose one of "
                             f"{', '.join(a.value for a in SearchAlg)}") from None


@dataclass(frozen=True)
class Space:
    name: str
    description: str
    base: Mapping[str, Any]  # fixed TrialConfig values (setup + fixed recipe values)
    pool: PoolSpec
    params: Mapping[str, ParamSpec]
    search: SearchSettings
    source: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    baselines: tuple[str, ...] = ()  # reference recipes run first (defense/baselines.py)
    # a baseline's own values tuned for this space (its budget, its TRADES beta...)
    baseline_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fidelity: Fidelity = field(default_factory=Fidelity)  # of the evaluations before the last

    # ---- values <-> trial configs
    def default_values(self) -> dict[str, Any]:
        """The papers' defaults: the first trial of every search and the standalone trial."""
        values = self.pool.flags(self.pool.default) if self.pool.searched else {}
        for name, spec in self.params.items():
            if spec.active(values):
                values[name] = spec.default
        return values

    def suggest(self, trial: TrialLike) -> dict[str, Any]:
        """Define-by-run sampling: the values the pool size depends on (the meta step's), then
        the pool flags, then every other active parameter, in file order."""
        values: dict[str, Any] = {}
        for name in BEFORE_POOL:
            if name in self.params and self.params[name].active(values):
                values[name] = self.params[name].suggest(trial)
        values.update(self.pool.suggest(trial, at_least=self._pool_needs(values)))
        for name, spec in self.params.items():
            if name not in values and spec.active(values):
                values[name] = spec.suggest(trial)
        return values

    def _pool_needs(self, values: Mapping[str, Any]) -> int:
        """The smallest pool the meta step of these values can run with."""
        config = {**self.base, **values}
        if MetaOrder(config.get("meta", FIELD_DEFAULTS["meta"])) == MetaOrder.OFF:
            return 1
        return int(config.get("meta_test_attacks", FIELD_DEFAULTS["meta_test_attacks"])) + 1

    def baseline_recipe(self, name: str) -> dict[str, Any]:
        """Baseline `name`'s recipe values and pool in this space, its own settings applied."""
        return {**baseline_values(name, candidates=self.pool.candidates,
                                  default_pool=self.pool.default),
                **self.baseline_settings.get(name, {})}

    def baseline_values(self, name: str) -> dict[str, Any]:
        """Baseline `name` as this space's searched values (pool flags and parameters)."""
        recipe = self.baseline_recipe(name)
        values: dict[str, Any] = dict(self.pool.flags(recipe.pop("pool")))
        values.update({k: v for k, v in recipe.items() if k in self.params})
        return values

    def sample(self, trial: TrialLike) -> dict[str, TrialRecord]:
        """Optuna's define-by-run function: suggests a trial's values and builds its record,
        once; Tune merges `{RECORD_KEY: record}` into the trial's config, where the trainable,
        MLflow, the checkpoint and the exported model all read it. An enqueued point (the
        defaults, a baseline, a warm start) carries its origin in the Optuna trial."""
        values = self.suggest(trial)
        try:
            record = self.record(values)
        except ConfigError as err:  # e.g. every loss weight 0: a failed trial, not a dead search
            record = replace(self.record(self.default_values()), baseline=None,
                             params=self.logged_params(values), invalid=str(err))
        ot_trial = getattr(trial, "ot_trial", None)  # Ray's wrapper of the Optuna trial
        origin = getattr(ot_trial, "user_attrs", {}).get(ORIGIN)
        return {RECORD_KEY: replace(record, origin=origin) if origin else record}

    def distributions(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna's distribution of each suggested value in `point` (to add known results to
        a study as completed trials)."""
        import optuna.distributions as od

        out: dict[str, Any] = {}
        for name in point:
            spec = self.params.get(name)
            if spec is None:  # a pool flag
                out[name] = od.CategoricalDistribution([True, False])
            elif spec.choices is not None:
                out[name] = od.CategoricalDistribution(list(spec.choices))
            elif spec.type == "int":
                out[name] = od.IntDistribution(int(spec.low or 0), int(spec.high or 0),
                                               log=spec.log)
            else:
                out[name] = od.FloatDistribution(float(spec.low or 0), float(spec.high or 0),
                                                 log=spec.log)
        return out

    def point(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` as Optuna enqueues them: only those a trial of this space would suggest
        (pool flags that the size bounds force, and inactive parameters, left out)."""
        answers = _Answers({**self.default_values(), **values})
        self.suggest(answers)
        return answers.suggested

    def trial_config(self, values: Mapping[str, Any] | None = None, **extra: Any) -> TrialConfig:
        """The TrialConfig for searched `values` (missing ones take their defaults)."""
        values = {**self.default_values(), **(values or {})}
        unknown = set(values) - set(self.params) - set(self.pool.flags(self.pool.candidates))
        if unknown:
            raise SpaceError(f"values for unknown parameter(s) {sorted(unknown)} of space "
                             f"{self.name!r}")
        config = dict(self.base)
        config["pool"] = list(self.pool.chosen(values))
        config.update({k: v for k, v in values.items()
                       if k in self.params and self.params[k].active(values)})
        config.update(extra)
        return TrialConfig.from_dict(config)

    def logged_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The same keys for every trial: each searched value (inactive ones as 'inactive'),
        each pool candidate's flag and the pool itself."""
        values = {**self.default_values(), **values}
        out: dict[str, Any] = {}
        if self.pool.searched:
            out.update(self.pool.flags(self.pool.chosen(values)))
        out["pool"] = "+".join(self.pool.chosen(values))
        for name, spec in self.params.items():
            out[name] = values.get(name) if spec.active(values) else INACTIVE
        return out

    def record(self, values: Mapping[str, Any], **extra: Any) -> TrialRecord:
        """A trial's resolved record, built once from its searched `values`: the config it
        trains, its searched values with the same keys for every trial, the baseline it is,
        if any, and the fidelity of its early evaluations."""
        config = self.trial_config(values, **extra)
        recipe = TrialRecord(config).recipe
        is_baseline = [name for name in self.baselines
                       if recipe == TrialRecord(self.trial_config(
                           self.baseline_values(name), **extra)).recipe]
        return TrialRecord(config, self.logged_params(values),
                           is_baseline[0] if is_baseline else None, self.fidelity)

    def baseline_record(self, name: str, **extra: Any) -> TrialRecord:
        """Baseline `name` trained in this space's setting (also one the space does not list,
        which a final comparison may still add)."""
        if name in self.baselines:
            return self.record(self.baseline_values(name), **extra)
        from trainables.defense.baselines import baseline_config

        return TrialRecord(baseline_config(self.trial_config(**extra), name), {}, name,
                           self.fidelity)

    def values_of(self, record: TrialRecord) -> dict[str, Any]:
        """The searched values of a record (typed, inactive ones left out)."""
        flags = set(self.pool.flags(self.pool.candidates)) if self.pool.searched else set()
        return {k: v for k, v in record.params.items()
                if (k in flags or k in self.params) and v != INACTIVE}

    def with_defaults(self, values: Mapping[str, Any], *, name: str, note: str
                      ) -> dict[str, Any]:
        """This space's YAML mapping with `values` as the new defaults (e.g. a search's best).

        The result is a space file a user can pass back to the search or the standalone trial.
        """
        raw: dict[str, Any] = {**dict(self.raw), "name": name,
                               "description": f"{note}\n{self.description}".strip()}
        params = {k: dict(v) for k, v in dict(raw.get("params", {})).items()}
        for key, value in values.items():
            if key in params:
                params[key]["default"] = value
        raw["params"] = params
        if self.pool.searched:
            attacks = dict(raw["attacks"])
            attacks["pool"] = {**dict(attacks["pool"]), "default": list(self.pool.chosen(
                {**self.default_values(), **values}))}
            raw["attacks"] = attacks
        return raw

    def setup(self, *, check_data_dir: bool = True) -> Setup:
        """Data-set-dependent checks; `check_data_dir` also requires the data files' folder."""
        return resolve_setup(self.trial_config(), extra_attacks=self.pool.candidates,
                             check_data_dir=check_data_dir)

    def objective_metrics(self) -> list[str]:
        heldout = self.base.get("heldout", ())
        return ([CLEAN_ACC] + [group_metric(Split.VAL, Group.HELDOUT, m) for m in GROUP_STATS]
                + [attack_metric(Split.VAL, Group.HELDOUT, a) for a in heldout])

    @property
    def access(self) -> Access:
        """The attacker the objective assumes (the claim its masking flags are judged by)."""
        return Access(self.base.get("access", Access.WHITE_BOX))

    @property
    def max_evaluations(self) -> int:
        """Reports per full-length trial: ASHA's max_t."""
        config = self.trial_config()
        return math.ceil(config.epochs / config.eval_every)


class _Answers:
    """A stand-in trial that answers every suggestion with a given value."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.suggested: dict[str, Any] = {}

    def _answer(self, name: str, *_: Any, **__: Any) -> Any:
        self.suggested[name] = self.values[name]
        return self.values[name]

    suggest_float = suggest_int = suggest_categorical = _answer


def parse_space(raw: Any, *, source: str = "") -> Space:
    raw = _require(raw, "a space file")
    _no_unknown(raw, TOP_KEYS, "space")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SpaceError("space needs a name (a non-empty string)")
    if "dataset" not in raw:
        raise SpaceError("space needs a dataset (e.g. dataset: digits)")
    attacks = _require(raw.get("attacks", {}), "attacks")
    _no_unknown(attacks, {"pool", "heldout", "sealed", "split_by", "mix_access"}, "attacks")
    if "pool" not in attacks or "heldout" not in attacks:
        raise SpaceError("attacks needs pool (candidates) and heldout (the search objective)")
    pool = PoolSpec.parse(attacks["pool"])
    heldout = FIELDS["heldout"].check("attacks.heldout", attacks["heldout"])
    sealed = FIELDS["sealed"].check("attacks.sealed", attacks.get("sealed", []))
    if not heldout:
        raise SpaceError("attacks.heldout is empty: the search objective needs held-out attacks")
    _check_disjoint(pool.candidates, heldout, sealed, attacks.get("split_by", "family"))
    access = _check_access(raw.get("access", Access.WHITE_BOX.value), heldout, sealed,
                           attacks.get("mix_access"))
    budget = _require(raw.get("budget", {}), "budget")
    _no_unknown(budget, BUDGET_KEYS, "budget")
    fixed = _require(raw.get("fixed", {}), "fixed")
    _no_unknown(fixed, set(FIELDS) - {"pool", "heldout", "sealed", "dataset", "access"}
                - BUDGET_KEYS,
                "fixed")
    params_raw = _require(raw.get("params", {}), "params")
    params = {str(k): ParamSpec.parse(str(k), v) for k, v in params_raw.items()}
    both = sorted(set(params) & set(fixed))
    if both:
        raise SpaceError(f"{both} are both searched (params) and fixed; keep one")
    _check_conditions(params, pool)
    search = SearchSettings.parse(raw.get("search"))
    base = {"dataset": raw["dataset"], "heldout": list(heldout), "sealed": list(sealed),
            "select_by": search.objective,
            "access": access.value,
            **{k: raw[k] for k in ("data_dir", "threat_model", "craft_against") if k in raw},
            **{k: v for k, v in budget.items() if k not in FIDELITY_FIELDS}, **fixed}
    try:
        fidelity = Fidelity.from_dict({k: v for k, v in budget.items() if k in FIDELITY_FIELDS})
    except ConfigError as err:
        raise SpaceError(f"budget: {err}") from None
    baselines, settings = _parse_baselines(raw.get("baselines", []))
    space = Space(name, str(raw.get("description", "")).strip(), base, pool, params,
                  search, source, raw, baselines, settings, fidelity)
    _check_whole(space)
    _check_can_train(space)
    for baseline in space.baselines:
        _check_baseline(space, baseline)
    return space


def _check_disjoint(pool: Sequence[str], heldout: Sequence[str], sealed: Sequence[str],
                    split_by: Any) -> None:
    """The pool, held-out and sealed sets share no attack and, with split_by: family (the
    default), no family (threat model): a held-out family is one the pool never trained on."""
    if split_by not in SPLIT_BY:
        raise SpaceError(f"attacks.split_by={split_by!r}; choose one of {', '.join(SPLIT_BY)}")
    sets = {"pool candidates": pool, "heldout": heldout, "sealed": sealed}
    for (first, a), (second, b) in itertools.combinations(sets.items(), 2):
        if set(a) & set(b):
            raise SpaceError(f"attacks {sorted(set(a) & set(b))} are in both {first} and "
                             f"{second}; the pool, held-out and sealed sets must be disjoint")
        if split_by == "family":
            families_a: dict[str, str] = {}
            for name in a:
                families_a.setdefault(attack_spec(name).family, name)
            shared = sorted({attack_spec(n).family for n in b} & set(families_a))
            if shared:
                examples = ", ".join(f"{f} ({families_a[f]} in {first}, "
                                     f"{next(n for n in b if attack_spec(n).family == f)} in "
                                     f"{second})" for f in shared)
                raise SpaceError(f"family {examples} is in both {first} and {second}: "
                                 "leave-family-out spaces keep each threat model in one set "
                                 "(or set attacks.split_by: name to split by attack only)")


def _parse_baselines(raw: Any) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """`baselines`: a list of names, or a mapping of names to their own recipe values tuned
    for the space (`pgd-l2-at: {train_eps_scale_l2: 2.0}`)."""
    names = list(raw) if isinstance(raw, (list, Mapping)) else None
    if names is None or not all(isinstance(b, str) for b in names):
        raise SpaceError(f"baselines must be a list of names ({', '.join(BASELINES)}) or a "
                         f"mapping of names to their own values, got {raw!r}")
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise SpaceError(f"baselines {unknown} do not exist; choose from {', '.join(BASELINES)}")
    settings: dict[str, dict[str, Any]] = {}
    for name in names if isinstance(raw, Mapping) else ():
        values = _require(raw[name] or {}, f"baselines.{name}")
        bad = sorted(set(values) - set(RECIPE_FIELDS) - {"pool"})
        if bad:
            raise SpaceError(f"baselines.{name}: {bad} are not recipe values; a baseline can "
                             f"set: {', '.join(RECIPE_FIELDS)}")
        settings[name] = {k: RECIPE_FIELDS[k].check(f"baselines.{name}.{k}", v)
                          if k != "pool" else v for k, v in values.items()}
    return tuple(dict.fromkeys(names)), settings


def _check_access(raw: Any, heldout: Sequence[str], sealed: Sequence[str], mix: Any) -> Access:
    """The space's claim, and its held-out and sealed attacks fit it: each one runs with that
    access; a scores space holds query attacks named with their query budget
    (`Square@q1000`); a white-box space mixes in query attacks unless attacks.mix_access is
    false."""
    from trainables.config import CLAIMS

    try:
        access = Access(raw)
    except ValueError:
        access = None
    if access not in CLAIMS:
        raise SpaceError(f"access={raw!r}; choose {' or '.join(c.value for c in CLAIMS)}")
    if mix is not None and not isinstance(mix, bool):
        raise SpaceError(f"attacks.mix_access={mix!r} must be true or false")
    for group, names in (("heldout", heldout), ("sealed", sealed)):
        for name in names:
            spec = attack_spec(name)
            if not spec.runs_with(access):
                raise SpaceError(f"attacks.{group}: {name} needs {spec.access} access, but this "
                                 f"space's objective assumes {access} (access: {access}): "
                                 "remove it, or change access")
            if access == Access.SCORES and query_budget(name) is None:
                raise SpaceError(f"attacks.{group}: {name} in a scores space must be a query "
                                 "attack named with its query budget per point, e.g. "
                                 "Square@q1000")
            if access == Access.WHITE_BOX and mix is False and spec.query_based:
                raise SpaceError(f"attacks.{group}: {name} is a query attack ({spec.access} "
                                 "access) in a white-box space with attacks.mix_access: false;"
                                 " remove it, or set mix_access: true")
    return access


def _check_baseline(space: Space, name: str) -> None:
    """Baseline `name` is a point of the space: each searched value in its range, each fixed
    one equal to what the baseline needs."""
    recipe = space.baseline_recipe(name)
    pool = recipe.pop("pool")
    if space.pool.searched and not space.pool.min_size <= len(pool) <= space.pool.max_size:
        raise SpaceError(f"baseline {name} trains on {len(pool)} pool attack(s) "
                         f"({'+'.join(pool)}), outside attacks.pool's size bounds "
                         f"[{space.pool.min_size}, {space.pool.max_size}]: widen them")
    if not space.pool.searched and list(space.pool.candidates) != list(pool):
        raise SpaceError(f"baseline {name} needs the pool {'+'.join(pool)}, but the space fixes "
                         f"it to {'+'.join(space.pool.candidates)}: search the pool")
    values = space.baseline_values(name)
    for key, wanted in recipe.items():
        spec = space.params.get(key)
        if spec is None:
            have = space.base.get(key, FIELD_DEFAULTS[key])
            if have != wanted:
                raise SpaceError(f"baseline {name} needs {key}={wanted!r}, but the space fixes "
                                 f"{key}={have!r}: search {key} with a range or choices that "
                                 f"include {wanted!r}, or drop {name} from baselines")
        elif spec.active(values) and not spec.allows(wanted):
            allowed = (list(spec.choices) if spec.choices is not None
                       else f"[{spec.low}, {spec.high}]")
            raise SpaceError(f"baseline {name} needs {key}={wanted!r}, outside params.{key} "
                             f"{allowed}: widen it to include {wanted!r}, or drop {name} from "
                             "baselines")
    space.trial_config(values)  # and it is a valid trial


def _check_conditions(params: Mapping[str, ParamSpec], pool: PoolSpec) -> None:
    flags = set(pool.flags(pool.candidates)) if pool.searched else set()
    for name in BEFORE_POOL:
        on_flags = sorted(set((params[name].when or {}) if name in params else ()) & flags)
        if on_flags:
            raise SpaceError(f"params.{name}.when names pool flags {on_flags}, but {name} is "
                             "sampled before the pool (the pool's size depends on it)")
    seen = set(flags)
    for name, spec in params.items():
        for parent, allowed in (spec.when or {}).items():
            if parent not in seen:
                raise SpaceError(f"params.{name}.when names {parent!r}, which is not a searched "
                                 "parameter listed before it")
            parent_spec = params.get(parent)
            if parent_spec is not None and parent_spec.type == "categorical":
                bad = [v for v in allowed if v not in (parent_spec.choices or ())]
                if bad:
                    raise SpaceError(f"params.{name}.when: {bad} are not choices of {parent}")
        seen.add(name)


MAX_COMBINATIONS = 1024  # categorical combinations _check_can_train tries (else: defaults)


def _check_can_train(space: Space) -> None:
    """No choice of the categorical values forces every loss weight that applies to 0 (a
    recipe without a gradient): tried with each searched weight at its highest."""
    categorical = {n: s.choices for n, s in space.params.items() if s.choices is not None}
    combinations = math.prod(len(c) for c in categorical.values())
    if combinations > MAX_COMBINATIONS:
        categorical = {}
    highest = {n: s.high for n, s in space.params.items()
               if n in FIELDS and FIELDS[n].loss and s.high is not None}
    for choice in itertools.product(*categorical.values()):
        values = {**space.default_values(), **highest, **dict(zip(categorical, choice,
                                                                  strict=True))}
        try:
            space.trial_config(values)
        except ConfigError as err:
            if "trains nothing" not in str(err):
                continue  # other rules of a sampled recipe are checked when it is sampled
            chosen = ", ".join(f"{k}={v}" for k, v in zip(categorical, choice, strict=True))
            raise SpaceError(f"with {chosen or 'its fixed values'}, no recipe of this space "
                             f"trains: {str(err).split(': ', 1)[1]}") from None


def _check_whole(space: Space) -> None:
    """Cross-field checks that need the whole space: defaults build a valid trial, every
    attack runs on the data set, pool sizes suit the meta step, the objective exists."""
    config = space.trial_config()
    setup = space.setup(check_data_dir=False)  # runs check the folder; loading needs no data
    meta_choices = space.params["meta"].choices if "meta" in space.params else (config.meta,)
    if any(m != MetaOrder.OFF for m in meta_choices or ()):
        spec = space.params.get("meta_test_attacks")
        most = int(spec.high) if spec and spec.high is not None else config.meta_test_attacks
        largest = space.pool.max_size if space.pool.searched else len(space.pool.candidates)
        if largest < most + 1:
            raise SpaceError(
                f"the pool holds at most {largest} attack(s), too few for the MID meta step "
                f"with {most} meta-test attack(s): it needs at least {most + 1}; raise "
                "attacks.pool.max_size (or add candidates), or set meta: off")
    if space.search.objective not in space.objective_metrics():
        raise SpaceError(f"search.objective={space.search.objective!r} is not a metric a trial "
                         f"reports; choose one of {space.objective_metrics()}")
    if space.search.robust_floor is not None:
        if space.search.mode != Mode.MAX:
            raise SpaceError("search.robust_floor needs an objective that is maximised "
                             "(search.mode: max); set it to null")
        if not config.masking_samples or setup.threat.norm not in (Norm.LINF, Norm.L2):
            raise SpaceError(
                f"search.robust_floor={space.search.robust_floor} needs the masking checks' "
                f"PGD-10 (budget.masking_samples > 0, a Linf or L2 threat model); got "
                f"masking_samples={config.masking_samples}, norm {setup.threat.norm}")
