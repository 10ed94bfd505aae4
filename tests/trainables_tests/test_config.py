"""Tests for trainables.config (TrialConfig validation) and trainables.setting.setup
(the data-set-dependent checks): every bad value gives a ConfigError naming it and what is
allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainables.config import FIELDS, RECIPE_FIELDS, TrialConfig
from trainables.errors import ConfigError
from trainables.setting.setup import resolve_setup


def _config(**changes: Any) -> TrialConfig:
    return TrialConfig.from_dict(changes)


# ---------------------------------------------------------------- TrialConfig values


def test_defaults_are_valid_and_canonical() -> None:
    config = TrialConfig()
    assert isinstance(config.pool, tuple) and config.pool == ("PGD", "MIFGSM", "FGSM")
    assert set(FIELDS) == {f for f in TrialConfig.__dataclass_fields__}
    assert set(RECIPE_FIELDS) <= set(FIELDS)


def test_negative_weight_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"w_feat=-1\.0 is out of range: allowed \[0, 100\]"):
        _config(w_feat=-1)


@pytest.mark.parametrize("lr", [0.0, 2.0, 1e-9, float("nan"), float("inf")])
def test_lr_out_of_range_is_refused(lr: float) -> None:
    with pytest.raises(ConfigError, match=r"lr=.* is out of range: allowed \[1e-06, 1\]"):
        _config(lr=lr)


@pytest.mark.parametrize("value", ["fast", True, [0.1], None])
def test_non_number_is_refused(value: Any) -> None:
    expected = "must be set" if value is None else "lr must be a number"
    with pytest.raises(ConfigError, match=expected):
        _config(lr=value)


def test_int_field_needs_a_whole_number() -> None:
    with pytest.raises(ConfigError, match=r"epochs must be a whole number, got 2\.5"):
        _config(epochs=2.5)
    assert _config(epochs=3.0).epochs == 3
    assert isinstance(_config(epochs=3.0).epochs, int)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_int_value_is_a_config_error(value: float) -> None:
    # YAML's `.inf` / `.nan` parse to floats; an int field must refuse them as a ConfigError
    # naming the field, not crash converting them to int.
    with pytest.raises(ConfigError, match="epochs"):
        _config(epochs=value)


def test_bool_field_needs_a_bool() -> None:
    with pytest.raises(ConfigError, match="train_head must be true or false, got 'yes'"):
        _config(train_head="yes")


def test_unknown_key_lists_known_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['w_fat'\]") as err:
        TrialConfig.from_dict({"w_fat": 1.0})
    message = str(err.value)
    assert "known keys:" in message
    for key in ("w_feat", "pcl_margin", "unig", "pool", "epochs"):
        assert key in message


def test_unknown_choice_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="unig='huge' is not allowed") as err:
        _config(unig="huge")
    for choice in ("off", "shared", "per_sample", "per_channel"):
        assert choice in str(err.value)


def test_empty_pool_is_refused() -> None:
    with pytest.raises(ConfigError, match="pool is empty"):
        _config(pool=[])


def test_pool_must_be_a_list_of_names() -> None:
    with pytest.raises(ConfigError, match="pool must be a list of attack names"):
        _config(pool="PGD")
    with pytest.raises(ConfigError, match="pool lists an attack twice"):
        _config(pool=["PGD", "PGD", "FGSM"])


@pytest.mark.parametrize("value", [5, 2.5])
def test_pool_not_a_list_at_all_is_a_config_error(value: Any) -> None:
    # `pool: 5` in a space file or --set must be refused as a ConfigError, not a TypeError.
    with pytest.raises(ConfigError, match="pool must be a list of attack names"):
        _config(pool=value)


@pytest.mark.parametrize(
    ("changes", "first", "second", "attack"),
    [
        ({"pool": ["PGD", "FGSM"], "heldout": ["PGD", "CW"]}, "pool", "heldout", "PGD"),
        ({"pool": ["PGD", "FGSM"], "sealed": ["FGSM"]}, "pool", "sealed", "FGSM"),
        ({"heldout": ["Square", "CW"], "sealed": ["CW"]}, "heldout", "sealed", "CW"),
    ],
)
def test_attack_sets_must_be_disjoint(changes: dict[str, Any], first: str, second: str,
                                      attack: str) -> None:
    with pytest.raises(ConfigError, match=f"'{attack}'.*both {first} and {second}") as err:
        _config(**changes)
    assert "disjoint" in str(err.value)


def test_meta_test_attacks_needs_a_larger_pool() -> None:
    with pytest.raises(ConfigError, match=r"meta_test_attacks=3 needs a pool of at least 4") \
            as err:
        _config(pool=["PGD", "FGSM", "MIFGSM"], meta_test_attacks=3)
    assert "meta: off" in str(err.value)
    with pytest.raises(ConfigError, match="meta_test_attacks=1 needs a pool of at least 2"):
        _config(pool=["PGD"])
    # without the meta step a single-attack pool is fine
    assert _config(pool=["PGD"], meta="off").pool == ("PGD",)


def test_round_trip_through_a_dict() -> None:
    config = _config(pool=["FGSM", "PGD", "BIM"], heldout=["CW"], sealed=["Square"],
                     w_feat=0.5, unig="off", threat_model={"eps": {"Linf": 0.1}})
    data = config.to_dict()
    assert data["pool"] == ["FGSM", "PGD", "BIM"]
    assert TrialConfig.from_dict(data) == config
    assert TrialConfig.from_dict(TrialConfig().to_dict()) == TrialConfig()


def test_replace_validates() -> None:
    config = TrialConfig()
    changed = config.replace(w_feat=2.0, pool=["PGD", "FGSM"])
    assert changed.w_feat == 2.0 and changed.pool == ("PGD", "FGSM")
    assert config.w_feat == 1.5  # frozen original untouched
    with pytest.raises(ConfigError, match="w_feat"):
        config.replace(w_feat=-1)
    with pytest.raises(ConfigError, match="unknown config key"):
        config.replace(nope=1)
    with pytest.raises(ConfigError, match="both pool and heldout"):
        config.replace(heldout=["PGD"])


# ---------------------------------------------------------------- resolve_setup


def test_resolve_setup_of_the_defaults() -> None:
    setup = resolve_setup(TrialConfig())
    assert setup.info.name == "digits"
    assert setup.arch == "small_cnn"
    assert setup.threat.norm == "Linf"
    assert setup.threat.budget("Linf") == pytest.approx(0.2)


def test_threat_model_override_is_merged() -> None:
    setup = resolve_setup(_config(threat_model={"eps": {"Linf": 0.1}}))
    assert setup.threat.budget("Linf") == pytest.approx(0.1)
    assert setup.threat.budget("L2") == pytest.approx(1.0)  # the data set's default


def test_unknown_heldout_attack_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown attack 'Nope'; choose one of") as err:
        resolve_setup(_config(heldout=["Square", "Nope"]))
    assert "APGD-DLR" in str(err.value)


def test_unknown_dataset_lists_datasets() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'") as err:
        resolve_setup(_config(dataset="imagenet"))
    assert "digits" in str(err.value) and "mnist5k" in str(err.value)


def test_unknown_arch_lists_archs() -> None:
    with pytest.raises(ConfigError, match="arch 'vgg' is unknown") as err:
        resolve_setup(_config(arch="vgg"))
    assert "small_cnn" in str(err.value) and "auto" in str(err.value)


@pytest.mark.parametrize(
    ("threat_model", "pattern"),
    [
        ({"eps": {"Linf": 1.5}}, r"threat_model\.eps\.Linf=1\.5 is out of range.*\(0, 1\]"),
        ({"eps": {"Linf": 0}}, r"threat_model\.eps\.Linf=0 is out of range"),
        ({"eps": {"L2": 9.0}}, r"threat_model\.eps\.L2=9\.0 is out of range.*\(0, 8\]"),
        ({"eps": {"L0": 65}}, r"threat_model\.eps\.L0=65 is out of range.*\(0, 64\]"),
        ({"eps": {"L3": 1.0}}, r"threat_model\.eps\.L3: unknown norm"),
        ({"eps": {"L0": 2.5}}, r"threat_model\.eps\.L0=2\.5 must be a whole number"),
        ({"eps": {"Linf": "big"}}, r"threat_model\.eps\.Linf must be a number"),
        ({"norm": "L3"}, r"threat_model\.norm 'L3' is unknown"),
        ({"eps": 0.3}, r"threat_model\.eps must map norms to budgets"),
    ],
)
def test_bad_threat_model_is_refused(threat_model: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        resolve_setup(_config(threat_model=threat_model))


def test_threat_model_override_with_unknown_key_is_refused() -> None:
    # A typo such as `epsilon:` must not be dropped silently (leaving the default budgets);
    # ThreatModel.from_dict refuses unknown keys, and the override a config carries must too.
    with pytest.raises(ConfigError, match=r"threat_model has unknown keys \['epsilon'\]"):
        resolve_setup(_config(threat_model={"epsilon": {"Linf": 0.1}}))


def test_missing_data_dir_says_data_dir_flag() -> None:
    config = _config(dataset="mnist")
    with pytest.raises(ConfigError, match="--data-dir") as err:
        resolve_setup(config)
    assert "'mnist'" in str(err.value)
    # loading a space checks the setting without needing the files
    assert resolve_setup(config, check_data_dir=False).info.name == "mnist"


def test_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="does not exist") as err:
        resolve_setup(_config(dataset="mnist", data_dir=str(missing)))
    assert str(missing) in str(err.value)
    assert resolve_setup(_config(dataset="mnist", data_dir=str(tmp_path))).info.name == "mnist"


def test_heavy_pool_attack_needs_craft_against_target() -> None:
    pool = ["PGD", "FGSM", "Square"]
    with pytest.raises(ConfigError, match=r"\['Square'\] are too slow") as err:
        resolve_setup(_config(pool=pool, heldout=["CW"]))
    assert "craft_against: target" in str(err.value)
    setup = resolve_setup(_config(pool=pool, heldout=["CW"], craft_against="target"))
    assert setup.info.name == "digits"


def test_heavy_extra_candidate_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"\['CW'\] are too slow"):
        resolve_setup(TrialConfig(heldout=("Square",)), extra_attacks=["CW"])


def test_rgb_attack_refused_on_gray_data_set() -> None:
    with pytest.raises(ConfigError, match=r"TIFGSM.*channel"):
        resolve_setup(_config(sealed=["TIFGSM"]))
    assert resolve_setup(_config(dataset="cifar10", sealed=["TIFGSM"]),
                         check_data_dir=False).info.image_shape == (3, 32, 32)
