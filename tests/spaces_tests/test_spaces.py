"""Tests for spaces: the shipped YAML spaces, --set overrides, the validator's error messages,
define-by-run sampling with real Optuna, and the logged parameters."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

import spaces
from spaces import Space, SpaceError
from trainables.config import TrialConfig
from trainables.errors import ConfigError
from trainables.setting.setup import resolve_setup

SHIPPED = ["mid", "mid-query", "mnist5k", "mnist5k-fresh", "paper", "smoke"]

# A small valid space; tests copy it, change one thing and write it to tmp_path.
TINY: dict[str, Any] = {
    "name": "tiny",
    "dataset": "digits",
    "attacks": {
        "pool": {"candidates": ["FGSM", "PGD", "MIFGSM", "BIM"], "min_size": 2, "max_size": 2},
        "heldout": ["PGDL2", "Elastic@medium"],
        "sealed": ["Fog@medium"],
    },
    "budget": {"epochs": 2, "eval_every": 1},
    "fixed": {"meta": "first"},
    "params": {
        "w_feat": {"type": "float", "low": 0.1, "high": 3.0, "default": 1.5},
        "unig": {"type": "categorical", "choices": ["off", "shared"], "default": "shared"},
        "unig_delta": {"type": "float", "low": 0.1, "high": 1.0, "default": 0.5,
                       "when": {"unig": ["shared"]}},
    },
}


def _write(tmp_path: Path, raw: Any, name: str = "space.yaml") -> str:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def _tiny(tmp_path: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> str:
    raw = copy.deepcopy(TINY)
    if edit is not None:
        edit(raw)
    return _write(tmp_path, raw)


# ---------------------------------------------------------------- shipped spaces


def test_shipped_spaces_are_listed() -> None:
    assert spaces.list_spaces() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_and_its_defaults_validate(name: str) -> None:
    space = spaces.load(name)
    assert space.name == name
    assert space.description
    values = space.default_values()
    config = space.trial_config(values)
    assert isinstance(config, TrialConfig)
    assert set(config.pool) == set(space.pool.default)  # in candidate order
    assert space.pool.min_size <= len(config.pool) <= space.pool.max_size
    setup = resolve_setup(config, extra_attacks=space.pool.candidates, check_data_dir=False)
    assert setup.info.name == config.dataset
    assert space.search.objective in space.objective_metrics()
    assert space.max_evaluations >= 1


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_attack_sets_are_disjoint(name: str) -> None:
    space = spaces.load(name)
    pool = set(space.pool.candidates)
    heldout, sealed = set(space.base["heldout"]), set(space.base["sealed"])
    assert heldout
    assert not pool & heldout
    assert not pool & sealed
    assert not heldout & sealed


def test_mnist5k_fresh_is_mnist5k_with_only_its_family_split_changed() -> None:
    first, fresh = spaces.load("mnist5k"), spaces.load("mnist5k-fresh")
    # the same recipe space, baselines and budget: only which families score what differs
    assert fresh.params == first.params and fresh.pool == first.pool
    assert fresh.baselines == first.baselines and fresh.search == first.search
    assert ({k: v for k, v in fresh.base.items() if k not in ("heldout", "sealed")}
            == {k: v for k, v in first.base.items() if k not in ("heldout", "sealed")})
    assert "Blur@medium" in fresh.base["heldout"]  # the search now sees a smoothing family
    assert "Blur@medium" in first.base["sealed"]
    assert set(fresh.base["heldout"]) >= set(first.base["heldout"])
    # the fresh families are sealed, and the first split's other sealed ones stay sealed
    assert {"Whirlpool@medium", "Glitch@medium", "Prison@medium"} <= set(fresh.base["sealed"])
    assert set(first.base["sealed"]) - {"Blur@medium"} <= set(fresh.base["sealed"])


def test_the_wide_proof_space_is_mnist5k_at_twice_the_width_with_two_baselines() -> None:
    # bench/mnist5k-wide-proof.yaml, issue 15's capacity proof: a README result rests
    # on it differing from mnist5k only where its description says
    first = spaces.load("mnist5k")
    wide = spaces.load(str(Path(__file__).resolve().parents[2] / "bench"
                           / "mnist5k-wide-proof.yaml"))
    assert wide.params == first.params and wide.pool == first.pool
    assert wide.base["arch"] == "wide_cnn" and "arch" not in first.base  # small_cnn
    assert ({k: v for k, v in wide.base.items() if k != "arch"}
            == {k: v for k, v in first.base.items() if k != "arch"})
    assert wide.baselines == ("pgd-at", "trades")
    assert wide.baseline_recipe("pgd-at")["lr"] == 0.0005  # round 8's tuned wide PGD-AT
    assert wide.baseline_recipe("trades") == first.baseline_recipe("trades")
    # the baselines and the default recipe, each to full length: no proposals, no rung stops
    assert wide.search.num_samples == len(wide.baselines) + 1
    assert wide.search.grace_period == 3 == wide.base["epochs"] // wide.base["eval_every"]


def test_mid_searches_all_four_dimensions() -> None:
    space = spaces.load("mid")
    assert space.pool.searched  # pool composition
    assert space.pool.min_size < space.pool.max_size
    assert {"w_feat", "w_cyc", "w_ce"} & set(space.params)  # a distillation weight
    assert "pcl_margin" in space.params  # polytope margin
    assert space.params["unig"].type == "categorical"  # UniG module size
    assert len(space.params["unig"].choices or ()) >= 2
    assert space.search.num_samples > len(space.baselines) + 1  # proposals beyond the fixed points
    assert space.base["dataset"] == "digits"


# ---------------------------------------------------------------- overrides


def test_overrides_apply_and_validate() -> None:
    space = spaces.load("mid", overrides=["dataset=mnist5k", "budget.epochs=5",
                                          "attacks.heldout=[Gabor@medium, Snow@low]"])
    config = space.trial_config()
    assert config.dataset == "mnist5k"
    assert config.epochs == 5
    assert config.heldout == ("Gabor@medium", "Snow@low")
    assert "val/heldout/Gabor.medium/acc" in space.objective_metrics()
    assert resolve_setup(config, check_data_dir=False).info.image_shape == (1, 28, 28)
    # the shipped file itself is untouched
    assert spaces.load("mid").trial_config().epochs == 12


def test_override_of_a_fixed_value() -> None:
    space = spaces.load("smoke", overrides=["fixed.train_attack_steps=3", "search.num_samples=2"])
    assert space.trial_config().train_attack_steps == 3
    assert space.search.num_samples == 2


@pytest.mark.parametrize("item", ["budget.epochs", "=5"])
def test_malformed_override_is_refused(item: str) -> None:
    with pytest.raises(SpaceError, match="KEY=VALUE"):
        spaces.load("smoke", overrides=[item])


def test_override_below_a_scalar_is_refused() -> None:
    with pytest.raises(SpaceError, match="dataset is not a mapping"):
        spaces.load("smoke", overrides=["dataset.name=digits"])


def test_override_overlapping_heldout_with_pool_names_the_attack() -> None:
    with pytest.raises(SpaceError, match=r"\['PGD'\] are in both pool candidates and heldout"):
        spaces.load("mid", overrides=["attacks.heldout=[PGD, Elastic@low]"])


def test_bad_override_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"epochs=0 is out of range"):
        spaces.load("smoke", overrides=["budget.epochs=0"])


# ---------------------------------------------------------------- error messages


def test_tiny_space_is_valid(tmp_path: Path) -> None:
    space = spaces.load(_tiny(tmp_path))
    assert space.name == "tiny"
    assert space.source.endswith("space.yaml")
    assert space.trial_config().pool == ("FGSM", "PGD")


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: bad\ndataset: digits\nattacks: [FGSM\nbudget: {}\n",
                  name="bad.yaml")
    with pytest.raises(SpaceError, match=r"is not valid YAML at line \d+") as err:
        spaces.load(path)
    assert "bad.yaml" in str(err.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="mapping at the top level"):
        spaces.load(_write(tmp_path, "- a\n- b\n"))


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r.update(epochs=3))
    with pytest.raises(SpaceError, match=r"space: unknown key\(s\) \['epochs'\]") as err:
        spaces.load(path)
    assert "budget" in str(err.value)  # the allowed keys are listed


def test_unknown_space_name_lists_the_spaces() -> None:
    with pytest.raises(SpaceError,
                       match="unknown space 'nope'; choose one of mid, mid-query, mnist5k, "
                             "mnist5k-fresh, paper, smoke"):
        spaces.load("nope")


def test_missing_space_file(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="does not exist"):
        spaces.load(str(tmp_path / "missing.yaml"))


def test_a_space_that_extends_another_is_its_parent_with_the_set_values(tmp_path: Path
                                                                       ) -> None:
    parent = _tiny(tmp_path)
    child = _write(tmp_path, {"name": "child", "description": "tiny, 3 epochs, PGD-L2 sealed",
                              "extends": "space.yaml",  # beside this file
                              "set": {"budget.epochs": 3, "attacks.sealed": ["PGDL2"],
                                      "attacks.heldout": ["Elastic@medium"]}},
                   name="child.yaml")
    space, first = spaces.load(child), spaces.load(parent)
    assert (space.name, space.description) == ("child", "tiny, 3 epochs, PGD-L2 sealed")
    assert space.base["epochs"] == 3 and space.base["eval_every"] == 1  # replaced, kept
    assert list(space.base["sealed"]) == ["PGDL2"] and space.params == first.params
    # what a search logs and resumes against is the whole mapping, which loads on its own
    assert "extends" not in space.raw and "set" not in space.raw
    assert spaces.parse_space(dict(space.raw), source=space.source) == space
    grandchild = _write(tmp_path, {"name": "grandchild", "extends": str(child),
                                   "set": {"budget.epochs": 4}}, name="grandchild.yaml")
    again = spaces.load(grandchild, ["budget.eval_every=2"])
    assert (again.base["epochs"], again.base["eval_every"], list(again.base["sealed"])) == \
        (4, 2, ["PGDL2"])
    assert again.description == space.description  # none of its own: its parent's
    # a shipped space by name
    assert spaces.load(_write(tmp_path, {"name": "m", "extends": "mnist5k"}, name="m.yaml")
                       ).base == spaces.load("mnist5k").base


@pytest.mark.parametrize(("child", "message"), [
    ({"name": "c", "extends": "space.yaml", "budget": {"epochs": 3}},
     r"extends 'space.yaml', so its own keys are only name, description, extends, set; move "
     r"budget under set: as dotted keys"),
    ({"extends": "space.yaml"}, "give it its own name"),
    ({"name": "c", "extends": 3}, r"extends=3; name a space \(mid, "),
    ({"name": "c", "extends": "nope"}, r"child.yaml': extends 'nope': unknown space '.*nope'"),
    ({"name": "c", "extends": "gone.yaml"}, r"child.yaml': extends 'gone.yaml': space file "
                                            r"'.*gone.yaml' does not exist"),
    ({"name": "c", "extends": "space.yaml", "set": None}, None),  # an empty set: the parent
    ({"name": "c", "extends": "space.yaml", "set": ["budget.epochs"]},
     "set must map dotted keys to values"),
    ({"name": "c", "extends": "space.yaml", "set": {"budget.epochs.x": 3}},
     r"set 'budget.epochs.x': budget.epochs is not a mapping"),
    ({"name": "c", "extends": "space.yaml", "set": {"budget..epochs": 3}},
     "is not a dotted key"),
    ({"name": "c", "extends": "child.yaml"},
     r"its extends chain loops \(.*child.yaml -> .*child.yaml\)"),
])
def test_a_bad_extends_is_one_space_error(tmp_path: Path, child: dict[str, Any],
                                          message: str | None) -> None:
    _tiny(tmp_path)
    path = _write(tmp_path, child, name="child.yaml")
    if message is None:
        assert spaces.load(path).base == spaces.load(str(tmp_path / "space.yaml")).base
        return
    with pytest.raises(SpaceError, match=message) as err:
        spaces.load(path)
    assert "\n" not in str(err.value)


def test_an_extends_chain_is_bounded_and_a_shipped_name_wins_over_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny(tmp_path)
    parent = "space.yaml"
    for depth in range(spaces.MAX_EXTENDS):  # each extends the one before
        _write(tmp_path, {"name": f"s{depth}", "extends": parent}, name=f"s{depth}.yaml")
        parent = f"s{depth}.yaml"
    assert spaces.load(str(tmp_path / f"s{spaces.MAX_EXTENDS - 2}.yaml")).name == \
        f"s{spaces.MAX_EXTENDS - 2}"  # 8 spaces: the root and 7 that extend
    with pytest.raises(SpaceError, match=f"more than {spaces.MAX_EXTENDS} spaces in its "
                                         "extends chain"):
        spaces.load(str(tmp_path / f"s{spaces.MAX_EXTENDS - 1}.yaml"))  # 9 spaces
    # a folder named like a shipped space in the working directory does not hide it, and a
    # path with ~ is the home's
    shipped = spaces.load("mnist5k").base
    (tmp_path / "mnist5k").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    child = _write(tmp_path, {"name": "m", "extends": "mnist5k"}, name="m.yaml")
    assert spaces.load(child).base == shipped
    (tmp_path / "sub").mkdir()
    home = _write(tmp_path / "sub", {"name": "h", "extends": "~/space.yaml"}, name="h.yaml")
    assert spaces.load(home).base == spaces.load(str(tmp_path / "space.yaml")).base


def test_heldout_attack_among_pool_candidates(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["attacks"].update(heldout=["PGDL2", "MIFGSM"]))
    with pytest.raises(SpaceError, match=r"\['MIFGSM'\] are in both pool candidates and heldout"):
        spaces.load(path)


def test_heldout_and_sealed_overlap(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["attacks"].update(sealed=["PGDL2"]))
    with pytest.raises(SpaceError, match=r"\['PGDL2'\] are in both heldout and sealed"):
        spaces.load(path)


def test_unknown_attack_name(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["attacks"].update(sealed=["Sqare"]))
    with pytest.raises(ConfigError, match="unknown attack 'Sqare'; choose one of") as err:
        spaces.load(path)
    assert "Square" in str(err.value)


def test_negative_low_for_a_weight(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["w_feat"].update(low=-1.0))
    with pytest.raises(ConfigError, match=r"params\.w_feat\.low=-1\.0 is out of range") as err:
        spaces.load(path)
    assert "[0, 100]" in str(err.value)


def test_low_not_below_high(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["w_feat"].update(low=3.0, high=3.0))
    with pytest.raises(SpaceError, match=r"params\.w_feat: low < high must hold"):
        spaces.load(path)


def test_log_range_needs_positive_low(tmp_path: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["params"]["w_cyc"] = {"type": "float", "low": 0.0, "high": 2.0, "log": True,
                                  "default": 0.8}

    with pytest.raises(SpaceError, match=r"params\.w_cyc: a log range needs low > 0"):
        spaces.load(_tiny(tmp_path, edit))


def test_default_outside_range(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["w_feat"].update(default=5.0))
    with pytest.raises(SpaceError, match=r"params\.w_feat\.default=5\.0 lies outside"):
        spaces.load(path)


def test_missing_default(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["w_feat"].pop("default"))
    with pytest.raises(SpaceError, match=r"params\.w_feat needs a default"):
        spaces.load(path)


def test_type_mismatch(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["w_feat"].update(type="int"))
    with pytest.raises(SpaceError, match="w_feat is a float value"):
        spaces.load(path)


def test_categorical_default_not_a_choice(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["unig"].update(default="per_sample"))
    with pytest.raises(SpaceError, match=r"params\.unig\.default='per_sample' is not among"):
        spaces.load(path)


def test_categorical_choice_not_allowed(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["unig"].update(choices=["off", "huge"]))
    with pytest.raises(ConfigError, match="'huge' is not allowed"):
        spaces.load(path)


def test_when_naming_a_later_parameter(tmp_path: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        params = raw["params"]
        raw["params"] = {"unig_delta": params["unig_delta"], "w_feat": params["w_feat"],
                         "unig": params["unig"]}

    with pytest.raises(SpaceError, match=r"params\.unig_delta\.when names 'unig'.*listed "
                                         "before it"):
        spaces.load(_tiny(tmp_path, edit))


def test_when_naming_a_missing_parameter(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["w_feat"].update(when={"meta": ["first"]}))
    with pytest.raises(SpaceError, match=r"params\.w_feat\.when names 'meta'"):
        spaces.load(path)


def test_when_value_not_a_choice(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["unig_delta"].update(when={"unig": ["big"]}))
    with pytest.raises(SpaceError, match=r"\['big'\] are not choices of unig"):
        spaces.load(path)


def test_when_on_a_pool_flag(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["params"]["w_feat"].update(when={"pool.BIM": [True]}))
    space = spaces.load(path)
    assert "w_feat" not in space.default_values()  # BIM is not in the default pool
    assert space.trial_config({"pool.FGSM": False, "pool.BIM": True}).pool == ("PGD", "BIM")


def test_pool_min_size_above_max_size(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["attacks"]["pool"].update(min_size=3, max_size=2))
    with pytest.raises(SpaceError, match="need 1 <= min_size <= max_size <= 4 candidates"):
        spaces.load(path)


def test_pool_default_of_the_wrong_size(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["attacks"]["pool"].update(default=["FGSM"]))
    with pytest.raises(SpaceError, match="default has 1 attacks; it must have between 2 and 2"):
        spaces.load(path)


def test_pool_too_small_for_the_meta_step(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["attacks"]["pool"].update(min_size=1, max_size=1))
    with pytest.raises(SpaceError, match=r"pool of at least 2 attacks.*or set meta: off"):
        spaces.load(path)
    fixed_off = _tiny(tmp_path, lambda r: (r["attacks"]["pool"].update(min_size=1, max_size=1),
                                           r["fixed"].update(meta="off")))
    assert spaces.load(fixed_off).pool.min_size == 1


def test_a_meta_step_keeps_the_sampled_pool_large_enough(tmp_path: Path) -> None:
    """meta is sampled before the pool, which then holds 2+ attacks when the meta step is on
    (min_size 1 is for the recipes without it, e.g. PGD-AT)."""
    def edit(raw: dict[str, Any]) -> None:
        raw["attacks"]["pool"].update(min_size=1, max_size=4)
        del raw["fixed"]["meta"]
        raw["params"]["meta"] = {"type": "categorical", "choices": ["first", "off"],
                                 "default": "first"}
    space = spaces.load(_tiny(tmp_path, edit))
    suggested = _run_study(space, 40)
    assert {len(space.pool.chosen(v)) for v in suggested if v["meta"] == "off"} >= {1}
    assert min(len(space.pool.chosen(v)) for v in suggested if v["meta"] == "first") >= 2
    for values in suggested:
        space.trial_config(values)  # every sampled recipe is a valid trial


def test_objective_not_a_reported_metric(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r.update(search={"objective": "val/heldout/CW/acc"}))
    with pytest.raises(SpaceError, match=r"search\.objective='val/heldout/CW/acc' is not a "
                                         "metric") as err:
        spaces.load(path)
    assert "val/heldout/PGDL2/acc" in str(err.value)
    ok = _tiny(tmp_path, lambda r: r.update(search={"objective": "val/heldout/PGDL2/acc"}))
    assert spaces.load(ok).search.objective == "val/heldout/PGDL2/acc"


def test_setup_key_under_params_hints_at_budget(tmp_path: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["params"]["epochs"] = {"type": "int", "low": 1, "high": 5, "default": 2}

    with pytest.raises(SpaceError, match=r"params\.epochs.*not a searchable recipe value "
                                         r"\(a setup value: put it under budget/fixed\)"):
        spaces.load(_tiny(tmp_path, edit))


def test_value_both_searched_and_fixed(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["fixed"].update(w_feat=1.0))
    with pytest.raises(SpaceError, match=r"\['w_feat'\] are both searched \(params\) and fixed"):
        spaces.load(path)


def test_unknown_budget_key(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["budget"].update(lr=0.1))
    with pytest.raises(SpaceError, match=r"budget: unknown key\(s\) \['lr'\]"):
        spaces.load(path)


def test_every_space_problem_is_a_space_error(tmp_path: Path) -> None:
    # spaces.load promises: "any problem raises SpaceError". Problems found by the shared
    # TrialConfig / resolve_setup validators (an unknown attack, a fixed value out of range,
    # a searched range outside its field's range) surface as plain ConfigErrors instead.
    edits: list[Callable[[dict[str, Any]], None]] = [
        lambda r: r["attacks"].update(sealed=["Sqare"]),
        lambda r: r["fixed"].update(lr=5.0),
        lambda r: r["params"]["w_feat"].update(low=-1.0),
    ]
    for edit in edits:
        with pytest.raises(ConfigError) as err:
            spaces.load(_tiny(tmp_path, edit))
        assert isinstance(err.value, SpaceError), f"{type(err.value).__name__}: {err.value}"


# ---------------------------------------------------------------- define-by-run with Optuna


def _run_study(space: Space, n_trials: int) -> list[dict[str, Any]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    suggested: list[dict[str, Any]] = []

    def objective(trial: optuna.trial.Trial) -> float:
        suggested.append(space.suggest(trial))
        return 0.0

    study.optimize(objective, n_trials=n_trials)
    assert len(study.trials) == n_trials
    return suggested


def _check_suggestions(space: Space, suggested: list[dict[str, Any]]) -> set[tuple[str, ...]]:
    pools: set[tuple[str, ...]] = set()
    for values in suggested:
        flags = {k for k in values if k.startswith("pool.")}
        assert flags == {space.pool.key(name) for name in space.pool.candidates}
        pool = space.pool.chosen(values)
        assert space.pool.min_size <= len(pool) <= space.pool.max_size, values
        pools.add(pool)
        assert ("unig_delta" in values) == (values["unig"] != "off"), values
        config = space.trial_config(values)
        assert config.pool == pool
        if values["unig"] != "off":
            assert config.unig_delta == values["unig_delta"]
    return pools


def test_define_by_run_with_optuna_on_mid() -> None:
    space = spaces.load("mid")
    suggested = _run_study(space, 60)
    pools = _check_suggestions(space, suggested)
    assert len(pools) >= 5
    assert len({len(p) for p in pools}) >= 4
    assert {v["unig"] for v in suggested} == {"off", "shared", "per_sample", "per_channel"}
    for values in suggested:
        for name in ("w_feat", "w_cyc", "pcl_margin"):
            spec = space.params[name]
            assert spec.low <= values[name] <= spec.high


def test_define_by_run_with_a_fixed_size_pool(tmp_path: Path) -> None:
    space = spaces.load(_tiny(tmp_path))
    assert space.pool.searched and space.pool.min_size == space.pool.max_size == 2
    suggested = _run_study(space, 40)
    pools = _check_suggestions(space, suggested)
    assert {len(p) for p in pools} == {2}
    assert len(pools) >= 4  # of the C(4, 2) = 6 compositions


def test_a_fixed_pool_suggests_no_flags(tmp_path: Path) -> None:
    path = _tiny(tmp_path, lambda r: r["attacks"].update(pool=["FGSM", "PGD"]))
    space = spaces.load(path)
    assert not space.pool.searched
    values = _run_study(space, 3)[0]
    assert not any(k.startswith("pool.") for k in values)
    assert space.trial_config(values).pool == ("FGSM", "PGD")
    assert space.logged_params(values)["pool"] == "FGSM+PGD"


# ---------------------------------------------------------------- logged params, trial configs


def test_logged_params_have_the_same_keys_for_every_trial() -> None:
    space = spaces.load("mid")
    defaults = space.logged_params(space.default_values())
    on = space.logged_params({"unig": "per_sample", "unig_delta": 0.5,
                              "pool.Spatial.medium": True, "pool.FGSM": False})
    assert set(defaults) == set(on)
    assert {space.pool.key(n) for n in space.pool.candidates} <= set(defaults)
    assert "pool.Spatial.medium" in defaults  # MLflow keys allow no `@`
    assert defaults["pool"] == "FGSM+PGD+MIFGSM+TPGD+PGDL2"
    assert on["pool"] == "PGD+MIFGSM+TPGD+PGDL2+Spatial@medium"
    assert on["pool.Spatial.medium"] is True and on["pool.FGSM"] is False
    assert on["unig_delta"] == 0.5
    assert defaults["unig_delta"] == "inactive"
    assert defaults["unig"] == "off"
    for values in _run_study(space, 10):
        assert set(space.logged_params(values)) == set(defaults)


def test_trial_config_of_unknown_values_is_refused() -> None:
    space = spaces.load("mid")
    with pytest.raises(SpaceError,
                       match=r"unknown parameter\(s\) \['train_eps_scale_l2'\] of space 'mid'"):
        space.trial_config({"train_eps_scale_l2": 2.0})
    with pytest.raises(SpaceError, match=r"\['pool\.CW'\]"):
        space.trial_config({"pool.CW": True})


def test_trial_config_ignores_inactive_values() -> None:
    space = spaces.load("mid")
    config = space.trial_config({"unig": "off", "unig_delta": 0.9})
    assert config.unig == "off"
    assert config.unig_delta == TrialConfig().unig_delta


def test_trial_config_extra_setup_values() -> None:
    space = spaces.load("smoke")
    config = space.trial_config(None, seed=7, device="cpu")
    assert config.seed == 7 and config.device == "cpu"
    assert config.train_attack_steps == 2  # from fixed


def test_loading_a_space_imports_no_torch() -> None:
    """Validating a space (before Ray starts) needs neither torch nor the attack libraries."""
    import subprocess
    import sys

    code = ("import sys, spaces; spaces.load('mid'); heavy = sorted({m.split('.')[0] for m in "
            "sys.modules} & {'torch', 'torchattacks', 'kornia', 'numpy', 'ray', 'mlflow'}); "
            "print(','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.strip() == ""


def test_a_sampled_point_that_makes_no_recipe_is_a_failing_record_not_an_error() -> None:
    from spaces._space import RECORD_KEY, _Answers
    from spaces.record import TrialRecord

    space = spaces.load("mid")
    values = {**space.default_values(), "train_on": "clean", "include_clean": True,
              "w_ce_clean": 0.0, "w_feat": 0.0}
    with pytest.raises(ConfigError, match="trains nothing"):
        space.trial_config(values)
    record = space.sample(_Answers(values))[RECORD_KEY]
    assert record.invalid is not None and "trains nothing" in record.invalid
    assert record.params["train_on"] == "clean" and record.params["w_ce_clean"] == 0.0
    assert record.baseline is None
    assert TrialRecord.from_dict(record.to_dict()) == record
    assert space.sample(_Answers(space.default_values()))[RECORD_KEY].invalid is None
