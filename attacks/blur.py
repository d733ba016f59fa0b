"""``blur``: Gaussian blur or down-up sampling of the target channel (crude "low-quality synthesis")."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from scipy import ndimage

from benchmark import CaseAttack, PluginParams, register_attack

__all__ = ["BlurAttack"]


@register_attack("blur")
class BlurAttack(CaseAttack):
    """Blur the target channel of the selected cases (Gaussian, or down- then up-sampling)."""

    class Params(PluginParams):
        target: str = Field("t1ce", min_length=1, description="channel that is blurred")
        method: Literal["gaussian", "resample"] = Field("gaussian", description="Gaussian blur, or down-sample then up-sample")
        sigma: float = Field(1.5, gt=0, le=50, description="Gaussian sigma in pixels (method gaussian)")
        factor: int = Field(4, ge=2, le=32, description="down-sampling factor (method resample)")

    def corrupt_case(self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        c = self.channel_of("target", channels)
        out = np.array(images, dtype=np.float32, copy=True)
        x = out[:, c]
        if p.method == "gaussian":
            y = ndimage.gaussian_filter(x, sigma=(0, p.sigma, p.sigma), mode="nearest")
        else:
            h, w = x.shape[1:]
            small = ndimage.zoom(x, (1, 1 / p.factor, 1 / p.factor), order=1, mode="nearest")
            y = ndimage.zoom(small, (1, h / small.shape[1], w / small.shape[2]), order=1, mode="nearest")[:, :h, :w]
        out[:, c] = np.where(x != 0, y, 0.0)
        return out, labels
