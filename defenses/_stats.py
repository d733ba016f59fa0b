"""Statistics and small networks shared by the quality-control defenses (not a plugin).

* per-case aggregation of per-slice features and a content digest of each case;
* `ReferenceDistance`: how far cases lie from a trusted reference set — robust
  Mahalanobis distance (minimum covariance determinant when the reference is large
  enough, Ledoit-Wolf shrinkage otherwise) or mean k-NN distance — with leave-one-out
  scores for the reference cases themselves, so that the scores of trusted cases are
  calibrated for the trusted-quantile decision rule;
* `TinySegNet`: a three-level convolutional encoder with a light decoder, used as the
  "briefly trained segmenter" of the encoder-based defenses, and `encode` to read its
  multi-scale features.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from benchmark import RunContext, SliceSet, region_mask

__all__ = [
    "case_order",
    "case_means",
    "case_digests",
    "head_mask",
    "resolve_channels",
    "task_arrays",
    "ReferenceDistance",
    "TinySegNet",
    "encode",
    "ScoreMemo",
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


def case_digests(data: SliceSet) -> dict[str, str]:
    """SHA-1 of each case's images and labels (identifies a case's content, not just its id)."""
    out = {}
    for case in data.cases:
        rows = np.flatnonzero(data.case_ids == case)
        digest = hashlib.sha1()
        digest.update(np.ascontiguousarray(data.images[rows], dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(data.labels[rows]).tobytes())
        out[case] = digest.hexdigest()
    return out


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


class ScoreMemo:
    """Scores of cases already scored, keyed by case content.

    The harness scores the training set, then the trusted set again (for the quantile
    rule); trusted cases are part of the training set, so a defense whose scores depend
    on the whole set it was given (a model trained on it) answers the second call from
    the first instead of training again on the trusted cases alone.
    """

    def __init__(self) -> None:
        self._scores: dict[tuple[str, str], float] = {}

    def lookup(self, data: SliceSet) -> dict[str, float] | None:
        digests = case_digests(data)
        keys = [(case, digest) for case, digest in digests.items()]
        if keys and all(key in self._scores for key in keys):
            return {case: self._scores[(case, digest)] for case, digest in keys}
        return None

    def store(self, data: SliceSet, scores: dict[str, float]) -> None:
        for case, digest in case_digests(data).items():
            self._scores[(case, digest)] = float(scores[case])


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


# --------------------------------------------------------------------------- networks
def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
    )


class TinySegNet(nn.Module):
    """A small encoder-decoder segmenter whose encoder doubles as a feature extractor.

    Three encoder levels (widths ``w, 2w, 4w``; the 2nd and 3rd at stride 2) and a decoder
    of bilinear up-sampling with skip additions, ending in one logit channel.

    Args:
        in_channels: input channels ``C``.
        width: width ``w`` of the first level. Defaults to 8.

    Shapes:
        ``forward``: ``[B, C, H, W]`` → logits ``[B, 1, H, W]``;
        ``features``: list of ``[B, w, H, W]``, ``[B, 2w, H/2, W/2]``, ``[B, 4w, H/4, W/4]``.
    """

    def __init__(self, in_channels: int, width: int = 8):
        super().__init__()
        self.enc = nn.ModuleList([_block(in_channels, width, 1), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2)])
        self.lat = nn.ModuleList([nn.Conv2d(2 * width, width, 1), nn.Conv2d(4 * width, width, 1)])
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(width, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.enc:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1, f2, f3 = self.features(x)
        size = f1.shape[-2:]
        up = lambda t: nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        return self.head(f1 + up(self.lat[0](f2)) + up(self.lat[1](f3)))


@torch.no_grad()
def encode(net: TinySegNet, images: np.ndarray, labels: np.ndarray | None, device: str, batch_size: int = 64) -> np.ndarray:
    """Per-slice representation: mean and standard deviation of every encoder channel.

    With ``labels``, the mean of each channel inside the mask is appended as well (the
    representation then says what the image looks like where the mask says tumour is).

    Args:
        net: the encoder.
        images: float32 ``[N, C, H, W]``.
        labels: ``[N, H, W]`` binary masks, or None.
        device: torch device.

    Returns:
        float64 ``[N, D]``.
    """
    net = net.to(device).eval()
    rows = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)).to(device)
        parts = []
        feats = net.features(x)
        for f in feats:
            parts.append(f.mean(dim=(2, 3)))
            parts.append(f.std(dim=(2, 3)))
        if labels is not None:
            m = torch.from_numpy(np.ascontiguousarray(labels[start : start + batch_size], dtype=np.float32)).to(device)
            m = m.unsqueeze(1)
            for f in feats:
                mm = nn.functional.adaptive_avg_pool2d(m, f.shape[-2:])
                parts.append((f * mm).sum(dim=(2, 3)) / (mm.sum(dim=(2, 3)) + 1.0))
        rows.append(torch.cat(parts, dim=1).float().cpu().numpy())
    return np.concatenate(rows).astype(np.float64)
