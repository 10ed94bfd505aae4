"""Checks a multi-node Ray cluster must pass before a search starts on it.

- MLflow: on more than one node the tracking store must be a server every node and every user
  can reach (a sqlite/file store is a file on one machine; with a Ray Client driver, Tune's
  callbacks would even run on the head, writing such a file there, not here).
- Storage: trials on every node write checkpoints to --storage-path, so every node must see
  the same folder. A local path is verified: a marker written here must be visible from a
  task pinned to each node (NFS passes, a node's own disk does not).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError

__all__ = ["REMOTE_SCHEMES", "check_cluster", "is_local_tracking", "unseen_by_nodes"]

# --storage-path values that are shared storage already (no local-folder check)
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://", "file://")


def is_local_tracking(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def unseen_by_nodes(folder: str, nodes: list[dict[str, Any]], *, timeout_s: float = 120.0
                    ) -> list[str]:
    """Addresses of the nodes that cannot see a marker file written into `folder` here."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = Path(folder) / f".storage-check-{uuid.uuid4().hex}"
    marker.write_text("written by the search driver\n")

    @ray.remote(num_cpus=0, max_retries=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        probes = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker)) for n in nodes]
        seen = ray.get(probes, timeout=timeout_s)
    finally:
        marker.unlink(missing_ok=True)
    return [f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})"
            for n, ok in zip(nodes, seen, strict=True) if not ok]


def check_cluster(mlflow_uri: str, storage_path: str, *, remote_storage: bool) -> int:
    """Raises ConfigError if a multi-node cluster cannot run this search; returns node count."""
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return len(nodes)
    if is_local_tracking(mlflow_uri):
        raise ConfigError(
            f"--mlflow-uri {mlflow_uri} is a file store on one machine, but the Ray cluster "
            f"has {len(nodes)} nodes: start a tracking server on the head (mlflow server "
            "--host 0.0.0.0 --port 5000 --allowed-hosts ...) and pass --mlflow-uri "
            "http://HEAD:5000 (README: Run on a cluster)")
    if not remote_storage:
        unseen = unseen_by_nodes(storage_path, nodes)
        if unseen:
            raise ConfigError(
                f"--storage-path {storage_path} is a local folder that node(s) "
                f"{', '.join(unseen)} cannot see, but trials there write checkpoints to it: "
                "use shared storage (s3://bucket/path, gs://..., or an NFS folder mounted at "
                "the same path on every node)")
    return len(nodes)
