"""SearchPlan: everything a search needs, resolved and validated before Ray starts (no Ray
imported here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from search.vocab import FINAL_SEEDS, OBJECTIVE, TRACKING_OUTAGE_S, Scheduler
from spaces import Mode, SearchAlg, Space
from trainables.vocab import CLEAN_ACC, SEALED_STRENGTH

__all__ = ["SearchPlan"]


@dataclass
class SearchPlan:
    """Everything the search needs, resolved and validated from the CLI before Ray starts."""

    space: Space
    name: str
    num_samples: int
    max_concurrent: int
    search_alg: SearchAlg
    scheduler: Scheduler
    multi_objective: bool
    seed: int
    storage_path: str
    output_dir: str
    optuna_storage: str
    mlflow_uri: str
    experiment: str
    address: str | None
    cpus_per_trial: float | None
    gpus_per_trial: float | None
    max_failures: int = 2
    trial_resources: dict[str, float] = field(default_factory=dict)
    sealed_top_k: int = 1
    sealed_strength: float = SEALED_STRENGTH
    final_seeds: int = FINAL_SEEDS
    fresh_final: bool = False  # compute every final task again (search/kept.py)
    tracking_outage_s: float = TRACKING_OUTAGE_S
    startup_trials: int = 10
    warm_start: str | None = None  # an earlier search or a lever table (search/warmstart.py)

    @property
    def objective(self) -> str:
        """What Tune optimises: the space's objective, penalised for masking flags."""
        return OBJECTIVE

    @property
    def raw_objective(self) -> str:
        return self.space.search.objective

    @property
    def mode(self) -> Mode:
        return self.space.search.mode

    @property
    def final_seed_list(self) -> list[int]:
        """The seeds of the final comparison: the search's own first."""
        return [self.seed + i for i in range(self.final_seeds)]

    @property
    def resume_command(self) -> str:
        """How to continue this search where it stopped."""
        return (f"python -m search.run --space {self.space.source} --name {self.name} "
                f"--storage-path {self.storage_path} --resume")

    def metrics(self) -> list[str] | str:
        return [self.objective, CLEAN_ACC] if self.multi_objective else self.objective

    def modes(self) -> list[str] | str:
        # plain strings: Ray checks that metric and mode have the same type
        return ([self.mode.value, Mode.MAX.value] if self.multi_objective
                else self.mode.value)
