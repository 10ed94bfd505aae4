"""A trial's record: what a space resolved one trial to, built once (`Space.record`) and passed
as this object through Tune, the trainable, MLflow, the checkpoint and the final comparison.

Its plain form (`to_dict` / `from_dict`, here and nowhere else) is what files hold: the MLflow
`config.json`, the journal of MLflow writes, the exported model's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from trainables.config import FIELDS, RUNTIME_KEYS, Fidelity, TrialConfig, plain

__all__ = ["INACTIVE", "ORIGIN", "TrialRecord"]

INACTIVE = "inactive"  # the logged value of a conditional parameter that did not apply
ORIGIN = "origin"  # the Optuna user attribute naming where an enqueued or added point came from


@dataclass(frozen=True)
class TrialRecord:
    """One trial: the config it trains, its searched values (the same keys for every trial
    of a space: each searched value, `inactive` where a condition did not apply, one
    `pool.<attack>` flag per candidate and the pool), the baseline it is (if any), the
    fidelity of its early evaluations, and where it came from (`default`, `baseline:<name>`,
    `warm-start:<source>`; None: the sampler proposed it). `invalid`: why a sampler's values
    make no recipe (a cross-field check of the config failed; the config is then the space's
    default, never trained): the trial fails at its start with this reason and the search goes
    on."""

    config: TrialConfig
    params: Mapping[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    fidelity: Fidelity = field(default_factory=Fidelity)
    origin: str | None = None
    invalid: str | None = None

    def __post_init__(self) -> None:  # searched values as plain types, whoever built them
        object.__setattr__(self, "params", {k: plain(v) for k, v in self.params.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types (enums as strings, tuples as lists)."""
        return {"config": self.config.to_dict(), "params": dict(self.params),
                "baseline": self.baseline, "fidelity": self.fidelity.to_dict(),
                "origin": self.origin, "invalid": self.invalid}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        return cls(TrialConfig.from_dict(data["config"]), dict(data.get("params", {})),
                   data.get("baseline"), Fidelity.from_dict(data.get("fidelity", {})),
                   data.get("origin"), data.get("invalid"))

    def model_info(self, *, threat: Mapping[str, Any], metrics: Mapping[str, float],
                   space: str) -> dict[str, Any]:
        """What a saved defended model keeps beside its weights (`model.info` once loaded):
        this record, the threat model it was trained for, its metrics and its space."""
        return {**self.to_dict(), "threat_model": dict(threat), "metrics": dict(metrics),
                "space": space}

    def mlflow_params(self) -> dict[str, str]:
        """The trial's MLflow params: the config's values (where it ran left out), then the
        searched values under the same keys on every run."""
        params = {k: _param(v) for k, v in self.config.to_dict().items()
                  if k not in RUNTIME_KEYS}
        params.update({k: _param(v) for k, v in self.params.items()})
        return params

    def with_config(self, **changes: Any) -> TrialRecord:
        """The same record with some config values changed (a seed, where it runs)."""
        return replace(self, config=self.config.replace(**changes))

    @property
    def recipe(self) -> dict[str, Any]:
        """The config's recipe values and pool: what makes two trials the same recipe."""
        return {k: v for k, v in self.config.to_dict().items()
                if FIELDS[k].recipe or k == "pool"}


def _param(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)
