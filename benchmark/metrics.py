"""Per-case segmentation metrics from one confusion count, and their aggregates.

Each validation case is scored as a volume (its slices stacked). All five metrics come
from one TP/FP/TN/FN count per case.

Empty-mask convention: when truth and prediction are both empty, Dice = Jaccard = 1;
when the truth is empty and the prediction is not, Dice = Jaccard = 0. A ratio whose
denominator is zero (sensitivity with no true positives to find, specificity with no
negatives) is 1: nothing that could be missed was missed.

HD95 (`case_hd95`) is the 95th-percentile symmetric Hausdorff distance in mm, MONAI's
``compute_hausdorff_distance(percentile=95)`` over the case's slices stacked at their true
positions, with the voxel spacing of the case's geometry (`benchmark.geometry`):

- slices evenly spaced in the source (every slice, or every k-th) form one volume whose
  slice spacing is k times the source's; slices with uneven gaps are placed on the source
  grid from the first kept slice to the last, the gaps empty in both masks (so a region
  cut by a gap has a surface at the cut in truth and prediction alike);
- both masks empty: 0 mm (nothing to find, nothing found);
- one mask empty: the diagonal of the case's volume in mm, ``sqrt((H dx)^2 + (W dy)^2 +
  (Z dz)^2)`` over the grid the slices span: the largest distance inside it, BraTS's
  convention (373.13 mm for a 240 x 240 x 155 volume of 1 mm voxels);
- a slice set without geometry: NaN (no spacing to measure in); summaries skip it.

HD95 is lower-is-better, unlike the five ratios (`LOWER_IS_BETTER`).

Lesion-wise Dice and HD95 (`LESION_METRICS`, `case_lesionwise`) come from the BraTS
challenge's own code where its extra is installed (`benchmark.lesionwise`), over the same
stacked volumes; NaN (not measured) otherwise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .geometry import SliceGeometry
from .lesionwise import LESION_LOWER_IS_BETTER, LESION_METRICS, lesionwise_missing, lesionwise_or_nan

__all__ = [
    "METRICS", "DISTANCE_METRICS", "LOWER_IS_BETTER", "confusion_by_case", "metrics_from_confusion", "case_metrics",
    "case_hd95", "hd95", "case_lesionwise", "LESION_METRICS", "OPTIONAL_METRICS", "Aggregate", "aggregate",
]

METRICS: tuple[str, ...] = ("dice", "jaccard", "accuracy", "sensitivity", "specificity")
"""The ratios of one confusion count (recomputable from ``tp fp tn fn``)."""
DISTANCE_METRICS: tuple[str, ...] = ("hd95",)
"""Surface distances in mm (not recomputable from the counts)."""
OPTIONAL_METRICS: tuple[str, ...] = (*DISTANCE_METRICS, *LESION_METRICS)
"""Per-case metrics after the five ratios, NaN where not measured: ``hd95`` (no geometry),
``lesion_dice`` and ``lesion_hd95`` (no geometry, or the brats-eval extra missing)."""
LOWER_IS_BETTER: frozenset[str] = frozenset((*DISTANCE_METRICS, *LESION_LOWER_IS_BETTER))
"""Metrics where a smaller value is better: an attack raises them."""


def confusion_by_case(pred: np.ndarray, truth: np.ndarray, case_ids: np.ndarray) -> pd.DataFrame:
    """TP/FP/TN/FN per case in one pass.

    Args:
        pred: binary ``[N, H, W]`` prediction.
        truth: binary ``[N, H, W]`` reference.
        case_ids: ``[N]`` case of each slice.

    Returns:
        DataFrame indexed by case (order of first appearance) with int64 ``tp fp tn fn``.
    """
    pred = np.asarray(pred).astype(bool, copy=False).reshape(len(pred), -1)
    truth = np.asarray(truth).astype(bool, copy=False).reshape(len(truth), -1)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    voxels = pred.shape[1]
    tp = np.count_nonzero(pred & truth, axis=1)
    pred_pos = np.count_nonzero(pred, axis=1)
    true_pos = np.count_nonzero(truth, axis=1)
    per_slice = np.stack([tp, pred_pos - tp, voxels - pred_pos - true_pos + tp, true_pos - tp], axis=1)
    cases, first, inverse = np.unique(np.asarray(case_ids, dtype=str), return_index=True, return_inverse=True)
    sums = np.zeros((len(cases), 4), dtype=np.int64)
    np.add.at(sums, inverse, per_slice)
    order = np.argsort(first)
    return pd.DataFrame(sums[order], index=pd.Index(cases[order], name="case"), columns=["tp", "fp", "tn", "fn"])


def metrics_from_confusion(counts: pd.DataFrame) -> pd.DataFrame:
    """Dice, Jaccard, accuracy, sensitivity, specificity from ``tp fp tn fn`` columns."""
    tp, fp, tn, fn = (counts[c].to_numpy(dtype=np.float64) for c in ("tp", "fp", "tn", "fn"))

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.ones_like(num)
        np.divide(num, den, out=out, where=den > 0)
        return out

    result = pd.DataFrame(
        {
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "jaccard": ratio(tp, tp + fp + fn),
            "accuracy": ratio(tp + tn, tp + tn + fp + fn),
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
        },
        index=counts.index,
    )
    return pd.concat([result, counts], axis=1)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) of two 3-D masks, with the empty-mask rule above.

    Args:
        pred: binary ``[H, W, Z]`` prediction.
        truth: binary ``[H, W, Z]`` reference.
        spacing: voxel size in mm along the three axes.

    Returns:
        HD95 in mm: MONAI's ``compute_hausdorff_distance(percentile=95)``; 0 when both masks
        are empty, the volume's diagonal in mm when only one is.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"hd95 needs two 3-D masks of one shape; got {pred.shape} and {truth.shape}")
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return math.sqrt(sum((n * float(d)) ** 2 for n, d in zip(pred.shape, spacing)))
    import torch
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():  # MONAI warns of its own internal call (always_return_as_numpy), once per case
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        distance = compute_hausdorff_distance(
            torch.from_numpy(pred[None, None]), torch.from_numpy(truth[None, None]), include_background=True,
            percentile=95, spacing=[float(d) for d in spacing],
        )
    return float(distance.reshape(-1)[0])


def _case_masks(pred: np.ndarray, truth: np.ndarray, geometry: SliceGeometry, rows: np.ndarray, case: str):
    """A case's masks stacked at their true positions ``[H, W, Z]`` and the spacing of that stack (mm)."""
    grid = geometry.case_grid(rows, case)
    order = np.argsort(grid.index, kind="stable")
    index = grid.index[order]
    row_mm, col_mm, slice_mm = grid.spacing()
    steps = np.diff(index)
    if len(index) == 1 or (steps == steps[0]).all():  # evenly spaced: one volume, k times the slice spacing
        step = int(steps[0]) if len(index) > 1 else 1
        position = np.arange(len(index))
    else:  # uneven gaps: the source grid from the first slice to the last, gaps empty
        step, position = 1, index - index[0]
    depth = int(position[-1]) + 1
    stacked = []
    for masks in (pred, truth):
        volume = np.zeros((*masks.shape[1:], depth), dtype=bool)
        volume[..., position] = np.moveaxis(np.asarray(masks[rows[order]], dtype=bool), 0, -1)
        stacked.append(volume)
    return stacked[0], stacked[1], (row_mm, col_mm, slice_mm * step)


def _per_case(
    pred: np.ndarray, truth: np.ndarray, case_ids: np.ndarray, geometry: SliceGeometry | None,
    columns: Sequence[str], score,
) -> pd.DataFrame:
    """``score(pred, truth, spacing, case)`` -> one value per column, for each case's masks stacked once
    at their true positions; NaN for every case without geometry. Indexed by case in order of first appearance."""
    case_ids = np.asarray(case_ids, dtype=str)
    _, first = np.unique(case_ids, return_index=True)
    cases = [case_ids[i] for i in sorted(first)]
    frame = pd.DataFrame(np.nan, index=pd.Index(cases, name="case"), columns=list(columns), dtype=np.float64)
    if geometry is None:
        return frame
    for case in cases:
        case_pred, case_truth, spacing = _case_masks(pred, truth, geometry, np.flatnonzero(case_ids == case), case)
        frame.loc[case, list(columns)] = score(case_pred, case_truth, spacing, case)
    return frame


def _lesion_scorer():
    """`lesionwise_or_nan`, or NaN for both where the brats-eval extra is missing (asked once per call, not per case)."""
    if lesionwise_missing() is None:
        return lesionwise_or_nan
    return lambda *_: (math.nan, math.nan)


def case_hd95(pred: np.ndarray, truth: np.ndarray, case_ids: np.ndarray, geometry: SliceGeometry | None) -> pd.Series:
    """HD95 (mm) per case over its slices at their true positions (see the module docstring).

    Args:
        pred: binary ``[N, H, W]`` prediction.
        truth: binary ``[N, H, W]`` reference.
        case_ids: ``[N]`` case of each slice.
        geometry: the slices' geometry; None gives NaN for every case.

    Returns:
        float Series named ``hd95``, indexed by case in order of first appearance.
    """
    return _per_case(pred, truth, case_ids, geometry, ["hd95"], lambda p, t, spacing, _: hd95(p, t, spacing))["hd95"]


def case_lesionwise(pred: np.ndarray, truth: np.ndarray, case_ids: np.ndarray, geometry: SliceGeometry | None) -> pd.DataFrame:
    """`LESION_METRICS` per case over its slices at their true positions (`benchmark.lesionwise`).

    Args:
        pred, truth, case_ids: as `case_hd95`.
        geometry: the slices' geometry; None, or the brats-eval extra missing, gives NaN.

    Returns:
        float columns `LESION_METRICS`, indexed by case in order of first appearance.
    """
    return _per_case(pred, truth, case_ids, geometry, LESION_METRICS, _lesion_scorer())


def case_metrics(
    pred: np.ndarray, truth: np.ndarray, case_ids: np.ndarray, geometry: SliceGeometry | None = None
) -> pd.DataFrame:
    """Per-case metrics and counts: columns ``METRICS``, `OPTIONAL_METRICS` and ``tp fp tn fn``, indexed by case.

    Args:
        pred, truth, case_ids: as `confusion_by_case`.
        geometry: the slices' geometry, for HD95 and the lesion-wise metrics in mm; None leaves them NaN.
    """
    result = metrics_from_confusion(confusion_by_case(pred, truth, case_ids))
    lesions = _lesion_scorer()

    def score(p: np.ndarray, t: np.ndarray, spacing: Sequence[float], case: str) -> tuple[float, ...]:
        return (hd95(p, t, spacing), *lesions(p, t, spacing, case))

    optional = _per_case(pred, truth, case_ids, geometry, OPTIONAL_METRICS, score).reindex(result.index)
    counts = [c for c in result.columns if c not in METRICS]
    return pd.concat([result[list(METRICS)], optional, result[counts]], axis=1)


@dataclass(frozen=True)
class Aggregate:
    """Mean, standard deviation and 95 % bootstrap interval of a metric over cases."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int


def aggregate(values: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Aggregate:
    """Summarise per-case values; the percentile bootstrap resamples cases.

    Args:
        values: ``[n]`` per-case values.
        resamples: bootstrap resamples. Defaults to 2000.
        seed: seed of the resampling, so reports are reproducible. Defaults to 0.
        level: interval coverage. Defaults to 0.95.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        nan = float("nan")
        return Aggregate(nan, nan, nan, nan, 0)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else 0.0
    if n == 1:
        return Aggregate(mean, std, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Aggregate(mean, std, float(low), float(high), n)
