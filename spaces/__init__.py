"""Search spaces as YAML files (smoke, mid, paper, or your own path) and their validator.

    import spaces
    space = spaces.load("mid", overrides=["dataset=mnist5k", "budget.epochs=5"])
    config = space.trial_config(space.default_values())
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spaces._space import (
    INACTIVE,
    RECORD_KEY,
    Mode,
    ParamSpec,
    PoolSpec,
    RungStop,
    SearchAlg,
    SearchSettings,
    Space,
    SpaceError,
    parse_space,
)
from spaces._yaml import MAX_YAML_BYTES, load_yaml
from spaces.record import ORIGIN, TrialRecord
from trainables.errors import ConfigError

__all__ = [
    "INACTIVE",
    "ORIGIN",
    "RECORD_KEY",
    "Mode",
    "ParamSpec",
    "PoolSpec",
    "RungStop",
    "SearchAlg",
    "SearchSettings",
    "Space",
    "SpaceError",
    "TrialRecord",
    "apply_overrides",
    "list_spaces",
    "load",
    "load_yaml",
    "read_raw",
]

SPACES_DIR = Path(__file__).resolve().parent


def list_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def _path_of(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            found = ", ".join(sorted(p.name for p in path.glob("*.y*ml"))[:5]) or "none"
            raise SpaceError(f"space {str(path)!r} is a folder, not a space file; pass one of "
                             f"its .yaml files (there: {found})")
        if not path.is_file():
            raise SpaceError(f"space file {str(path)!r} does not exist")
        return path
    if name_or_path in list_spaces():
        return SPACES_DIR / f"{name_or_path}.yaml"
    raise SpaceError(f"unknown space {name_or_path!r}; choose one of {', '.join(list_spaces())} "
                     "or pass the path of a .yaml file")


def read_raw(name_or_path: str) -> tuple[dict[str, Any], str]:
    """The raw mapping of a space file and its path (read as `load_yaml` reads YAML)."""
    path = _path_of(name_or_path)
    what = f"space file {str(path)!r}"
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise SpaceError(f"{what} holds {size:,} bytes; a space file holds at most "
                         f"{MAX_YAML_BYTES:,}")
    raw = load_yaml(path.read_bytes(), what)
    if not isinstance(raw, dict):
        raise SpaceError(f"{what} must hold a mapping at the top level")
    return raw, str(path)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies `KEY=VALUE` overrides (dotted keys, YAML values) to a copy of `raw`."""
    out: dict[str, Any] = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpaceError(f"--set {item!r} must look like KEY=VALUE (e.g. budget.epochs=5)")
        value = load_yaml(text, f"--set {item!r}: the value")
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpaceError(f"--set {item!r}: {'.'.join(parts[:depth + 1])} is not a "
                                 "mapping, so it has no sub-keys")
        node[parts[-1]] = value
    return out


def load(name_or_path: str, overrides: Sequence[str] = ()) -> Space:
    """Loads, overrides and validates a space; any problem raises SpaceError (a ValueError)."""
    raw, source = read_raw(name_or_path)
    try:
        return parse_space(apply_overrides(raw, overrides), source=source)
    except SpaceError:
        raise
    except ConfigError as err:  # a value checked by trainables: say which space it came from
        raise SpaceError(f"space {source!r}: {err}") from None
