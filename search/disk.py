"""A full disk is a clear error: free space is checked before a search, against an estimate
it states, and a write that fails for want of space stops the search in one line (exit code 4)
with its state kept for `--resume` (search/guard.py watches during the search). No Ray
imported here."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from search.cli import EXIT_DISK_FULL
from spaces import Space
from trainables.errors import ConfigError, DefenseSearchError

__all__ = ["DiskFullError", "DiskNeed", "check_free_space", "free_bytes", "full_text",
           "is_disk_full", "mb", "need_of", "used_bytes"]

MB = 1024 * 1024
# what a write that failed for want of space says (OSError, sqlite through SQLAlchemy/MLflow,
# pyarrow's copies, and the same text inside Ray's and Tune's wrapped errors)
FULL_TEXTS = ("No space left on device", "[Errno 28]", "database or disk is full",
              "Disk quota exceeded", "[Errno 122]")


class DiskFullError(DefenseSearchError):
    """A disk the search writes to is full: it stopped, its state kept for --resume."""

    exit_code = EXIT_DISK_FULL


def mb(size: float) -> str:
    return f"{size / MB:.1f} MB"


@dataclass(frozen=True)
class DiskNeed:
    """An upper bound of what a search writes: per trial, two kept checkpoints (the training
    state: weights, optimizer moments and averaged weights, up to 5x the model) and the final
    model, 50 kB of results per evaluation and 400 kB of Tune's bookkeeping; the checkpoints
    being written by the running trials; and the search's own files."""

    trials: int
    running: int
    evaluations: int
    model_bytes: int

    @property
    def state_bytes(self) -> int:
        return 5 * self.model_bytes

    @property
    def per_trial(self) -> int:
        return 2 * self.state_bytes + self.model_bytes + 50_000 * self.evaluations + 400_000

    @property
    def fixed(self) -> int:
        return 5 * MB + 2 * self.model_bytes

    @property
    def reserve(self) -> int:
        """What the running trials' next checkpoints and the search's state need: below this
        much free space the search stops before a write fails."""
        return self.running * self.state_bytes + 2 * MB

    @property
    def total(self) -> int:
        return self.trials * self.per_trial + self.reserve + self.fixed

    def describe(self) -> str:
        return (f"about {mb(self.total)} ({self.trials} trials x {mb(self.per_trial)}: two "
                f"checkpoints of up to {mb(self.state_bytes)} and a {mb(self.model_bytes)} "
                f"model each, results; {mb(self.reserve)} for the checkpoints being written; "
                f"{mb(self.fixed)} for the search's own files)")


def need_of(space: Space, *, trials: int, running: int) -> DiskNeed:
    """The estimate for a search of `trials` trials of `space`, `running` at once (its model's
    size from the architecture the space trains)."""
    from trainables.defense.models import build_arch

    setup = space.setup()
    parts = build_arch(setup.arch, setup.info.image_shape, setup.info.num_classes)
    size = sum(t.numel() * t.element_size() for module in (parts.encoder, parts.head)
               for t in module.state_dict().values())
    return DiskNeed(trials, running, space.max_evaluations, size)


def free_bytes(path: str | Path) -> int:
    """Free space on the file system that holds `path` (or would: its nearest existing
    ancestor)."""
    probe = Path(path).expanduser().resolve()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def used_bytes(folder: Path) -> int:
    """What is already in `folder` (a search that is resumed needs less)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) \
        if folder.is_dir() else 0


def check_free_space(folder: Path, need: DiskNeed, *, already: int = 0) -> None:
    """Refuses a search whose results folder's disk has less free space than `need` (less
    `already` written there by the search being resumed)."""
    free, wanted = free_bytes(folder), max(need.reserve + need.fixed, need.total - already)
    if free < wanted:
        raise ConfigError(
            f"the disk holding {folder} has {mb(free)} free; this search writes "
            f"{need.describe()}{f', of which {mb(already)} are written' if already else ''}: "
            "free space there, pass fewer --num-samples, or another --storage-path")


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def full_text(texts: Iterable[str]) -> str | None:
    """The first line of `texts` that says a disk is full, if any."""
    for text in texts:
        for line in text.splitlines():
            if any(marker in line for marker in FULL_TEXTS):
                return line.strip()[:300]
    return None


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` (or what caused it, also as the text of a wrapped error) is a write that
    failed for want of space."""
    for item in _chain(err):
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    return full_text(str(item) for item in _chain(err)) is not None
