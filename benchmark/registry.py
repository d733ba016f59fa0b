"""One generic plugin registry per kind, with built-in and entry-point discovery.

Plugins register with a decorator::

    from benchmark import register_attack, Attack

    @register_attack("my-attack")
    class MyAttack(Attack): ...

Built-in plugins live in the top-level packages ``attacks``, ``defenses`` and
``baselines``; third-party ones are found through the entry-point groups
``poisonbench.<kind>``. Discovery is lazy (on first lookup) and a plugin that fails to
import is reported, not fatal. ``POISONBENCH_NO_PLUGIN_AUTOLOAD=1`` turns entry-point
loading off.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import logging
import os
import pkgutil
from importlib import metadata
from typing import Callable, Generic, TypeVar

from .errors import ConfigError

__all__ = ["Registry", "AUTOLOAD_ENV"]

logger = logging.getLogger(__name__)

AUTOLOAD_ENV = "POISONBENCH_NO_PLUGIN_AUTOLOAD"

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Maps plugin names to classes of one kind.

    Args:
        kind: singular name of the kind, used in messages (``attack``).
        base: every registered class must subclass it.
        builtin_package: top-level package whose modules hold the built-in plugins.
        entry_point_group: entry-point group of third-party plugins.
        builtin_modules: further modules of the harness that register plugins of this
            kind (the identity plugins), imported first on discovery. Defaults to none.
    """

    def __init__(
        self, kind: str, base: type, builtin_package: str | None, entry_point_group: str, builtin_modules: tuple[str, ...] = ()
    ):
        self.kind = kind
        self.base = base
        self.builtin_package = builtin_package
        self.builtin_modules = tuple(builtin_modules)
        self.entry_point_group = entry_point_group
        self._classes: dict[str, type] = {}
        self._discovered = False
        self.load_errors: dict[str, str] = {}

    # -- registration -------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class under ``name``."""

        def decorator(cls: T) -> T:
            self.add(name, cls)
            return cls

        return decorator

    def add(self, name: str, cls: type) -> None:
        if not isinstance(cls, type) or not issubclass(cls, self.base):
            raise TypeError(f"Cannot register {cls!r} as {self.kind} '{name}': it must subclass {self.base.__name__}.")
        existing = self._classes.get(name)
        if existing is not None and existing is not cls and _qualname(existing) != _qualname(cls):
            raise ValueError(
                f"{self.kind} '{name}' is already registered to {_qualname(existing)}; cannot register {_qualname(cls)}."
            )
        cls.name = name
        self._classes[name] = cls

    def remove(self, name: str) -> None:
        self._classes.pop(name, None)

    # -- lookup ---------------------------------------------------------------------
    def get(self, name: str) -> type:
        """Class registered as ``name``; a ConfigError listing close matches otherwise."""
        self.discover()
        try:
            return self._classes[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        names = sorted(self._classes)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"Unknown {self.kind} '{name}'.{hint} Available: {', '.join(names) or 'none'}."

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style wildcard pattern."""
        self.discover()
        return sorted(n for n in self._classes if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._classes

    def items(self) -> list[tuple[str, type]]:
        self.discover()
        return sorted(self._classes.items())

    # -- discovery ----------------------------------------------------------------
    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for module in self.builtin_modules:
            importlib.import_module(module)
        if self.builtin_package:
            self._import_builtin(self.builtin_package)
        if os.environ.get(AUTOLOAD_ENV, "").strip() not in ("1", "true", "yes"):
            self._load_entry_points()

    def _import_builtin(self, package_name: str) -> None:
        try:
            package = importlib.import_module(package_name)
        except ImportError as exc:
            self.load_errors[package_name] = str(exc)
            logger.warning("could not import built-in %s package %s: %s", self.kind, package_name, exc)
            return
        for module in pkgutil.iter_modules(package.__path__, prefix=package_name + "."):
            if module.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # one broken plugin must not break start-up
                self.load_errors[module.name] = f"{type(exc).__name__}: {exc}"
                logger.warning("could not import %s plugin module %s: %s", self.kind, module.name, exc)

    def _load_entry_points(self) -> None:
        for entry_point in metadata.entry_points(group=self.entry_point_group):
            try:
                target = entry_point.load()
            except Exception as exc:
                self.load_errors[entry_point.name] = f"{type(exc).__name__}: {exc}"
                logger.warning("could not load %s plugin '%s': %s", self.kind, entry_point.name, exc)
                continue
            if isinstance(target, type) and issubclass(target, self.base) and entry_point.name not in self._classes:
                self.add(entry_point.name, target)

    def snapshot(self) -> tuple[dict[str, type], bool]:
        """State to restore later (tests use it to keep registries isolated)."""
        return dict(self._classes), self._discovered

    def restore(self, state: tuple[dict[str, type], bool]) -> None:
        self._classes, self._discovered = dict(state[0]), state[1]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
