"""Where the harness keeps files of its own: the root of the artifact cache.

A leaf module (it imports nothing of the harness), so that the array helpers of
`benchmark.spill` and the artifact cache of `benchmark.cache` both find the folder
without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

CACHE_ENV = "POISONBENCH_CACHE"


def cache_root() -> Path:
    """``$POISONBENCH_CACHE``, else ``$XDG_CACHE_HOME/poisonbench``, else ``~/.cache/poisonbench``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "poisonbench"
