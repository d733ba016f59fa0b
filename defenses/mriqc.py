"""``mriqc``: MRIQC-style image-quality measures per case, scored by robust distance from trusted cases.

Reference: Esteban et al., "MRIQC: Advancing the automatic prediction of image quality in
MRI from unseen sites", PLoS ONE 2017. Per case (its slices stacked) and per inspected
channel: SNR, CNR, CJV, EFC and FBER on head / brain / background masks; the case's
vector of measures is scored by its robust Mahalanobis distance from the trusted cases.

The data are z-scored per case and zero outside the head, so the masks and tissue
classes are derived without a segmentation: head = non-zero voxels, background = the
rest, brain = the head eroded by ``erode`` of its equivalent radius (this strips the
scalp and skull rim), and "grey" / "white" matter = the two most populous of three
intensity classes (1-D k-means) inside the brain. Intensities are shifted so that the
head starts at zero (its 1st percentile) before the ratio measures are taken.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field
from scipy import ndimage

from benchmark import Defense, DefenseParams, SliceSet, register_defense

from ._stats import ReferenceDistance, case_order, head_mask, resolve_channels

__all__ = ["MriqcDefense", "MEASURES", "quality_measures"]

MEASURES: tuple[str, ...] = ("snr", "cnr", "cjv", "efc", "fber")
_EPS = 1e-6


def _kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Class of each value and class means of a 1-D k-means started at evenly spaced quantiles."""
    centres = np.quantile(values, np.linspace(0.15, 0.85, k))
    classes = np.zeros(len(values), dtype=int)
    for _ in range(iterations):
        classes = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        new = np.array([values[classes == j].mean() if np.any(classes == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return classes, centres


def _brain_mask(head: np.ndarray, erode: float) -> np.ndarray:
    """``head`` ``[S, H, W]`` eroded slice by slice by ``erode`` × its equivalent radius."""
    brain = np.zeros_like(head)
    for s, mask in enumerate(head):
        area = int(mask.sum())
        if area == 0:
            continue
        filled = ndimage.binary_fill_holes(mask)
        radius = int(round(erode * math.sqrt(area / math.pi)))
        eroded = ndimage.binary_erosion(filled, iterations=radius) if radius > 0 else filled
        brain[s] = eroded & mask if eroded.any() else mask
    return brain


_LAPLACE = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def _noise_sigma(x: np.ndarray, brain: np.ndarray) -> float:
    """Noise standard deviation inside the brain by Immerkær's method (CVIU 1996).

    ``sqrt(π/2) / 6 × mean |x * N|`` over brain voxels whose 3 × 3 neighbourhood is brain,
    with ``N`` the difference of two Laplacians (insensitive to edges and smooth shading).
    """
    response = np.abs(np.stack([ndimage.convolve(s, _LAPLACE, mode="nearest") for s in x]))
    core = np.stack([ndimage.binary_erosion(b) for b in brain])
    values = response[core] if core.sum() >= 16 else response[brain]
    return float(math.sqrt(math.pi / 2) / 6 * values.mean()) if values.size else 0.0


def quality_measures(volume: np.ndarray, head: np.ndarray, erode: float = 0.12) -> np.ndarray:
    """SNR, CNR, CJV, EFC and FBER of one case's channel.

    Args:
        volume: float ``[S, H, W]``, one channel of a case's slices.
        head: bool ``[S, H, W]``, inside the head.
        erode: brain mask = head eroded by this fraction of its equivalent radius. Defaults to 0.12.

    Returns:
        float64 ``[5]`` in the order of `MEASURES`: log SNR, log CNR, log CJV, EFC, log FBER
        (ratios on a log scale so that the distance treats them symmetrically).
    """
    volume = np.asarray(volume, dtype=np.float64)
    if not head.any():
        return np.zeros(len(MEASURES))
    x = np.where(head, volume - np.quantile(volume[head], 0.01), 0.0)
    x = np.maximum(x, 0.0)
    background = ~head
    brain = _brain_mask(head, erode)
    if brain.sum() < 16:
        brain = head
    inside = x[brain]
    sigma_noise = _noise_sigma(x, brain)
    snr = inside.mean() / (sigma_noise + _EPS)

    # tissue classes: centres from a subsample, then every brain voxel to its nearest centre
    _, centres = _kmeans_1d(inside[:: max(1, len(inside) // 20000)])
    classes = np.abs(inside[:, None] - centres[None, :]).argmin(axis=1)
    counts = np.bincount(classes, minlength=3)
    a, b = np.argsort(counts)[::-1][:2]
    tissue_a, tissue_b = inside[classes == a], inside[classes == b]
    sigma_bg = x[background].std() if background.any() else 0.0
    sigma_bg = max(sigma_bg, sigma_noise)  # the background is zeroed here: use the noise estimate
    gap = abs(tissue_a.mean() - tissue_b.mean()) if len(tissue_a) and len(tissue_b) else 0.0
    spread = (tissue_a.std() if len(tissue_a) else 0.0, tissue_b.std() if len(tissue_b) else 0.0)
    cnr = gap / (math.sqrt(sigma_bg**2 + spread[0] ** 2 + spread[1] ** 2) + _EPS)
    cjv = (spread[0] + spread[1]) / (gap + _EPS)

    flat = x.ravel()
    n = flat.size
    energy = math.sqrt(float((flat**2).sum())) + _EPS
    p = flat / energy
    efc_max = n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    efc = float((p * np.log(p + _EPS)).sum()) / efc_max

    fg_energy = float((x[head] ** 2).mean())
    bg_energy = float((x[background] ** 2).mean()) if background.any() else 0.0
    fber = (fg_energy + _EPS) / (bg_energy + 1e-3 * fg_energy + _EPS)
    return np.array([math.log(max(snr, _EPS)), math.log(cnr + _EPS), math.log(cjv + _EPS), efc, math.log(fber)])


@register_defense("mriqc")
class MriqcDefense(Defense):
    """MRIQC-style quality measures (SNR, CNR, CJV, EFC, FBER) per case, robust distance from trusted cases."""

    requires_trusted = True
    channel_parameters = ("channels",)

    class Params(DefenseParams):
        channels: list[str] | None = Field(
            None, description="channels to measure; default: the task's input channels"
        )
        distance: Literal["mahalanobis", "knn"] = Field(
            "mahalanobis", description="robust Mahalanobis (MCD / Ledoit-Wolf) or mean k-NN distance from trusted cases"
        )
        erode: float = Field(0.12, ge=0.0, lt=1.0, description="brain mask: head eroded by this fraction of its radius")

    def __init__(self, **params):
        super().__init__(**params)
        self.reference: ReferenceDistance | None = None

    def features(self, data: SliceSet) -> tuple[list[str], np.ndarray]:
        """Per-case measures ``[n_cases, 5 × channels]`` (see `quality_measures`)."""
        channels = resolve_channels(data, self.params.channels, self.context.inputs)
        index = [data.channel_index(c) for c in channels]
        cases, rows = case_order(data.case_ids)
        head = head_mask(data.images)
        out = np.zeros((len(cases), len(MEASURES) * len(index)))
        for i in range(len(cases)):
            sel = np.flatnonzero(rows == i)
            out[i] = np.concatenate([quality_measures(data.images[sel, c], head[sel], self.params.erode) for c in index])
        return cases, out

    def fit(self, trusted: SliceSet | None) -> None:
        if trusted is None:
            raise ValueError("mriqc needs trusted cases (split.trusted > 0)")
        cases, feats = self.features(trusted)
        self.reference = ReferenceDistance(self.params.distance).fit(feats, cases)

    def score(self, train: SliceSet) -> dict[str, float]:
        if self.reference is None:
            raise RuntimeError("mriqc: call fit() first")
        cases, feats = self.features(train)
        return dict(zip(cases, map(float, self.reference.score(feats, cases))))
