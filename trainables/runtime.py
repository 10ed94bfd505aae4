"""Device choice, CPU threads and seeding: the one place a trial decides where it runs."""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from trainables.errors import ConfigError
from trainables.vocab import Precision, time_key

__all__ = ["Stopwatch", "autocast_dtype", "native_bfloat16", "pinned_threads",
           "resolve_device", "seed_everything", "set_threads"]


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


def autocast_dtype(precision: Precision | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `precision` asks for on `device` (an attack's crafting, training's
    forward passes); None: float32 (no autocast)."""
    precision = Precision(precision)
    if precision == Precision.FLOAT32:
        return None
    if precision == Precision.AUTO and not native_bfloat16(device):
        return None
    return torch.bfloat16


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (emulated, autocast is slower than float32):
    a CUDA device of compute capability 8 or more (Ampere on), a CPU with AVX512-BF16 or AMX
    (oneDNN's own check also passes AVX512 CPUs that only emulate it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False
