"""Resource requests against live nodes and an autoscaler's node types; where a sqlite store's
artifacts go. (The CLI side of both is in test_bad_input.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search.resources import check_request, node_types_of
from search.tracking import open_experiment
from tests.search_tests.conftest import REPO
from trainables.errors import ConfigError

NO_GPU = [{"CPU": 2.0, "GPU": 0.0}]


def test_the_cluster_files_node_types_are_read() -> None:
    # the head (no max_workers) is never started for trials
    assert node_types_of(REPO / "cluster.yaml") == {"gpu_worker": {"CPU": 4.0, "GPU": 1.0}}
    assert node_types_of(REPO / "no-such-file.yaml") == {}


def test_a_request_only_an_unstarted_node_type_meets_goes_on_with_a_note() -> None:
    types = node_types_of(REPO / "cluster.yaml")
    note = check_request({"CPU": 1.0, "GPU": 1.0}, NO_GPU, node_types=types)
    assert note is not None and "gpu_worker" in note
    assert check_request({"CPU": 1.0}, NO_GPU, node_types=types) is None


def test_a_request_no_node_type_meets_names_what_each_offers() -> None:
    types = node_types_of(REPO / "cluster.yaml")
    with pytest.raises(ConfigError, match=r"no node can give .*gpu_worker \(CPU 4, GPU 1\)"):
        check_request({"CPU": 1.0, "GPU": 2.0}, NO_GPU, node_types=types)


def test_a_sqlite_stores_artifacts_live_beside_it(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "store").mkdir()
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    experiment = client.get_experiment(open_experiment(client, "beside"))
    assert experiment.artifact_location == (tmp_path / "store" / "mlartifacts" /
                                            "beside").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
