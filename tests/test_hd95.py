"""HD95 (mm): MONAI's implementation on hand-made masks, slices at their true positions, the empty-mask
rule, and its way through results.csv and the summary (lower-is-better)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from benchmark.analysis import DISTANCE_SUMMARY_COLUMNS, SUMMARY_COLUMNS, summary_table
from benchmark.geometry import SliceGeometry
from benchmark.metrics import case_hd95, case_metrics, hd95
from benchmark.outputs import RESULTS_CSV_COLUMNS

SPACING = (0.8, 1.2, 2.5)  # rows, columns, slices (mm)


def affine(spacing=SPACING) -> np.ndarray:
    out = np.diag([*spacing, 1.0])
    out[:3, 3] = (-40.0, 12.0, 7.0)
    return out


def monai_hd95(pred: np.ndarray, truth: np.ndarray, spacing) -> float:
    """MONAI directly on one ``[H, W, Z]`` volume."""
    value = compute_hausdorff_distance(
        torch.from_numpy(pred[None, None]), torch.from_numpy(truth[None, None]), include_background=True, percentile=95,
        spacing=list(spacing),
    )
    return float(value.reshape(-1)[0])


def blobs(depth: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A truth ellipsoid and a shifted, dented prediction, ``[H, W, Z]``."""
    r, c, z = np.meshgrid(np.arange(24), np.arange(20), np.arange(depth), indexing="ij")
    truth = ((r - 11) / 7.0) ** 2 + ((c - 9) / 6.0) ** 2 + ((z - depth / 2) / 3.0) ** 2 <= 1
    pred = ((r - 13) / 6.0) ** 2 + ((c - 10) / 6.5) ** 2 + ((z - depth / 2 - 1) / 3.0) ** 2 <= 1
    pred &= ~((r > 15) & (c < 7))
    return pred, truth


def as_slices(volume: np.ndarray, index) -> np.ndarray:
    """Slices ``index`` of an ``[H, W, Z]`` volume as ``[S, H, W]``."""
    return np.moveaxis(volume[..., list(index)], -1, 0)


def test_two_points_by_hand():
    truth, pred = np.zeros((4, 4, 5), bool), np.zeros((4, 4, 5), bool)
    truth[1, 1, 0] = pred[1, 1, 3] = True
    assert hd95(pred, truth, SPACING) == pytest.approx(3 * 2.5)


def test_contiguous_case_equals_monai_on_the_volume_with_the_affine_s_spacing():
    pred, truth = blobs()
    geometry = SliceGeometry.for_case(affine(), range(3, 12))  # the case starts at slice 3 of its source
    value = case_hd95(as_slices(pred, range(9)), as_slices(truth, range(9)), np.array(["a"] * 9), geometry)
    assert value["a"] == pytest.approx(monai_hd95(pred, truth, SPACING))
    assert value["a"] != pytest.approx(monai_hd95(pred, truth, (1.0, 1.0, 1.0)))  # spacing matters here


def test_evenly_spaced_kept_slices_measure_at_their_true_spacing():
    pred, truth = blobs(depth=9)
    kept = [0, 2, 4, 6, 8]
    geometry = SliceGeometry.for_case(affine(), kept)
    value = case_hd95(as_slices(pred, kept), as_slices(truth, kept), np.array(["a"] * 5), geometry)["a"]
    assert value == pytest.approx(monai_hd95(pred[..., kept], truth[..., kept], (0.8, 1.2, 5.0)))


def test_unevenly_spaced_slices_sit_on_the_source_grid_with_empty_gaps():
    pred, truth = blobs(depth=9)
    kept = [1, 2, 3, 6, 7]
    geometry = SliceGeometry.for_case(affine(), kept)
    rows = np.array([3, 0, 4, 1, 2])  # rows in any order: the index places them
    slices_pred, slices_truth = as_slices(pred, kept)[rows], as_slices(truth, kept)[rows]
    shuffled = SliceGeometry(geometry.affines, geometry.index[rows])
    value = case_hd95(slices_pred, slices_truth, np.array(["a"] * 5), shuffled)["a"]
    gapped_pred, gapped_truth = np.zeros((24, 20, 7), bool), np.zeros((24, 20, 7), bool)
    gapped_pred[..., [0, 1, 2, 5, 6]] = pred[..., kept]
    gapped_truth[..., [0, 1, 2, 5, 6]] = truth[..., kept]
    assert value == pytest.approx(monai_hd95(gapped_pred, gapped_truth, SPACING))


def test_empty_masks_rule():
    empty = np.zeros((155, 240, 240), bool)
    one = empty.copy()
    one[70, 100:110, 100:110] = True
    geometry = SliceGeometry.for_case(np.eye(4), range(155))
    ids = np.array(["a"] * 155)
    assert case_hd95(empty, empty, ids, geometry)["a"] == 0.0
    # BraTS's convention: the diagonal of a 240 x 240 x 155 volume of 1 mm voxels
    assert case_hd95(one, empty, ids, geometry)["a"] == pytest.approx(373.13, abs=0.01)
    assert case_hd95(empty, one, ids, geometry)["a"] == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2))
    assert np.isnan(case_hd95(one, one, ids, None)["a"])  # no geometry, no mm


def test_case_metrics_puts_hd95_per_case_after_the_ratios():
    pred, truth = blobs()
    stacked_pred = np.concatenate([as_slices(pred, range(9)), as_slices(truth, range(9))])
    stacked_truth = np.concatenate([as_slices(truth, range(9))] * 2)
    geometry = SliceGeometry.concatenate([SliceGeometry.for_case(affine(), range(9)), SliceGeometry.for_case(affine((1, 1, 1)), range(9))])
    result = case_metrics(stacked_pred, stacked_truth, np.array(["b"] * 9 + ["a"] * 9), geometry)
    assert list(result.index) == ["b", "a"]
    assert list(result.columns[:6]) == ["dice", "jaccard", "accuracy", "sensitivity", "specificity", "hd95"]
    assert result.loc["b", "hd95"] == pytest.approx(monai_hd95(pred, truth, SPACING))
    assert result.loc["a", "hd95"] == 0.0  # a perfect prediction


def test_results_csv_appends_hd95_and_the_lesion_wise_metrics_after_the_required_columns():
    required = ["cell", "segmenter", "attack", "rate", "defense", "seed", "case", "dice", "jaccard", "accuracy", "sensitivity", "specificity"]
    assert RESULTS_CSV_COLUMNS == [*required, "hd95", "lesion_dice", "lesion_hd95"]


def test_summary_hd95_is_lower_is_better():
    rows, cells = [], []
    groups = {("unet", "none", 0.0, "none"): 5.0, ("unet", "gan", 0.5, "none"): 9.0}
    for (segmenter, attack, rate, defense), level in groups.items():
        for seed in range(3):
            cell = f"{attack}-{seed}"
            cells.append(dict(cell=cell, segmenter=segmenter, attack=attack, rate=rate, defense=defense, seed=seed,
                              attack_report={}, defense_report={}))
            for case in range(6):
                dice = 0.9 if attack == "none" else 0.7
                rows.append(dict(segmenter=segmenter, attack=attack, rate=rate, defense=defense, seed=seed, cell=cell,
                                 case=f"c{case}", dice=dice + 0.01 * case, accuracy=dice, sensitivity=dice,
                                 hd95=level + 0.5 * case + 0.2 * seed))
    table = summary_table(pd.DataFrame(cells), pd.DataFrame(rows))
    assert list(table.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    distance_start = list(table.columns).index("hd95")
    assert list(table.columns[distance_start: distance_start + len(DISTANCE_SUMMARY_COLUMNS)]) == DISTANCE_SUMMARY_COLUMNS
    summary = table.set_index("attack")
    hit, clean = summary.loc["gan"], summary.loc["none"]
    assert hit["drop"] == pytest.approx(0.2)  # Dice fell: positive drop
    assert hit["hd95_rise"] == pytest.approx(4.0)  # HD95 rose: positive rise, the same "the attack hurt" sign
    assert hit["hd95_rise_ci_low"] <= 4.0 <= hit["hd95_rise_ci_high"]
    assert clean["hd95"] == pytest.approx(5.0 + 0.5 * 2.5 + 0.2)
    assert clean["hd95_ci_low"] < clean["hd95"] < clean["hd95_ci_high"]
    assert pd.isna(clean["hd95_rise"])
