"""A whole trial, end to end, on the smoke space (seconds)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import spaces
from trainables import load_defended_model, run_trial
from trainables.config import Fidelity
from trainables.defense.export import save_defended_model
from trainables.defense.unig import UniG
from trainables.errors import ConfigError, ModelFileError
from trainables.runtime import resolve_device
from trainables.setting.prepare import Shared, prepare_shared

REPO = Path(__file__).resolve().parents[2]


def _quiet(_: str) -> None:
    return None


def test_trial_reports_every_metric_per_evaluation(smoke_space: spaces.Space,
                                                   smoke_shared: Shared) -> None:
    config = smoke_space.trial_config(epochs=2, eval_every=1)
    reports: list[dict[str, float]] = []
    states: list[dict[str, Any]] = []

    def report(metrics: dict[str, float], points: Any, state: Any, model: Any) -> None:
        reports.append(metrics)
        states.append(state())
        for key in ("val/clean/acc", "val/heldout/mean_acc", "val/heldout/union_acc",
                    "val/heldout/family_mean_acc"):  # each a mean over the same points
            assert points[key].mean() == pytest.approx(metrics[key])
            assert metrics[f"{key}_lo"] <= metrics[key] <= metrics[f"{key}_hi"]

    result = run_trial(config, shared=smoke_shared, report=report, log=_quiet)
    assert [r["epoch"] for r in reports] == [1, 2]
    expected = {"val/clean/acc", "val/heldout/mean_acc", "val/heldout/worst_acc",
                "val/heldout/union_acc", "val/pool/mean_acc"}
    expected |= {f"val/heldout/{a.replace('@', '.')}/acc" for a in config.heldout}
    expected |= {f"val/pool/{a}/acc" for a in config.pool}
    assert expected <= set(result.metrics)
    for key in expected:
        assert 0.0 <= result.metrics[key] <= 1.0
    assert result.metrics["val/heldout/union_acc"] <= result.metrics["val/heldout/worst_acc"]
    assert states[-1]["epoch"] == 1 and "recipe" in states[-1]
    assert isinstance(result.model.unig, UniG)


def test_a_class_missing_from_the_training_set_trains(smoke_space: spaces.Space,
                                                      smoke_shared: Shared) -> None:
    # its PCL prototype has no images to average: it once started as NaN and ruined training
    data = smoke_shared.data
    keep = data.train_y != 9
    shared = dataclasses.replace(smoke_shared, data=dataclasses.replace(
        data, train_x=data.train_x[keep], train_y=data.train_y[keep]), target_examples={})
    config = smoke_space.trial_config(epochs=1, eval_every=1, w_pcl=1.0)
    result = run_trial(config, shared=shared, log=_quiet)
    assert math.isfinite(result.metrics["train/loss"])


def test_same_seed_same_numbers_and_resume_continues(smoke_space: spaces.Space,
                                                     smoke_shared: Shared) -> None:
    config = smoke_space.trial_config({"unig": "off"}, epochs=2, eval_every=1)
    states: list[dict[str, Any]] = []
    first = run_trial(config, shared=smoke_shared, log=_quiet,
                      report=lambda m, p, s, _: states.append(s()))
    again = run_trial(config, shared=smoke_shared, log=_quiet)
    assert first.metrics["val/heldout/mean_acc"] == again.metrics["val/heldout/mean_acc"]
    resumed = run_trial(config, shared=smoke_shared, log=_quiet, resume=states[0])
    assert [h["epoch"] for h in resumed.history] == [2]
    assert resumed.metrics["val/clean/acc"] == pytest.approx(first.metrics["val/clean/acc"])


def test_craft_against_target_uses_cached_target_examples(smoke_space: spaces.Space,
                                                          isolated_cache: Path) -> None:
    config = smoke_space.trial_config(craft_against="target", epochs=1)
    shared = prepare_shared(config, log=_quiet)
    assert shared.target is not None
    assert {f"{a}:{config.train_attack_steps}:1" for a in config.pool} <= set(
        shared.target_examples)
    assert list(isolated_cache.glob("*/pool-PGD-steps*.pt"))
    result = run_trial(config, shared=shared, log=_quiet)
    assert 0.0 <= result.metrics["val/heldout/mean_acc"] <= 1.0


def test_saved_model_rebuilds_itself(tmp_path: Path, smoke_space: spaces.Space,
                                     smoke_shared: Shared) -> None:
    for unig in ("off", "per_sample"):
        config = smoke_space.trial_config({"unig": unig} if unig == "off" else {}, epochs=1)
        result = run_trial(config, shared=smoke_shared, log=_quiet)
        setup = smoke_shared.setup
        path = tmp_path / f"{unig}.pt"
        save_defended_model(path, result.model, arch=setup.arch,
                            image_shape=setup.info.image_shape,
                            num_classes=setup.info.num_classes, info={"config": config.to_dict()})
        loaded = load_defended_model(path)
        x = smoke_shared.data.val_x[:32]
        if unig == "off":
            assert loaded.unig is None
            torch.testing.assert_close(loaded(x), result.model.eval()(x))
        else:
            assert isinstance(loaded.unig, UniG)
            assert loaded.unig.settings() == result.model.unig.settings()  # type: ignore[union-attr]
        assert loaded.info["config"]["dataset"] == "digits"  # type: ignore[index]


def test_load_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"encoder": {}}, path)
    with pytest.raises(ModelFileError, match="not a defended model"):
        load_defended_model(path)


def test_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="GPU"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")


@pytest.mark.slow
def test_mid_defaults_reach_the_promised_quality() -> None:
    """The README's standalone numbers: clean >= 0.95 and non-trivial held-out robustness."""
    space = spaces.load("mid")
    result = run_trial(space.trial_config(), log=_quiet)
    assert result.metrics["val/clean/acc"] >= 0.95
    assert result.metrics["val/heldout/mean_acc"] >= 0.2


# ---- speed levers give the same answers (issue: "a lever must not change what is measured")

def _final_metrics(space: spaces.Space, shared: Shared, fidelity: Fidelity | None = None,
                   reports: list[dict[str, float]] | None = None, **values: Any
                   ) -> dict[str, float]:
    """A 2-epoch trial's last metrics without its timings; `reports` collects every
    evaluation's."""
    config = space.trial_config(epochs=2, eval_every=1, **values)
    metrics = run_trial(config, fidelity=fidelity, shared=shared, log=_quiet,
                        report=None if reports is None else
                        lambda metrics, *_: reports.append(metrics)).metrics
    return {k: v for k, v in metrics.items()
            if not k.startswith("time/") and k != "train/epoch_seconds"}


def test_cheaper_early_evaluations_leave_training_and_the_last_evaluation_unchanged(
        smoke_space: spaces.Space, smoke_shared: Shared) -> None:
    # exact lever: evaluations draw no training randomness, so bitwise equal on CPU
    full = _final_metrics(smoke_space, smoke_shared)
    rungs = Fidelity(rung_samples=16, rung_strength=0.5, rung_heldout_only=True)
    reports: list[dict[str, float]] = []
    cheap = _final_metrics(smoke_space, smoke_shared, rungs, reports)
    assert cheap == full
    # and each evaluation names its fidelity: 16 points at half strength, then all 64
    assert [(r["fidelity/points"], r["fidelity/strength"]) for r in reports] == [
        (16.0, 0.5), (64.0, 1.0)]


@pytest.mark.parametrize("baseline", [None, "pgd-at"])
def test_a_trial_trains_the_model_the_final_comparison_would_train_again(
        smoke_space: spaces.Space, smoke_shared: Shared, baseline: str | None) -> None:
    # exact lever: the final comparison evaluates a baseline trial's own model instead of
    # training its seed again (search/headstart.py), which needs the same weights bitwise
    record = (smoke_space.baseline_record(baseline) if baseline
              else smoke_space.record(smoke_space.default_values()))
    config = record.config.replace(epochs=2, eval_every=1)
    rungs = Fidelity(rung_samples=16, rung_strength=0.5, rung_heldout_only=True)
    in_search = run_trial(config, fidelity=rungs, shared=smoke_shared, log=_quiet).model
    again = run_trial(config.replace(masking_samples=0), shared=smoke_shared, log=_quiet,
                      validation=False).model
    ours, theirs = in_search.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_fused_task_passes_agree_with_separate_ones(smoke_space: spaces.Space,
                                                   smoke_shared: Shared) -> None:
    # inexact lever: one forward pass over the tasks changes batch sums by float round-off
    fused = _final_metrics(smoke_space, smoke_shared, fuse_tasks=True)
    separate = _final_metrics(smoke_space, smoke_shared, fuse_tasks=False)
    assert fused.keys() == separate.keys()
    assert fused["train/loss"] == pytest.approx(separate["train/loss"], rel=1e-3)
    for key in fused:
        if key.endswith("_acc") or key.endswith("/acc"):
            assert fused[key] == pytest.approx(separate[key], abs=0.05), key
