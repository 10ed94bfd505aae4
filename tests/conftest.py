"""Shared fixtures: an isolated cache, the smoke space's prepared state, a small trained CNN."""

from __future__ import annotations

import contextlib
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


def session_members(leader: int) -> list[int]:
    """PIDs whose session id is `leader` (what a process started with its own session left)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == leader:  # after "pid (comm)": state, ppid, pgrp, session
            members.append(int(stat.parent.name))
    return members


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 30.0) -> None:
    """Stops a process we started with its own session, and everything left in that session.

    SIGTERM goes to the leader first, so `ray start --block` can drain its node; whatever is
    still in the session afterwards gets SIGTERM, then SIGKILL. All by PID, never by name.
    """
    import signal
    import time

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = session_members(proc.pid)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 10
        while left and time.time() < deadline:
            time.sleep(0.2)
            left = session_members(proc.pid)
        if not left:
            return


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
