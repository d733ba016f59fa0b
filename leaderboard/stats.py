"""Dose-response summaries of the boards (area under the curve, rate at a given drop, value at a rate).

Intervals, drops and their tests come from the analysis layer of ``benchmark``
(`benchmark.summary_table`); `ALPHA` is its significance level.
"""

from __future__ import annotations

import numpy as np

from benchmark import ALPHA

__all__ = ["ALPHA", "DROP_FRACTION", "dose_response_auc", "rate_at_drop", "value_at_rate"]

DROP_FRACTION = 0.05
"""The relative Dice loss whose poison rate the attacks board reports (5 %)."""


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
