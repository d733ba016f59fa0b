"""Lesion-wise Dice and HD95 (`benchmark.lesionwise`): checked against the BraTS challenge's own
evaluation run on NIfTI files, the edge-case rules, the columns' way into the summary, and what a
missing extra leaves (NaN, and what to install)."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import benchmark.metrics as metrics_module
from benchmark.analysis import LESION_SUMMARY_COLUMNS, summary_table
from benchmark.geometry import SliceGeometry
from benchmark.lesionwise import LESION_METRICS, lesionwise_missing
from benchmark.metrics import case_metrics

SPACING = (1.5, 1.0, 2.0)  # rows, columns, slices (mm)
DEPTH = 12


def _affine() -> np.ndarray:
    out = np.diag([*SPACING, 1.0])
    out[:3, 3] = (-30.0, 20.0, 5.0)
    return out


def _box(volume: np.ndarray, rows: slice, cols: slice, slices: slice) -> np.ndarray:
    volume[rows, cols, slices] = True
    return volume


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``case -> (prediction, reference)``, ``[H, W, Z]`` masks with several lesions each."""
    empty = np.zeros((40, 36, DEPTH), bool)
    truth = _box(_box(empty.copy(), slice(4, 12), slice(4, 10), slice(2, 7)), slice(25, 31), slice(20, 30), slice(6, 10))
    partial = _box(empty.copy(), slice(5, 12), slice(4, 11), slice(3, 7))  # the first lesion, the second missed
    partial = _box(partial, slice(30, 34), slice(2, 5), slice(0, 2))  # and a false-positive lesion
    two = _box(_box(empty.copy(), slice(4, 11), slice(5, 10), slice(2, 8)), slice(26, 31), slice(19, 29), slice(6, 9))
    return {"partial": (partial, truth), "both": (two, truth), "missed": (empty.copy(), truth), "empty": (empty.copy(), empty.copy())}


def _as_slices(volume: np.ndarray) -> np.ndarray:
    return np.moveaxis(volume, -1, 0)  # [H, W, Z] -> the harness's [N, H, W] slices


def _harness(cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    pred = np.concatenate([_as_slices(p) for p, _ in cases.values()])
    truth = np.concatenate([_as_slices(t) for _, t in cases.values()])
    ids = np.repeat(list(cases), DEPTH)
    geometry = SliceGeometry.concatenate([SliceGeometry.for_case(_affine(), range(DEPTH)) for _ in cases])
    return case_metrics(pred, truth, ids, geometry)


needs_extra = pytest.mark.skipif(lesionwise_missing() is not None, reason=str(lesionwise_missing()))


@needs_extra
def test_lesion_wise_metrics_equal_the_challenge_evaluation_of_the_same_files(tmp_path):
    from brats_evaluation import config_path, evaluate_single_exam, parse_seg_results
    from panoptica import Panoptica_Evaluator

    cases = _cases()
    ours = _harness(cases)
    evaluator = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
    results = {"metrics": [], "missings": []}
    for case, (pred, truth) in cases.items():
        if not truth.any() and not pred.any():
            continue  # the challenge's code has no instance to score here (NaN); tested below
        paths = {}
        for name, mask in (("pred", pred), ("ref", truth)):
            paths[name] = tmp_path / f"{name}-{case}.nii.gz"
            nib.save(nib.Nifti1Image(np.where(mask, 3, 0).astype(np.uint8), _affine()), paths[name])  # label 3: enhancing tumour
        results["metrics"].append(evaluate_single_exam(str(paths["pred"]), str(paths["ref"]), case, evaluator))
    (tmp_path / "summary.json").write_text(json.dumps(results, default=float))
    parse_seg_results(str(tmp_path / "summary.json"), str(tmp_path / "parsed.csv"))
    theirs = pd.read_csv(tmp_path / "parsed.csv").set_index("subject_id")
    diagonal = math.sqrt(sum((n * d) ** 2 for n, d in zip((40, 36, DEPTH), SPACING)))
    for case in ("partial", "both", "missed"):
        assert ours.loc[case, "lesion_dice"] == pytest.approx(theirs.loc[case, "lesionwise_dsc_mean_et"], abs=1e-9), case
        expected_hd95 = theirs.loc[case, "lesionwise_hd95_mean_et"]
        expected_hd95 = diagonal if math.isinf(expected_hd95) else expected_hd95  # no lesion matched: the volume's diagonal
        assert ours.loc[case, "lesion_hd95"] == pytest.approx(expected_hd95, abs=1e-9), case
    # the rules the numbers show: a matched lesion scored alone, a missed case at zero
    assert 0.0 < ours.loc["partial", "lesion_dice"] < 1.0 and ours.loc["partial", "lesion_dice"] > ours.loc["partial", "dice"]
    assert ours.loc["missed", "lesion_dice"] == 0.0 and ours.loc["missed", "lesion_hd95"] == pytest.approx(diagonal)
    assert ours.loc["empty", "lesion_dice"] == 1.0 and ours.loc["empty", "lesion_hd95"] == 0.0


@needs_extra
def test_a_case_without_geometry_is_not_measured_lesion_wise():
    pred, truth = _cases()["partial"]
    result = case_metrics(_as_slices(pred), _as_slices(truth), np.array(["a"] * DEPTH), None)
    assert result[list(LESION_METRICS)].isna().all().all()


def test_without_the_extra_the_columns_are_empty_and_the_install_is_named(monkeypatch):
    monkeypatch.setattr(metrics_module, "lesionwise_missing", lambda: "needs brats-evaluation; install it with: pip install 'poisonbench[brats-eval]'")
    result = _harness(_cases())
    assert list(result.columns[5:8]) == ["hd95", "lesion_dice", "lesion_hd95"]
    assert result[list(LESION_METRICS)].isna().all().all() and result["hd95"].notna().all()
    import benchmark.lesionwise as lesionwise_module

    monkeypatch.setattr(lesionwise_module.importlib.util, "find_spec", lambda name: None)
    assert "pip install 'poisonbench[brats-eval]'" in lesionwise_module.lesionwise_missing()


def test_summary_gives_the_lesion_wise_drop_and_rise_with_the_sign_of_harm():
    rows, cells = [], []
    for attack, rate, dice, distance in (("none", 0.0, 0.8, 4.0), ("gan", 0.5, 0.6, 7.0)):
        for seed in range(3):
            cell = f"{attack}-{seed}"
            cells.append(dict(cell=cell, segmenter="unet", attack=attack, rate=rate, defense="none", seed=seed,
                              attack_report={}, defense_report={}))
            for case in range(5):
                rows.append(dict(segmenter="unet", attack=attack, rate=rate, defense="none", seed=seed, cell=cell, case=f"c{case}",
                                 dice=dice, accuracy=dice, sensitivity=dice, hd95=distance,
                                 lesion_dice=dice + 0.02 * case, lesion_hd95=distance + 0.3 * seed))
    table = summary_table(pd.DataFrame(cells), pd.DataFrame(rows))
    assert list(table.columns[-len(LESION_SUMMARY_COLUMNS):]) == LESION_SUMMARY_COLUMNS
    hit = table.set_index("attack").loc["gan"]
    assert hit["lesion_dice_drop"] == pytest.approx(0.2)  # lesion-wise Dice fell: positive, as Dice's drop
    assert hit["lesion_hd95_rise"] == pytest.approx(3.0)  # lesion-wise HD95 rose: positive, as HD95's rise
    assert hit["lesion_dice_ci_low"] <= hit["lesion_dice"] <= hit["lesion_dice_ci_high"]
