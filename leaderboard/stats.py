"""Numbers of the boards: dose-response summaries and the paired test against the clean baseline."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["ALPHA", "DROP_FRACTION", "PairedTest", "paired_test", "dose_response_auc", "rate_at_drop", "value_at_rate"]

ALPHA = 0.05
"""Significance level of the paired test (two-sided)."""
DROP_FRACTION = 0.05
"""The relative Dice loss whose poison rate the attacks board reports (5 %)."""


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon signed-rank test of clean minus attacked per-case values.

    ``mean_drop`` > 0 means the attacked cell is worse; ``significant`` marks a drop
    (``mean_drop`` > 0) whose two-sided p-value is below `ALPHA`.
    """

    n: int
    mean_drop: float
    statistic: float | None
    p_value: float | None
    significant: bool


def paired_test(clean: np.ndarray, attacked: np.ndarray, alpha: float = ALPHA) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test over cases (``scipy.stats.wilcoxon``, zero differences dropped).

    Args:
        clean: ``[n]`` per-case values of the clean baseline.
        attacked: ``[n]`` values of the same cases in the attacked cell, same order.
        alpha: significance level. Defaults to `ALPHA`.

    Returns:
        The test; ``statistic`` and ``p_value`` are None when every difference is zero
        or there is no case.
    """
    from scipy.stats import wilcoxon

    clean = np.asarray(clean, dtype=np.float64)
    attacked = np.asarray(attacked, dtype=np.float64)
    if clean.shape != attacked.shape:
        raise ValueError(f"paired values differ in shape: {clean.shape} vs {attacked.shape}")
    n = len(clean)
    if n == 0:
        return PairedTest(0, math.nan, None, None, False)
    diff = clean - attacked
    mean_drop = float(diff.mean())
    if not np.any(diff != 0):
        return PairedTest(n, mean_drop, None, None, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = wilcoxon(clean, attacked, zero_method="wilcox", alternative="two-sided")
    p = float(result.pvalue)
    return PairedTest(n, mean_drop, float(result.statistic), p, bool(mean_drop > 0 and p < alpha))


def _curve(rates: list[float], values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(np.asarray(rates, dtype=float), kind="stable")
    return np.asarray(rates, dtype=float)[order], np.asarray(values, dtype=float)[order]


def dose_response_auc(rates: list[float], values: list[float]) -> float | None:
    """Area under the dose-response curve (trapezoids) divided by its rate span: mean value over the rates.

    None with fewer than two rates.
    """
    x, y = _curve(rates, values)
    if len(x) < 2 or x[-1] == x[0]:
        return None
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return area / float(x[-1] - x[0])


def rate_at_drop(rates: list[float], values: list[float], clean: float, fraction: float = DROP_FRACTION) -> float | None:
    """The poison rate at which the value first falls to ``(1 - fraction) × clean`` (linear interpolation).

    None when it never falls that far over the rates given.
    """
    x, y = _curve(rates, values)
    threshold = (1 - fraction) * clean
    for i in range(len(x)):
        if y[i] <= threshold:
            if i == 0 or y[i - 1] == y[i]:
                return float(x[i])
            return float(x[i - 1] + (y[i - 1] - threshold) * (x[i] - x[i - 1]) / (y[i - 1] - y[i]))
    return None


def value_at_rate(rates: list[float], values: list[float], rate: float) -> float | None:
    """The curve's value at ``rate`` (linear interpolation); None outside the rates given."""
    x, y = _curve(rates, values)
    if len(x) == 0 or rate < x[0] or rate > x[-1]:
        return None
    return float(np.interp(rate, x, y))
