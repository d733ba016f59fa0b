"""Dose-response summaries on hand examples."""

from __future__ import annotations

import pytest

from leaderboard import dose_response_auc, rate_at_drop, value_at_rate


def test_dose_response_hand_examples():
    rates, dice = [0.0, 0.5, 1.0], [0.8, 0.6, 0.2]
    assert dose_response_auc(rates, dice) == pytest.approx(0.55)  # (0.35 + 0.20) / 1
    assert dose_response_auc([1.0, 0.0, 0.5], [0.2, 0.8, 0.6]) == pytest.approx(0.55)  # order does not matter
    assert dose_response_auc([0.0], [0.8]) is None
    assert rate_at_drop(rates, dice, clean=0.8) == pytest.approx(0.1)  # 0.76 reached 1/5 of the way to 0.5
    assert rate_at_drop(rates, [0.8, 0.79, 0.78], clean=0.8) is None
    assert value_at_rate(rates, dice, 0.25) == pytest.approx(0.7)
    assert value_at_rate([0.0, 0.25], [0.8, 0.7], 0.5) is None
