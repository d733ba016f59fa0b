"""What the harness hands a defense: opaque, shuffled case ids and nothing but the slices."""

from __future__ import annotations

import re

import numpy as np
import pytest

from benchmark.defense_view import DefenseView, view_rng

from conftest import make_set


@pytest.fixture(scope="module")
def train():
    data = make_set(10, [7, 8, 9], seed=5)
    return data.with_arrays(meta={"marked": ["case07"]})


def test_view_renames_shuffles_and_strips_everything_but_the_slices(train):
    view = DefenseView.build(train, ["case00", "case01"], view_rng("cell", "fingerprint"))
    hidden = view.train
    assert all(re.fullmatch(r"case-\d", case) for case in hidden.cases)
    assert hidden.cases == sorted(hidden.cases)  # named in their (shuffled) order
    assert [view.real_ids[case] for case in hidden.cases] != train.cases  # the order is not the attack's
    assert sorted(view.real_ids.values()) == sorted(train.cases)
    assert hidden.meta == {} and not np.any(hidden.poisoned)
    for case in hidden.cases:
        rows = np.flatnonzero(hidden.case_ids == case)
        assert np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))  # a case's slices stay together
        real = train.subset([view.real_ids[case]])
        np.testing.assert_array_equal(hidden.images[rows], real.images)  # in their own order
        np.testing.assert_array_equal(hidden.labels[rows], real.labels)


def test_trusted_cases_keep_their_opaque_ids_in_both_views(train):
    view = DefenseView.build(train, ["case00", "case01"], view_rng("cell", "fingerprint"))
    assert sorted(view.real_ids[case] for case in view.trusted.cases) == ["case00", "case01"]
    assert set(view.trusted.cases) <= set(view.train.cases)
    for case in view.trusted.cases:
        np.testing.assert_array_equal(view.trusted.subset([case]).images, view.train.subset([case]).images)
    assert DefenseView.build(train, [], view_rng("x")).trusted is None


def test_order_depends_on_the_secret_only(train):
    def order(*secret):
        view = DefenseView.build(train, [], view_rng(*secret))
        return [view.real_ids[case] for case in view.train.cases]

    assert order("cell-a", "fp") == order("cell-a", "fp")  # reproducible
    assert order("cell-a", "fp") != order("cell-b", "fp")
    assert order("cell-a", "fp") != order("cell-a", "other-fp")


def test_scores_map_back_to_real_ids(train):
    view = DefenseView.build(train, [], view_rng("cell"))
    scores = {case: float(i) for i, case in enumerate(view.train.cases)}
    real = view.to_real({**scores, "case-unknown": 9.0})
    assert set(real) == set(train.cases)
    assert all(real[view.real_ids[case]] == value for case, value in scores.items())
