"""A Ray session for one command, and the Ray processes a killed search left behind.

`ray_session` starts Ray here (or joins a cluster) and shuts it down at the end, whatever
happens in between (a Ctrl-C or SIGTERM included: search/signals.py).

A driver that starts Ray on this machine records every process Ray started for it (GCS,
raylet, dashboard and runtime-env agents...). A normal exit removes the record; a driver that
was SIGKILLed cannot, and Ray's agents outlive it for minutes. The next search on this machine
reads the records of drivers that are gone and stops their processes, checking each one's
start time so that a PID the system has given to another process since is never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from search.signals import reinstall

__all__ = ["ray_session", "record_ray_processes", "records_dir", "stop_leftovers"]


@contextlib.contextmanager
def ray_session(address: str | None, log: Callable[[str], None] = print) -> Iterator[None]:
    """Ray for the length of the block: on this machine (address None) after stopping what
    killed searches left, its processes recorded until it shuts down; else the cluster's."""
    import ray

    if address is None:
        stop_leftovers(log)
    # "local" starts a new instance even where `ray start` left a cluster file behind
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    reinstall()  # ray.init replaced the driver's SIGTERM handler with a sys.exit
    try:
        if address is None:
            record_ray_processes()
        yield
    finally:
        ray.shutdown()
        if address is None:
            _record_file(os.getpid()).unlink(missing_ok=True)


def records_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"defense-search-{os.getuid()}" / "ray-processes"


def _record_file(pid: int) -> Path:
    return records_dir() / f"{pid}.json"


def _identity(process: psutil.Process) -> dict[str, object]:
    return {"pid": process.pid, "started": process.create_time(), "name": process.name()}


def record_ray_processes() -> int:
    """Records this driver and every process below it (what a local ray.init started)."""
    me = psutil.Process()
    children = []
    for child in me.children(recursive=True):
        try:
            children.append(_identity(child))
        except psutil.Error:
            continue  # gone already
    path = _record_file(me.pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"driver": _identity(me), "processes": children}))
    tmp.replace(path)
    return len(children)


def _same(entry: dict[str, object]) -> psutil.Process | None:
    """The recorded process if it still runs (same PID and same start time)."""
    try:
        process = psutil.Process(int(entry["pid"]))  # type: ignore[call-overload]
        if abs(process.create_time() - float(entry["started"])) < 0.01:  # type: ignore[arg-type]
            return process
    except (psutil.Error, KeyError, TypeError, ValueError):
        pass
    return None


def stop_leftovers(log: Callable[[str], None] = print, timeout_s: float = 5.0) -> int:
    """Stops what drivers that no longer run recorded; returns how many processes it stopped."""
    folder = records_dir()
    stopped = 0
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            path.unlink(missing_ok=True)
            continue
        if _same(record.get("driver", {})) is not None:
            continue  # that search still runs: its processes are its own
        alive = [p for p in map(_same, record.get("processes", [])) if p is not None]
        for process in alive:
            try:
                process.terminate()
            except psutil.Error:
                continue
        _, remaining = psutil.wait_procs(alive, timeout=timeout_s)
        for process in remaining:
            try:
                process.kill()
            except psutil.Error:
                continue
        if alive:
            log(f"ray: stopped {len(alive)} process(es) left by a search that was killed "
                f"(driver pid {record.get('driver', {}).get('pid')})")
        stopped += len(alive)
        path.unlink(missing_ok=True)
    return stopped
