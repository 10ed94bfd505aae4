"""One search per name: the lock in a search's results folder (in-process, seconds)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from search.lock import search_lock
from trainables.errors import ConfigError


def _hold(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    created = psutil.Process(pid).create_time() if psutil.pid_exists(pid) else 1.0
    (folder / "search.lock").write_text(json.dumps({
        "pid": pid, "host": host or socket.gethostname(), "created": created,
        "started": "2026-01-01 00:00:00"}))


def test_a_running_holder_is_named_and_the_lock_goes_with_its_command(tmp_path: Path) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    try:
        _hold(tmp_path, holder.pid)
        with pytest.raises(ConfigError, match=rf"search 'x' is already running \(pid "
                                              rf"{holder.pid}, started 2026-01-01"), \
                search_lock(tmp_path, "x"):
            pass
    finally:
        holder.kill()
        holder.wait()
    notes: list[str] = []
    with search_lock(tmp_path, "x", log=notes.append) as lock:  # its holder is gone now
        assert json.loads(lock.read_text())["pid"] == psutil.Process().pid
    assert notes and "which no longer runs: lock taken over" in notes[0]
    assert not (tmp_path / "search.lock").exists()  # released at the end


def test_a_reused_pid_does_not_hold_the_lock(tmp_path: Path) -> None:
    # this very process, but started at another time: the PID was given to another process
    (tmp_path / "search.lock").write_text(json.dumps({
        "pid": psutil.Process().pid, "host": socket.gethostname(), "created": 1.0,
        "started": "then"}))
    notes: list[str] = []
    with search_lock(tmp_path, "x", log=notes.append):
        assert "lock taken over" in notes[0]


def test_another_hosts_lock_is_not_taken_and_an_unreadable_one_is(tmp_path: Path) -> None:
    _hold(tmp_path / "a", 1, host="elsewhere")
    with pytest.raises(ConfigError, match="held by pid 1 on host elsewhere"), \
            search_lock(tmp_path / "a", "a"):
        pass
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "search.lock").write_text("{cut sh")
    notes: list[str] = []
    with search_lock(tmp_path / "b", "b", log=notes.append):
        assert "could not be read; taken over" in notes[0]
