"""``modality-swap``: put another real modality where the target belongs (synthetic data without a GAN).

The copied channel is normalised as the data set normalised the target over the target's
mask, and the target's background stays 0: the swap changes the contrast, nothing else.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from benchmark import CaseNormalisation, IntensityAttack, PluginParams, register_attack

__all__ = ["ModalitySwapAttack"]


@register_attack("modality-swap")
class ModalitySwapAttack(IntensityAttack):
    """Replace the target channel of the selected cases by another real channel of the same case."""

    class Params(PluginParams):
        source: str = Field("t1", min_length=1, description="channel copied into the target's place")
        target: str = Field("t1ce", min_length=1, description="channel that is overwritten")

        @model_validator(mode="after")
        def _distinct(self):
            if self.source == self.target:
                raise ValueError(f"source and target must be different channels; both are '{self.source}'")
            return self

    def source_channels(self) -> tuple[str, ...]:
        return (self.params.source,)

    def alter_case(
        self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator, normalisation: CaseNormalisation
    ) -> np.ndarray:
        self.channel_of("target", channels)
        return np.asarray(images[:, self.channel_of("source", channels)], dtype=np.float32)
