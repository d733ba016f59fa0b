"""``noise``: Rician noise on the target channel of whole cases (a noisy scanner or sequence)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from benchmark import CaseAttack, PluginParams, register_attack

__all__ = ["NoiseAttack"]


@register_attack("noise")
class NoiseAttack(CaseAttack):
    """Add Rician noise to the target channel of the selected cases."""

    class Params(PluginParams):
        target: str = Field("t1ce", min_length=1, description="channel that receives the noise")
        severity: float = Field(0.5, gt=0, le=10, description="noise std in units of the case's foreground std (z-scores)")

    def corrupt_case(self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = self.channel_of("target", channels)
        out = np.array(images, dtype=np.float32, copy=True)
        x = out[:, c]
        head = x != 0
        if not head.any():
            return out, labels
        # Rician: magnitude of a complex signal with Gaussian noise in both parts, applied
        # to the intensities shifted to be non-negative, then shifted back.
        low = float(x[head].min())
        s = self.params.severity * float(x[head].std() or 1.0)
        real = (x - low) + rng.normal(0.0, s, x.shape)
        imag = rng.normal(0.0, s, x.shape)
        noisy = np.sqrt(real**2 + imag**2) + low
        out[:, c] = np.where(head, noisy, 0.0).astype(np.float32)
        return out, labels

