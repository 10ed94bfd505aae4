"""House rules read off the source: short functions, one typed trial record, and every metric
key spelled in a vocabulary module only (issue: "one record, one name per concept")."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainables", "search", "spaces")
MAX_FUNCTION_LINES = 60
VOCABULARIES = {Path("trainables/vocab.py"), Path("search/vocab.py")}
RECORD_MODULE = Path("spaces/record.py")
RECORD_FIELDS = {"config", "params", "baseline", "fidelity"}
# what a metric key (or a namespace of them) starts with
METRIC_KEY = re.compile(r"^(val|test|train|time|masking|fidelity|trial|trials|final|best|points|"
                        r"failure)/")


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path.relative_to(REPO), ast.parse(path.read_text())


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the constant nodes that are docstrings (not code)."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            out.add(id(body[0].value))
    return out


def test_no_function_is_longer_than_a_screen() -> None:
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in _sources() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno is not None
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def _record_reads(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """`record["config"]`, `x.config[RECORD_KEY].get("baseline")`: a record read by string."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            target, key = node.value, node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "get" and node.args \
                and isinstance(node.args[0], ast.Constant):
            target, key = node.func.value, node.args[0].value
        else:
            continue
        if key in RECORD_FIELDS and re.search(r"record|RECORD_KEY", ast.unparse(target)):
            yield node.lineno, ast.unparse(node)


def test_the_trial_record_is_read_by_attribute_only() -> None:
    """The record is a TrialRecord; its plain form (a dict) exists in spaces/record.py only,
    so no other module reads a record's fields by string."""
    found = [f"{path}:{line} {text}" for path, tree in _sources() if path != RECORD_MODULE
             for line, text in _record_reads(tree)]
    assert not found, found


def test_metric_keys_are_spelled_in_a_vocabulary_only() -> None:
    found = []
    for path, tree in _sources():
        if path in VOCABULARIES:
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs:
                text = node.value
            elif isinstance(node, ast.JoinedStr) and node.values \
                    and isinstance(node.values[0], ast.Constant):
                text = str(node.values[0].value)
            if text is not None and METRIC_KEY.match(text):
                found.append(f"{path}:{node.lineno} {text!r}")
    # f-string parts are visited twice (the JoinedStr and its first Constant)
    assert not sorted(set(found)), sorted(set(found))
