"""The multi-objective search runs; a Tune state cut short is put back. (A killed driver
resumed to the end: test_faults.py.)"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.search_tests.conftest import run_module


@pytest.mark.slow
def test_nsga2_searches_the_clean_vs_heldout_front(tmp_path: Path) -> None:
    proc = run_module("search.run", "--space", "smoke", "--search-alg", "nsga2",
                      "--num-samples", "4", "--sealed-top-k", "0", "--storage-path",
                      str(tmp_path / "ray"), "--name", "front", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = optuna.load_study(study_name="front",
                              storage=f"sqlite:///{tmp_path / 'ray' / 'front' / 'optuna.db'}")
    assert len(study.directions) == 2  # held-out objective and clean accuracy
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert finished and all(len(t.values) == 2 for t in finished)
    assert len(study.best_trials) >= 1  # the Pareto front
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(finished) + len(pruned) == 4


def test_a_tune_state_cut_short_is_put_back_from_its_whole_copy(tmp_path: Path) -> None:
    import json

    import spaces
    from search.guard import DiskGuard
    from search.resume import check_resumable
    from trainables.errors import ConfigError

    folder = tmp_path / "cut"
    folder.mkdir()
    state = folder / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text(json.dumps({"trial_data": [["{}", "{}"]]}))
    for name in ("tuner.pkl", "searcher-state-2026-01-01_00-00-00.pkl"):
        (folder / name).write_bytes(b"\x80\x05N.")
    DiskGuard(folder=str(folder), watch=[], reserve=0)._keep_copy()  # as during the search
    whole = state.read_bytes()
    state.write_bytes(whole[:20])  # what a full disk left of Tune's plain copy
    space = spaces.load("smoke")
    notes: list[str] = []
    check_resumable(folder, space, "smoke", log=notes.append)
    assert state.read_bytes() == whole
    assert "was damaged (experiment_state-2026-01-01_00-00-00.json is not whole JSON" in notes[0]
    state.write_bytes(whole[:20])
    (folder / "tuner.pkl").write_bytes(b"\x80\x05")  # the copy is gone: nothing to put back
    for copied in (folder / ".tune-state").iterdir():
        copied.unlink()
    with pytest.raises(ConfigError, match=r"is damaged .* and no whole copy of it is kept"):
        check_resumable(folder, space, "smoke")
