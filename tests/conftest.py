"""Shared fixtures: an isolated cache, the smoke space's prepared state, a small trained CNN."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import spaces
from trainables.models import DefendedModel
from trainables.prepare import Shared, prepare_shared


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Teachers and targets trained by tests go to a temporary cache, not ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("DEFENSE_SEARCH_CACHE")
    os.environ["DEFENSE_SEARCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DEFENSE_SEARCH_CACHE", None)
    else:
        os.environ["DEFENSE_SEARCH_CACHE"] = old


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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 20.0) -> None:
    """Stops a process we started (and its children: it leads its own session) by its PID."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend), stopped by PID at the end."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log_text = (root / "server.log").read_text()
                raise RuntimeError(f"mlflow server did not start: {log_text}")
            time.sleep(0.5)
        yield uri
    finally:
        stop_process(proc)
        log.close()
