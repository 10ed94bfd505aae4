"""Per-trial resource requests checked against what the cluster offers, before any trial is
queued: Ray would otherwise keep a request no node can meet pending forever, in silence.

On this machine (no --address) the check runs before Ray starts, against what Ray will find
here; on a running cluster, against its live nodes and, where an autoscaler can add nodes (the
head of a `ray up` cluster keeps its config at ~/ray_bootstrap_config.yaml), its node types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from trainables.errors import ConfigError

__all__ = ["AUTOSCALER_CONFIG", "check_request", "local_offer", "node_types_of", "ray_request"]

AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml")  # where `ray up` puts it on the head
FLAGS = {"CPU": "--cpus-per-trial", "GPU": "--gpus-per-trial"}


def ray_request(resources: Mapping[str, float]) -> dict[str, float]:
    """Tune's per-trial resources ({cpu, gpu, custom}) in Ray's names (CPU, GPU, custom)."""
    return {{"cpu": "CPU", "gpu": "GPU"}.get(k, k): v for k, v in resources.items() if v}


def local_offer() -> dict[str, float]:
    """What a Ray started on this machine offers: its CPUs and GPUs as Ray counts them."""
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.utils import get_num_cpus

    manager = get_accelerator_manager_for_resource("GPU")
    gpus = manager.get_current_node_num_accelerators() if manager is not None else 0
    return {"CPU": float(get_num_cpus()), "GPU": float(gpus)}


def node_types_of(path: Path = AUTOSCALER_CONFIG) -> dict[str, dict[str, float]]:
    """The worker node types an autoscaler may start ({} without an autoscaler config)."""
    path = path.expanduser()
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    types = config.get("available_node_types") or {}
    return {name: {k: float(v) for k, v in (spec.get("resources") or {}).items()}
            for name, spec in types.items()
            if isinstance(spec, dict) and int(spec.get("max_workers", 0) or 0) > 0}


def _fits(request: Mapping[str, float], offer: Mapping[str, float]) -> bool:
    return all(offer.get(name, 0.0) >= amount for name, amount in request.items())


def _describe(request: Mapping[str, float]) -> str:
    return ", ".join(f"{FLAGS[k]} {v:g}" if k in FLAGS else f"--trial-resource {k}={v:g}"
                     for k, v in request.items())


def check_request(request: Mapping[str, float], nodes: Sequence[Mapping[str, float]], *,
                  node_types: Mapping[str, Mapping[str, float]] | None = None,
                  where: str = "this machine") -> str | None:
    """Raises ConfigError when no node, live or (with an autoscaler) startable, can run one
    trial; returns a note when only node types the autoscaler has not started yet can."""
    if any(_fits(request, node) for node in nodes):
        return None
    startable = [name for name, offer in (node_types or {}).items() if _fits(request, offer)]
    if startable:
        return (f"no node offers {_describe(request)} yet: the autoscaler can start "
                f"{' or '.join(startable)} nodes for it")
    # name what no node has enough of (or the whole request, when only the mix is missing)
    lacking = {k: v for k, v in request.items() if not any(n.get(k, 0.0) >= v for n in nodes)}
    offers = "; ".join(sorted({", ".join(f"{k} {v:g}" for k, v in sorted(node.items())
                                         if k in ("CPU", "GPU") or k in request)
                               for node in nodes})) or "no node"
    types = ("; its autoscaler's node types offer: " + "; ".join(
        f"{n} ({', '.join(f'{k} {v:g}' for k, v in o.items())})" for n, o in node_types.items())
        if node_types else "")
    raise ConfigError(f"a trial asks for {_describe(lacking or request)}, which no node can give "
                      f"({where} offers: {offers}{types}); ask for less, or add nodes that "
                      "offer it")
