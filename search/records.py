"""What a search leaves in its output folder so later commands can reopen it (no Ray here:
commands must choose Ray's network settings before Ray is imported)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError

__all__ = ["STATUS_TAG", "find_search", "read_info", "trial_status", "use_loopback_for"]

# The child-run tag holding a trial's fate: completed | early-stopped | failed | running |
# retrying (baselines: baseline)
STATUS_TAG = "trial_status"


def find_search(storage_path: str, name: str | None) -> Path:
    """The output folder of search `name` (default: the latest) under `storage_path`."""
    storage = Path(storage_path).expanduser().resolve()
    if name is not None:
        for folder in (storage / name, Path("search_output").resolve() / name):
            if (folder / "search.json").exists():
                return folder
        raise ConfigError(f"no search {name!r} in {storage} (no search.json found)")
    found = sorted(storage.glob("*/search.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"no finished search in {storage}: pass --storage-path or --name")
    return found[-1].parent


def read_info(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "search.json").read_text())


def use_loopback_for(address: str | None) -> None:
    """A search on this machine keeps Ray on the loopback interface; Ray reads this setting
    when it is imported, and then binds 127.0.0.1 instead of the host's network address."""
    if address in (None, "", "local"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def trial_status(result: dict[str, Any] | None, max_t: int) -> str:
    """How a trial that ended without error ended: all its evaluations, or stopped by ASHA."""
    done = int((result or {}).get("training_iteration", 0))
    return "completed" if done >= max_t else "early-stopped"
