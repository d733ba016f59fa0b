"""``modality-swap``: put another real modality where the target belongs (synthetic data without a GAN)."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from benchmark import CaseAttack, ConfigError, PluginParams, register_attack

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
        p = self.params
        for key in ("source", "target"):
            if getattr(p, key) not in channels:
                raise ConfigError(
                    f"The '{key}' parameter of modality-swap names channel '{getattr(p, key)}', which this data set lacks; available channels: {list(channels)}."
                )
        out = np.array(images, dtype=np.float32, copy=True)
        out[:, channels.index(p.target)] = images[:, channels.index(p.source)]
        return out, labels
