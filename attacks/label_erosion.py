"""``label-erosion``: shrink every tumour label of whole cases (under-segmenting annotator)."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import ndimage

from benchmark import CaseAttack, PluginParams, register_attack

__all__ = ["LabelErosionAttack", "erode_labels"]


def erode_labels(labels: np.ndarray, iterations: int) -> np.ndarray:
    """Erode each non-zero label value in-plane, slice by slice; eroded pixels become background.

    Args:
        labels: uint8 ``[S, H, W]``.
        iterations: pixels removed (cross structuring element).

    Returns:
        uint8 ``[S, H, W]``.
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    out = np.zeros_like(labels)
    for value in sorted(int(v) for v in np.unique(labels) if v != 0):
        out[ndimage.binary_erosion(labels == value, structure, iterations=iterations)] = value
    return out


@register_attack("label-erosion")
class LabelErosionAttack(CaseAttack):
    """Erode the tumour labels of the selected cases by a few pixels."""

    class Params(PluginParams):
        iterations: int = Field(2, ge=1, le=50, description="pixels removed from every label's border")

    def corrupt_case(self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return images, erode_labels(labels, self.params.iterations)
