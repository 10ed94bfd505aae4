"""The layout rules: dependencies point one way (search -> spaces -> trainables) and no module
imports itself back through others, counting the imports made inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainables", "spaces", "search")  # each imports only those listed before it


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges[name].update(t for t in targets if t in modules and t != name)
    return edges


def test_dependencies_point_one_way() -> None:
    order = {package: rank for rank, package in enumerate(PACKAGES)}
    wrong = [f"{source} -> {target}" for source, targets in _imports(_modules()).items()
             for target in targets
             if order[target.split(".")[0]] > order[source.split(".")[0]]]
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    edges = _imports(_modules())
    cycles = []
    for start in edges:
        stack = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for target in edges[node]:
                if target == start:
                    cycles.append(" -> ".join((*path, start)))
                elif target not in path:
                    stack.append((target, (*path, target)))
    assert not cycles, cycles[:5]


# The rooms of trainables/ and which other rooms each may import (the top-level modules:
# config, vocab, errors, registry, runtime, files and provenance are the floor every room
# stands on; train.py, the trial's story, may import every room)
ROOMS = {"attacks": set(), "defense": set(), "setting": {"attacks", "defense"},
         "scoring": {"attacks", "defense", "setting"}}
FLOOR = {"trainables.config", "trainables.vocab", "trainables.errors", "trainables.registry",
         "trainables.runtime", "trainables.files", "trainables.provenance"}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "trainables" and len(parts) > 1 and parts[1] in ROOMS \
        else None


def test_rooms_of_trainables_import_one_way() -> None:
    wrong = []
    for source, targets in _imports(_modules()).items():
        if not source.startswith("trainables."):
            continue
        room = _room(source)
        for target in targets:
            if not target.startswith("trainables"):
                continue
            if source in FLOOR and target not in FLOOR:
                wrong.append(f"{source} -> {target} (the floor imports no room)")
            elif room is not None and target not in FLOOR and _room(target) not in (
                    room, *ROOMS[room]):
                wrong.append(f"{source} -> {target}")
    assert not wrong, wrong
