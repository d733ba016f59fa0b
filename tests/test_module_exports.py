"""Module interfaces say what they offer: ``__all__`` lists each public definition, and no helper is dead."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
#: modules whose every public function and class is offered to other modules (plugins or readers)
MODULES = ["benchmark.plugins", "benchmark.datasets._volumes"]


def public_definitions(module) -> set[str]:
    """Public functions and classes defined in ``module`` itself (not imported into it)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    }


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_every_public_definition(name):
    module = importlib.import_module(name)
    assert all(hasattr(module, entry) for entry in module.__all__), [e for e in module.__all__ if not hasattr(module, e)]
    assert public_definitions(module) <= set(module.__all__), sorted(public_definitions(module) - set(module.__all__))


def referenced_names(path: Path) -> set[str]:
    """Identifiers a Python file uses (names, attributes, imported names), not strings or its own definitions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.name.split(".")[-1])
    return names


def test_volume_helpers_are_used():
    """A reader helper that nothing calls is dead code (the old head z-scoring lived on as one)."""
    module = importlib.import_module("benchmark.datasets._volumes")
    used: set[str] = set()
    for folder in ("benchmark", "attacks", "defenses", "baselines", "leaderboard"):
        for path in (PACKAGE / folder).rglob("*.py"):
            used |= referenced_names(path)
    unused = sorted(public_definitions(module) - used)
    assert not unused, f"defined in {module.__name__} but never used: {unused}"
