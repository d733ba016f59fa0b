"""How well a defense's scores and decisions find the poisoned cases.

Only the cases a defense could remove count: trusted cases are never attacked and never
removable, so they are left out of every figure here (they would otherwise inflate the
clean class of the AUROC and the denominator of the removed fraction).
"""

from __future__ import annotations

import math
from typing import Any, Collection

import numpy as np

__all__ = ["detection_stats"]


def detection_stats(
    scores: dict[str, float], removed: list[str], poisoned: set[str], trusted: Collection[str] = ()
) -> dict[str, Any]:
    """AUROC and average precision of the scores, precision / recall / F1 of the decision.

    Args:
        scores: per-case suspicion (trusted cases may be among them; they are left out).
        removed: cases the defense removed.
        poisoned: the truly poisoned cases.
        trusted: cases the defense could not remove (the trusted set).

    Returns:
        ``auroc``, ``ap`` (None when only one class is present), ``precision``,
        ``recall``, ``f1`` (None when undefined), ``removed_fraction`` (of the removable
        cases), ``removed`` count, ``poisoned`` count and ``removable`` count, all over
        the removable cases only.

    Raises:
        ValueError: a trusted case is listed as removed or poisoned.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    trusted = {str(case) for case in trusted}
    if trusted & (set(removed) | set(poisoned)):
        raise ValueError(f"trusted cases cannot be removed or poisoned: {sorted(trusted & (set(removed) | set(poisoned)))[:5]}")
    cases = sorted(case for case in scores if case not in trusted)
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
        "removable": len(cases),
    }
