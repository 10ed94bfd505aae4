"""The Ray session a search starts: its workers run with the allocator settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trainables.runtime import allocator_env

# a search's Ray session, one task and one Tune-like thread in a worker: what glibc was told
_CHILD = """
import json, os, threading
import ray
from search.session import ray_session

@ray.remote
def seen():
    found = {}
    def body():  # Ray Tune runs a trial's function in a thread of its worker like this
        found.update({k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX",
                                                     "MALLOC_MMAP_THRESHOLD_")})
    worker = threading.Thread(target=body); worker.start(); worker.join()
    return found

with ray_session(None, log=lambda _: None):
    print(json.dumps(ray.get(seen.remote())))
"""


@pytest.mark.slow
@pytest.mark.skipif(not allocator_env(), reason="the settings are glibc's malloc's")
def test_ray_workers_start_with_the_allocator_settings() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         timeout=300, env={**os.environ}, check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    want = allocator_env()
    assert found == {k: want[k] for k in found}, found
