"""What every command line of the project shares: one-line errors and their exit codes.

A user's mistake (DefenseSearchError, or a bad flag) is one `error:` line and exit code 2,
never a traceback (an error with its own `exit_code`, such as a tracking server that stayed
away, exits with that); a disk that is full is one line and exit code 4; Ctrl-C is exit code
130 (a caught SIGTERM 143, SIGHUP 129, a lost reader of the output 141) with a line saying how
to go on.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from search.signals import received
from trainables.errors import DefenseSearchError

__all__ = ["EXIT_DISK_FULL", "EXIT_INTERRUPTED", "EXIT_STOPPED", "EXIT_USAGE", "Parser",
           "exit_now", "run_cli"]

EXIT_USAGE = 2
EXIT_DISK_FULL = 4  # search/disk.py's DiskFullError carries it too
EXIT_INTERRUPTED = 130  # 128 + SIGINT
# every way a caught interruption ends a command (search/signals.py): 128 + its signal
EXIT_STOPPED = frozenset(128 + s for s in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE,
                                           signal.SIGTERM))


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def run_cli(body: Callable[[], int], *,
            interrupted: str | Callable[[], str] = "interrupted") -> int:
    """Runs a command's body; a DefenseSearchError becomes one line on stderr and exit code 2;
    an interruption the line `interrupted` (or what it returns) and exit code 130 (143 for a
    SIGTERM the command caught: 128 + the signal's number)."""
    try:
        return body()
    except DefenseSearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return int(getattr(err, "exit_code", EXIT_USAGE))
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: a disk is full: {err}; free space there and run the command again",
              file=sys.stderr)
        return EXIT_DISK_FULL
    except KeyboardInterrupt as err:
        print(interrupted() if callable(interrupted) else interrupted, file=sys.stderr)
        signum = received()
        return int(getattr(err, "exit_code", EXIT_INTERRUPTED if signum is None else 128 + signum))


def exit_now(code: int) -> NoReturn:
    """Exits at once, after flushing what was printed: an interrupted command that used Ray
    would otherwise spend seconds more in the interpreter's teardown of Ray's and torch's
    native threads (measured: 4-7 s on 2 busy cores), which a scheduler's grace period, or a
    user, waits for."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
