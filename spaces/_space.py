"""Search spaces: YAML files parsed into a validated, typed Space.

A space fixes the setting (data set, threat model, the three attack sets, training budget),
names the searched recipe values with their ranges, conditions and defaults, and says how to
search (trials, concurrency, objective). Everything is checked here, before Ray starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from trainables.config import FIELDS, RECIPE_FIELDS, TrialConfig
from trainables.errors import ConfigError
from trainables.prepare import Setup, resolve_setup

__all__ = ["ParamSpec", "PoolSpec", "SearchSettings", "Space", "SpaceError", "TrialLike"]

TOP_KEYS = {"name", "description", "dataset", "data_dir", "threat_model", "attacks",
            "craft_against", "budget", "fixed", "params", "search"}
BUDGET_KEYS = {"epochs", "batch_size", "eval_every", "eval_samples", "eval_batch_size",
               "teacher_epochs", "masking_samples"}
GROUP_METRICS = ("mean_acc", "worst_acc", "union_acc")


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

    def active(self, values: Mapping[str, Any]) -> bool:
        return self.when is None or all(values.get(k) in v for k, v in self.when.items())

    def suggest(self, trial: TrialLike) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices or ()))
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

    def flags(self, chosen: Sequence[str]) -> dict[str, bool]:
        return {f"pool.{name}": name in chosen for name in self.candidates}

    def chosen(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        if not self.searched:
            return self.candidates
        return tuple(name for name in self.candidates if values.get(f"pool.{name}"))

    def suggest(self, trial: TrialLike) -> dict[str, bool]:
        """Include flags that always satisfy min/max size, without any after-the-fact repair.

        Walking the candidates in order, a flag is forced (not suggested) once the size bounds
        leave no choice, so every suggested combination is feasible and Optuna learns from
        exactly what ran.
        """
        if not self.searched:
            return {}
        picked, flags = 0, {}
        for index, name in enumerate(self.candidates):
            remaining = len(self.candidates) - index
            if picked >= self.max_size:
                flags[f"pool.{name}"] = False
            elif picked + remaining <= self.min_size:
                flags[f"pool.{name}"] = True
            else:
                flags[f"pool.{name}"] = trial.suggest_categorical(f"pool.{name}", [True, False])
            picked += flags[f"pool.{name}"]
        return flags


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 24
    max_concurrent: int = 2
    objective: str = "val/heldout/mean_acc"
    mode: str = "max"
    grace_period: int = 1  # ASHA, in evaluations (one every budget.eval_every epochs)
    reduction_factor: int = 3
    penalize_flags: bool = True  # gradient-masking flags zero a trial's objective

    @classmethod
    def parse(cls, raw: Any) -> SearchSettings:
        raw = _require(raw or {}, "search")
        _no_unknown(raw, set(cls.__dataclass_fields__), "search")
        settings = cls(**raw)
        for key in ("num_samples", "max_concurrent", "grace_period"):
            value = getattr(settings, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpaceError(f"search.{key}={value!r} must be a whole number >= 1")
        if not isinstance(settings.reduction_factor, int) or settings.reduction_factor < 2:
            raise SpaceError(f"search.reduction_factor={settings.reduction_factor!r} must be >= 2")
        if settings.mode not in ("max", "min"):
            raise SpaceError(f"search.mode={settings.mode!r}; choose max or min")
        return settings


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

    # ---- values <-> trial configs
    def default_values(self) -> dict[str, Any]:
        """The papers' defaults: the first trial of every search and the standalone trial."""
        values = self.pool.flags(self.pool.default) if self.pool.searched else {}
        for name, spec in self.params.items():
            if spec.active(values):
                values[name] = spec.default
        return values

    def suggest(self, trial: TrialLike) -> dict[str, Any]:
        """Define-by-run sampling: pool flags, then each active parameter in file order."""
        values: dict[str, Any] = dict(self.pool.suggest(trial))
        for name, spec in self.params.items():
            if spec.active(values):
                values[name] = spec.suggest(trial)
        return values

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
            out[name] = values.get(name) if spec.active(values) else "inactive"
        return out

    def values_from_params(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Typed searched values back from logged (string) params; inactive ones are left out."""
        values: dict[str, Any] = {}
        for key in self.pool.flags(self.pool.candidates) if self.pool.searched else ():
            if key in params:
                values[key] = params[key] == "True"
        for name, spec in self.params.items():
            text = params.get(name)
            if text is None or text == "inactive":
                continue
            if spec.type == "categorical":
                matches = [c for c in spec.choices or () if str(c) == text]
                if not matches:
                    raise SpaceError(f"logged value {name}={text!r} is not a choice of space "
                                     f"{self.name!r}")
                values[name] = matches[0]
            else:
                values[name] = int(float(text)) if spec.type == "int" else float(text)
        return values

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
        return (["val/clean/acc"] + [f"val/heldout/{m}" for m in GROUP_METRICS]
                + [f"val/heldout/{a}/acc" for a in heldout])

    @property
    def max_evaluations(self) -> int:
        """Reports per full-length trial: ASHA's max_t."""
        config = self.trial_config()
        return math.ceil(config.epochs / config.eval_every)


def parse_space(raw: Any, *, source: str = "") -> Space:
    raw = _require(raw, "a space file")
    _no_unknown(raw, TOP_KEYS, "space")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SpaceError("space needs a name (a non-empty string)")
    if "dataset" not in raw:
        raise SpaceError("space needs a dataset (e.g. dataset: digits)")
    attacks = _require(raw.get("attacks", {}), "attacks")
    _no_unknown(attacks, {"pool", "heldout", "sealed"}, "attacks")
    if "pool" not in attacks or "heldout" not in attacks:
        raise SpaceError("attacks needs pool (candidates) and heldout (the search objective)")
    pool = PoolSpec.parse(attacks["pool"])
    heldout = FIELDS["heldout"].check("attacks.heldout", attacks["heldout"])
    sealed = FIELDS["sealed"].check("attacks.sealed", attacks.get("sealed", []))
    if not heldout:
        raise SpaceError("attacks.heldout is empty: the search objective needs held-out attacks")
    for first, second, a, b in (("pool candidates", "heldout", pool.candidates, heldout),
                                ("pool candidates", "sealed", pool.candidates, sealed),
                                ("heldout", "sealed", heldout, sealed)):
        if set(a) & set(b):
            raise SpaceError(f"attacks {sorted(set(a) & set(b))} are in both {first} and "
                             f"{second}; the pool, held-out and sealed sets must be disjoint")
    budget = _require(raw.get("budget", {}), "budget")
    _no_unknown(budget, BUDGET_KEYS, "budget")
    fixed = _require(raw.get("fixed", {}), "fixed")
    _no_unknown(fixed, set(FIELDS) - {"pool", "heldout", "sealed", "dataset"} - BUDGET_KEYS,
                "fixed")
    params_raw = _require(raw.get("params", {}), "params")
    params = {str(k): ParamSpec.parse(str(k), v) for k, v in params_raw.items()}
    both = sorted(set(params) & set(fixed))
    if both:
        raise SpaceError(f"{both} are both searched (params) and fixed; keep one")
    _check_conditions(params, pool)
    base = {"dataset": raw["dataset"], "heldout": list(heldout), "sealed": list(sealed),
            **{k: raw[k] for k in ("data_dir", "threat_model", "craft_against") if k in raw},
            **budget, **fixed}
    space = Space(name, str(raw.get("description", "")).strip(), base, pool, params,
                  SearchSettings.parse(raw.get("search")), source, raw)
    _check_whole(space)
    return space


def _check_conditions(params: Mapping[str, ParamSpec], pool: PoolSpec) -> None:
    seen: set[str] = set(pool.flags(pool.candidates)) if pool.searched else set()
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


def _check_whole(space: Space) -> None:
    """Cross-field checks that need the whole space: defaults build a valid trial, every
    attack runs on the data set, pool sizes suit the meta step, the objective exists."""
    config = space.trial_config()
    space.setup(check_data_dir=False)  # runs check the folder; loading a space needs no data
    meta_choices = space.params["meta"].choices if "meta" in space.params else (config.meta,)
    if any(m != "off" for m in meta_choices or ()):
        spec = space.params.get("meta_test_attacks")
        most = int(spec.high) if spec and spec.high is not None else config.meta_test_attacks
        if space.pool.min_size < most + 1:
            raise SpaceError(
                f"attacks.pool.min_size={space.pool.min_size} is too small for the MID meta step "
                f"with {most} meta-test attack(s): it needs at least {most + 1}; raise min_size "
                "or set meta: off")
    if space.search.objective not in space.objective_metrics():
        raise SpaceError(f"search.objective={space.search.objective!r} is not a metric a trial "
                         f"reports; choose one of {space.objective_metrics()}")
