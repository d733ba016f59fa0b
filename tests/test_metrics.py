from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.metrics import aggregate, case_metrics


def _monai_reference(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from monai.metrics import ConfusionMatrixMetric, DiceMetric

    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    t = torch.from_numpy(truth.astype(np.float32))[None, None]
    dice = DiceMetric(include_background=True, reduction="none")(p, t).item()
    cm = ConfusionMatrixMetric(
        include_background=True, metric_name=["sensitivity", "specificity", "accuracy", "threat score"], reduction="none"
    )
    cm(p, t)
    sens, spec, acc, jac = (r.item() for r in cm.aggregate())
    return {"dice": dice, "sensitivity": sens, "specificity": spec, "accuracy": acc, "jaccard": jac}


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_monai_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    case_ids = []
    truths, preds = [], []
    for case in range(3):
        n = rng.integers(2, 5)
        truth = rng.random((n, 16, 16)) < rng.uniform(0.1, 0.5)
        pred = np.where(rng.random((n, 16, 16)) < 0.3, ~truth, truth)
        truths.append(truth)
        preds.append(pred)
        case_ids += [f"c{case}"] * n
    result = case_metrics(np.concatenate(preds), np.concatenate(truths), np.array(case_ids))
    assert list(result.index) == ["c0", "c1", "c2"]
    for case, truth, pred in zip(result.index, truths, preds):
        expected = _monai_reference(np.moveaxis(pred, 0, -1), np.moveaxis(truth, 0, -1))
        for metric, value in expected.items():
            assert result.loc[case, metric] == pytest.approx(value, abs=1e-6), metric


@pytest.mark.parametrize(
    "pred, truth, expected",
    [
        # both empty: perfect agreement
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), {"dice": 1.0, "jaccard": 1.0, "sensitivity": 1.0, "specificity": 1.0}),
        # truth empty, prediction not: Dice 0
        (np.ones((2, 4, 4)), np.zeros((2, 4, 4)), {"dice": 0.0, "jaccard": 0.0, "specificity": 0.0, "accuracy": 0.0}),
        # prediction empty, truth not
        (np.zeros((2, 4, 4)), np.ones((2, 4, 4)), {"dice": 0.0, "sensitivity": 0.0, "accuracy": 0.0}),
    ],
)
def test_empty_mask_convention(pred, truth, expected):
    result = case_metrics(pred, truth, np.array(["a", "a"]))
    for metric, value in expected.items():
        assert result.loc["a", metric] == value, metric


def test_counts_are_summed_over_the_slices_of_a_case():
    truth = np.zeros((3, 2, 2), bool)
    pred = np.zeros((3, 2, 2), bool)
    truth[0, 0, 0] = pred[0, 0, 0] = True  # TP in case a
    pred[1, 1, 1] = True  # FP in case a
    truth[2, 0, 1] = True  # FN in case b
    result = case_metrics(pred, truth, np.array(["a", "a", "b"]))
    assert result.loc["a", ["tp", "fp", "tn", "fn"]].tolist() == [1, 1, 6, 0]
    assert result.loc["b", ["tp", "fp", "tn", "fn"]].tolist() == [0, 0, 3, 1]
    assert result.loc["a", "dice"] == pytest.approx(2 / 3)


def test_aggregate_mean_std_and_bootstrap_interval():
    values = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    agg = aggregate(values)
    assert agg.mean == pytest.approx(0.6)
    assert agg.std == pytest.approx(np.std(values, ddof=1))
    assert agg.ci_low < agg.mean < agg.ci_high
    assert 0.2 <= agg.ci_low and agg.ci_high <= 1.0
    assert aggregate(values) == agg  # reproducible
    single = aggregate(np.array([0.5]))
    assert (single.mean, single.ci_low, single.ci_high, single.std) == (0.5, 0.5, 0.5, 0.0)
