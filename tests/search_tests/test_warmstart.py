"""A search's study before its first trial: the defaults and baselines enqueued, and a warm
start from a lever table or an earlier search, as results or proposals, each marked."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

import spaces
from search import run
from search.records import SearchInfo
from search.vocab import ARTIFACT
from search.warmstart import load_warm_start, seed_study
from trainables.errors import ConfigError
from trainables.vocab import SCORING_VERSION


def _plan(tmp_path: Path, *extra: str) -> Any:
    args = run.build_parser().parse_args(
        ["--space", "smoke", "--storage-path", str(tmp_path / "ray"), "--name", "warm",
         "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *extra])
    plan = run.make_plan(args)
    Path(plan.output_dir).mkdir(parents=True)
    return plan


def _levers(tmp_path: Path, space: spaces.Space, *, dataset: str = "digits",
            scoring: int = SCORING_VERSION, **changes: Any) -> Path:
    values = {**space.baseline_values("pgd-at"), **changes}
    table = {"space": space.name, "dataset": dataset, "objective": space.search.objective,
             "scoring": scoring,
             "levers": {"pgd-at": {"values": space.point(values), "objective": [0.4, 0.5]},
                        "defaults": {"values": space.point(space.default_values()),
                                     "objective": [0.6]}}}
    path = tmp_path / "levers.json"
    path.write_text(json.dumps(table))
    return path


def _origins(study: optuna.Study, state: optuna.trial.TrialState) -> list[str]:
    return [t.user_attrs.get("origin", "") for t in study.get_trials(states=(state,))]


def test_the_study_starts_with_the_defaults_and_the_baselines(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert seed_study(plan) is None
    study = optuna.load_study(study_name="warm", storage=plan.optuna_storage)
    assert _origins(study, optuna.trial.TrialState.WAITING) == [
        "default", "baseline:pgd-at", "baseline:trades"]


def test_a_matching_lever_table_gives_results_marked_as_a_warm_start(tmp_path: Path) -> None:
    space = spaces.load("smoke")
    plan = _plan(tmp_path, "--warm-start", str(_levers(tmp_path, space)))
    warm = seed_study(plan)
    assert warm is not None and len(warm.results) == 2 and not warm.proposals
    study = optuna.load_study(study_name="warm", storage=plan.optuna_storage)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.value for t in done) == pytest.approx([0.45, 0.6])
    assert {t.user_attrs["origin"] for t in done} == {"warm-start:levers.json"}
    assert done[0].params == space.point(space.baseline_values("pgd-at"))


def test_another_data_sets_table_gives_proposals_not_results(tmp_path: Path) -> None:
    space = spaces.load("smoke")
    plan = _plan(tmp_path, "--warm-start", str(_levers(tmp_path, space, dataset="mnist5k")))
    warm = seed_study(plan)
    assert warm is not None and not warm.results and len(warm.proposals) == 2
    study = optuna.load_study(study_name="warm", storage=plan.optuna_storage)
    assert not study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert _origins(study, optuna.trial.TrialState.WAITING)[-2:] == [
        "warm-start:levers.json"] * 2


def test_a_table_scored_another_way_gives_proposals_not_results(tmp_path: Path) -> None:
    # scored before the margin pass (no version): its objective values are another number
    space = spaces.load("smoke")
    plan = _plan(tmp_path, "--warm-start", str(_levers(tmp_path, space, scoring=0)))
    warm = seed_study(plan)
    assert warm is not None and not warm.results and len(warm.proposals) == 2


def test_a_table_whose_attacks_ran_their_losses_in_another_order_gives_proposals(
        tmp_path: Path) -> None:
    # the margin loss first, CE at half the iterations: another number than smoke's CE first
    source = _levers(tmp_path, spaces.load("smoke"))
    table = json.loads(source.read_text())
    source.write_text(json.dumps({**table, "eval_losses": "margin-ce"}))
    warm = seed_study(_plan(tmp_path, "--warm-start", str(source)))
    assert warm is not None and not warm.results and len(warm.proposals) == 2
    source.write_text(json.dumps({**table, "eval_losses": "ce-margin"}))
    warm = seed_study(_plan(tmp_path / "again", "--warm-start", str(source)))
    assert warm is not None and len(warm.results) == 2


def test_a_lever_table_is_proposals_where_the_space_has_a_robust_floor(tmp_path: Path
                                                                      ) -> None:
    # the table holds the objective metric as measured, the search the metric less a penalty
    space = spaces.load("smoke")
    plan = _plan(tmp_path, "--warm-start", str(_levers(tmp_path, space)),
                 "--set", "search.robust_floor=0.3")
    warm = seed_study(plan)
    assert warm is not None and not warm.results and len(warm.proposals) == 2


def test_an_incompatible_warm_start_is_refused_in_one_line_before_ray(tmp_path: Path) -> None:
    space = spaces.load("smoke")
    source = _levers(tmp_path, space, w_feat=2.9)  # smoke's w_feat goes to 3.0: make it fail
    table = json.loads(source.read_text())
    table["levers"]["pgd-at"]["values"]["w_feat"] = 50.0
    source.write_text(json.dumps(table))
    with pytest.raises(ConfigError, match=r"does not fit space 'smoke': .*w_feat=50\.0 is "
                                          r"outside the space's range \[0, 3\]"):
        _plan(tmp_path, "--warm-start", str(source))
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = run.main(["--space", "smoke", "--warm-start", str(tmp_path / "nothing.json")])
    assert code == 2 and err.getvalue().count("\n") == 1
    assert "is neither a search's output folder" in err.getvalue()


def test_the_shipped_mnist5k_lever_study_is_a_warm_start_of_the_space_as_it_is() -> None:
    # bench/levers.py --merge wrote it from every round; a change to the space that leaves
    # its recipes out of the space must be seen here, not at the start of a long search
    source = Path(__file__).resolve().parents[2] / "bench/results/levers-mnist5k-all.json"
    count = len(json.loads(source.read_text())["levers"])
    # the space's robust floor, and the scoring (CE alone then), make its objective another
    # number than the table's: the recipes come as proposals either way
    for overrides in ([], ["search.robust_floor=null"]):
        warm = load_warm_start(str(source), spaces.load("mnist5k", overrides))
        assert not warm.results and len(warm.proposals) == count >= 30
    assert "scoring" not in json.loads(source.read_text())


def _earlier_search(folder: Path, space: spaces.Space, value: float) -> Path:
    """An earlier search's output folder as the driver writes it: search.json, space.yaml and
    its Optuna study with one finished trial (the space's default recipe)."""
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / ARTIFACT.OPTUNA_DB}"
    SearchInfo(name="earlier", space=space.name, mlflow_uri="", experiment="", experiment_id="",
               parent_run_id="", storage_path=str(folder), optuna_storage=storage, seed=0,
               resources={"cpu": 1.0}, address=None, cache_dir=None,
               scoring=SCORING_VERSION).write(folder)
    (folder / ARTIFACT.SPACE).write_text(yaml.safe_dump(dict(space.raw), sort_keys=False))
    study = optuna.create_study(study_name="earlier", storage=storage, direction="maximize")
    point = space.point(space.default_values())
    study.add_trial(optuna.trial.create_trial(
        params=point, distributions=space.distributions(point), value=value))
    return folder


def test_an_earlier_search_whose_attacks_ran_their_losses_in_another_order_gives_proposals(
        tmp_path: Path) -> None:
    # the same space and data set, but its objective values were measured margin first
    smoke = spaces.load("smoke")
    same = _earlier_search(tmp_path / "same", smoke, 0.5)
    other = _earlier_search(tmp_path / "other",
                            spaces.load("smoke", ["budget.eval_losses=margin-ce"]), 0.5)
    warm = load_warm_start(str(same), smoke)
    assert [value for _, value in warm.results] == [0.5] and not warm.proposals
    warm = load_warm_start(str(other), smoke)
    assert not warm.results and warm.proposals == [smoke.point(smoke.default_values())]
