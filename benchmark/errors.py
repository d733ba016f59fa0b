"""Project errors and the command-line exit codes they map to."""

from __future__ import annotations

import enum

__all__ = ["ExitCode", "BenchError", "ConfigError", "DataError", "DataNotFoundError", "PluginError"]


class ExitCode(enum.IntEnum):
    """Exit status of ``bench``: the contract scripts rely on."""

    OK = 0
    CELL_FAILED = 1
    USAGE_ERROR = 2


class BenchError(Exception):
    """Base class of every error the harness raises on purpose.

    ``main`` turns it into ``error: <message>`` on stderr and its ``exit_code``.
    """

    exit_code: ExitCode = ExitCode.USAGE_ERROR


class ConfigError(BenchError):
    """A configuration problem found before any work starts.

    Args:
        problems: one message per problem, each prefixed by its key path.
    """

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = head + self.problems[0]
        else:
            message = head + f"{len(self.problems)} problems:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


class DataError(BenchError):
    """Unusable input data; the message names the file or case and what was expected."""


class DataNotFoundError(DataError):
    """The data set's folder is not there: a run cannot start, but its config still validates."""


class PluginError(BenchError):
    """A plugin broke its contract (wrong shape, NaN, missing method); names the plugin."""

    exit_code = ExitCode.CELL_FAILED
