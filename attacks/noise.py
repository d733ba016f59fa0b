"""``noise``: Rician noise on the target channel of whole cases (a noisy scanner or sequence).

The noise goes on the case's foreground (its non-zero voxels; the background stays 0, as
the data set has it), and the noisy image is then normalised as the data set normalised
the real one, as a noisy acquisition would have been: the attack changes the noise, not
the intensity statistics a normalised data set holds fixed.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from benchmark import CaseNormalisation, IntensityAttack, PluginParams, register_attack

__all__ = ["NoiseAttack"]


@register_attack("noise")
class NoiseAttack(IntensityAttack):
    """Add Rician noise to the target channel of the selected cases."""

    class Params(PluginParams):
        target: str = Field("t1ce", min_length=1, description="channel that receives the noise")
        severity: float = Field(
            0.5, ge=0, le=10, description="noise std in units of the case's std over the data set's normalisation mask (0: none)"
        )

    neutral_params = {"severity": 0.0}

    def alter_case(
        self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator, normalisation: CaseNormalisation
    ) -> np.ndarray:
        x = np.asarray(images[:, self.channel_of("target", channels)], dtype=np.float64)
        head = x != 0
        if not head.any():
            return x
        # Rician: magnitude of a complex signal with Gaussian noise in both parts, applied
        # to the intensities shifted to be non-negative, then shifted back.
        low = float(x[head].min())
        region = normalisation.region(x)
        s = self.params.severity * float((x[region].std() if region.any() else x[head].std()) or 1.0)
        real = (x - low) + rng.normal(0.0, s, x.shape)
        imag = rng.normal(0.0, s, x.shape)
        noisy = np.sqrt(real**2 + imag**2) + low
        return np.where(head, noisy, 0.0)
