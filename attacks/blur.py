"""``blur``: Gaussian blur or down-up sampling of the target channel (crude "low-quality synthesis").

The blurred image is normalised as the data set normalised the real one (a blurrier
acquisition would have been), and the real case's background stays 0.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from scipy import ndimage

from benchmark import CaseNormalisation, IntensityAttack, PluginParams, register_attack

__all__ = ["BlurAttack"]


@register_attack("blur")
class BlurAttack(IntensityAttack):
    """Blur the target channel of the selected cases (Gaussian, or down- then up-sampling)."""

    class Params(PluginParams):
        target: str = Field("t1ce", min_length=1, description="channel that is blurred")
        method: Literal["gaussian", "resample"] = Field("gaussian", description="Gaussian blur, or down-sample then up-sample")
        sigma: float = Field(1.5, ge=0, le=50, description="Gaussian sigma in pixels (method gaussian; 0: no blur)")
        factor: int = Field(4, ge=2, le=32, description="down-sampling factor (method resample)")

    neutral_params = {"method": "gaussian", "sigma": 0.0}

    def alter_case(
        self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator, normalisation: CaseNormalisation
    ) -> np.ndarray:
        p = self.params
        x = np.asarray(images[:, self.channel_of("target", channels)], dtype=np.float32)
        if p.method == "gaussian":
            return ndimage.gaussian_filter(x, sigma=(0, p.sigma, p.sigma), mode="nearest")
        h, w = x.shape[1:]
        small = ndimage.zoom(x, (1, 1 / p.factor, 1 / p.factor), order=1, mode="nearest")
        return ndimage.zoom(small, (1, h / small.shape[1], w / small.shape[2]), order=1, mode="nearest")[:, :h, :w]
