"""Lesion-wise Dice and HD95 through the BraTS challenge's own evaluation (optional extra).

Lesion-wise scoring treats each connected component of the reference as a lesion, matches
it to predicted components, and scores each match on its own. The challenge's code is the
``brats-evaluation`` package (AGPL-3.0, hence an extra: ``pip install
'poisonbench[brats-eval]'``), built on ``panoptica``. Where it is installed, every case
gains two columns, computed by the package's bundled glioma config (``config_path("gli")``:
connected components, maximum bipartite matching on Dice, its edge-case rules) and reduced
as its own ``parse_seg_results`` reduces them:

- ``lesion_dice``: ``lesionwise_dsc_mean``, panoptica's ``sq_dsc``, the mean Dice of the
  matched lesions (0 when no lesion is matched);
- ``lesion_hd95``: ``lesionwise_hd95_mean``, panoptica's ``sq_hd95`` (mm), the mean HD95
  of the matched lesions; where none is matched the package gives infinity, stored here as
  the diagonal of the case's volume, the rule of `benchmark.metrics.hd95`.

This is the package's glioma reduction, segmentation quality over the matched lesions: a
missed or a spurious lesion does not lower it (only a case with no match scores 0), unlike
the BraTS 2023 ranking, which counts each as Dice 0 and 374 mm; read it beside Dice,
which does count them. Unevenly spaced slices are stacked with empty gaps
(`benchmark.metrics`), which may cut one lesion into several.

The harness's target is one binary region, so each case is written as that region alone
(label 3 of the glioma config, its ``et`` group; the config's rules are the same for every
group). Both masks empty: panoptica has no instance to score and gives NaN; stored as
Dice 1 and 0 mm, the convention of the global metrics (nothing to find, nothing found).
Masks are the case's slices stacked at their true positions, with the spacing of
`benchmark.metrics` (the stacking HD95 uses). Without the extra the columns stay empty
(NaN: not measured), as HD95 does for a slice set without geometry.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import math
import warnings
from typing import Any, Sequence

import numpy as np

__all__ = ["LESION_METRICS", "LESION_LOWER_IS_BETTER", "LESIONWISE_EXTRA", "lesionwise_missing", "lesionwise_scores",
           "lesionwise_or_nan"]

LESION_METRICS: tuple[str, ...] = ("lesion_dice", "lesion_hd95")
"""Per-case lesion-wise columns, after ``hd95``; NaN where the extra is not installed."""
LESION_LOWER_IS_BETTER: tuple[str, ...] = ("lesion_hd95",)
LESIONWISE_EXTRA = "brats-eval"
_REGION_LABEL = 3
_REGION_GROUP = "et"


def lesionwise_missing() -> str | None:
    """None when ``brats-evaluation`` is importable, else what to install."""
    if importlib.util.find_spec("brats_evaluation") is None:
        return f"needs brats-evaluation; install it with: pip install 'poisonbench[{LESIONWISE_EXTRA}]'"
    return None


@functools.lru_cache(maxsize=1)
def _evaluator() -> Any:
    """The challenge's glioma evaluator, loaded once per process (its console notices are not the cell's output)."""
    from brats_evaluation import config_path
    from panoptica import Panoptica_Evaluator

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Panoptica_Evaluator.load_from_config(str(config_path("gli")))


def _skipped_groups(evaluator: Any) -> list[str]:
    return [name for name in evaluator.segmentation_class_groups_names if name != _REGION_GROUP]


def lesionwise_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """``(lesion_dice, lesion_hd95)`` of two binary 3-D masks, by the rules of the module docstring.

    Args:
        pred: binary ``[H, W, Z]`` prediction.
        truth: binary ``[H, W, Z]`` reference.
        spacing: voxel size in mm along the three axes.

    Raises:
        ImportError: brats-evaluation is not installed (`lesionwise_missing` says what to install).
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"lesionwise needs two 3-D masks of one shape; got {pred.shape} and {truth.shape}")
    if not pred.any() and not truth.any():
        return 1.0, 0.0
    evaluator = _evaluator()
    labelled = [np.where(mask, _REGION_LABEL, 0).astype(np.uint8) for mask in (pred, truth)]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # panoptica's NSD threshold notice, once per call
        result = evaluator.evaluate(
            labelled[0], labelled[1], voxelspacing=tuple(float(d) for d in spacing),
            skip_groups=_skipped_groups(evaluator), verbose=False,
        )[_REGION_GROUP].to_dict(True)
    dice, distance = float(result["sq_dsc"]), float(result["sq_hd95"])
    if not math.isfinite(distance):
        distance = math.sqrt(sum((n * float(d)) ** 2 for n, d in zip(pred.shape, spacing)))
    return dice, distance


_failure_reported = False


def lesionwise_or_nan(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], case: str) -> tuple[float, float]:
    """`lesionwise_scores`, or NaN for both with one warning per process when the package fails:
    an optional metric does not fail a trained cell."""
    global _failure_reported
    try:
        return lesionwise_scores(pred, truth, spacing)
    except Exception as exc:  # noqa: BLE001 - any failure of the optional package
        if not _failure_reported:
            _failure_reported = True
            warnings.warn(f"lesion-wise metrics not measured (case {case} and later failures): {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)
        return math.nan, math.nan
