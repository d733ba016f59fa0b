"""Statistics shared by the quality-control defenses (not a plugin; no torch).

* per-case aggregation of per-slice features;
* `ReferenceDistance`: how far cases lie from a trusted reference set — robust
  Mahalanobis distance (minimum covariance determinant when the reference is large
  enough, Ledoit-Wolf shrinkage otherwise) or mean k-NN distance — with leave-one-out
  scores for the reference cases themselves, so that the scores of trusted cases are
  calibrated for the trusted-quantile decision rule.

The small network of the encoder-based defenses lives in `defenses._networks`.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np

from benchmark import RunContext, SliceSet, region_mask

__all__ = [
    "case_order",
    "case_means",
    "head_mask",
    "resolve_channels",
    "task_arrays",
    "ReferenceDistance",
]

_EPS = 1e-6


# --------------------------------------------------------------------------- cases
def case_order(case_ids: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Cases in order of first appearance and, per slice, the index of its case.

    Args:
        case_ids: ``[N]`` case id of each slice.

    Returns:
        ``(cases, index)`` with ``index`` int ``[N]`` into ``cases``.
    """
    ids = np.asarray(case_ids).astype(str)
    uniques, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return [str(uniques[i]) for i in order], rank[inverse.ravel()]


def case_means(features: np.ndarray, case_ids: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Mean of per-slice features over each case's slices.

    Args:
        features: ``[N, D]`` per-slice features.
        case_ids: ``[N]``.

    Returns:
        ``(cases, [n_cases, D])``.
    """
    cases, index = case_order(case_ids)
    features = np.asarray(features, dtype=np.float64).reshape(len(index), -1)
    sums = np.zeros((len(cases), features.shape[1]))
    np.add.at(sums, index, features)
    counts = np.bincount(index, minlength=len(cases)).astype(float)
    return cases, sums / counts[:, None]


def head_mask(images: np.ndarray) -> np.ndarray:
    """Voxels inside the head: non-zero in any channel (the data are zero outside the head).

    Args:
        images: ``[N, C, H, W]``.

    Returns:
        bool ``[N, H, W]``.
    """
    return np.any(np.asarray(images) != 0, axis=1)


def resolve_channels(data: SliceSet, requested: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """The channels a defense inspects: ``requested``, else those of ``default`` present in the data."""
    if requested:
        for name in requested:
            data.channel_index(name)  # raises DataError naming the available channels
        return list(requested)
    chosen = [name for name in default if name in data.channels]
    return chosen or list(data.channels)


def task_arrays(data: SliceSet, context: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """The task's input channels ``[N, C, H, W]`` and its target-region masks ``[N, H, W]`` (uint8)."""
    channels = resolve_channels(data, None, context.inputs)
    return data.select_channels(channels), region_mask(data.labels, context.target).astype(np.uint8)


# --------------------------------------------------------------------------- distances
class ReferenceDistance:
    """Distance of feature vectors from a reference (trusted) set.

    Features are first standardised by the reference's median and scale (MAD, with a
    floor from the standard deviation, so a constant feature cannot explode). Then:

    * ``mahalanobis``: ``sqrt((x − μ)ᵀ Σ⁻¹ (x − μ))`` with ``(μ, Σ)`` from scikit-learn's
      ``MinCovDet`` (robust, Rousseeuw 1984) when the reference has more than
      ``2 × dims + 2`` cases, otherwise from ``LedoitWolf`` (shrinkage; works with fewer
      cases than dimensions);
    * ``knn``: mean Euclidean distance to the ``k`` nearest reference cases.

    A query row whose case id belongs to the reference is scored against the reference
    without that case (leave-one-out), so that trusted cases get honest, out-of-sample
    scores.

    Args:
        method: ``mahalanobis`` or ``knn``. Defaults to ``mahalanobis``.
        k: neighbours for ``knn``. Defaults to 3.
    """

    def __init__(self, method: Literal["mahalanobis", "knn"] = "mahalanobis", k: int = 3):
        self.method = method
        self.k = k
        self.features: np.ndarray | None = None
        self.cases: list[str] = []

    def fit(self, features: np.ndarray, cases: Sequence[str]) -> ReferenceDistance:
        """Remember the reference features ``[n_ref, D]`` of ``cases``."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"a reference needs at least 2 cases of 2-D features; got shape {features.shape}")
        self.features = features
        self.cases = [str(c) for c in cases]
        return self

    def score(self, features: np.ndarray, cases: Sequence[str]) -> np.ndarray:
        """Distance of each row of ``features`` ``[n, D]`` from the reference (``[n]``)."""
        if self.features is None:
            raise RuntimeError("ReferenceDistance: call fit() first")
        features = np.asarray(features, dtype=np.float64)
        out = np.empty(len(features))
        position = {case: i for i, case in enumerate(self.cases)}
        full = self._model(self.features)
        for row, case in enumerate(cases):
            own = position.get(str(case))
            if own is None or len(self.features) < 3:
                out[row] = self._distance(full, features[row])
            else:
                out[row] = self._distance(self._model(np.delete(self.features, own, axis=0)), features[row])
        return out

    # a "model" is (centre, scale, precision or reference rows)
    def _model(self, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centre = np.median(reference, axis=0)
        mad = 1.4826 * np.median(np.abs(reference - centre), axis=0)
        std = reference.std(axis=0)
        scale = np.maximum(np.maximum(mad, 0.5 * std), _EPS + 1e-3 * np.abs(centre))
        z = (reference - centre) / scale
        if self.method == "knn":
            return centre, scale, z
        from sklearn.covariance import LedoitWolf, MinCovDet

        n, dims = z.shape
        if n > 2 * dims + 2:
            try:
                estimate = MinCovDet(random_state=0).fit(z)
                return centre + estimate.location_ * scale, scale, estimate.precision_
            except (ValueError, np.linalg.LinAlgError):  # degenerate reference: fall back
                pass
        estimate = LedoitWolf().fit(z)
        return centre + estimate.location_ * scale, scale, estimate.precision_

    def _distance(self, model: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> float:
        centre, scale, extra = model
        z = (x - centre) / scale
        if self.method == "knn":
            distances = np.sqrt(((extra - z) ** 2).sum(axis=1))
            k = max(1, min(self.k, len(distances)))
            return float(np.sort(distances)[:k].mean())
        return float(math.sqrt(max(float(z @ extra @ z), 0.0)))
