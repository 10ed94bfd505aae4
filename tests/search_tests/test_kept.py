"""search/kept.py: what a final task's kept answer is keyed by, and how it is read back."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import spaces
from search import kept
from trainables.defense.export import save_defended_model
from trainables.defense.models import DefendedModel
from trainables.scoring.final import Evaluation


def _record(**changes: object) -> spaces.TrialRecord:
    return spaces.load("smoke").baseline_record("pgd-at").with_config(**changes)


def _evaluation() -> Evaluation:
    return Evaluation({"test/clean/acc": 0.75, "time/train_s": 3.0},
                      {"test/clean/acc": np.array([1.0, 0.0, 1.0, 1.0], dtype=np.float32),
                       "test/sealed/union_acc": np.array([True, False, False, True])})


def test_the_key_changes_with_everything_the_answer_depends_on() -> None:
    base = kept.task_key(_record(seed=1), None, 2.0)
    assert kept.task_key(_record(seed=1), None, 2.0) == base
    others = [kept.task_key(_record(seed=2), None, 2.0),  # the seed
              kept.task_key(_record(seed=1, epochs=3), None, 2.0),  # the recipe
              kept.task_key(_record(seed=1, test_samples=7), None, 2.0),  # the points
              kept.task_key(_record(seed=1), None, 1.0),  # the strength
              kept.task_key(_record(seed=1), b"a model", 2.0),  # the model given
              kept.task_key(_record(seed=1), b"another model", 2.0)]
    assert len({base, *others}) == len(others) + 1
    # where it runs is not part of the answer
    assert kept.task_key(_record(seed=1, threads=3, device="cpu"), None, 2.0) == base


def test_a_model_is_known_by_its_weights_not_by_its_file(tmp_path: Path,
                                                         digits_model: DefendedModel) -> None:
    """Two files of the same weights (a later search's seed-0 model, with other metrics and
    timings beside them) give one key; other weights another."""
    tiny_model, files = copy.deepcopy(digits_model), []
    for elapsed in (1.0, 2.0):
        path = tmp_path / f"m{elapsed}.pt"
        save_defended_model(path, tiny_model, arch="small_cnn", image_shape=(1, 8, 8),
                            num_classes=10, info={"metrics": {"time/elapsed_s": elapsed}})
        files.append(path.read_bytes())
    assert files[0] != files[1]
    keys = {kept.task_key(_record(seed=1), payload, 2.0) for payload in files}
    assert len(keys) == 1
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1e-3)
    save_defended_model(tmp_path / "other.pt", tiny_model, arch="small_cnn",
                        image_shape=(1, 8, 8), num_classes=10, info={})
    assert kept.task_key(_record(seed=1), (tmp_path / "other.pt").read_bytes(), 2.0) not in keys


def test_the_code_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    base = kept.task_key(_record(seed=1), None, 2.0)
    monkeypatch.setattr(kept, "code_hash", lambda: "edited")
    assert kept.task_key(_record(seed=1), None, 2.0) != base


def test_an_answer_reads_back_as_it_was_kept(tmp_path: Path) -> None:
    kept.store(tmp_path, "k1", _evaluation(), b"model bytes")
    found = kept.load(tmp_path, "k1", keep=True)
    assert found is not None
    evaluation, model = found
    assert evaluation.metrics == _evaluation().metrics and model == b"model bytes"
    for key, values in _evaluation().points.items():
        assert evaluation.points[key].dtype == values.dtype
        np.testing.assert_array_equal(evaluation.points[key], values)
    without = kept.load(tmp_path, "k1", keep=False)
    assert without is not None and without[1] is None  # the model only where asked for
    assert kept.load(tmp_path, "k2", keep=False) is None
    assert kept.load(None, "k1", keep=False) is None


def test_read_only_points_are_kept_without_a_warning(tmp_path: Path) -> None:
    # what a Ray task returns lives in the read-only object store; torch warns on those
    evaluation = _evaluation()
    for values in evaluation.points.values():
        values.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept.store(tmp_path, "k1", evaluation, None)
    found = kept.load(tmp_path, "k1", keep=False)
    assert found is not None
    np.testing.assert_array_equal(found[0].points["test/clean/acc"], [1.0, 0.0, 1.0, 1.0])


def test_a_missing_model_or_a_torn_file_computes_again(tmp_path: Path) -> None:
    kept.store(tmp_path, "no-model", _evaluation(), None)
    assert kept.load(tmp_path, "no-model", keep=False) is not None
    assert kept.load(tmp_path, "no-model", keep=True) is None  # the model is asked for
    (tmp_path / "final" / "torn.pt").write_bytes(b"PK\x03\x04 half a file")
    assert kept.load(tmp_path, "torn", keep=False) is None
    assert not [p.name for p in (tmp_path / "final").iterdir() if p.suffix == ".tmp"]
