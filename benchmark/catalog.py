"""The four plugin registries and their front doors (``create_attack``, ``list_attacks``...)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .errors import ConfigError
from .plugins import Attack, DatasetSource, Defense, Plugin, Segmenter
from .registry import Registry
from .validation import validation_messages

__all__ = [
    "ATTACKS",
    "DEFENSES",
    "SEGMENTERS",
    "DATASETS",
    "REGISTRIES",
    "register_attack",
    "register_defense",
    "register_segmenter",
    "register_dataset",
    "create_plugin",
    "create_attack",
    "create_defense",
    "create_segmenter",
    "create_dataset",
    "list_attacks",
    "list_defenses",
    "list_segmenters",
    "list_datasets",
]

#: the identity attack and defense (``none``) register themselves in this module of the harness
_IDENTITY = ("benchmark.identity",)

ATTACKS: Registry = Registry("attack", Attack, "attacks", "poisonbench.attacks", _IDENTITY)
DEFENSES: Registry = Registry("defense", Defense, "defenses", "poisonbench.defenses", _IDENTITY)
SEGMENTERS: Registry = Registry("segmenter", Segmenter, "baselines", "poisonbench.segmenters")
DATASETS: Registry = Registry("dataset", DatasetSource, "benchmark.datasets", "poisonbench.datasets")

REGISTRIES: dict[str, Registry] = {"attacks": ATTACKS, "defenses": DEFENSES, "segmenters": SEGMENTERS, "datasets": DATASETS}

register_attack = ATTACKS.register
register_defense = DEFENSES.register
register_segmenter = SEGMENTERS.register
register_dataset = DATASETS.register


def create_plugin(registry: Registry, name: str, params: dict[str, Any] | None = None, where: str = "") -> Plugin:
    """Instantiate a registered plugin with validated parameters.

    Args:
        registry: the kind's registry.
        name: registered name.
        params: keyword parameters for the plugin's ``Params`` model.
        where: key path used to prefix error messages (``attacks[0]``).

    Raises:
        ConfigError: unknown name or invalid parameters, one message per problem.
    """
    if name not in registry:
        raise ConfigError(f"{where + '.name: ' if where else ''}{registry.unknown_message(name)}")
    cls = registry.get(name)
    try:
        return cls(**(params or {}))
    except ValidationError as exc:
        raise ConfigError(validation_messages(exc, where, cls.Params, owner=f"{registry.kind} '{name}'")) from None


def create_attack(name: str, **params: Any) -> Attack:
    return create_plugin(ATTACKS, name, params)  # type: ignore[return-value]


def create_defense(name: str, **params: Any) -> Defense:
    return create_plugin(DEFENSES, name, params)  # type: ignore[return-value]


def create_segmenter(name: str, **params: Any) -> Segmenter:
    return create_plugin(SEGMENTERS, name, params)  # type: ignore[return-value]


def create_dataset(name: str, **params: Any) -> DatasetSource:
    return create_plugin(DATASETS, name, params)  # type: ignore[return-value]


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.names(pattern)


def list_segmenters(pattern: str = "*") -> list[str]:
    return SEGMENTERS.names(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)
