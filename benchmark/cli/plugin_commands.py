"""``bench list``, ``bench show`` and ``bench new``: the plugins there are, their parameters, a new one.

None of them imports torch: plugin modules keep their networks out of their top level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from ..catalog import REGISTRIES
from ..errors import ConfigError, ExitCode
from .commands import add_command

__all__ = ["register", "kind_argument", "parameter_rows"]

#: singular kind -> registry key (``bench show attack noise`` and ``bench show attacks noise`` both work)
_SINGULAR = {registry.kind: key for key, registry in REGISTRIES.items()}


def kind_argument(text: str) -> str:
    """An argparse type: a plugin kind, singular or plural, as its registry key (``attacks``)."""
    key = _SINGULAR.get(text, text)
    if key not in REGISTRIES:
        choices = ", ".join(sorted(_SINGULAR))
        raise argparse.ArgumentTypeError(f"expected a plugin kind ({choices}); got {text[:40]!r}")
    return key


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "list", "list plugins, one line each: kind, name, summary",
                    "  bench list\n  bench list attacks\n  bench list segmenter --pattern '*unet*'")
    p.add_argument("kind", nargs="?", type=kind_argument, help="one kind only (attack, defense, segmenter, dataset)")
    p.add_argument("--pattern", default="*", help="shell-style wildcard on plugin names")
    p.set_defaults(handler=_list)

    s = add_command(sub, "show", "print a plugin's summary and parameters (name, type, default, description)",
                    "  bench show attack gan-synthetic\n  bench show defense mriqc")
    s.add_argument("kind", type=kind_argument, help="attack, defense, segmenter or dataset")
    s.add_argument("name", help="registered name (see bench list)")
    s.set_defaults(handler=_show)

    n = add_command(sub, "new", "write a working plugin and its test, ready to install through an entry point",
                    "  bench new attack my-attack\n  bench new defense my-check --dir src/my_plugins")
    n.add_argument("kind", choices=sorted(_SINGULAR), help="the kind of plugin")
    n.add_argument("name", help="its registered name: lower-case words joined by hyphens (my-attack)")
    n.add_argument("--dir", default=".", help="folder the plugin and its test are written to (default: .)")
    n.set_defaults(handler=_new)


def _list(args: argparse.Namespace) -> int:
    rows = [
        (registry.kind, name, registry.get(name).summary())
        for key, registry in REGISTRIES.items()
        if args.kind in (None, key)
        for name in registry.names(args.pattern)
    ]
    kind_width = max((len(kind) for kind, _, _ in rows), default=0)
    name_width = max((len(name) for _, name, _ in rows), default=0)
    for kind, name, summary in rows:
        print(f"{kind:<{kind_width}}  {name:<{name_width}}  {summary}".rstrip())
    for key, registry in REGISTRIES.items():
        for where, problem in registry.load_errors.items():
            print(f"warning: {registry.kind} plugin {where} failed to load: {problem}", file=sys.stderr)
    return int(ExitCode.OK)


def parameter_rows(params: type) -> list[tuple[str, str, str, str]]:
    """``(name, type, default, description)`` of each field of a plugin's parameter model."""
    rows = []
    for field, info in params.model_fields.items():
        if info.default is PydanticUndefined and info.default_factory is None:
            default = "(required)"
        else:
            default = repr(info.get_default(call_default_factory=True))
        rows.append((field, _type_name(info.annotation), default, info.description or ""))
    return rows


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return annotation.__name__ if isinstance(annotation, type) else text


def _show(args: argparse.Namespace) -> int:
    registry = REGISTRIES[args.kind]
    if args.name not in registry:
        raise ConfigError(registry.unknown_message(args.name))
    cls = registry.get(args.name)
    print(f"{registry.kind} {args.name}: {cls.summary()}")
    print(f"  class: {cls.__module__}.{cls.__qualname__}")
    rows = parameter_rows(cls.Params)
    if not rows:
        print("  no parameters")
        return int(ExitCode.OK)
    header = ("parameter", "type", "default", "description")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  " + "  ".join(f"{row[i]:<{widths[i]}}" for i in range(3)) + f"  {row[3]}".rstrip())
    return int(ExitCode.OK)


def _new(args: argparse.Namespace) -> int:
    from .scaffold import write_scaffold

    scaffold = write_scaffold(args.kind, args.name, Path(args.dir))
    print(f"wrote {scaffold.plugin_path} ({args.kind} '{args.name}', class {scaffold.cls})")
    print(f"wrote {scaffold.test_path}; run it with: python -m pytest {scaffold.test_path}")
    print("install it through an entry point of your package's pyproject.toml (the module as your package imports it):\n")
    print(scaffold.entry_point())
    return int(ExitCode.OK)
