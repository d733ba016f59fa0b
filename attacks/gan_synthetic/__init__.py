"""The ``gan-synthetic`` attack: a shortest-path regularised GAN synthesises the target modality."""

from __future__ import annotations

from .losses import lsgan_loss, sample_path_codes, shortest_path_loss
from .networks import AdaptiveInstanceNorm, DomainGenerator, PatchDiscriminator
from .plugin import GanParams, GanSyntheticAttack, image_quality, training_environment
from .training import GanConfig, GanHistory, GanTrainer, translate

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
    "training_environment",
    "translate",
]
