"""What `--resume` checks before Ray starts: the search is resumed with the space it ran with,
and Ray Tune's state on disk is whole (a copy of the last whole one, kept by search/guard.py,
is put back when a full disk or a crash cut it short). No Ray imported here."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from search.records import SearchInfo
from search.vocab import ARTIFACT
from spaces import Space, SpaceError, load_yaml
from trainables.errors import ConfigError

__all__ = ["STATE_COPY", "check_resumable", "damage", "tune_state_files"]

STATE_COPY = ".tune-state"  # the results folder's copy of Tune's last whole state
# Tune's files in a results folder (besides the trials' folders), newest session last
STATE_PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
                  "tuner.pkl")


def check_resumable(output: Path, space: Space, space_arg: str,
                    log: Callable[[str], None] = print) -> None:
    """Refuses a --resume with another space than the search ran with, and one whose Tune state
    is damaged beyond the copy kept of it (a damaged one with a whole copy is repaired)."""
    if (output / ARTIFACT.SEARCH_INFO).is_file():
        _same_space(output, space, space_arg)
    problem = damage(output)
    if problem is None:
        return
    copy = output / STATE_COPY
    if copy.is_dir() and damage(copy) is None:
        for path in tune_state_files(output):  # the damaged set goes; the copy takes its place
            path.unlink()
        for path in tune_state_files(copy):
            shutil.copy2(path, output / path.name)
        log(f"resume: Ray Tune's state in {output} was damaged ({problem}); put back its last "
            f"whole copy ({STATE_COPY}/), a few seconds older")
        return
    raise ConfigError(f"--resume: Ray Tune's state in {output} is damaged ({problem}) and no "
                      "whole copy of it is kept; the search cannot be resumed: start it again "
                      "under another --name")


def tune_state_files(folder: Path) -> list[Path]:
    return sorted(p for pattern in STATE_PATTERNS for p in folder.glob(pattern))


def damage(folder: Path) -> str | None:
    """What is wrong with the Tune state in `folder` (None: whole): its newest experiment state
    must be JSON, and the other files, pickles, must end where a pickle ends."""
    states = sorted(folder.glob(STATE_PATTERNS[0]))
    if not states:
        return "no experiment state"
    try:
        json.loads(states[-1].read_bytes())
    except (OSError, ValueError) as err:
        return f"{states[-1].name} is not whole JSON: {str(err)[:80]}"
    for path in tune_state_files(folder):  # the others are pickles (whatever their suffix)
        if path not in states and not path.read_bytes().endswith(b"."):  # pickle's STOP
            return f"{path.name} is cut short"
    return None


def _same_space(output: Path, space: Space, space_arg: str) -> None:
    info = SearchInfo.read(output)
    recorded = output / ARTIFACT.SPACE
    hint = f"resume it with --space {recorded}" if recorded.is_file() else \
        f"resume it with --space {info.space}"
    if info.space != space.name:
        raise ConfigError(f"--resume: search {info.name!r} ran space {info.space!r}, not "
                          f"{space.name!r} (--space {space_arg}); {hint}")
    if not recorded.is_file():
        return
    try:
        before = load_yaml(recorded.read_bytes(), str(recorded))
    except SpaceError:
        return  # unreadable: Tune's own state decides
    changed = _first_difference(before, dict(space.raw))
    if changed is not None:
        raise ConfigError(f"--resume: search {info.name!r} ran another version of space "
                          f"{space.name!r} ({changed}); {hint} (with the same --set values as "
                          "before, if any)")


def _first_difference(before: Any, now: Any, where: str = "") -> str | None:
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        for key in sorted({*before, *now}, key=str):
            path = f"{where}.{key}" if where else str(key)
            if key not in before or key not in now:
                return f"{path}: {'added' if key not in before else 'left out'} now"
            found = _first_difference(before[key], now[key], path)
            if found is not None:
                return found
        return None
    if before != now:
        return f"{where or 'the space'}: {before!r} then, {now!r} now"
    return None
