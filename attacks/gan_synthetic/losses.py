"""Loss terms of the shortest-path regularised GAN (Xie et al., CVPR 2023)."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["lsgan_loss", "shortest_path_loss", "sample_path_codes"]


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: ``mean((D(x) − 1)²)`` for real, ``mean(D(x)²)`` for fake."""
    target = 1.0 if real else 0.0
    return ((scores.float() - target) ** 2).mean()


def sample_path_codes(batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Draw neighbouring domain codes per sample: centre ``c ~ U(0, 1)``, half-width ``h ~ U(0.05, 0.10)``.

    Returns:
        ``(d1, d2)``, each ``[B]``: ``clamp(c + h)`` and ``clamp(c − h)`` in [0, 1].
    """
    c = torch.rand(batch, generator=generator, device=device)
    h = 0.05 + 0.05 * torch.rand(batch, generator=generator, device=device)
    return (c + h).clamp(0, 1), (c - h).clamp(0, 1)


def shortest_path_loss(
    features_1: Sequence[torch.Tensor], features_2: Sequence[torch.Tensor], d1: torch.Tensor, d2: torch.Tensor, min_step: float = 0.1
) -> torch.Tensor:
    """Squared rate of change of decoder features along the domain path, averaged over layers.

    For each layer ``l``: ``mean(((f_l(d1) − f_l(d2)) / max(d1 − d2, min_step))²)``.

    Args:
        features_1: decoder feature maps ``[B, C_l, H_l, W_l]`` of one latent decoded at ``d1``.
        features_2: the same layers decoded at ``d2``.
        d1: codes ``[B]`` (``d1 ≥ d2``).
        d2: codes ``[B]``.
        min_step: floor of the denominator. Defaults to 0.1.

    Returns:
        a scalar; exactly zero when the decoder ignores ``d``.
    """
    if len(features_1) != len(features_2) or not features_1:
        raise ValueError("shortest_path_loss needs the same non-empty list of layers at d1 and d2")
    step = (d1 - d2).abs().clamp_min(min_step).float()
    total = torch.zeros((), device=features_1[0].device)
    for f1, f2 in zip(features_1, features_2):
        diff = (f1.float() - f2.float()) / step.view(-1, *([1] * (f1.dim() - 1)))
        total = total + (diff**2).mean()
    return total / len(features_1)
