"""MLflow writes that survive a tracking-server outage: nothing is lost, nothing waits.

The search keeps training while the server is away. Each write is a plain-data event, applied
at once when the server answers; when it does not, the event goes to a journal (in memory and
appended to a JSON-lines file beside the search's results) and every later event queues
behind it, in order. The journal is retried at most every `retry_every_s` seconds, without
blocking the trials, and emptied when the server is back. At the end of the search the driver
waits a bounded time for it (`--tracking-outage`); a journal still not empty then stays on disk
and `--resume` logs it before anything else. Events are idempotent (runs are found by their
trial id, tags and params are overwritten with the same values, metrics keep their original
timestamp and step), so replaying a journal that was partly applied before a crash is safe.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from trainables.errors import DefenseSearchError

__all__ = ["Journal", "TrackingOutageError", "client_writes", "quick_failures", "server_answers"]

Event = dict[str, Any]

# what a write to an unreachable server costs before it counts as an outage (MLflow's defaults,
# 7 retries with exponential backoff and 120 s timeouts, stalled searches for minutes)
QUICK_FAILURES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingOutageError(DefenseSearchError):
    """The tracking server stayed away longer than the search waits for it; what it has not
    received is kept in a journal that `--resume` logs."""

    exit_code = 3


def quick_failures() -> None:
    """MLflow's HTTP retries bounded to seconds (a user's own settings win)."""
    for key, value in QUICK_FAILURES.items():
        os.environ.setdefault(key, value)


def server_answers(uri: str, timeout_s: float = 3.0) -> bool:
    """Whether the tracking server at `uri` answers its health check (local stores: always)."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Journal:
    """Applies events in order through `apply`; queues them (and persists them to `path`)
    while the server at `uri` does not answer."""

    def __init__(self, uri: str, path: str | Path, apply: Callable[[Event], None], *,
                 retry_every_s: float = 10.0, log: Callable[[str], None] = print) -> None:
        self.uri, self.path, self.apply = uri, Path(path), apply
        self.retry_every_s, self.log = retry_every_s, log
        self.pending: deque[Event] = deque(self._read())
        self._next_try = 0.0
        self._since: float | None = None

    def _read(self) -> list[Event]:
        if not self.path.is_file():
            return []
        events = []
        for line in self.path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash while it was written: not applied yet
        return events

    def _persist(self) -> None:
        if not self.pending:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e, default=str) + "\n" for e in self.pending))
        tmp.replace(self.path)

    def submit(self, event: Event) -> None:
        """Applies `event` now, or after the events queued before it."""
        if not self.pending:
            try:
                self.apply(event)
                return
            except MlflowException:
                if server_answers(self.uri):
                    raise  # the server is there and refused the write: a real error
                self._outage_started()
        self.pending.append(event)
        with self.path.open("a") as journal:
            journal.write(json.dumps(event, default=str) + "\n")
        self.flush()

    def _outage_started(self) -> None:
        if self._since is None:
            self._since = time.monotonic()
            self.log(f"MLflow at {self.uri} does not answer: the search goes on and keeps what "
                     f"it logs in {self.path} until the server is back")
        self._next_try = time.monotonic() + self.retry_every_s

    def flush(self, *, force: bool = False) -> bool:
        """Applies queued events while the server answers (at most every `retry_every_s`
        unless `force`); True when none is left."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        if not server_answers(self.uri):
            self._outage_started()
            return False
        applied = 0
        try:
            while self.pending:
                self.apply(self.pending[0])
                self.pending.popleft()
                applied += 1
        except MlflowException:
            if server_answers(self.uri):
                raise
            self._outage_started()
        finally:
            if applied:
                self._persist()
        if not self.pending:
            away = f" after {time.monotonic() - self._since:.0f}s" if self._since else ""
            self.log(f"MLflow at {self.uri} is back{away}: {applied} queued write(s) logged")
            self._since = None
        return not self.pending

    def drain(self, bound_s: float) -> bool:
        """Waits up to `bound_s` seconds for the server to take every queued event."""
        deadline = time.monotonic() + bound_s
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self.retry_every_s, max(0.1, deadline - time.monotonic())))
        return True


def client_writes(client: Any) -> Callable[[Event], None]:
    """Applies plain writes to runs (`run`): metrics at step 0 (`metrics`), a tag (`tag`:
    key, value), a text artifact (`text`: text, file), a file kept on disk (`file`: path,
    folder). Each is idempotent, so a journal of
    them can be replayed."""
    from mlflow.entities import Metric

    def apply(event: Event) -> None:
        kind, run = event["kind"], event["run"]
        if kind == "metrics":
            client.log_batch(run, metrics=[Metric(k, float(v), 0, 0)
                                           for k, v in sorted(event["metrics"].items())])
        elif kind == "tag":
            client.set_tag(run, event["key"], event["value"])
        elif kind == "text":
            client.log_text(run, event["text"], event["file"])
        elif kind == "file":
            client.log_artifact(run, event["path"], event["folder"])
        else:
            raise ValueError(f"unknown journal event kind {kind!r}")

    return apply
