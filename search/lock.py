"""One search per name at a time: a lock file in the search's results folder.

It holds the PID, host and start time of the command that runs the search (or its final
comparison). A second command on the same results folder is refused in one line naming the
first; a lock whose process is gone (it was killed) is taken over, with a note. The file is
made whole in one step (written beside it, then hard-linked to its name, which fails if it
exists), so two commands started at once cannot both hold it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from search.vocab import ARTIFACT
from trainables.errors import ConfigError

__all__ = ["search_lock"]


@contextlib.contextmanager
def search_lock(folder: Path, name: str, log: Callable[[str], None] = print) -> Iterator[Path]:
    """Holds `folder`'s lock for the block (made with the folder if need be)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ARTIFACT.LOCK
    me = psutil.Process()
    mine = {"pid": me.pid, "host": socket.gethostname(), "created": me.create_time(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    _acquire(path, mine, name, log)
    try:
        yield path
    finally:
        if _read(path) == mine:
            path.unlink(missing_ok=True)


def _acquire(path: Path, mine: dict[str, Any], name: str, log: Callable[[str], None]) -> None:
    for _ in range(3):
        if _create(path, mine):
            return
        holder = _read(path)
        if holder is None and not path.exists():
            continue  # released meanwhile
        if holder is None:  # unreadable (not one of ours, or cut short): nobody holds it
            log(f"note: {path} could not be read; taken over")
        elif holder.get("host") != mine["host"]:
            raise ConfigError(
                f"search {name!r} is held by pid {holder.get('pid')} on host "
                f"{holder.get('host')} since {holder.get('started')} ({path}); wait for it, "
                "give this one another --name, or delete the lock if that search is gone")
        elif _alive(holder):
            raise ConfigError(
                f"search {name!r} is already running (pid {holder['pid']}, started "
                f"{holder.get('started')}; lock {path}); wait for it to end, stop it, or give "
                "this one another --name")
        else:
            log(f"note: search {name!r} was left locked by pid {holder.get('pid')} (started "
                f"{holder.get('started')}), which no longer runs: lock taken over")
        path.unlink(missing_ok=True)
    raise ConfigError(f"search {name!r}: its lock {path} keeps being taken by another command; "
                      "give this one another --name")


def _create(path: Path, mine: dict[str, Any]) -> bool:
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(mine))
    try:
        os.link(tmp, path)  # atomic: fails if a lock is there
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder still runs: the same PID with the same start time (a PID the
    system has given to another process since does not count)."""
    try:
        process = psutil.Process(int(holder["pid"]))
        return abs(process.create_time() - float(holder["created"])) < 0.01
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False
