"""Paired test against scipy and by hand; dose-response summaries on hand examples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import wilcoxon

from leaderboard import dose_response_auc, paired_test, rate_at_drop, value_at_rate

# clean − attacked = [0.30, 0.10, 0.20, −0.05, 0.40, 0.15]: ranks of |d| 5, 2, 4, 1, 6, 3 → W+ = 20, W− = 1.
# Exact two-sided p: subsets of {1..6} with rank sum ≤ 1 are {} and {1}: 2 × 2 / 2**6 = 0.0625.
CLEAN = np.array([0.90, 0.80, 0.90, 0.70, 0.90, 0.85])
ATTACKED = np.array([0.60, 0.70, 0.70, 0.75, 0.50, 0.70])


def test_paired_test_hand_example_matches_scipy():
    result = paired_test(CLEAN, ATTACKED)
    reference = wilcoxon(CLEAN, ATTACKED)
    assert result.n == 6
    assert result.statistic == 1.0 == reference.statistic
    assert result.p_value == pytest.approx(0.0625, abs=1e-12) and result.p_value == pytest.approx(reference.pvalue)
    assert result.mean_drop == pytest.approx(np.mean([0.30, 0.10, 0.20, -0.05, 0.40, 0.15]))
    assert not result.significant  # p = 0.0625 ≥ 0.05


def test_all_cases_worse_is_significant():
    attacked = CLEAN - np.array([0.30, 0.10, 0.20, 0.05, 0.40, 0.15])
    result = paired_test(CLEAN, attacked)
    assert result.statistic == 0.0
    assert result.p_value == pytest.approx(2 / 64) == pytest.approx(wilcoxon(CLEAN, attacked).pvalue)
    assert result.significant


def test_improvement_is_never_a_significant_drop():
    attacked = CLEAN + 0.05 * np.arange(1, 7)
    result = paired_test(CLEAN, np.minimum(attacked, 1.0))
    assert result.p_value < 0.05 and result.mean_drop < 0 and not result.significant


def test_no_difference_gives_no_p_value():
    result = paired_test(CLEAN, CLEAN.copy())
    assert result.p_value is None and result.statistic is None and not result.significant
    with pytest.raises(ValueError):
        paired_test(CLEAN, CLEAN[:3])


def test_dose_response_hand_examples():
    rates, dice = [0.0, 0.5, 1.0], [0.8, 0.6, 0.2]
    assert dose_response_auc(rates, dice) == pytest.approx(0.55)  # (0.35 + 0.20) / 1
    assert dose_response_auc([1.0, 0.0, 0.5], [0.2, 0.8, 0.6]) == pytest.approx(0.55)  # order does not matter
    assert dose_response_auc([0.0], [0.8]) is None
    assert rate_at_drop(rates, dice, clean=0.8) == pytest.approx(0.1)  # 0.76 reached 1/5 of the way to 0.5
    assert rate_at_drop(rates, [0.8, 0.79, 0.78], clean=0.8) is None
    assert value_at_rate(rates, dice, 0.25) == pytest.approx(0.7)
    assert value_at_rate([0.0, 0.25], [0.8, 0.7], 0.5) is None


def test_site_p_values_equal_scipy_on_the_fixture(bundle):
    """The board's p-value of noise@0.5 equals scipy's on the seed-averaged per-case Dice."""
    from leaderboard.board import Entry
    from leaderboard.tables import analyse

    analysis = analyse([Entry("e", None, bundle, "", None)])
    row = next(r for r in analysis.cells if r["attack_name"] == "noise" and r["rate"] == 0.5 and r["defense_name"] == "none")

    def per_case(rate, attack):
        cells = [c for c in bundle["cells"] if c["config"]["rate"] == rate and c["config"]["attack"]["name"] == attack
                 and c["config"]["defense"]["name"] == "none"]
        cases = sorted(c["case"] for c in cells[0]["cases"])
        return np.array([np.mean([next(x["dice"] for x in cell["cases"] if x["case"] == case) for cell in cells]) for case in cases])

    clean, attacked = per_case(0.0, "none"), per_case(0.5, "noise")
    reference = wilcoxon(clean, attacked)
    assert row["p_value"] == pytest.approx(reference.pvalue, rel=1e-6)
    assert row["drop"] == pytest.approx(float(np.mean(clean - attacked)), abs=1e-6)
    assert row["significant"] is True and row["paired_cases"] == 8
    json.dumps(row)  # JSON-ready
