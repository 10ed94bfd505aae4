"""Device choice, CPU threads and seeding: the one place a trial decides where it runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from trainables.errors import ConfigError
from trainables.vocab import time_key

__all__ = ["ALLOCATOR_ENV", "Stopwatch", "pinned_threads", "resolve_device", "seed_everything",
           "set_threads", "tune_allocator"]

# glibc's mallopt parameters (malloc.h) and the values tune_allocator sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit; a batch of 256 28x28 maps is 26 MB
_TRIM_THRESHOLD = 2**30
ALLOCATOR_ENV = "DEFENSE_SEARCH_ALLOCATOR"  # "default": leave glibc's thresholds as they are


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto`: the GPU Ray (or the user) made visible, else the CPU; cuda[:N] / cpu as asked."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device={spec!r} is not a torch device; use auto, cpu, cuda or "
                          "cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={spec!r} asks for a GPU but torch sees none; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def set_threads(threads: int) -> None:
    """Pins torch's CPU threads (0 keeps torch's default); a trial's threads = its CPUs."""
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def tune_allocator() -> bool:
    """Keeps the memory of freed tensors up to 32 MB in the process (glibc only), so that
    the next batch's tensors reuse it; True if set, False where there is no glibc.

    glibc serves each block above its mmap threshold (128 KB, raised only to the largest
    block freed so far) by a fresh mmap and returns it on free, and trims the heap's top
    above 128 KB, so every forward and backward pass of a batch page-faults its activations
    in again: on mnist5k's small CNN (batch 256, 1 thread) zeroing and copying the first
    layer's maps took about a fifth of a forward + backward pass. Both thresholds set here
    cost memory (a process keeps up to 1 GB freed heap) and change no arithmetic
    (bench/allocator.py, tests/trainables_tests/test_runtime.py). A process-wide setting: a
    trial or a final-comparison task sets it for the worker it runs in;
    DEFENSE_SEARCH_ALLOCATOR=default leaves glibc's own (to compare, or to save memory).
    """
    if (os.environ.get(ALLOCATOR_ENV) == "default" or platform.system() != "Linux"
            or platform.libc_ver()[0] != "glibc"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to `threads` inside the block, and restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    """Seeds every RNG the code and the attacks draw from (torch, numpy, random)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Stopwatch:
    """Seconds spent per phase of a run, summed (host time: on a GPU, work still queued when
    a phase ends counts in a later one, since nothing here synchronises)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {time_key(name): seconds for name, seconds in self.totals.items()}
