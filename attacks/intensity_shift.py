"""``intensity-shift``: a contrast change and a smooth multiplicative bias field on the target channel.

The contrast (gamma) and bias field model a different acquisition, so the altered image
is normalised as the data set normalised the real one. The ``shift`` is what the
normalisation would remove, a case left mis-normalised, so it is added afterwards, on
the case's foreground only (the background stays 0).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import ndimage

from benchmark import CaseNormalisation, IntensityAttack, PluginParams, register_attack

__all__ = ["IntensityShiftAttack"]


@register_attack("intensity-shift")
class IntensityShiftAttack(IntensityAttack):
    """Change the contrast (gamma) and add a smooth bias field to the target channel of the selected cases."""

    class Params(PluginParams):
        target: str = Field("t1ce", min_length=1, description="channel that is altered")
        gamma: float = Field(0.6, gt=0, le=10, description="contrast exponent on the case's intensities rescaled to [0, 1] (1: none)")
        bias: float = Field(0.3, ge=0, le=2, description="peak relative amplitude of the smooth bias field (0: none)")
        shift: float = Field(0.5, ge=-10, le=10, description="additive offset in z-score units, after normalisation (0: none)")

    neutral_params = {"gamma": 1.0, "bias": 0.0, "shift": 0.0}

    def alter_case(
        self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator, normalisation: CaseNormalisation
    ) -> np.ndarray:
        p = self.params
        x = np.asarray(images[:, self.channel_of("target", channels)], dtype=np.float64)
        head = x != 0
        if not head.any():
            return x
        low, high = float(x[head].min()), float(x[head].max())
        span = max(high - low, 1e-6)
        y = ((x - low) / span).clip(0, 1) ** p.gamma * span + low
        # smooth random field per case: coarse noise, upsampled, scaled to ±bias
        coarse = rng.normal(size=(1, 4, 4))
        field = ndimage.zoom(coarse, (x.shape[0], x.shape[1] / 4, x.shape[2] / 4), order=3)[:, : x.shape[1], : x.shape[2]]
        field = field / max(float(np.abs(field).max()), 1e-6) * p.bias
        return np.where(head, y * (1.0 + field), 0.0)

    def poison_case(
        self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator, normalisation: CaseNormalisation
    ) -> tuple[np.ndarray, np.ndarray]:
        out, labels = super().poison_case(images, labels, channels, rng, normalisation)
        target = self.channel_of("target", channels)
        foreground = images[:, target] != 0
        out[:, target] = np.where(foreground, out[:, target] + np.float32(self.params.shift), 0.0)
        return out, labels
