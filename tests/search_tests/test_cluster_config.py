"""cluster.yaml and the on-prem example pass Ray's own schema and cross-field checks offline."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
FILES = ["cluster.yaml", "examples/cluster-onprem.yaml"]


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / name).read_text())


def _validate(raw: dict[str, Any]) -> dict[str, Any]:
    config = prepare_config(copy.deepcopy(raw))  # merges Ray's provider defaults first
    validate_config(config)
    return config


@pytest.mark.parametrize("name", FILES)
def test_cluster_files_pass_rays_validation(name: str) -> None:
    config = _validate(_load(name))
    commands = " ".join(config["setup_commands"])
    assert "make install" in commands  # nodes install the project as `make install` does
    assert any("mlflow server" in c and "--host 0.0.0.0" in c and "--allowed-hosts" in c
               for c in config["head_start_ray_commands"])


def test_aws_cluster_keeps_trials_on_autoscaling_spot_gpu_workers() -> None:
    config = _validate(_load("cluster.yaml"))
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["resources"]["GPU"] == 1
    assert workers["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert config["idle_timeout_minutes"] > 0
    assert "/home/ubuntu/defense-search" in config["file_mounts"]


@pytest.mark.parametrize(("name", "path", "typo"), [
    ("cluster.yaml", [], "max_wrkers"),
    ("cluster.yaml", ["available_node_types", "gpu_worker"], "min_wrkers"),
    ("examples/cluster-onprem.yaml", [], "idle_timout_minutes"),
])
def test_a_typo_in_a_key_fails(name: str, path: list[str], typo: str) -> None:
    # (Keys inside `provider` are not checked: Ray's schema lets each provider take extras.)
    raw = _load(name)
    node = raw
    for key in path:
        node = node[key]
    node[typo] = 1
    with pytest.raises(Exception, match=typo):
        _validate(raw)


def test_a_head_type_that_does_not_exist_fails() -> None:
    raw = _load("cluster.yaml")
    raw["head_node_type"] = "cpu_head"
    with pytest.raises(ValueError, match="head_node_type"):
        _validate(raw)
