"""Shared fixtures: an isolated artifact cache, registries reset per test, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from benchmark.catalog import REGISTRIES

from tiny_sweep import TINY_CONFIG  # a module of its own: several files are named conftest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("poisonbench-cache")
    os.environ["POISONBENCH_CACHE"] = str(path)
    return path


@pytest.fixture(autouse=True)
def _reset_registries():
    """Each test sees the registries as discovery left them, whatever earlier tests added."""
    for registry in REGISTRIES.values():
        registry.discover()
    states = {kind: registry.snapshot() for kind, registry in REGISTRIES.items()}
    yield
    for kind, registry in REGISTRIES.items():
        registry.restore(states[kind])


@pytest.fixture
def tiny_config() -> dict:
    import copy

    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config mapping to a YAML file and return its path."""

    def write(data: dict, name: str = "bench.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
