"""Where the MLflow UI opens on a search: a saved view of its trials, and the link to it.

What MLflow 3.17's UI opens first (read in its bundle, mlflow/server/js/build; checked in
headless Chromium by tests/search_tests/test_mlflow_ui.py):
- `#/experiments/<id>` redirects to a tab chosen by the sidebar's GenAI / Model-training
  switch, a browser setting: the URL parameter `workflowType`, else the browser's
  localStorage key `mlflow.workflowType`, else `genai`, which opens the GenAI Overview
  (Traces without it). The experiment tag `mlflow.experimentKind` is not read for this in
  the open-source build, and nothing on the server (tag, setting, flag) can change it.
- The runs page takes its filter and sort from the URL (`searchFilter`, `orderByKey`,
  `orderByAsc`), but its columns only from a saved view: the experiment tag
  `mlflow.sharedViewState.<key>` holding `{name, createdAt, updatedAt, state}` (state: the
  JSON of filter, sort and column layout), opened by `?viewStateShareKey=<key>` and listed
  in the page's Views menu.
So each search saves one view (its trials only, best objective first, the columns that say
what the search was for) and prints the link that opens it.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from typing import Any

from search.vocab import OBJECTIVE, TAG, final_key
from trainables.vocab import CLEAN_ACC, Group, Split, Stat, group_metric

__all__ = ["VIEW_TAG_PREFIX", "publish_view", "runs_url", "ui_base", "view_columns",
           "view_key", "view_state"]

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
SHARE_PARAM = "viewStateShareKey"
MACHINE_LEARNING = {"workflowType": "machine_learning"}  # the Model-training side of the UI
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default


def view_key(search: str) -> str:
    """The view's key: a tag-key and URL-safe spelling of the search's name."""
    return "search-" + re.sub(r"[^A-Za-z0-9_-]", "_", search)


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # how the runs table names a column


def view_columns(objective: str) -> list[str]:
    """The objective Tune optimised, then the space's own objective, held-out mean, union and
    family mean, the sealed mean of the final comparison (where it ran), clean accuracy,
    the masking flags and the trial's status."""
    metrics = [OBJECTIVE, objective,
               *(group_metric(Split.VAL, Group.HELDOUT, s)
                 for s in (Stat.MEAN, Stat.UNION, Stat.FAMILY_MEAN)),
               final_key(group_metric(Split.TEST, Group.SEALED, Stat.MEAN)), CLEAN_ACC]
    return ([_column("metrics", m) for m in dict.fromkeys(metrics)]
            + [_column("tags", TAG.MASKING_FLAGS), _column("tags", TAG.STATUS)])


def view_state(parent_id: str, objective: str, *, ascending: bool) -> dict[str, Any]:
    """The runs page's state: the parent's children only, sorted by `val/objective`."""
    columns = view_columns(objective)
    return {"searchFilter": f"tags.`{TAG.PARENT}` = '{parent_id}'",
            "orderByKey": _column("metrics", OBJECTIVE), "orderByAsc": ascending,
            "selectedColumns": columns, "columnOrder": columns}


def publish_view(client: Any, experiment_id: str, *, search: str, parent_id: str,
                 objective: str, ascending: bool) -> str:
    """Saves (or replaces) the search's view on its experiment; its key."""
    key, now = view_key(search), int(time.time() * 1000)
    envelope = {"name": f"search {search}", "createdAt": now, "updatedAt": now,
                "state": json.dumps(view_state(parent_id, objective, ascending=ascending))}
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(envelope))
    return key


def ui_base(tracking_uri: str) -> str:
    """Where the UI of `tracking_uri` is served: the server itself, or `mlflow ui`'s default
    address for a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_UI


def runs_url(tracking_uri: str, experiment_id: str, key: str) -> str:
    """The link that opens the experiment's runs page on the saved view `key`."""
    query = urllib.parse.urlencode({**MACHINE_LEARNING, SHARE_PARAM: key})
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{query}"
