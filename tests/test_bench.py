"""The GPU benchmark's code path runs on the CPU at toy size, and its cost model adds up."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import spaces
from trainables.attacks import build_attack, sparse
from trainables.defense.models import DefendedModel
from trainables.setting.setup import dataset_info

REPO = Path(__file__).resolve().parent.parent


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_asha_evaluations_follow_the_promotion_rule() -> None:
    gpu = _bench("gpu")
    space = spaces.load("smoke", ["search.grace_period=1", "search.reduction_factor=2",
                                  "budget.epochs=4", "budget.eval_every=1"])
    # rungs 1, 2, 4: 8 trials x 1 + 4 x 1 + 2 x 2 evaluation periods
    assert gpu.asha_evaluations(space, 8) == pytest.approx(16.0)


@pytest.mark.slow
def test_the_paper_trial_runs_at_toy_size_and_the_cost_model_scales_it() -> None:
    gpu = _bench("gpu")
    tiny = ["budget.batch_size=16", "budget.eval_batch_size=8", "fixed.train_attack_steps=1"]
    # without the masking checks: two thirds of this run (34 of 51 s), and the same code
    # whatever the architecture; the cost model's arithmetic is what is checked here
    metrics = gpu.one_trial("paper", tiny, "cpu", 32, 4, False, masking=False)
    for key in ("time/craft_s", "time/step_s", "time/eval_attacks_s"):
        assert metrics[key] > 0, key
    lines = gpu.cost_model(spaces.load("paper", tiny), metrics, 4)
    per_trial = float(lines[3].split(":")[1].split()[0])
    train_h = float(lines[0].split("->")[1].split()[0])
    eval_h = float(lines[1].split("->")[1].split()[0])
    assert per_trial == pytest.approx(train_h + eval_h, abs=0.02)
    assert "paper search" in lines[4]


def test_search_efficiency_records_round_trip_and_pair_by_seed() -> None:
    efficiency = _bench("search_efficiency")
    interval = efficiency.Interval(0.05, 0.01, 0.09)
    tpe = [efficiency.Search("tpe", seed, [0.1, 0.2 + seed / 10], [(0.5, 0.1), (1.0, 0.2)], 0.15,
                             interval, 12.0, (3, 7, 1)) for seed in (0, 1)]
    assert efficiency.Search.from_json(tpe[0].to_json()) == tpe[0]
    # random has seeds 1 and 2 only: the gap to it pairs seed 1 alone, so it has no interval
    random = [efficiency.Search("random", seed, [0.1, 0.1], [(0.5, 0.1)], 0.15, None, 11.0)
              for seed in (1, 2)]
    rows = efficiency._table({"tpe": tpe, "random": random}, "random")
    cells = rows[2].split(" | ")
    assert cells[1] == "3/7/1 3/7/1" and cells[2] == "0.200 0.300" and cells[4] == "2 of 2"
    assert cells[6] == "-"


def test_lever_tables_merge_once_per_lever_and_leave_out_what_the_space_cannot_express(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    levers = _bench("levers")
    space = spaces.load("smoke")
    pgd = space.point(space.baseline_values("pgd-at"))
    rounds = [{"pgd-at": {"values": {**pgd, "pool.Spatial-Rand.medium": False},
                          "objective": [0.4, 0.5]},
               "gone": {"values": {**pgd, "pool.Spatial-Rand.medium": True},
                        "objective": [0.9]}},
              {"pgd-at": {"values": pgd, "objective": [0.4, 0.5]},
               "defaults": {"values": space.point(space.default_values()), "objective": [0.6]}}]
    sources = []
    for index, table in enumerate(rounds):
        sources.append(str(tmp_path / f"round{index}.json"))
        Path(sources[-1]).write_text(json.dumps(
            {"space": "smoke", "dataset": "digits", "objective": space.search.objective,
             "levers": table}))
    out = tmp_path / "all.json"
    levers.merge(space, sources, str(out))
    merged = json.loads(out.read_text())
    assert sorted(merged["levers"]) == ["defaults", "pgd-at"]
    assert merged["levers"]["pgd-at"]["values"] == pgd  # the harmless off flag dropped
    assert merged["eval_losses"] == "ce-margin"  # tables from before the key: CE first
    assert "left out 'gone'" in capsys.readouterr().out
    # a round run with other overrides (another width, say) measured another problem
    table = json.loads(Path(sources[1]).read_text())
    Path(sources[1]).write_text(json.dumps({**table, "overrides": ["fixed.arch=wide_cnn"]}))
    with pytest.raises(SystemExit, match="overrides"):
        levers.merge(space, sources, str(out))


def _layer_rows(name: str, capsys: pytest.CaptureFixture[str],
                monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A layer benchmark's rows at toy size (digits, batch 8, one repeat)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # conv.py imports pool.py's timer
    module = _bench(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--dataset", "digits", "--batches", "8",
                                      "--repeats", "1"])
    module.main()
    return [line for line in capsys.readouterr().out.splitlines() if "batch" in line]


def test_the_precision_benchmark_runs_and_bounds_what_bfloat16_moves(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # precision.py imports pool.py's timer
    precision = _bench("precision")
    monkeypatch.setattr(sys, "argv", ["precision.py", "--space", "smoke", "--points", "64",
                                      "--repeats", "2"])
    precision.main()
    out = capsys.readouterr().out
    assert "reference: plain PGD-AT loop" in out and "float32 / bfloat16" in out, out
    assert re.search(r"forward \+ backward +float32 +[0-9.]+ +bfloat16 +[0-9.]+", out), out
    moved = [float(m) for m in re.findall(r"-> [0-9.]+ +([+-][0-9.]+)", out)]
    assert all(abs(d) <= 0.1 for d in moved), out  # 64 points: one point is 0.016


def test_the_eval_losses_benchmark_runs_both_orders_and_bounds_what_they_move(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # eval_losses.py imports reference.py
    module = _bench("eval_losses")
    monkeypatch.setattr(sys, "argv", ["eval_losses.py", "--space", "smoke", "--points", "64"])
    module.main()
    out = capsys.readouterr().out
    assert "reference: plain PGD-AT loop" in out and "ce-margin / margin-ce" in out, out
    moved = [float(m) for m in re.findall(r"-> [0-9.]+ +([+-][0-9.]+)", out)]
    assert len(moved) >= 4 and all(abs(d) <= 10 for d in moved), out  # points; one is 1.6


def test_the_pool_benchmark_runs_and_finds_the_answers_unchanged(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _layer_rows("pool", capsys, monkeypatch)
    assert len(rows) == 6 and all("bitwise equal: yes" in row for row in rows), rows


def test_the_conv_benchmark_runs_and_finds_what_the_lever_promises(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _layer_rows("conv", capsys, monkeypatch)
    assert len(rows) == 3 and all("bitwise equal: yes" in row for row in rows), rows
    gaps = [float(row.rsplit("within ", 1)[1].rstrip(")")) for row in rows]
    assert all(0 <= gap < 1e-5 for gap in gaps), rows


def test_the_linear_maps_benchmark_runs_and_finds_what_the_lever_promises(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _layer_rows("linear_maps", capsys, monkeypatch)
    assert len(rows) == 9, rows  # 3 families x (corruption, attack step, whole attack)
    gaps = [float(g) for row in rows if "within" in row
            for g in re.findall(r"within ([0-9.e+-]+)", row)]
    assert len(gaps) == 12 and all(0 <= gap < 1e-5 for gap in gaps), rows


def test_elastic_blur_and_fog_attacks_break_the_same_points_as_with_kornias_maps(
        monkeypatch: pytest.MonkeyPatch, mnist_model: DefendedModel) -> None:
    """The attack-level bound. The gradients' round-off may flip a signed step where an entry
    is near 0, and steps later a point near the boundary may end on the other side. kornia's
    own maps do that at another batch size (which early exit gives every attack): ours may
    change no more points' fates than that, plus 2% of the points, and the accuracy by at
    most 3% (measured at low on this model: 6, 1 and 0 of 96 points both ways)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # linear_maps.py imports pool.py's timer
    bench = _bench("linear_maps")
    x, y = mnist_model.val_x[:96], mnist_model.val_y[:96]  # type: ignore[attr-defined]
    threat = dataset_info("mnist5k").threat_model
    for name, kornia_family in bench.KORNIA.items():
        attack = build_attack(f"{name}@low", mnist_model, threat, num_classes=10, seed=0)
        theirs = kornia_family(attack.corruption.budget)
        ours = bench._attack(attack, attack.corruption, x, y, 96)[1]
        kornias, halves = (bench._attack(attack, theirs, x, y, n)[1] for n in (96, 48))
        assert 0.2 < ours.float().mean() < 0.8, (name, ours.sum())  # work on both sides
        floor = (kornias != halves).float().mean()
        assert (ours != kornias).float().mean() <= floor + 0.02, (name, floor)
        assert abs(ours.float().mean() - kornias.float().mean()) <= 0.03, name


@pytest.mark.parametrize(("mode", "same"), [([], "images"), (["--final"], "metrics")])
def test_the_pixle_benchmark_runs_and_finds_the_answers_unchanged(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, mode: list[str],
        same: str) -> None:
    pixle = _bench("pixle")
    monkeypatch.setattr(sys, "argv", ["pixle.py", "--space", "mid", "--points", "40",
                                      "--repeats", "1", *mode])
    pixle.main()
    out = capsys.readouterr().out
    assert f"the same {same}: yes" in out, out
    assert sparse.smallest.__name__ == "smallest"  # the benchmark put the shipped one back


def test_the_allocator_benchmark_runs_and_finds_every_answer_unchanged(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    allocator = _bench("allocator")
    monkeypatch.setattr(sys, "argv", ["allocator.py", "--space", "mid", "--rounds", "1",
                                      "--trial-epochs", "1", "--works", "model-b64", "trial"])
    allocator.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if "bitwise" in line]
    assert len(rows) == 2 and all("bitwise equal: yes" in row for row in rows), rows


def test_the_scripts_import_the_repository_packages_not_a_folder_beside_them() -> None:
    # `python bench/x.py` puts bench/ first on sys.path: a module there named like a package,
    # or a folder (bench/spaces/ held a space file once: a namespace package), hides it
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert {"trainables", "spaces", "search"} <= packages
    beside = {p.name if p.is_dir() else p.stem for p in (REPO / "bench").iterdir()
              if p.is_dir() or p.suffix == ".py"}
    assert not packages & beside
    run = subprocess.run([sys.executable, str(REPO / "bench" / "trial_cost.py"), "--help"],
                         cwd="/", capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_cost_model_times_any_baseline_of_the_space_and_names_them_when_asked_another(
) -> None:
    run = subprocess.run([sys.executable, str(REPO / "bench" / "trial_cost.py"), "--space",
                          "smoke", "--recipes", "pgd-at,no-such-recipe"], cwd="/",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "--recipes no-such-recipe" in last and "pgd-at" in last, last
