"""Contracts every registered plugin keeps, parametrised from the registries."""

from __future__ import annotations

import pytest

from benchmark import Attack, DatasetSource, Defense, Segmenter
from benchmark.catalog import REGISTRIES
from benchmark.cli import main

ALL = [(kind, name) for kind, registry in REGISTRIES.items() for name in registry.names()]
BASES = {"attacks": Attack, "defenses": Defense, "segmenters": Segmenter, "datasets": DatasetSource}
NEEDS_ROOT = {"brats", "decathlon", "nnunet"}  # real-data readers have no default folder


@pytest.mark.parametrize("kind, name", ALL)
def test_plugin_declares_documented_parameters(kind, name):
    cls = REGISTRIES[kind].get(name)
    assert issubclass(cls, BASES[kind])
    assert cls.summary(), f"{kind} '{name}' needs a one-line docstring summary"
    for field, info in cls.Params.model_fields.items():
        assert info.description, f"{kind} '{name}': parameter '{field}' has no description"


@pytest.mark.parametrize("kind, name", [(k, n) for k, n in ALL if n not in NEEDS_ROOT])
def test_plugin_builds_with_defaults(kind, name):
    plugin = REGISTRIES[kind].get(name)()
    assert plugin.params == plugin.Params()


def test_no_plugin_module_failed_to_load():
    for kind, registry in REGISTRIES.items():
        registry.discover()
        assert registry.load_errors == {}, f"{kind}: {registry.load_errors}"


def test_bench_list_prints_every_plugin(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for _, name in ALL:
        assert name in printed


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_bench_list_one_kind_with_pattern(kind, capsys):
    names = REGISTRIES[kind].names()
    pattern = names[0][:2] + "*"
    assert main(["list", kind, "--pattern", pattern]) == 0
    printed = capsys.readouterr().out
    matching = REGISTRIES[kind].names(pattern)
    assert names[0] in matching
    for name in matching:
        assert name in printed
    for name in set(names) - set(matching):
        if not any(name in other for other in matching):  # skip names contained in a shown one
            assert name not in printed
