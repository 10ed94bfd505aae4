"""Every defended model the project writes can be read back: each recipe kind (UniG off and
every UniG size, every baseline) saved with the metadata the search and `search.trial` save,
and loaded with the weights-only loader to the same outputs and the same metadata."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
import pytest
import torch

import spaces
from spaces import TrialRecord
from trainables.defense.baselines import BASELINES
from trainables.defense.export import load_defended_model, save_defended_model
from trainables.defense.models import DefendedModel, build_arch
from trainables.defense.student import build_unig
from trainables.errors import ModelFileError
from trainables.vocab import UniGSize

SPACE = spaces.load("smoke")
KINDS = [*(f"unig={size.value}" for size in UniGSize), *(f"baseline={b}" for b in BASELINES)]


def _record(kind: str) -> TrialRecord:
    key, value = kind.split("=")
    if key == "baseline":  # held out: a family no baseline trains on (pgd-l2-at takes PGDL2)
        return SPACE.baseline_record(value, heldout=["Elastic@medium"])
    values = {**SPACE.default_values(), "unig": value}
    record = SPACE.record(values)
    return record if record.config.unig == value else TrialRecord(
        record.config.replace(unig=value), record.params)  # a size this space does not search


def _model(record: TrialRecord) -> DefendedModel:
    setup = SPACE.setup()
    torch.manual_seed(0)
    parts = build_arch(setup.arch, setup.info.image_shape, setup.info.num_classes)
    return DefendedModel(parts.encoder, parts.head, build_unig(record.config)).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_every_recipe_kind_round_trips(tmp_path: Path, kind: str) -> None:
    record = _record(kind)
    model, setup = _model(record), SPACE.setup()
    metrics = {"val/clean/acc": np.float32(0.5), "val/heldout/mean_acc": 0.25}  # numpy, too
    info = record.model_info(threat=setup.threat.to_dict(), metrics=metrics, space=SPACE.name)
    path = tmp_path / "model.pt"
    save_defended_model(path, model, arch=setup.arch, image_shape=setup.info.image_shape,
                        num_classes=setup.info.num_classes, info=info)
    loaded = load_defended_model(path)
    assert (loaded.unig is None) == (record.config.unig == UniGSize.OFF)
    x = torch.rand(4, *setup.info.image_shape)
    if loaded.unig is None:  # UniG draws a random multiplier per call: compare the base model
        assert torch.equal(loaded(x), model(x))
    else:
        assert loaded.unig.settings() == model.unig.settings()  # type: ignore[union-attr]
        assert torch.equal(loaded.head(loaded.encoder(x)), model.head(model.encoder(x)))
    assert loaded.info["config"] == record.config.to_dict()  # type: ignore[index]
    assert TrialRecord.from_dict(loaded.info) == record  # type: ignore[arg-type]
    assert loaded.info["metrics"]["val/clean/acc"] == 0.5  # type: ignore[index]


def test_metadata_is_saved_as_plain_types(tmp_path: Path) -> None:
    class Colour(Enum):
        RED = "red"

    parts = build_arch("small_cnn", (1, 8, 8), 10)
    model = DefendedModel(parts.encoder, parts.head, None)
    path = tmp_path / "model.pt"
    save_defended_model(path, model, arch="small_cnn", image_shape=(1, 8, 8), num_classes=10,
                        info={"size": UniGSize.SHARED, "colour": Colour.RED, "pair": (1, 2),
                              "array": np.arange(2), "path": Path("/x")})
    info = load_defended_model(path).info
    assert info == {"size": "shared", "colour": "red", "pair": [1, 2], "array": [0, 1],
                    "path": "/x"}
    with pytest.raises(TypeError, match=r"info\.bad is a object"):
        save_defended_model(tmp_path / "other.pt", model, arch="small_cnn",
                            image_shape=(1, 8, 8), num_classes=10, info={"bad": object()})
    assert not (tmp_path / "other.pt").exists()  # nothing written that could not be read


def test_a_model_path_that_is_a_folder_is_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    parts = build_arch("small_cnn", (1, 8, 8), 10)
    with pytest.raises(ModelFileError, match="is a directory"):
        save_defended_model(tmp_path, DefendedModel(parts.encoder, parts.head, None),
                            arch="small_cnn", image_shape=(1, 8, 8), num_classes=10, info={})
