"""Performance suite (pytest-benchmark). Not part of the default test run:

    pytest benchmarks/ --benchmark-only -s

Every figure is a ratio against a baseline measured in the same run.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ.setdefault("POISONBENCH_CACHE", str(tmp_path_factory.mktemp("poisonbench-cache")))


def report(name: str, **figures: float) -> None:
    """Print one line per benchmark so the numbers can be copied into the README."""
    text = ", ".join(f"{k}={v:.4g}" for k, v in figures.items())
    print(f"\n[{name}] {text}")
