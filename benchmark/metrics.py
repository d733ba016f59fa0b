"""Per-case segmentation metrics from one confusion count, and their aggregates.

Each validation case is scored as a volume (its slices stacked). All five metrics come
from one TP/FP/TN/FN count per case.

Empty-mask convention: when truth and prediction are both empty, Dice = Jaccard = 1;
when the truth is empty and the prediction is not, Dice = Jaccard = 0. A ratio whose
denominator is zero (sensitivity with no true positives to find, specificity with no
negatives) is 1: nothing that could be missed was missed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["METRICS", "confusion_by_case", "metrics_from_confusion", "case_metrics", "Aggregate", "aggregate"]

METRICS: tuple[str, ...] = ("dice", "jaccard", "accuracy", "sensitivity", "specificity")


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


def case_metrics(pred: np.ndarray, truth: np.ndarray, case_ids: np.ndarray) -> pd.DataFrame:
    """Per-case metrics and counts: columns ``METRICS`` + ``tp fp tn fn``, indexed by case."""
    return metrics_from_confusion(confusion_by_case(pred, truth, case_ids))


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
