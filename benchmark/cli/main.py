"""``bench``: run sweeps, validate configs, list, show and create plugins, report results, inspect data.

Exit codes: 0 all cells finished, 1 some cell failed, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from rich.console import Console

from ..errors import BenchError, ExitCode
from . import commands, data_commands, plugin_commands

__all__ = ["main", "build_parser", "COMMAND_GROUP"]

COMMAND_GROUP = "poisonbench.commands"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 itself; keep our format
        self.print_usage(sys.stderr)
        raise BenchError(f"{self.prog}: {message}")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``bench`` parser; add-on commands are loaded unless ``argv`` names a core command."""
    parser = _Parser(prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for register in [*commands.COMMANDS, plugin_commands.register, data_commands.register]:
        register(sub)
    command = next((arg for arg in argv or [] if not arg.startswith("-")), None)
    if command not in sub.choices:  # scanning installed packages costs more than a resumed sweep
        for register in _plugin_commands():
            register(sub)
    return parser


def _plugin_commands() -> list:
    """Subcommands contributed by other packages (``leaderboard``...) via ``poisonbench.commands``."""
    from importlib import metadata

    registers = []
    for entry_point in sorted(metadata.entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name):
        try:
            registers.append(entry_point.load())
        except Exception as exc:  # a broken add-on must not break the core commands
            logging.getLogger(__name__).warning("could not load bench command '%s': %s", entry_point.name, exc)
    return registers


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bench`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    err = Console(stderr=True)
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args.handler(args))
    except BenchError as exc:
        if debug:
            err.print_exception()
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except OSError as exc:  # a path given on the command line that cannot be read or written
        if debug:
            err.print_exception()
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return int(ExitCode.USAGE_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted; finished cells are stored, run again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
