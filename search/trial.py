"""`python -m search.trial`: one trial from a space's defaults (or given values), no Ray.

    python -m search.trial --space mid --seed 0 --out result.json --save-model model.pt
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import spaces
from search.cli import Parser, run_cli
from search.stores import writable_folder
from trainables.config import plain
from trainables.errors import ConfigError
from trainables.vocab import Split

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m search.trial",
        description="Train and score one defended model with a space's default recipe (the "
                    "papers' defaults) or the values given with --params.")
    p.add_argument("--space", default="mid", help="space name (smoke, mid, paper) or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space field, e.g. --set budget.epochs=5 (repeatable)")
    p.add_argument("--params", default="{}", metavar="JSON",
                   help='searched values to use instead of the defaults, e.g. '
                        '\'{"w_feat": 0.5, "unig": "off", "pool": ["PGD", "FGSM"]}\'')
    p.add_argument("--seed", type=int, default=0, help="data split, init and attack seed")
    p.add_argument("--data-dir", default=None, help="folder with the data set's standard files")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--cache-dir", default=None, help="teacher/target cache folder")
    p.add_argument("--final", "--sealed", dest="final", action="store_true",
                   help="also run the final evaluation: the test split, the held-out and sealed "
                        "attacks, AutoAttack")
    p.add_argument("--out", default=None, help="write the final metrics JSON here")
    p.add_argument("--save-model", default=None, help="write the defended model here (.pt)")
    return p


def parse_values(text: str, space: spaces.Space) -> dict[str, Any]:
    """--params JSON -> searched values; `pool` may be given as a list of attack names."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--params is not valid JSON: {err.msg} (at char {err.pos})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--params must be a JSON object, got {text!r}")
    pool = values.pop("pool", None)
    if pool is not None:
        if not isinstance(pool, list) or not all(isinstance(a, str) for a in pool):
            raise ConfigError(f"--params pool must be a list of attack names, got {pool!r}")
        unknown = set(pool) - set(space.pool.candidates)
        if unknown:
            raise ConfigError(f"--params pool has {sorted(unknown)}, not candidates of space "
                              f"{space.name!r}: {', '.join(space.pool.candidates)}")
        if not space.pool.min_size <= len(pool) <= space.pool.max_size:
            raise ConfigError(f"--params pool has {len(pool)} attacks; space {space.name!r} "
                              f"allows {space.pool.min_size} to {space.pool.max_size}")
        values.update(space.pool.flags(pool))
    allowed = set(space.params) | set(space.pool.flags(space.pool.candidates))
    extra = sorted(set(values) - allowed)
    if extra:
        raise ConfigError(f"--params has unknown key(s) {extra}; space {space.name!r} "
                          f"searches: {', '.join(sorted(allowed))} (and pool)")
    # each value as the space allows it (its range or choices), not only as the config does
    values = {k: space.params[k].value(v) if k in space.params else v for k, v in values.items()}
    resolved = {**space.default_values(), **values}
    for key in values:
        spec = space.params.get(key)
        if spec is not None and not spec.active(resolved):
            condition = ", ".join(f"{k} in {list(v)}" for k, v in (spec.when or {}).items())
            now = ", ".join(f"{k}={plain(resolved.get(k))!r}" for k in spec.when or {})
            raise ConfigError(f"--params {key}={values[key]!r} does not apply: space "
                              f"{space.name!r} uses it only when {condition} (here {now}); "
                              "leave it out")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_cli(lambda: _run(args), interrupted="interrupted: nothing was written")


def _run(args: argparse.Namespace) -> int:
    from trainables.defense.export import save_defended_model
    from trainables.scoring.final import final_evaluation
    from trainables.train import run_trial

    for flag, path in (("--out", args.out), ("--save-model", args.save_model)):
        if path is not None:
            _check_output_file(flag, path)
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data_dir={args.data_dir}")
    space = spaces.load(args.space, overrides)
    values = {**space.default_values(), **parse_values(args.params, space)}
    record = space.record(values, seed=args.seed, device=args.device, threads=args.threads,
                          cache_dir=args.cache_dir)
    config = record.config
    space.setup()
    print(f"space {space.name}: {config.dataset}, pool {'+'.join(config.pool)}, "
          f"held-out {'+'.join(config.heldout)}, {config.epochs} epochs", flush=True)
    start = time.perf_counter()
    result = run_trial(config, fidelity=record.fidelity,
                       log=lambda line: print(line, flush=True))
    if args.final:
        result.metrics.update(final_evaluation(result.model, result.shared, config,
                                               log=lambda line: print(line, flush=True)).metrics)
    wall = time.perf_counter() - start
    for key in sorted(result.metrics):
        if key.startswith((f"{Split.VAL}/", f"{Split.TEST}/")):
            print(f"  {key:<34} {result.metrics[key]:.4f}")
    print(f"wall time {wall:.1f}s")
    summary = {"space": space.name, **record.to_dict(), "metrics": result.metrics,
               "history": result.history, "wall_time_s": wall}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2, default=str))
        print(f"metrics written to {args.out}")
    if args.save_model:
        setup = result.shared.setup
        save_defended_model(args.save_model, result.model, arch=setup.arch,
                            image_shape=setup.info.image_shape,
                            num_classes=setup.info.num_classes,
                            info=record.model_info(threat=setup.threat.to_dict(),
                                                   metrics=result.metrics, space=space.name))
        print(f"defended model written to {args.save_model}")
    return 0


def _check_output_file(flag: str, path: str) -> None:
    """An output file's path, checked before anything is trained: not a folder, and in a
    folder that exists or can be made."""
    target = Path(path).expanduser()
    if not path.strip() or target.is_dir():
        example = target / ("model.pt" if flag == "--save-model" else "result.json")
        raise ConfigError(f"{flag} {path!r} is a folder, not a file; give a file path such "
                          f"as {example}")
    writable_folder(target.resolve().parent, f"{flag} {path!r}: its folder")


if __name__ == "__main__":
    raise SystemExit(main())
