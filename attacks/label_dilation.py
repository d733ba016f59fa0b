"""``label-dilation``: grow every tumour label of whole cases (over-segmenting annotator)."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import ndimage

from benchmark import CaseAttack, PluginParams, register_attack

__all__ = ["LabelDilationAttack"]


@register_attack("label-dilation")
class LabelDilationAttack(CaseAttack):
    """Dilate the tumour labels of the selected cases by a few pixels (into background only)."""

    class Params(PluginParams):
        iterations: int = Field(2, ge=1, le=50, description="pixels added around every label")

    def corrupt_case(self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = ndimage.generate_binary_structure(2, 1)
        out = np.array(labels, copy=True)
        for value in sorted(int(v) for v in np.unique(labels) if v != 0):
            grown = ndimage.binary_dilation(labels == value, structure, iterations=self.params.iterations)
            out[grown & (labels == 0) & (out <= value)] = value
        return images, out
