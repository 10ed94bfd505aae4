"""`python -m search.sealed`: the final comparison of a finished search, run again.

    python -m search.sealed --name mid-20261121-095941 --seeds 5 --top-k 2

`search.run` ends with this stage already (search/final.py): its best recipes and the space's
baselines, trained over seeds and evaluated on the test split against the held-out and sealed
attacks (never seen while searching) and AutoAttack, as parallel Ray tasks. This command runs
it again on a finished search, e.g. with more seeds, more trials or other baselines; the
numbers go to the trials' MLflow runs (`final/...`) and the table to the parent run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.cli import Parser, run_cli
from search.final import candidates_of, final_stage
from search.records import locate, quiet_ray, use_loopback_for
from search.session import ray_session
from spaces import Space
from trainables.defense.baselines import BASELINES
from trainables.errors import ConfigError
from trainables.setting.prepare import Shared, prepare_shared
from trainables.vocab import ARTIFACT, FINAL_SEEDS, SEALED_STRENGTH

__all__ = ["main"]


@dataclass
class Reopened:
    """A finished search, ready to evaluate again."""

    space: Space
    shared: Shared
    results: Any
    resources: dict[str, float]
    seed: int


@contextmanager
def _reopen(info: dict[str, Any], folder: Path) -> Iterator[Reopened]:
    """The search's space, shared state and Tune results, with Ray running (Ray is imported
    here, after the caller chose its network setting)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    import spaces

    quiet_ray()
    space = spaces.load(str(folder / ARTIFACT.SPACE))
    with ray_session(info["address"]):
        config = space.trial_config(cache_dir=info["cache_dir"])
        shared = prepare_shared(config, pool_candidates=space.pool.candidates,
                                log=lambda _: None)
        path = f"{info['storage_path'].rstrip('/')}/{info['name']}"
        yield Reopened(space, shared, ResultGrid(ExperimentAnalysis(path)), info["resources"],
                       info["seed"])


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m search.sealed", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--name", default=None, help="the search (default: the latest one)")
    p.add_argument("--storage-path", default="./ray_results")
    p.add_argument("--top-k", type=int, default=1, help="best completed trials to compare")
    p.add_argument("--seeds", type=int, default=FINAL_SEEDS,
                   help="seeds per recipe (the search's own model is seed 0's)")
    p.add_argument("--strength", type=float, default=SEALED_STRENGTH,
                   help="multiplier of attack iterations, queries and restarts")
    p.add_argument("--baselines", default=None, metavar="NAMES",
                   help=f"comma-separated baselines ({', '.join(BASELINES)}; default: the "
                        "space's)")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    args = p.parse_args(argv)

    def body() -> int:
        for flag, value in (("--top-k", args.top_k), ("--seeds", args.seeds)):
            if value < 1:
                raise ConfigError(f"{flag}={value} must be >= 1")
        if args.strength <= 0:
            raise ConfigError(f"--strength={args.strength} must be > 0")
        found = locate(storage_path=args.storage_path, name=args.name)
        assert found.info is not None and found.folder is not None
        names = None if args.baselines is None else args.baselines.split(",")
        unknown = [n for n in names or () if n not in BASELINES]
        if unknown:
            raise ConfigError(f"--baselines {unknown} do not exist; choose from "
                              f"{', '.join(BASELINES)}")
        use_loopback_for(found.info["address"])
        with _reopen(found.info, found.folder) as opened:
            candidates = candidates_of(opened.space, found.entries, opened.results,
                                       top_k=args.top_k, baselines=names)
            report = final_stage(
                space=opened.space, shared=opened.shared, candidates=candidates,
                client=found.client, parent_id=found.parent_id, resources=opened.resources,
                seeds=[opened.seed + i for i in range(args.seeds)], strength=args.strength,
                out=found.folder)
        if args.format == "csv":
            print(report.csv())
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
