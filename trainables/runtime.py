"""Device choice, CPU threads and seeding: the one place a trial decides where it runs."""

from __future__ import annotations

import ctypes
import functools
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

__all__ = ["ALLOCATOR_ENV", "Stopwatch", "allocator_env", "pinned_threads", "resolve_device",
           "seed_everything", "set_threads", "tune_allocator"]

# glibc's settings that tune_allocator makes: (mallopt parameter of malloc.h, the environment
# variable glibc reads at a process's start, value). The mmap threshold is glibc's largest on
# 64-bit (a batch of 256 of mnist5k's first-layer maps is 26 MB); one arena, because glibc
# unmaps a thread arena's heaps as soon as they are empty whatever the trim threshold, and
# Ray Tune runs each trial in a thread of its worker.
_GLIBC_SETTINGS = ((-3, "MALLOC_MMAP_THRESHOLD_", 32 * 2**20),
                   (-1, "MALLOC_TRIM_THRESHOLD_", 2**30),
                   (-8, "MALLOC_ARENA_MAX", 1))
ALLOCATOR_ENV = "DEFENSE_SEARCH_ALLOCATOR"  # tuned (unset) or default: glibc's own thresholds


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
    """Keeps the memory of freed tensors (up to 32 MB each) in this process, so that the next
    batch's tensors reuse it instead of page-faulting fresh memory in; True if set, False
    where it is not (no glibc, or DEFENSE_SEARCH_ALLOCATOR=default).

    By default glibc serves each block above its mmap threshold (128 KB at first, raised only
    to the largest block freed so far) by a fresh mmap, returns it on free, trims the heap's
    top above twice that threshold and unmaps thread arenas' heaps once empty: every forward
    and backward pass then faults its activations in again. On mnist5k's small CNN (batch
    256, 1 thread) zeroing and copying the first layer's maps took about a fifth of a forward
    + backward pass. The settings cost memory (a process keeps up to 1 GB freed heap) and
    change no arithmetic (tests/trainables_tests/test_runtime.py, bench/allocator.py). They
    hold for the whole process; threads that already allocated keep their arena, so Ray's
    workers get them from the start through `allocator_env` (search/session.py).
    """
    if not _allocator_tuned():
        return False
    libc = _libc()
    return all(libc.mallopt(parameter, value) == 1 for parameter, _, value in _GLIBC_SETTINGS)


def allocator_env() -> dict[str, str]:
    """tune_allocator's settings as the environment variables glibc reads when a process
    starts (for the processes Ray starts: its workers); empty where tune_allocator does
    nothing."""
    if not _allocator_tuned():
        return {}
    return {name: str(value) for _, name, value in _GLIBC_SETTINGS}


def _allocator_tuned() -> bool:
    choice = os.environ.get(ALLOCATOR_ENV, "tuned")
    if choice not in ("tuned", "default"):
        raise ConfigError(f"{ALLOCATOR_ENV}={choice!r} is not a choice; use tuned (what a "
                          "search does unless told) or default (glibc's own thresholds)")
    return (choice == "tuned" and platform.system() == "Linux"
            and platform.libc_ver()[0] == "glibc")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # the C library this process already uses


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
