"""The attack family (noise, blur, intensity-shift, modality-swap, label-erosion, label-dilation).

Every member shares CaseAttack's selection: it must change exactly the selected whole
cases, keep the others bit for bit, and leave the untouched part (masks or images) alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import ConfigError, create_attack, select_cases

IMAGE_ATTACKS = [
    ("noise", {}),
    ("noise", {"severity": 0.1}),
    ("blur", {}),
    ("blur", {"method": "resample", "factor": 2}),
    ("intensity-shift", {}),
    ("modality-swap", {}),
    ("modality-swap", {"source": "flair"}),
]
LABEL_ATTACKS = [("label-erosion", {}), ("label-dilation", {}), ("label-erosion", {"iterations": 1}), ("label-dilation", {"iterations": 3})]


@pytest.mark.parametrize("name, params", IMAGE_ATTACKS + LABEL_ATTACKS)
@pytest.mark.parametrize("rate", [0.0, 1 / 6, 0.5, 1.0])
def test_changes_exactly_the_selected_cases(toy, name, params, rate):
    attack = create_attack(name, **params)
    out = attack.poison(toy, rate, np.random.default_rng(3))
    expected = sorted(select_cases(toy, rate, np.random.default_rng(3)))
    assert out.poisoned_cases() == expected
    assert out.images.shape == toy.images.shape and out.labels.shape == toy.labels.shape
    labels_only = name.startswith("label-")
    for case in toy.cases:
        rows = toy.case_ids == case
        assert out.poisoned[rows].all() or not out.poisoned[rows].any()
        if case in expected:
            if labels_only:
                np.testing.assert_array_equal(out.images[rows], toy.images[rows])
                assert not np.array_equal(out.labels[rows], toy.labels[rows])
            else:
                np.testing.assert_array_equal(out.labels[rows], toy.labels[rows])
                assert not np.array_equal(out.images[rows], toy.images[rows])
                t = toy.channels.index("t1ce")
                others = [i for i in range(len(toy.channels)) if i != t]
                np.testing.assert_array_equal(out.images[rows][:, others], toy.images[rows][:, others])
        else:
            np.testing.assert_array_equal(out.images[rows], toy.images[rows])
            np.testing.assert_array_equal(out.labels[rows], toy.labels[rows])
    assert np.isfinite(out.images).all()
    if rate == 0.0:
        assert out is toy


def test_label_erosion_shrinks_and_dilation_grows(toy):
    eroded = create_attack("label-erosion").poison(toy, 1.0, np.random.default_rng(0))
    dilated = create_attack("label-dilation").poison(toy, 1.0, np.random.default_rng(0))
    for value in (2, 3):
        assert (eroded.labels == value).sum() < (toy.labels == value).sum()
    assert (dilated.labels > 0).sum() > (toy.labels > 0).sum()
    assert ((eroded.labels > 0) <= (toy.labels > 0)).all()  # erosion never adds tumour
    assert ((dilated.labels > 0) >= (toy.labels > 0)).all()  # dilation never removes it


def test_modality_swap_copies_the_source(toy):
    out = create_attack("modality-swap", source="t2").poison(toy, 1.0, np.random.default_rng(0))
    # the toy's channels share one head and are z-scored over it: renormalising the copy changes nothing
    np.testing.assert_allclose(out.images[:, 1], toy.images[:, 2], atol=1e-5)


def test_noise_is_seeded(toy):
    a = create_attack("noise").poison(toy, 0.5, np.random.default_rng(1))
    b = create_attack("noise").poison(toy, 0.5, np.random.default_rng(1))
    np.testing.assert_array_equal(a.images, b.images)


@pytest.mark.parametrize("name, params", [("noise", {"target": "pet"}), ("blur", {"target": "pet"}), ("intensity-shift", {"target": "pet"}), ("modality-swap", {"source": "pet"})])
def test_missing_channel_is_a_config_error(toy, name, params):
    with pytest.raises(ConfigError, match="available channels"):
        create_attack(name, **params).poison(toy, 0.5, np.random.default_rng(0))


@pytest.mark.parametrize("name, params", [("noise", {"severity": -1}), ("blur", {"method": "median"}), ("label-erosion", {"iterations": 0}), ("modality-swap", {"source": "t1ce"})])
def test_bad_parameters_are_rejected(name, params):
    with pytest.raises(ConfigError):
        create_attack(name, **params)
