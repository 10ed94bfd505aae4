"""Final tasks kept across searches.

A final task (search/final.py) trains one recipe with one seed, or takes a given model, and
evaluates it on the test split. Its answer depends only on the recipe's config, the seed, the
model given, the attack strength, the prepared data and the code, so a later search (or
`search.final` with more seeds) of the same setting takes it from here instead of computing it
again: the baselines' tasks, 15 of `mnist5k`'s 18, do not depend on the search at all. The key
holds all of these (the code as a hash of every source file the task runs and the versions of
the packages it calls), so any change to any of them computes afresh. `--fresh-final` (or
DEFENSE_SEARCH_FRESH_FINAL=1, which the test suite sets) evaluates every task again; what it
computes is kept all the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from spaces import TrialRecord
from trainables.config import RUNTIME_KEYS
from trainables.scoring.final import Evaluation

__all__ = ["load", "store", "task_key"]

_ROOTS = ("search", "spaces", "trainables")  # every source file a final task may run
_PACKAGES = ("torch", "numpy", "torchattacks", "pyautoattack", "kornia")
_VERSION = 1  # of the file layout below


@lru_cache(maxsize=1)
def code_hash() -> str:
    """The code a final task runs: its source files and its packages' versions."""
    digest = hashlib.sha256()
    base = Path(__file__).resolve().parent.parent
    for root in _ROOTS:
        for path in sorted((base / root).rglob("*.py")):
            digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes())
    for name in _PACKAGES:
        try:
            digest.update(f"{name}=={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name} absent".encode())
    return digest.hexdigest()


def task_key(record: TrialRecord, payload: bytes | None, strength: float) -> str:
    """What a final task's answer depends on, besides the prepared data (whose folder holds
    the kept answers): the config without where it runs, the model given, the strength and
    the code."""
    config = {k: v for k, v in record.config.to_dict().items()
              if k not in (*RUNTIME_KEYS, "masking_samples")}
    ident = {"v": _VERSION, "config": config, "strength": strength, "code": code_hash(),
             "model": None if payload is None else hashlib.sha256(payload).hexdigest()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _path(folder: Path, key: str) -> Path:
    return folder / "final" / f"{key}.pt"


def load(folder: Path | None, key: str, *, keep: bool) -> tuple[Evaluation, bytes | None] | None:
    """The kept answer of task `key`, with its trained model where `keep` asks for it; None
    when there is none (or it lacks the model asked for)."""
    path = None if folder is None else _path(folder, key)
    if path is None or not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):  # a torn or foreign file: compute again
        return None
    model = data.get("model")
    if keep and model is None:
        return None
    evaluation = Evaluation(dict(data["metrics"]),
                            {k: v.numpy() for k, v in data["points"].items()})
    return evaluation, None if model is None or not keep else model.numpy().tobytes()


def store(folder: Path | None, key: str, evaluation: Evaluation, model: bytes | None) -> None:
    """Keeps task `key`'s answer (and the model it trained), written aside and renamed, so a
    reader never sees half a file."""
    if folder is None:
        return
    path = _path(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"metrics": {k: float(v) for k, v in evaluation.metrics.items()},
            "points": {k: torch.from_numpy(np.ascontiguousarray(v))
                       for k, v in evaluation.points.items()},
            "model": None if model is None else torch.frombuffer(bytearray(model),
                                                                 dtype=torch.uint8)}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(data, tmp)
    tmp.replace(path)
