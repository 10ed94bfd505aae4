"""YAML as a space file (or a `--set` value) may hold it: bounded before it is built.

PyYAML's safe loader runs no code, but it still builds whatever a file describes: an alias
repeated inside aliases ("billion laughs") expands to millions of nodes once the space is
copied or printed, deep nesting overflows its recursive composer, and a key given twice
silently keeps the last value. Here the text must be UTF-8, its events are scanned for depth
and count before anything is built (the scan is iterative), duplicate keys are refused, and
the built value is measured with every alias expanded.
"""

from __future__ import annotations

from typing import Any

import yaml

from spaces._space import SpaceError

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "load_yaml"]

MAX_YAML_BYTES = 1_000_000  # the largest shipped space is about 5 kB
MAX_YAML_DEPTH = 32  # nested mappings/lists (a space nests 4 deep)
MAX_YAML_NODES = 100_000  # values once every alias is expanded


class _DuplicateKeyError(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == \
                    "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKeyError(f"key {key!r} appears twice (lines {seen[key]} and "
                                    f"{line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(source: str | bytes, what: str) -> Any:
    """The value `source` describes; SpaceError (one line, naming `what`) if it is not UTF-8,
    not YAML, nests deeper than MAX_YAML_DEPTH, expands to more than MAX_YAML_NODES values
    or gives a key twice."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SpaceError(f"{what} is not UTF-8 text (byte 0x{source[err.start]:02x} at "
                             f"offset {err.start}); save it as UTF-8") from None
    try:
        _scan(source, what)
        value = yaml.load(source, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceError(f"{what} is not valid YAML{at}: {problem}") from None
    except _DuplicateKeyError as err:
        raise SpaceError(f"{what}: {err}") from None
    _measure(value, what)
    return value


def _scan(text: str, what: str) -> None:
    """Depth and event count, from the parser's events (nothing built yet)."""
    depth = 0
    for events, event in enumerate(yaml.parse(text, Loader=yaml.SafeLoader), start=1):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise SpaceError(f"{what} nests deeper than {MAX_YAML_DEPTH} levels (at line "
                                 f"{event.start_mark.line + 1}); a space nests 4 deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if events > MAX_YAML_NODES:
            raise SpaceError(f"{what} holds more than {MAX_YAML_NODES:,} values")


def _measure(root: Any, what: str) -> None:
    """Size and depth with every alias expanded (an alias is the same Python object as its
    anchor, so each distinct container is measured once), without recursion."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (values below it, depth)
    stack: list[tuple[Any, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (dict, list)) or (id(node) in sizes and not done):
            continue
        items = list(node.values()) if isinstance(node, dict) else node
        if not done:
            if id(node) in open_:
                raise SpaceError(f"{what} refers to itself through an alias")
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((item, False) for item in items)
            continue
        open_.discard(id(node))
        below = [sizes.get(id(item), (1, 0)) for item in items]
        size = 1 + sum(s for s, _ in below)
        depth = 1 + max((d for _, d in below), default=0)
        if size > MAX_YAML_NODES:
            raise SpaceError(f"{what} expands to more than {MAX_YAML_NODES:,} values (aliases "
                             "of aliases); write the values out or use fewer aliases")
        if depth > MAX_YAML_DEPTH:
            raise SpaceError(f"{what} nests deeper than {MAX_YAML_DEPTH} levels once its "
                             "aliases are expanded")
        sizes[id(node)] = (size, depth)
