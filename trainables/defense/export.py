"""Saving and loading a defended model with everything it needs to rebuild itself.

A saved model is read with torch's weights-only loader (a file that holds pickled code is
refused, never run), so everything saved is a tensor or a plain value: the metadata is turned
into plain types when it is saved, and the bytes are read back the same way before they are
written, so that a model this project writes can always be loaded again.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.defense.models import DefendedModel, build_arch
from trainables.defense.unig import UniG
from trainables.errors import DefenseSearchError, ModelFileError
from trainables.files import write_atomic

__all__ = ["card_paths", "load_defended_model", "plain_metadata", "save_defended_model"]

FORMAT = "defense-search/defended-model/1"
KEYS = ("arch", "image_shape", "num_classes", "encoder", "head", "unig", "info")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_metadata(value: Any, where: str = "info") -> Any:
    """`value` as types the weights-only loader reads (dicts with string keys, lists, str,
    int, float, bool, None, tensors): enums as their values, tuples as lists, numpy scalars
    and arrays as numbers and lists, paths as strings. Anything else raises TypeError naming
    where it is."""
    if isinstance(value, Enum):
        return plain_metadata(value.value, where)
    if value is None or isinstance(value, (str, bool, int, torch.Tensor)):
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; model "
                                "metadata keys must be strings")
            out[str(key)] = plain_metadata(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [plain_metadata(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, which a weights-only load cannot "
                    "read back; save plain values (str, numbers, lists, dicts)")


def card_paths(path: str | Path) -> tuple[Path, Path]:
    """Where a model's card is kept: beside it, `<stem>.card.md` and `<stem>.card.json`
    (search/card.py writes them)."""
    file = Path(path)
    return file.with_suffix(".card.md"), file.with_suffix(".card.json")


def save_defended_model(path: str | Path, model: DefendedModel, *, arch: str,
                        image_shape: tuple[int, int, int], num_classes: int,
                        info: Mapping[str, Any]) -> None:
    """Writes weights plus architecture, data set, threat model and UniG settings.

    `info` holds the rest worth keeping with the weights (trial config, metrics). The file is
    written whole or not at all, and only after its bytes were read back as `load` reads them.
    """
    target = Path(path)
    if target.is_dir():
        raise ModelFileError(f"model file {str(target)!r} is a directory; give a file path "
                             "such as model.pt")
    unig = model.unig.settings() if isinstance(model.unig, UniG) else None
    payload = {
        "format": FORMAT, "arch": str(arch), "image_shape": [int(n) for n in image_shape],
        "num_classes": int(num_classes), "unig": plain_metadata(unig, "unig"),
        "encoder": {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()},
        "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
        "info": plain_metadata(info),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, buffer.getvalue())


def load_defended_model(path: str | Path, *, device: str | torch.device = "cpu"
                        ) -> DefendedModel:
    """Rebuilds a saved defended model: [0,1] images -> logits, UniG included if it had one.

    The saved metadata (trial config, threat model, metrics) is on `model.info`, and the
    model card beside the file, if there is one, on `model.card` (its JSON; else None).
    """
    payload = _read(Path(path))
    arch, shape, classes = payload["arch"], payload["image_shape"], payload["num_classes"]
    try:
        parts = build_arch(arch, tuple(shape), classes)
    except (DefenseSearchError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{path}: architecture {arch!r} for images {shape} and {classes} "
                             f"classes cannot be built ({_reason(err)})") from None
    where = f"a {arch} for images {list(shape)} with {classes} classes"
    _load_part(parts.encoder, payload["encoder"], "encoder", path, where)
    _load_part(parts.head, payload["head"], "head", path, where)
    unig = None
    if payload["unig"] is not None:
        try:
            settings = dict(payload["unig"])
            unig = UniG(settings.pop("granularity"), **settings)
        except (DefenseSearchError, KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{path}: its UniG settings {payload['unig']!r} are not valid "
                                 f"({_reason(err)})") from None
    model = DefendedModel(parts.encoder, parts.head, unig).to(device).eval()
    model.requires_grad_(False)
    model.info = payload["info"]
    model.card = _card(Path(path))
    return model


def _card(file: Path) -> dict[str, Any] | None:
    card = card_paths(file)[1]
    if not card.is_file():
        return None
    try:
        found = json.loads(card.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{card}, the card of {file}, cannot be read as JSON ({err}); "
                             "restore it or delete it to load the model without a card"
                             ) from None
    if not isinstance(found, dict):
        raise ModelFileError(f"{card}, the card of {file}, is not a JSON object")
    return found


def _read(file: Path) -> dict[str, Any]:
    """The file's payload, loaded weights-only and checked to be one of ours."""
    if not file.is_file():
        raise ModelFileError(f"model file {str(file)!r} "
                             f"{'is a directory' if file.is_dir() else 'does not exist'}")
    try:  # weights only: a pickled object (code) is refused, not run
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, random bytes, a pickled module...
        raise ModelFileError(f"{file} cannot be read as a saved model ({_load_reason(err)})"
                             ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{file} is not a defended model saved by this project "
                             f"(expected a dict with format {FORMAT!r}, as "
                             "save_defended_model writes)")
    missing = [key for key in KEYS if key not in payload]
    if missing:
        raise ModelFileError(f"{file} lacks the key(s) {missing}: it is not a whole defended "
                             f"model (a saved model holds {', '.join(KEYS)})")
    return payload


def _load_part(module: nn.Module, state: Any, part: str, path: str | Path, where: str) -> None:
    """Loads one part's weights, naming the first key that is missing, unexpected or of
    another shape than the architecture expects."""
    expected = module.state_dict()
    if not isinstance(state, Mapping):
        raise ModelFileError(f"{path}: {part!r} is a {type(state).__name__}, not a mapping of "
                             "weight names to tensors")
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelFileError(f"{path}: {part} weight {missing[0]!r} is missing (expected shape "
                             f"{list(expected[missing[0]].shape)} for {where})"
                             + (f", and {len(missing) - 1} more" if len(missing) > 1 else ""))
    extra = [k for k in state if k not in expected]
    if extra:
        raise ModelFileError(f"{path}: {part} weight {extra[0]!r} is not part of {where}"
                             + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for key, tensor in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{path}: {part} weight {key!r} is a {type(value).__name__}, "
                                 f"not a tensor of shape {list(tensor.shape)}")
        if value.shape != tensor.shape:
            raise ModelFileError(f"{path}: {part} weight {key!r} has shape {list(value.shape)}, "
                                 f"expected {list(tensor.shape)} for {where}")
    module.load_state_dict(dict(state))


def _reason(err: BaseException) -> str:
    text = ANSI.sub("", str(err)).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _load_reason(err: BaseException) -> str:
    """Why torch could not load a file, without torch's advice to load untrusted files with
    weights_only=False (which would run the code a file holds)."""
    text = ANSI.sub("", str(err))
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds a pickled Python object{what}, which is refused because loading it "
                "would run code from the file; a defended model is saved with "
                "save_defended_model")
    return _reason(err)
