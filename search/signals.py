"""Ctrl-C and SIGTERM: a search stops within seconds, in a state `--resume` continues.

Both signals raise `Interrupted` in the main thread (SIGTERM too: Ray's driver handler would
`sys.exit` from wherever the driver is, and a scheduler or `timeout` sends SIGTERM). While Tune
runs the trials, the first signal asks Tune for its own graceful stop instead (the run loop
ends after its step, the experiment state is saved whole, the trials are stopped), and
`Interrupted` is raised when `fit` returns; a second signal raises at once. The exit code is
128 + the signal's number: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["Interrupted", "catch_signals", "deferred", "graceful", "reinstall", "stop_tune"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A search stopped by a signal; `exit_code` is 128 + its number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    installed = False
    received: int | None = None
    stop: Callable[[], bool] | None = None  # a graceful stop for the block running now


_STATE = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    first = _STATE.received is None
    _STATE.received = _STATE.received or signum
    if first and _STATE.stop is not None and _STATE.stop():
        return  # the block ends by itself, soon; `graceful` raises then
    raise Interrupted(_STATE.received)


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise `Interrupted` (main thread only; Tune's own
    SIGINT handler is turned off: the search asks it for the same stop itself)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in SIGNALS}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _STATE.installed, _STATE.received = True, None
    reinstall()
    try:
        yield
    finally:
        _STATE.installed = False
        for signum, handler in before.items():
            signal.signal(signum, handler)


def reinstall() -> None:
    """Puts the handlers back after something replaced them (ray.init sets its own SIGTERM
    handler in the driver); nothing if `catch_signals` was not called."""
    if _STATE.installed and threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handler)


@contextlib.contextmanager
def graceful(stop: Callable[[], bool]) -> Iterator[None]:
    """Within the block a first signal calls `stop` (which returns whether it could stop the
    block's work gracefully); when the block ends, the signal it took raises `Interrupted`."""
    _STATE.stop = stop
    try:
        yield
    finally:
        _STATE.stop = None
    if _STATE.received is not None:
        raise Interrupted(_STATE.received)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Work that is quick and must not be left half done: a first signal waits for the block
    to end (then raises `Interrupted`); a second one raises at once."""
    with graceful(lambda: True):
        yield


def stop_tune() -> bool:
    """Tune's graceful stop, as its own SIGINT handler asks for it: the handler Tune installed
    for SIGUSR1 when `fit` started (False before that: nothing to stop gracefully yet)."""
    handler = signal.getsignal(signal.SIGUSR1)
    if not callable(handler) or getattr(handler, "__name__", "") != "signal_interrupt_tune_run":
        return False
    # its advice ("Press CTRL+C again...", "Resume with Tuner.restore") is not ours to give,
    # nor its logs of what stopping cost (a last state upload that failed on a full disk,
    # the stopped trials' errors): the search says in one line why it stopped
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    handler(signal.SIGUSR1, None)
    return True
