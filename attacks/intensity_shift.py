"""``intensity-shift``: a contrast change and a smooth multiplicative bias field on the target channel."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import ndimage

from benchmark import CaseAttack, PluginParams, register_attack

__all__ = ["IntensityShiftAttack"]


@register_attack("intensity-shift")
class IntensityShiftAttack(CaseAttack):
    """Change the contrast (gamma) and add a smooth bias field to the target channel of the selected cases."""

    class Params(PluginParams):
        target: str = Field("t1ce", min_length=1, description="channel that is altered")
        gamma: float = Field(0.6, gt=0, le=10, description="contrast exponent on the case's intensities rescaled to [0, 1]")
        bias: float = Field(0.3, ge=0, le=2, description="peak relative amplitude of the smooth bias field")
        shift: float = Field(0.5, ge=-10, le=10, description="additive offset in z-score units")

    def corrupt_case(self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        c = self.channel_of("target", channels)
        out = np.array(images, dtype=np.float32, copy=True)
        x = out[:, c]
        head = x != 0
        if not head.any():
            return out, labels
        low, high = float(x[head].min()), float(x[head].max())
        span = max(high - low, 1e-6)
        y = ((x - low) / span).clip(0, 1) ** p.gamma * span + low
        # smooth random field per case: coarse noise, upsampled, scaled to ±bias
        coarse = rng.normal(size=(1, 4, 4))
        field = ndimage.zoom(coarse, (x.shape[0], x.shape[1] / 4, x.shape[2] / 4), order=3)[:, : x.shape[1], : x.shape[2]]
        field = field / max(float(np.abs(field).max()), 1e-6) * p.bias
        y = y * (1.0 + field) + p.shift
        out[:, c] = np.where(head, y, 0.0).astype(np.float32)
        return out, labels
