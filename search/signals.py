"""Ctrl-C, SIGTERM, a closed terminal: a search stops within seconds, in a state `--resume`
continues.

SIGINT, SIGTERM and SIGHUP (the terminal went away; left alone where it was ignored when the
search started, as `nohup` does) raise `Interrupted` in the main thread (SIGTERM too: Ray's
driver handler would `sys.exit` from wherever the driver is, and a scheduler or `timeout`
sends SIGTERM). So does a write to stdout or stderr whose reader went away (`search.run | tee
log` with the tee killed): Python's EPIPE would otherwise end the search with a traceback from
whichever print met it first, its trials' runs left RUNNING in MLflow; the stream then writes
nowhere and the search stops as it does on a signal, with SIGPIPE's number. While Tune runs
the trials, the first interruption asks Tune for its own graceful stop instead (the run loop
ends after its step, the experiment state is saved whole, the trials are stopped), and
`Interrupted` is raised when `fit` returns; a second one raises at once. The exit code is 128 +
the signal's number: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, 141 for a lost reader.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TextIO

__all__ = ["Interrupted", "catch_signals", "deferred", "graceful", "received", "reinstall",
           "stop_tune"]

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    handled: tuple[int, ...] = ()  # the signals `catch_signals` took over
    as_signal: int | None = None  # what the next simulated SIGINT stands for (a lost reader)


_STATE = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _STATE.as_signal is not None:
        signum, _STATE.as_signal = _STATE.as_signal, None
    first = _STATE.received is None
    _STATE.received = _STATE.received or signum
    if first and _STATE.stop is not None and _STATE.stop():
        return  # the block ends by itself, soon; `graceful` raises then
    raise Interrupted(_STATE.received)


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
    """Within the block SIGINT, SIGTERM and SIGHUP (unless ignored) raise `Interrupted`, and so
    does a write to stdout or stderr that finds its reader gone (main thread only; Tune's own
    SIGINT handler is turned off: the search asks it for the same stop itself)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # under nohup SIGHUP stays ignored: the search was meant to outlive its terminal
    handled = tuple(s for s in SIGNALS
                    if s != signal.SIGHUP or signal.getsignal(s) is not signal.SIG_IGN)
    before = {signum: signal.getsignal(signum) for signum in handled}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _STATE.installed, _STATE.received, _STATE.handled = True, None, handled
    reinstall()
    # watched from here to the process's end: the line saying how to go on comes after the
    # block, and a reader that went away unnoticed (nothing printed since) would make it a
    # BrokenPipeError, exit 1 through the interpreter's teardown instead of the signal's code
    sys.stdout, sys.stderr = _Watched.of(sys.stdout), _Watched.of(sys.stderr)
    try:
        yield
    finally:
        _STATE.installed = False
        for signum, handler in before.items():
            signal.signal(signum, handler)


def received() -> int | None:
    """The first signal the search took (SIGPIPE for a lost reader), None if none. Ray's
    `wait` turns a signal that interrupts it into a plain KeyboardInterrupt of its own, whose
    exit code is then this signal's, not Ctrl-C's."""
    return _STATE.received


def reinstall() -> None:
    """Puts the handlers back after something replaced them (ray.init sets its own SIGTERM
    handler in the driver); nothing if `catch_signals` was not called."""
    if _STATE.installed and threading.current_thread() is threading.main_thread():
        for signum in _STATE.handled:
            signal.signal(signum, _handler)


class _Watched:
    """sys.stdout or sys.stderr: a write or flush that finds the reader gone (EPIPE) makes
    the stream write nowhere from then on and, inside `catch_signals`, interrupts the search
    as SIGPIPE would."""

    def __init__(self, stream: TextIO) -> None:
        self._stream, self.lost = stream, False

    @classmethod
    def of(cls, stream: TextIO) -> TextIO:
        return stream if isinstance(stream, cls) else cls(stream)  # type: ignore[return-value]

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._lose()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._lose()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding...: the stream's
        return getattr(self._stream, name)

    def _lose(self) -> None:
        if self.lost:
            return
        self.lost, self._stream = True, open(os.devnull, "w")  # noqa: SIM115 (lives on)
        if not _STATE.installed:
            return
        if threading.current_thread() is threading.main_thread():
            _handler(signal.SIGPIPE, None)
        else:  # Ray's log thread, say: a real signal, which also wakes a main thread that
            # waits (a simulated one, `_thread.interrupt_main`, waits for it to wake)
            _STATE.as_signal = signal.SIGPIPE
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


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
