"""Shared fixtures: an isolated cache, the smoke space's prepared state, a small trained CNN."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import spaces
from search.vocab import FRESH_FINAL_ENV
from tests.processes import start_mlflow_server, stop_process
from trainables.defense.models import DefendedModel
from trainables.setting.prepare import Shared, prepare_shared

# The test files that run searches: Ray clusters, MLflow servers, faults timed against them, the
# shared smoke search. tests/test_parallel.py checks that every search test file with a slow
# test is named here.
SEARCHES = tuple(f"tests/search_tests/{name}.py" for name in (
    "test_card", "test_cluster", "test_faults", "test_mlflow_ui", "test_optuna_dashboard",
    "test_query_space", "test_report", "test_resume", "test_scheduler", "test_search_run"))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, unknown without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs two pytest-xdist workers (`-n 2 --dist loadgroup`). The tests that run
    searches each use both cores, and share one smoke search (a session fixture), so they are
    one group, run in order on one worker; every other test (torch, files, CLI processes that
    stop before Ray) goes to whichever worker is free. The group is named here, not by
    `xdist_group` marks: xdist 3.8 writes a mark's group into `item._nodeid`, which pytest 9.2
    no longer reads, so marks group nothing."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SearchesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "searches" if nodeid.startswith(SEARCHES) else nodeid

    return SearchesTogether(config, log)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Teachers and targets trained by tests go to a temporary cache, not ~/.cache; final
    tasks are computed afresh unless a test asks for kept answers (search/kept.py), so that
    no test reads what another one computed."""
    path = tmp_path_factory.mktemp("cache")
    changes = {"DEFENSE_SEARCH_CACHE": str(path), FRESH_FINAL_ENV: "1"}
    old = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    yield path
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def restored_environment() -> Iterator[None]:
    """In-process CLI calls set Ray's environment switches (loopback, output); a test that
    leaked them would change how later tests' Ray processes start."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def smoke_space() -> spaces.Space:
    return spaces.load("smoke")


@pytest.fixture(scope="session")
def smoke_shared(smoke_space: spaces.Space) -> Shared:
    return prepare_shared(smoke_space.trial_config(), log=lambda _: None)


@pytest.fixture(scope="session")
def digits_model(smoke_space: spaces.Space) -> DefendedModel:
    """A clean-trained small CNN on digits (the teacher of a 15-epoch prepare), frozen."""
    config = smoke_space.trial_config(teacher_epochs=15)
    shared = prepare_shared(config, log=lambda _: None)
    model = DefendedModel(shared.teacher.encoder, shared.teacher.head).eval()
    model.val_x, model.val_y = shared.data.val_x, shared.data.val_y  # type: ignore[assignment]
    torch.manual_seed(0)
    return model


@pytest.fixture(scope="session")
def mnist_model(smoke_space: spaces.Space) -> DefendedModel:
    """A clean-trained small CNN on mnist5k (28x28), frozen, with its validation points."""
    config = smoke_space.trial_config(dataset="mnist5k", teacher_epochs=3, heldout=["PGDL2"],
                                      sealed=[])
    shared = prepare_shared(config, log=lambda _: None)
    model = DefendedModel(shared.teacher.encoder, shared.teacher.head).eval()
    model.val_x, model.val_y = shared.data.val_x, shared.data.val_y  # type: ignore[assignment]
    return model


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend), stopped by PID at the end."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield uri
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def at_model(smoke_space: spaces.Space) -> DefendedModel:
    """A plainly PGD-adversarially-trained small CNN on digits (no UniG, no tricks)."""
    from trainables.train import run_trial

    config = smoke_space.trial_config(
        teacher_epochs=15, epochs=12, eval_every=12, batch_size=32, pool=["PGD"],
        include_clean=False, meta="off", w_feat=0.0, w_cyc=0.0, w_pcl=0.0, unig="off",
        train_head=True, train_attack_steps=5, masking_samples=0)
    return run_trial(config, log=lambda _: None).model.eval()
