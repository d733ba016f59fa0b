"""``spectral``: azimuthally averaged power spectrum per case, Mahalanobis distance from trusted cases.

References: Durall, Keuper, Keuper, "Watch your Up-Convolution: CNN Based Generative Deep
Neural Networks are Failing to Reproduce Spectral Distributions", CVPR 2020; Frank et al.,
"Leveraging Frequency Analysis for Deep Fake Image Recognition", ICML 2020. Generators
that up-sample leave traces in the high-frequency part of the spectrum.

Per slice and inspected channel: Hann-windowed 2-D FFT, power, averaged over rings of
equal radial frequency into ``bins`` bins up to Nyquist, log10, minus the mean of the log
spectrum (so only the spectrum's shape counts). Slices are averaged per case, and the
case's spectrum is scored by its Mahalanobis distance (Ledoit-Wolf / MCD covariance) from
the trusted cases' spectra.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from benchmark import Defense, DefenseParams, SliceSet, register_defense

from ._stats import ReferenceDistance, case_means, resolve_channels

__all__ = ["SpectralDefense", "radial_spectrum"]


def radial_spectrum(images: np.ndarray, bins: int = 24) -> np.ndarray:
    """Azimuthally averaged log power spectrum of each slice.

    Args:
        images: float ``[N, H, W]``.
        bins: radial frequency bins between 0 and Nyquist (0.5 cycles/pixel). Defaults to 24.

    Returns:
        float64 ``[N, bins]``: log10 ring power minus its mean over the bins.
    """
    images = np.asarray(images, dtype=np.float64)
    n, h, w = images.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fftshift(np.fft.fft2(images * window), axes=(-2, -1))) ** 2
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    ring = np.minimum((radius / 0.5 * bins).astype(int), bins)  # bin `bins` = corners beyond Nyquist, dropped
    counts = np.bincount(ring.ravel(), minlength=bins + 1)[:bins].astype(float)
    flat = power.reshape(n, -1)
    sums = np.stack([np.bincount(ring.ravel(), weights=row, minlength=bins + 1)[:bins] for row in flat])
    spectrum = np.log10(sums / np.maximum(counts, 1.0) + 1e-12)
    return spectrum - spectrum.mean(axis=1, keepdims=True)


@register_defense("spectral")
class SpectralDefense(Defense):
    """Azimuthally averaged log power spectrum per case (GAN up-sampling traces), distance from trusted cases."""

    requires_trusted = True
    channel_parameters = ("channels",)

    class Params(DefenseParams):
        channels: list[str] | None = Field(None, description="channels to analyse; default: the task's input channels")
        bins: int = Field(24, ge=4, le=256, description="radial frequency bins between 0 and Nyquist")
        distance: Literal["mahalanobis", "knn"] = Field(
            "mahalanobis", description="Mahalanobis (MCD / Ledoit-Wolf) or mean k-NN distance from trusted cases"
        )

    def __init__(self, **params):
        super().__init__(**params)
        self.reference: ReferenceDistance | None = None

    def features(self, data: SliceSet) -> tuple[list[str], np.ndarray]:
        """Per-case mean spectra ``[n_cases, bins × channels]``."""
        channels = resolve_channels(data, self.params.channels, self.context.inputs)
        per_slice = np.concatenate(
            [radial_spectrum(data.images[:, data.channel_index(c)], self.params.bins) for c in channels], axis=1
        )
        return case_means(per_slice, data.case_ids)

    def fit(self, trusted: SliceSet | None) -> None:
        if trusted is None:
            raise ValueError("spectral needs trusted cases (split.trusted > 0)")
        cases, feats = self.features(trusted)
        self.reference = ReferenceDistance(self.params.distance).fit(feats, cases)

    def score(self, train: SliceSet) -> dict[str, float]:
        if self.reference is None:
            raise RuntimeError("spectral: call fit() first")
        cases, feats = self.features(train)
        return dict(zip(cases, map(float, self.reference.score(feats, cases))))
