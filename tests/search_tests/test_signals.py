"""search/signals.py in a small process of its own: SIGHUP and a reader that goes away stop a
command the way Ctrl-C and SIGTERM do (one line, 128 + the signal's number, no traceback).
The search itself with its reader gone: tests/search_tests/test_faults.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# what the command does: print (from the main thread, or another one), or wait in a block
# that stops gracefully, as Tune's run loop does when asked
COMMAND = """
import sys, threading, time
from search.cli import EXIT_STOPPED, exit_now, run_cli
from search.signals import catch_signals, graceful

how = sys.argv[1]

def body():
    with catch_signals():
        print("ready", flush=True)
        if how == "graceful":
            asked = threading.Event()
            with graceful(lambda: asked.set() or True):
                while not asked.is_set():
                    print("working", flush=True)
                    time.sleep(0.05)
                print("the block ended by itself", file=sys.stderr, flush=True)
        elif how == "thread":
            def chatter():
                while True:
                    print("from a thread", flush=True)
                    time.sleep(0.05)
            threading.Thread(target=chatter, daemon=True).start()
            time.sleep(60)
        elif how == "quiet":  # prints nothing until it is stopped
            time.sleep(60)
        elif how == "ray-wait":  # what ray.wait does with the handler's exception
            try:
                time.sleep(60)
            except BaseException:
                raise KeyboardInterrupt from None
        else:
            for _ in range(1200):
                print("working", flush=True)
                time.sleep(0.05)
    return 0

code = run_cli(body, interrupted="interrupted: resume with the same command")
if code in EXIT_STOPPED:
    exit_now(code)
sys.exit(code)
"""


def _start(how: str, **kwargs: object) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", COMMAND, how], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def _ended(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    assert proc.stderr is not None
    code = proc.wait(timeout=30)
    return code, proc.stderr.read().decode()


@pytest.mark.parametrize("how", ["main", "thread", "graceful"])
def test_a_reader_that_goes_away_stops_the_command_with_one_line_and_141(how: str) -> None:
    proc = _start(how)
    assert proc.stdout is not None
    proc.stdout.close()  # `search.run | tee log`, the tee killed
    code, err = _ended(proc)
    assert code == 128 + signal.SIGPIPE, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err.splitlines()[-1] == "interrupted: resume with the same command", err
    if how == "graceful":  # asked to stop, the block ended by itself, then the line
        assert err.splitlines() == ["the block ended by itself",
                                    "interrupted: resume with the same command"], err


def test_sighup_stops_the_command_like_sigterm() -> None:
    def default_hangup() -> None:  # as a terminal starts it (pytest may run under nohup)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    proc = _start("main", preexec_fn=default_hangup)
    proc.send_signal(signal.SIGHUP)  # the terminal closed
    code, err = _ended(proc)
    assert code == 128 + signal.SIGHUP, err
    assert err.splitlines() == ["interrupted: resume with the same command"], err


def test_under_nohup_sighup_stays_ignored() -> None:
    def ignore_hangup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does before it runs us

    proc = _start("main", preexec_fn=ignore_hangup)
    try:
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None, "SIGHUP stopped a command started under nohup"
        proc.send_signal(signal.SIGTERM)
        code, err = _ended(proc)
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM, err


def test_a_signal_after_the_reader_went_away_unnoticed_still_ends_with_its_code() -> None:
    # nothing printed between the reader going away and the signal: the line that says how
    # to go on meets the closed pipe after the block, where its BrokenPipeError ended the
    # command with exit 1 through the interpreter's teardown (Ray's atexit shutdown waited
    # 30+ s for the final comparison's tasks there)
    proc = _start("quiet")
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM


def test_a_signal_that_ray_wait_turns_into_a_keyboard_interrupt_keeps_its_code() -> None:
    # seen with a SIGTERM during the final comparison (which waits in ray.wait): exit 130
    proc = _start("ray-wait")
    proc.send_signal(signal.SIGTERM)
    code, err = _ended(proc)
    assert code == 128 + signal.SIGTERM, err
    assert err.splitlines() == ["interrupted: resume with the same command"], err
