"""Where a search keeps things, checked before anything is written: the storage folder and the
MLflow tracking store (a server, or a local sqlite/file store and its artifacts beside it)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from trainables.errors import ConfigError

__all__ = ["artifact_location", "check_tracking_uri", "local_store", "writable_folder"]


def writable_folder(path: str | Path, what: str) -> Path:
    """`path`, a folder that exists or can be made: its nearest existing ancestor is a
    writable folder (nothing is created here, so a refused command leaves nothing behind)."""
    folder = Path(path).expanduser().resolve()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {str(path)!r}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(path)!r}: {probe} is not writable")
    return folder


def check_tracking_uri(uri: str, *, timeout_s: float = 5.0, must_exist: bool = False) -> None:
    """Raises ConfigError unless `uri` is a reachable tracking server or a writable store
    (`must_exist`: a store already there, for commands that read one)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as reply:
                if reply.status != 200:
                    raise ConfigError(f"--mlflow-uri {uri}: /health answered {reply.status}")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(f"--mlflow-uri {uri} is unreachable ({reason}); start the server "
                              "(mlflow server --host ... --port ...) or use a sqlite:/// URI"
                              ) from None
        return
    store = local_store(uri)
    if store is None:
        return  # databricks://, postgresql://...: MLflow itself reports problems
    folder = store.parent if uri.startswith("sqlite:") else store
    if not must_exist and not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"--mlflow-uri {uri}: folder {folder} does not exist or is not "
                          "writable")
    if must_exist and not store.exists():
        raise ConfigError(f"--mlflow-uri {uri}: there is no MLflow store at {store}")


def local_store(uri: str) -> Path | None:
    """The file (sqlite) or folder (file store) of a local tracking URI, else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).expanduser().resolve()
    if uri.startswith("file:") or "://" not in uri:
        return Path(uri.removeprefix("file://").removeprefix("file:")).expanduser().resolve()
    return None


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a local store's experiment keeps its artifacts: beside the store (not in the
    working directory's ./mlruns, which would mix the artifacts of different stores)."""
    store = local_store(uri)
    if store is None or not uri.startswith("sqlite:"):
        return None
    return (store.parent / "mlartifacts" / experiment).as_uri()
