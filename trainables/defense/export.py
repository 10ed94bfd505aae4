"""Saving and loading a defended model with everything it needs to rebuild itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trainables.defense.models import DefendedModel, build_arch
from trainables.defense.unig import UniG
from trainables.errors import ModelFileError

__all__ = ["card_paths", "load_defended_model", "save_defended_model"]

FORMAT = "defense-search/defended-model/1"


def card_paths(path: str | Path) -> tuple[Path, Path]:
    """Where a model's card is kept: beside it, `<stem>.card.md` and `<stem>.card.json`
    (search/card.py writes them)."""
    file = Path(path)
    return file.with_suffix(".card.md"), file.with_suffix(".card.json")


def save_defended_model(path: str | Path, model: DefendedModel, *, arch: str,
                        image_shape: tuple[int, int, int], num_classes: int,
                        info: dict[str, Any]) -> None:
    """Writes weights plus architecture, data set, threat model and UniG settings.

    `info` holds the rest worth keeping with the weights (trial config, metrics).
    """
    unig = model.unig.settings() if isinstance(model.unig, UniG) else None
    payload = {
        "format": FORMAT, "arch": arch, "image_shape": list(image_shape),
        "num_classes": num_classes, "unig": unig,
        "encoder": {k: v.cpu() for k, v in model.encoder.state_dict().items()},
        "head": {k: v.cpu() for k, v in model.head.state_dict().items()},
        "info": info,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_defended_model(path: str | Path, *, device: str | torch.device = "cpu"
                        ) -> DefendedModel:
    """Rebuilds a saved defended model: [0,1] images -> logits, UniG included if it had one.

    The saved metadata (trial config, threat model, metrics) is on `model.info`, and the
    model card beside the file, if there is one, on `model.card` (its JSON; else None).
    """
    file = Path(path)
    if not file.is_file():
        raise ModelFileError(f"model file {str(file)!r} "
                             f"{'is a directory' if file.is_dir() else 'does not exist'}")
    try:  # weights only: a pickled object (code) is refused, not run
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, random bytes, a pickled module...
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"{path} cannot be read as a saved model ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a defended model saved by this project "
                             f"(expected format {FORMAT})")
    missing = sorted({"arch", "image_shape", "num_classes", "encoder", "head", "unig",
                      "info"} - set(payload))
    if missing:
        raise ModelFileError(f"{path} lacks {missing}: it is not a whole defended model")
    try:
        parts = build_arch(payload["arch"], tuple(payload["image_shape"]),
                           payload["num_classes"])
        parts.encoder.load_state_dict(payload["encoder"])
        parts.head.load_state_dict(payload["head"])
        unig = None
        if payload["unig"] is not None:
            settings = dict(payload["unig"])
            unig = UniG(settings.pop("granularity"), **settings)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise ModelFileError(f"{path}: its weights do not fit its architecture "
                             f"{payload['arch']} ({reason})") from None
    model = DefendedModel(parts.encoder, parts.head, unig).to(device).eval()
    model.requires_grad_(False)
    model.info = payload["info"]
    model.card = _card(file)
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
