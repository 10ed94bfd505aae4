"""One trial of the defense search: data, models, attacker pool, losses, MID, UniG, scoring.

Runs without Ray. The public surface:

    from trainables import TrialConfig, run_trial, load_defended_model
"""

from __future__ import annotations

from typing import Any

from trainables.config import TrialConfig
from trainables.errors import (
    ConfigError,
    DataError,
    DefenseSearchError,
    ModelFileError,
    TrialFailedError,
)

__all__ = [
    "ConfigError",
    "DataError",
    "DefenseSearchError",
    "ModelFileError",
    "TrialConfig",
    "TrialFailedError",
    "TrialResult",
    "load_defended_model",
    "run_trial",
    "save_defended_model",
]

_LAZY = {"load_defended_model": "trainables.defense.export",
         "save_defended_model": "trainables.defense.export",
         "run_trial": "trainables.train", "TrialResult": "trainables.train"}


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m trainables.train` does not import trainables.train twice.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
