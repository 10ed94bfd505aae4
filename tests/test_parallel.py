"""`make test` runs two pytest-xdist workers; the tests that run searches must stay together on
one of them (tests/conftest.py, pytest_xdist_make_scheduler), or two Ray searches share the 2
cores and the smoke search (a session fixture) runs once per worker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SEARCHES

REPO = Path(__file__).resolve().parents[1]
QUICK_SEARCH_FILES = ["tests/search_tests/test_faults.py", "tests/search_tests/test_resume.py",
                      "tests/search_tests/test_report.py"]  # their tests that are not slow
OTHER = ["tests/test_layout.py", "tests/trainables_tests/test_stats.py",
         "tests/search_tests/test_lock.py"]


def test_every_search_test_file_with_a_slow_test_is_in_the_searches_group() -> None:
    slow = {str(path.relative_to(REPO)) for path in (REPO / "tests/search_tests").glob("test_*.py")
            if "pytest.mark.slow" in path.read_text()}
    assert slow == set(SEARCHES), f"add to / remove from SEARCHES: {sorted(slow ^ set(SEARCHES))}"


@pytest.mark.slow  # a pytest run of its own, about 17 s
def test_make_tests_two_workers_run_every_search_test_on_the_same_one() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", "-m", "not slow", *QUICK_SEARCH_FILES, *OTHER],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"\[(gw\d+)\] \[\s*\d+%\] PASSED (\S+)", proc.stdout)
    searches = {worker for worker, test in ran if test.startswith(SEARCHES)}
    assert sum(test.startswith(SEARCHES) for _, test in ran) >= 8, proc.stdout
    assert len(ran) > 15, proc.stdout  # the other files ran too
    assert len(searches) == 1, f"search tests ran on {sorted(searches)}"  # without the hook: 2
