"""Starting and stopping the real processes tests use (MLflow server, Ray nodes), by PID."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

__all__ = ["free_port", "session_members", "start_mlflow_server", "stop_process"]


def free_port() -> int:
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


def start_mlflow_server(root: Path, *, prefix: tuple[str, ...] = (), port: int | None = None
                        ) -> tuple[subprocess.Popen[bytes], str]:
    """Starts `mlflow server` on 127.0.0.1 (inside `prefix`, e.g. `ip netns exec NS`; on
    `port`, e.g. the one of a server that stopped) and waits until it answers /health there."""
    import sys
    import time

    port = port or free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = (root / "server.log").open("ab")
    proc = subprocess.Popen(
        [*prefix, str(mlflow_bin), "server", "--backend-store-uri",
         f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # MLflow 3's job runner (7 huey consumer processes) serves GenAI jobs no test uses:
        # off, a server starts 2 s and stops 5 s sooner, and leaves the 2 cores to the test
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    probe = [*prefix, sys.executable, "-c",
             f"import urllib.request; urllib.request.urlopen('{uri}/health', timeout=2)"]
    deadline = time.time() + 180
    while subprocess.run(probe, capture_output=True).returncode != 0:
        if proc.poll() is not None or time.time() > deadline:
            stop_process(proc)
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()}")
        time.sleep(0.5)
    return proc, uri


