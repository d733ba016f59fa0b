"""Where the harness keeps files of its own: the root of the artifact cache, and file names made safe.

A leaf module (it imports nothing of the harness), so that the array helpers of
`benchmark.spill` and the artifact cache of `benchmark.cache` both find the folder
without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root", "safe_file_name"]

CACHE_ENV = "POISONBENCH_CACHE"


def cache_root() -> Path:
    """``$POISONBENCH_CACHE``, else ``$XDG_CACHE_HOME/poisonbench``, else ``~/.cache/poisonbench``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "poisonbench"


def safe_file_name(name: str) -> str:
    """``name`` as one file name: letters, digits, ``-``, ``_`` and ``.`` kept, anything else ``_``.

    Every file named after a case or a plugin (a prediction ``<case>.nii.gz``, an export's
    ``<case>_0000.nii.gz``, an attack's ``<attack>-examples.png``) goes through this one
    function, so whoever looks a file up (``bench export --mlflow``) finds what was written.

    Args:
        name: a case id or plugin name.

    Returns:
        The name without path separators or a leading dot (never hidden); ``case`` when nothing is left.
    """
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).lstrip(".") or "case"
