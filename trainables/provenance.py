"""What a cached artefact was computed by: the source files and the package versions.

A teacher cached by an earlier version of the code, or under other versions of the numerical
packages, is not the teacher the current code trains: its key must say so, or a cache silently
turns one machine's numbers into another's (issue 15: the README's figures were measured with
a teacher a fresh machine does not train)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path

__all__ = ["source_hash"]

_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=8)
def source_hash(sources: Sequence[str], packages: Sequence[str]) -> str:
    """A hash of the `.py` files under each of `sources` (folders or files, relative to the
    repository root) and of the installed versions of `packages` (a tuple: it is cached)."""
    digest = hashlib.sha256()
    for source in sources:
        root = _ROOT / source
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(str(path.relative_to(_ROOT)).encode() + b"\0" + path.read_bytes())
    for name in packages:
        try:
            digest.update(f"{name}=={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name} absent".encode())
    return digest.hexdigest()
