"""The ``diffusion-synthetic`` attack: a conditional denoising diffusion model synthesises the target modality."""

from __future__ import annotations

import importlib

from .plugin import DIFFUSION_PRESETS, DiffusionParams, DiffusionSyntheticAttack

#: names of the torch modules, imported on first use so that the parameters load without torch
_LAZY = dict.fromkeys(
    ["DATA_SCALE", "STEALTH_MIN_ALPHA", "DiffusionConfig", "DiffusionHistory", "DiffusionTrainer", "build_unet", "ddim_translate", "norm_groups"],
    ".training",
)

__all__ = [
    "DATA_SCALE",
    "DIFFUSION_PRESETS",
    "STEALTH_MIN_ALPHA",
    "DiffusionConfig",
    "DiffusionHistory",
    "DiffusionParams",
    "DiffusionSyntheticAttack",
    "DiffusionTrainer",
    "build_unet",
    "ddim_translate",
    "norm_groups",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
