"""Final tasks kept across searches.

A final task (search/final.py) trains one recipe with one seed, or takes a given model, and
evaluates it on the test split. Its answer depends only on the recipe's config, the seed, the
model given, the attack strength, the prepared data and the code, so a later search (or
`search.final` with more seeds) of the same setting takes it from here instead of computing it
again: the baselines' tasks, 15 of `mnist5k`'s 18, do not depend on the search at all. The key
holds all of these (a given model by its weights, not by the metrics its file also carries; the
code as a hash of the source files the task runs and the versions of the packages it calls),
so a change to any of them computes afresh; where the task ran (CPU or GPU, threads) is not
part of it. The driver writes the answers into the prepared data's cache folder on its own
machine. `--fresh-final` (or DEFENSE_SEARCH_FRESH_FINAL=1, which the test suite sets) computes
every task again; what it computes is kept all the same. Nothing here is ever deleted: remove
`<cache>/<data set folder>/final/` to drop every kept answer.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spaces import TrialRecord
from trainables.config import RUNTIME_KEYS
from trainables.provenance import source_hash
from trainables.scoring.final import Evaluation

__all__ = ["load", "store", "task_key"]

# every source file a final task may run
_SOURCES = ("trainables", "spaces", "search/final.py", "search/kept.py", "search/trainable.py")
_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "torchattacks", "pyautoattack",
             "kornia")
_VERSION = 1  # of the file layout below


def code_hash() -> str:
    """The code a final task runs: its source files and its packages' versions."""
    return source_hash(_SOURCES, _PACKAGES)


def task_key(record: TrialRecord, payload: bytes | None, strength: float) -> str:
    """What a final task's answer depends on, besides the prepared data (whose folder holds
    the kept answers): the record without where it runs, the model given, the strength and
    the code."""
    config = {k: v for k, v in record.config.to_dict().items()
              if k not in (*RUNTIME_KEYS, "masking_samples")}
    ident = {"v": _VERSION, "config": config, "params": record.params,
             "baseline": record.baseline, "strength": strength, "code": code_hash(),
             "model": None if payload is None else model_hash(payload)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()
                          ).hexdigest()[:24]


def model_hash(payload: bytes) -> str:
    """A model file's weights and architecture: two trainings that give the same weights give
    the same hash, whatever metrics and timings their files carry beside them."""
    digest = hashlib.sha256()
    try:
        data = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception:  # not a model file: its bytes are all there is
        digest.update(payload)
    else:
        _digest(digest, {k: v for k, v in data.items() if k != "info"})
    return digest.hexdigest()


def _digest(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value):
            digest.update(str(key).encode() + b"=")
            _digest(digest, value[key])
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())


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
        model = data.get("model")
        evaluation = Evaluation(dict(data["metrics"]),
                                {k: v.numpy() for k, v in data["points"].items()})
    except Exception:
        return None
    if keep and model is None:
        return None
    return evaluation, None if model is None or not keep else model.numpy().tobytes()


def store(folder: Path | None, key: str, evaluation: Evaluation, model: bytes | None) -> None:
    """Keeps task `key`'s answer (and the model it trained), written aside and renamed, so a
    reader never sees half a file."""
    if folder is None:
        return
    path = _path(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"metrics": {k: float(v) for k, v in evaluation.metrics.items()},
            # a copy: points from Ray's object store are read-only, which torch warns about
            "points": {k: torch.from_numpy(np.array(v)) for k, v in evaluation.points.items()},
            "model": None if model is None else torch.frombuffer(bytearray(model),
                                                                 dtype=torch.uint8)}
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    torch.save(data, tmp)
    tmp.replace(path)
