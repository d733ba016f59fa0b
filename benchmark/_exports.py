"""Names a namespace offers, each imported from its module on first use (PEP 562).

A namespace (`benchmark`, `benchmark.sdk`, `benchmark.tools`) lists its names once, with
the module that defines each; nothing is imported until a name is asked for, so importing
the namespace costs nothing and a command that needs no network never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` serving ``exports``.

    Args:
        package: the package relative module names are resolved in (``benchmark``).
        exports: public name -> module defining it, relative (``.plugins``) or absolute.

    Returns:
        ``(__getattr__, __dir__)`` for the namespace module.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
