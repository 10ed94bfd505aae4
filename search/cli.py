"""What every command line of the project shares: one-line errors and their exit codes.

A user's mistake (DefenseSearchError, or a bad flag) is one `error:` line and exit code 2,
never a traceback (an error with its own `exit_code`, such as a tracking server that stayed
away, exits with that); Ctrl-C is exit code 130 with a line saying how to go on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from trainables.errors import DefenseSearchError

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "Parser", "run_cli"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def run_cli(body: Callable[[], int], *, interrupted: str = "interrupted") -> int:
    """Runs a command's body; a DefenseSearchError becomes one line on stderr and exit code 2."""
    try:
        return body()
    except DefenseSearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return int(getattr(err, "exit_code", EXIT_USAGE))
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
