"""Facts about the software and hardware a cell ran on, stored with its results."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["package_version", "environment", "resolve_device", "git_commit", "torch_threads"]


def package_version() -> str:
    try:
        return metadata.version("poisonbench")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Commit of the source tree the package runs from, when it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def resolve_device(requested: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    from .errors import ConfigError

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return requested


def torch_threads() -> int:
    """torch's intra-op CPU thread count now (executors may change it per sweep)."""
    import torch

    return torch.get_num_threads()


def environment(device: str) -> dict[str, Any]:
    import torch

    versions = {}
    # the optional extras that compute a cell's numbers are recorded too (None: not installed)
    for dist in ("poisonbench", "torch", "monai", "numpy", "nibabel", "pandas", "pydantic", "scikit-learn", "nnunetv2",
                 "brats-evaluation", "panoptica"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info: dict[str, Any] = {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "torch_threads": torch_threads(),
        "git_commit": git_commit(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
