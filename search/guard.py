"""A Tune callback on the driver that keeps a search resumable when its disk fills up.

Every few seconds it checks the free space where the search writes, and stops the search
(Tune's graceful stop) once less is left than the running trials' next checkpoints need; a
trial that failed for want of space stops it too, instead of being retried into the same full
disk. It also keeps a copy of Tune's state files each time Tune has written them whole
(`.tune-state/` in the results folder, each file written then renamed): Tune uploads its state
with plain copies, which a full disk cuts short, and `--resume` puts the copy back then
(search/resume.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search.disk import free_bytes, full_text, is_disk_full, mb
from search.resume import STATE_COPY, damage, tune_state_files
from search.signals import stop_tune
from trainables.files import write_atomic

__all__ = ["DiskGuard", "disk_full_reason"]

_REASON: list[str] = []  # why the guard stopped the search (module-level: Tune restores a
#                          pickled copy of the callback, not the driver's object)


def disk_full_reason() -> str | None:
    """Why the guard stopped the search, if it did (cleared by `DiskGuard.watching`)."""
    return _REASON[0] if _REASON else None


_CONTROLLER_LOG = "ray.tune.execution.tune_controller"  # logs "Trial task failed" + traceback


class _QuietDiskFull(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not is_disk_full(error)


class DiskGuard(Callback):
    """Stops the search when the disk is (nearly) full; keeps a copy of Tune's state."""

    @staticmethod
    def watching() -> None:
        """A new fit starts: no reason of an earlier one left over, and Tune's traceback of a
        trial that failed for want of space kept out of the output (the guard says it in one
        line; the traceback stays in the trial's error file)."""
        _REASON.clear()
        controller = logging.getLogger(_CONTROLLER_LOG)
        if not any(isinstance(f, _QuietDiskFull) for f in controller.filters):
            controller.addFilter(_QuietDiskFull())

    def __init__(self, *, folder: str, watch: list[str], reserve: int,
                 every_s: float = 2.0) -> None:
        self.folder, self.watch, self.reserve, self.every_s = folder, watch, reserve, every_s
        self._next = 0.0
        self._copied: float | None = None  # mtime of the experiment state last copied

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into its state
        return {**self.__dict__, "_next": 0.0, "_copied": None}

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now < self._next or _REASON:
            return
        self._next = now + self.every_s
        for path in self.watch:
            free = free_bytes(path)
            if free < self.reserve:
                self._stop(f"{mb(free)} free where {path} is, less than the {mb(self.reserve)} "
                           "the running trials' next checkpoints need")
                return
        self._keep_copy()

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self._check_error(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._check_error(trial)

    def _check_error(self, trial: Any) -> None:
        error_file = getattr(trial, "error_file", None)
        if not error_file or not Path(error_file).is_file() or _REASON:
            return
        line = full_text([Path(error_file).read_text(errors="replace")[-20_000:]])
        if line is not None:
            self._stop(f"trial {trial.trial_id} could not write: {line}")

    def _stop(self, reason: str) -> None:
        _REASON.append(reason)
        print(f"disk full: {reason}; stopping the search with its state kept", flush=True)
        stop_tune()

    def _keep_copy(self) -> None:
        """Copies Tune's state files when Tune has written a new, whole set."""
        folder = Path(self.folder)
        states = sorted(folder.glob("experiment_state-*.json"))
        if not states:
            return
        stamp = states[-1].stat().st_mtime
        if stamp == self._copied or damage(folder) is not None:
            return
        copy = folder / STATE_COPY
        copy.mkdir(exist_ok=True)
        files = tune_state_files(folder)
        try:
            for path in files:
                write_atomic(copy / path.name, path.read_bytes())
        except OSError:
            return  # no room for the copy: the last whole one stays
        for old in set(tune_state_files(copy)) - {copy / p.name for p in files}:
            old.unlink(missing_ok=True)
        self._copied = stamp
