from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from benchmark import (
    ATTACKS,
    Attack,
    ConfigError,
    Defense,
    PluginParams,
    Registry,
    SliceSet,
    create_attack,
    list_attacks,
    list_segmenters,
    register_attack,
)
from benchmark.registry import AUTOLOAD_ENV


class _Base:
    name = ""


def test_register_decorator_and_lookup():
    registry = Registry("widget", _Base, None, "poisonbench.widgets")

    @registry.register("blue-widget")
    class Blue(_Base):
        pass

    assert registry.get("blue-widget") is Blue
    assert Blue.name == "blue-widget"
    assert registry.names("blue-*") == ["blue-widget"]
    assert registry.names("red-*") == []


def test_register_same_name_twice_with_other_target_fails():
    registry = Registry("widget", _Base, None, "poisonbench.widgets")
    registry.add("w", type("A", (_Base,), {}))
    with pytest.raises(ValueError, match="already registered"):
        registry.add("w", type("B", (_Base,), {}))


def test_register_wrong_base_fails():
    registry = Registry("widget", _Base, None, "poisonbench.widgets")
    with pytest.raises(TypeError, match="must subclass _Base"):
        registry.add("x", int)


def test_unknown_name_lists_close_matches():
    @register_attack("gan-synthetic-test")
    class Fake(Attack):
        """A fake."""

    with pytest.raises(ConfigError) as info:
        ATTACKS.get("gan-synthetc-test")
    message = str(info.value)
    assert "Unknown attack 'gan-synthetc-test'" in message
    assert "Did you mean: gan-synthetic-test" in message
    assert "Available:" in message and "none" in message


def test_create_attack_validates_parameters():
    @register_attack("scaled")
    class Scaled(Attack):
        """Scales images."""

        class Params(PluginParams):
            factor: float = 1.0

    assert create_attack("scaled", factor=2).params.factor == 2.0
    with pytest.raises(ConfigError, match="factr: unknown parameter of attack 'scaled'; expected one of: factor"):
        create_attack("scaled", factr=2)
    with pytest.raises(ConfigError, match="factor: "):
        create_attack("scaled", factor="big")


def test_builtin_plugins_are_discovered():
    assert "none" in list_attacks()
    assert {"unet", "basic-unet", "attention-unet", "segresnet"} <= set(list_segmenters())


class EntryPointAttack(Attack):
    """Registered only through an entry point."""

    def poison(self, train: SliceSet, rate: float, rng: np.random.Generator) -> SliceSet:
        return train


def _fake_entry_points(monkeypatch, group_members):
    real = metadata.entry_points

    def entry_points(**kwargs):
        group = kwargs.get("group")
        if group in group_members:
            return group_members[group]
        return real(**kwargs)

    monkeypatch.setattr(metadata, "entry_points", entry_points)


def test_entry_point_plugins_are_loaded_lazily_and_broken_ones_reported(monkeypatch):
    good = metadata.EntryPoint("ep-attack", f"{__name__}:EntryPointAttack", "poisonbench.attacks")
    broken = metadata.EntryPoint("broken-attack", "no_such_module_xyz:Thing", "poisonbench.attacks")
    _fake_entry_points(monkeypatch, {"poisonbench.attacks": [good, broken]})
    registry = Registry("attack", Attack, None, "poisonbench.attacks")
    assert registry.names() == ["ep-attack"]
    assert registry.get("ep-attack") is EntryPointAttack
    assert "broken-attack" in registry.load_errors


def test_autoload_can_be_turned_off(monkeypatch):
    good = metadata.EntryPoint("ep-attack", f"{__name__}:EntryPointAttack", "poisonbench.attacks")
    _fake_entry_points(monkeypatch, {"poisonbench.attacks": [good]})
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry = Registry("attack", Attack, None, "poisonbench.attacks")
    assert registry.names() == []


def test_registry_fixture_isolates_tests_part_one():
    @register_attack("leaky-plugin")
    class Leaky(Attack):
        """Should not survive this test."""

    assert "leaky-plugin" in list_attacks()


def test_registry_fixture_isolates_tests_part_two():
    assert "leaky-plugin" not in list_attacks()


def test_every_registered_defense_subclasses_defense():
    from benchmark import DEFENSES

    for name, cls in DEFENSES.items():
        assert issubclass(cls, Defense), name
