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
    "MAX_EXTENDS",
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
# a space may extend another (`extends`); a chain this long is a mistake, not a design
MAX_EXTENDS = 8
CHILD_KEYS = ("name", "description", "extends", "set")


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
    """The mapping a space file describes and its path: a file that `extends` another space
    is resolved here into the whole mapping (what the search logs and resumes against)."""
    path = _path_of(name_or_path)
    return _resolved(path, ()), str(path)


def _read_mapping(path: Path) -> tuple[dict[str, Any], str]:
    """A space file's top-level mapping, and how errors name the file."""
    what = f"space file {str(path)!r}"
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise SpaceError(f"{what} holds {size:,} bytes; a space file holds at most "
                         f"{MAX_YAML_BYTES:,}")
    raw = load_yaml(path.read_bytes(), what)
    if not isinstance(raw, dict):
        raise SpaceError(f"{what} must hold a mapping at the top level")
    return raw, what


def _resolved(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A space file's mapping; one with `extends: <space>` is that space's mapping with the
    file's `set:` values put at their dotted keys (each replaces the parent's whole value, as
    `--set` does) and the file's own name and description."""
    raw, what = _read_mapping(path)
    if "extends" not in raw:
        return raw
    parent = raw["extends"]
    if not isinstance(parent, str) or not parent:
        raise SpaceError(f"{what}: extends={parent!r}; name a space ({', '.join(list_spaces())}"
                         ") or a .yaml path (relative to this file)")
    others = sorted(set(raw) - set(CHILD_KEYS), key=str)
    if others:
        raise SpaceError(f"{what} extends {parent!r}, so its own keys are only "
                         f"{', '.join(CHILD_KEYS)}; move {', '.join(map(str, others))} under "
                         f"set: as dotted keys (e.g. attacks.heldout: [...]), each replacing "
                         "the parent's value")
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise SpaceError(f"{what} extends {parent!r}: give it its own name (a non-empty "
                         "string)")
    settings = raw.get("set") or {}
    if not isinstance(settings, dict):
        raise SpaceError(f"{what}: set must map dotted keys to values (e.g. budget.epochs: 5)"
                         f", not a {type(settings).__name__}")
    try:  # a bare name is a shipped space; a path is read from this file's folder
        parent_path = (SPACES_DIR / f"{parent}.yaml" if parent in list_spaces() else
                       _path_of(str(path.parent / Path(parent).expanduser())))
    except SpaceError as err:
        raise SpaceError(f"{what}: extends {parent!r}: {err}") from None
    chain = (*chain, path.resolve())
    if parent_path.resolve() in chain:
        names = " -> ".join(str(p) for p in (*chain, parent_path.resolve()))
        raise SpaceError(f"{what}: its extends chain loops ({names}); end it at a space that "
                         "extends none")
    if len(chain) >= MAX_EXTENDS:
        raise SpaceError(f"{what}: more than {MAX_EXTENDS} spaces in its extends chain; "
                         "extend a space closer to the root")
    out = {**_resolved(parent_path, chain), "name": raw["name"]}
    if "description" in raw:
        out["description"] = raw["description"]
    for key, value in settings.items():
        _assign(out, str(key), value, f"{what}: set {key!r}")
    return out


def _assign(raw: dict[str, Any], key: str, value: Any, what: str) -> None:
    """Puts `value` at the dotted `key` of `raw` (in place), replacing what was there."""
    node = raw
    parts = key.split(".")
    if not all(parts):
        raise SpaceError(f"{what}: {key!r} is not a dotted key (e.g. budget.epochs)")
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpaceError(f"{what}: {'.'.join(parts[:depth + 1])} is not a mapping, so it "
                             "has no sub-keys")
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies `KEY=VALUE` overrides (dotted keys, YAML values) to a copy of `raw`."""
    out: dict[str, Any] = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpaceError(f"--set {item!r} must look like KEY=VALUE (e.g. budget.epochs=5)")
        _assign(out, key, load_yaml(text, f"--set {item!r}: the value"), f"--set {item!r}")
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
