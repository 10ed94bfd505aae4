"""Where a search keeps things, checked before anything is written: the search's name, the
storage folder and the MLflow tracking store (a server, or a local sqlite/file store and its
artifacts beside it)."""

from __future__ import annotations

import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from trainables.errors import ConfigError

__all__ = ["FILE_STORE_OPT_OUT", "artifact_location", "check_name", "check_tracking_uri",
           "inside", "local_store", "writable_folder"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# what MLflow can track to; anything else is a typo that MLflow would retry for minutes
TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql",
                    "databricks", "databricks-uc", "uc")
SQLITE_HEADER = b"SQLite format 3\x00"
FILE_STORE_OPT_OUT = "MLFLOW_ALLOW_FILE_STORE"  # MLflow's own switch, read as it reads it


def check_name(name: str, what: str = "--name") -> str:
    """A search's name: a name, not a path (it becomes a folder under the storage path)."""
    if not NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"{what} {name!r} is not a search name: use 1 to 100 letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit, without '..' "
                          "(a name, not a path: where it goes is --storage-path)")
    return name


def inside(folder: Path, name: str, what: str = "--name") -> Path:
    """`folder / name`, which must stay inside `folder` (also through a symbolic link)."""
    target = (folder / name).resolve()
    if target.parent != folder.resolve():
        raise ConfigError(f"{what} {name!r}: {folder / name} leads to {target}, outside "
                          f"{folder}; pick another name")
    return target


def writable_folder(path: str | Path, what: str) -> Path:
    """`path`, a folder that exists or can be made: its nearest existing ancestor is a folder
    where a folder can be made (tried, and removed at once: a refused command leaves nothing
    behind)."""
    if not str(path).strip():
        raise ConfigError(f"{what} is empty; give a folder, e.g. ./ray_results")
    folder = Path(path).expanduser().resolve()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {str(path)!r}: {probe} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=probe))
    except OSError as err:
        raise ConfigError(f"{what} {str(path)!r}: nothing can be created in {probe} "
                          f"({err.strerror or err})") from None
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
    scheme = uri.split("://", 1)[0] if "://" in uri else None
    if scheme is not None and scheme.split("+")[0] not in TRACKING_SCHEMES:
        raise ConfigError(f"--mlflow-uri {uri}: unknown scheme {scheme!r}; use http(s)://HOST:"
                          "PORT, sqlite:///PATH.db, or a database URI "
                          "(postgresql://, mysql://, mssql://)")
    store = local_store(uri)
    if store is None:
        return  # databricks://, postgresql://...: MLflow itself reports problems
    if uri.startswith("sqlite:"):
        _check_sqlite(uri, store)
    elif store.is_file():
        raise ConfigError(f"--mlflow-uri {uri}: {store} is a file; a file store is a folder "
                          "(or use sqlite:///PATH.db)")
    else:
        _check_file_store(uri, store)
    folder = store.parent if uri.startswith("sqlite:") else store
    if not must_exist and not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"--mlflow-uri {uri}: folder {folder} does not exist or is not "
                          "writable")
    if must_exist and not store.exists():
        raise ConfigError(f"--mlflow-uri {uri}: there is no MLflow store at {store}")


def _check_file_store(uri: str, store: Path) -> None:
    """MLflow 3.17 refuses its folder store ("maintenance mode") unless its opt-out is set, and
    says so only when the first client is made: after Ray has started, as a traceback."""
    if os.environ.get(FILE_STORE_OPT_OUT, "").lower() in ("true", "1"):
        return
    raise ConfigError(f"--mlflow-uri {uri} is a folder store, which MLflow refuses unless "
                      f"{FILE_STORE_OPT_OUT}=true is set; use a database file instead, e.g. "
                      f"sqlite:///{store.parent / 'mlflow.db'} (`mlflow migrate-filestore` "
                      "moves an existing folder store into one)")


def _check_sqlite(uri: str, store: Path) -> None:
    """A sqlite store is a database file or a file that can be made (not a folder: MLflow
    would retry it with back-off for minutes)."""
    if store.is_dir():
        raise ConfigError(f"--mlflow-uri {uri}: {store} is a folder; give a database file, "
                          f"e.g. sqlite:///{store / 'mlflow.db'}")
    if store.is_file() and store.stat().st_size:
        with store.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise ConfigError(f"--mlflow-uri {uri}: {store} is not a sqlite database; give "
                              "another file name (MLflow creates the database)")


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
