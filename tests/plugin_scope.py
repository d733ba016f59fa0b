"""Which registered plugins a test should cover: those a user could name, not test doubles."""

from __future__ import annotations

import inspect
from pathlib import Path

from benchmark.catalog import REGISTRIES

TESTS = Path(__file__).resolve().parent


def is_test_double(kind: str, name: str) -> bool:
    """A plugin defined by a module of this test suite (registered while tests were collected)."""
    source = inspect.getsourcefile(REGISTRIES[kind].get(name))
    return source is not None and Path(source).resolve().is_relative_to(TESTS)


def user_plugin_names(kind: str) -> list[str]:
    """Every plugin of ``kind`` a user could name: shipped, from entry points or a user's module."""
    return [name for name in REGISTRIES[kind].names() if not is_test_double(kind, name)]
