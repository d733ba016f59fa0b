"""How well a defense's scores and decisions find the poisoned cases."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["detection_stats"]


def detection_stats(scores: dict[str, float], removed: list[str], poisoned: set[str]) -> dict[str, Any]:
    """AUROC and average precision of the scores, precision / recall / F1 of the decision.

    Args:
        scores: per-case suspicion.
        removed: cases the defense removed.
        poisoned: the truly poisoned cases.

    Returns:
        ``auroc``, ``ap`` (None when only one class is present), ``precision``,
        ``recall``, ``f1`` (None when undefined), ``removed_fraction``, ``removed`` count
        and ``poisoned`` count.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    cases = sorted(scores)
    truth = np.array([case in poisoned for case in cases])
    values = np.array([scores[case] for case in cases], dtype=float)
    both = 0 < truth.sum() < len(truth)
    removed_set = set(removed)
    hits = len(removed_set & poisoned)
    precision = hits / len(removed_set) if removed_set else None
    recall = hits / len(poisoned) if poisoned else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if precision == 0 or recall == 0 else None)
    return {
        "auroc": float(roc_auc_score(truth, values)) if both else None,
        "ap": float(average_precision_score(truth, values)) if both else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "removed_fraction": len(removed_set) / len(cases) if cases else math.nan,
        "removed": len(removed_set),
        "poisoned": len(poisoned),
    }
