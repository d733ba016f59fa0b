"""The ``gan-synthetic`` attack: a shortest-path regularised GAN synthesises the target modality."""

from __future__ import annotations

import importlib

from .plugin import GanParams, GanSyntheticAttack, image_quality

#: names of the torch modules, imported on first use so that the parameters load without torch
_LAZY = {
    **dict.fromkeys(["lsgan_loss", "sample_path_codes", "shortest_path_loss"], ".losses"),
    **dict.fromkeys(["AdaptiveInstanceNorm", "DomainGenerator", "PatchDiscriminator"], ".networks"),
    **dict.fromkeys(["GanConfig", "GanHistory", "GanTrainer", "translate"], ".training"),
}

__all__ = [
    "AdaptiveInstanceNorm",
    "DomainGenerator",
    "GanConfig",
    "GanHistory",
    "GanParams",
    "GanSyntheticAttack",
    "GanTrainer",
    "PatchDiscriminator",
    "image_quality",
    "lsgan_loss",
    "sample_path_codes",
    "shortest_path_loss",
    "translate",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
