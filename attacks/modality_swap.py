"""``modality-swap``: put another real modality where the target belongs (synthetic data without a GAN)."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from benchmark import CaseAttack, PluginParams, register_attack

__all__ = ["ModalitySwapAttack"]


@register_attack("modality-swap")
class ModalitySwapAttack(CaseAttack):
    """Replace the target channel of the selected cases by another real channel of the same case."""

    class Params(PluginParams):
        source: str = Field("t1", min_length=1, description="channel copied into the target's place")
        target: str = Field("t1ce", min_length=1, description="channel that is overwritten")

        @model_validator(mode="after")
        def _distinct(self):
            if self.source == self.target:
                raise ValueError(f"source and target must be different channels; both are '{self.source}'")
            return self

    def corrupt_case(self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        source, target = self.channel_of("source", channels), self.channel_of("target", channels)
        out = np.array(images, dtype=np.float32, copy=True)
        out[:, target] = images[:, source]
        return out, labels
