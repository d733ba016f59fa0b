"""Tests for the MNI-anatomy synthetic glioma generator."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.datasets import synthetic_anatomy as sa

CASES, SLICES, SIZE, SEED = 3, 6, 64, 7


@pytest.fixture(scope="module", autouse=True)
def _templates_once():
    """Load the MNI templates once for the whole module instead of once per call."""
    templates = sa._load_templates()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sa, "_load_templates", lambda: templates)
        yield templates


@pytest.fixture(scope="module")
def data() -> sa.SyntheticBrats:
    return sa.generate_synthetic_brats(CASES, SLICES, SIZE, SEED)


def _per_case(a: np.ndarray) -> np.ndarray:
    return a.reshape(CASES, SLICES, *a.shape[1:])


def test_shapes_and_dtypes(data: sa.SyntheticBrats) -> None:
    n = CASES * SLICES
    assert sa.CHANNELS == ("t1", "t1ce", "t2", "flair", "ct")
    assert isinstance(sa.GENERATOR_VERSION, str) and sa.GENERATOR_VERSION
    assert data.images.shape == (n, len(sa.CHANNELS), SIZE, SIZE)
    assert data.images.dtype == np.float32
    assert data.labels.shape == (n, SIZE, SIZE) and data.labels.dtype == np.uint8
    assert data.brain.shape == (n, SIZE, SIZE) and data.brain.dtype == bool
    assert data.case_ids.shape == (n,)
    assert list(data.case_ids[::SLICES]) == ["synth-000", "synth-001", "synth-002"]
    assert all(len(set(c)) == 1 for c in _per_case(data.case_ids))
    assert np.isfinite(data.images).all()


def test_deterministic_and_independent_of_case_count(data: sa.SyntheticBrats) -> None:
    again = sa.generate_synthetic_brats(CASES, SLICES, SIZE, SEED)
    np.testing.assert_array_equal(again.images, data.images)
    np.testing.assert_array_equal(again.labels, data.labels)
    np.testing.assert_array_equal(again.brain, data.brain)
    np.testing.assert_array_equal(again.case_ids, data.case_ids)

    one = sa.generate_synthetic_brats(1, SLICES, SIZE, SEED)
    np.testing.assert_array_equal(one.images, data.images[:SLICES])
    np.testing.assert_array_equal(one.labels, data.labels[:SLICES])

    other = sa.generate_synthetic_brats(1, SLICES, SIZE, SEED + 1)
    assert not np.array_equal(other.images, data.images[:SLICES])
    # cases differ from each other
    imgs = _per_case(data.images)
    assert not np.allclose(imgs[0], imgs[1])


def test_label_values_and_nesting(data: sa.SyntheticBrats) -> None:
    labels = data.labels
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    for case_labels in _per_case(labels):
        assert (case_labels == 4).sum() > 0, "every case must have enhancing tumour"
        assert (case_labels == 2).sum() > 0, "every case must have edema"
    # all tumour inside the brain mask
    assert not ((labels > 0) & ~data.brain).any()

    # ET lies inside the whole tumour: it is surrounded by tumour, not by background,
    # and necrosis is enclosed by the tumour too (in-plane 4-neighbourhood).
    pad = np.pad(labels, ((0, 0), (1, 1), (1, 1)))
    neighbours = np.stack([pad[:, :-2, 1:-1], pad[:, 2:, 1:-1], pad[:, 1:-1, :-2], pad[:, 1:-1, 2:]])
    touches_bg = (neighbours == 0).any(axis=0)
    et = labels == 4
    assert touches_bg[et].mean() < 0.25
    nec = labels == 1
    if nec.any():
        assert touches_bg[nec].mean() < 0.02


def test_tumour_slice_fraction(data: sa.SyntheticBrats) -> None:
    has_tumour = (_per_case(data.labels) > 0).any(axis=(2, 3))  # [cases, slices]
    frac = has_tumour.mean(axis=1)
    assert ((frac >= 0.5) & (frac <= 1.0)).all(), frac


def test_zscore_over_brain(data: sa.SyntheticBrats) -> None:
    imgs, brain = _per_case(data.images), _per_case(data.brain)
    for k in range(CASES):
        assert brain[k].sum() > 1000
        for c in range(len(sa.CHANNELS)):
            v = imgs[k, :, c][brain[k]].astype(np.float64)
            assert abs(v.mean()) < 1e-3, (k, c)
            assert abs(v.std() - 1.0) < 1e-3, (k, c)
    # air outside the head is exactly 0 (the image corners are outside the head)
    assert (data.images[:, :, 0, 0] == 0).all()
    assert (data.images[:, :, -1, -1] == 0).all()


def _mean_z(data: sa.SyntheticBrats, k: int, channel: str, label: int) -> float:
    imgs, labels = _per_case(data.images), _per_case(data.labels)
    sel = labels[k] == label
    return float(imgs[k, :, sa.CHANNELS.index(channel)][sel].mean())


def test_contrasts(data: sa.SyntheticBrats) -> None:
    for k in range(CASES):
        t1ce_et = _mean_z(data, k, "t1ce", 4)
        # enhancing rim: bright on T1-Ce, not on T1, not on CT (no contrast agent)
        assert t1ce_et > 1.5
        assert t1ce_et > _mean_z(data, k, "t1", 4) + 1.0
        assert t1ce_et > _mean_z(data, k, "ct", 4) + 1.0
        # edema: bright on FLAIR and T2, dark on T1
        assert _mean_z(data, k, "flair", 2) > 1.0
        assert _mean_z(data, k, "t2", 2) > 0.5
        assert _mean_z(data, k, "t1", 2) < 0.0
        # CT: skull is far brighter than brain (Hounsfield bone ~1000 vs ~30)
        ct = _per_case(data.images)[k, :, sa.CHANNELS.index("ct")]
        assert ct.max() > 20.0


def test_progress_and_validation() -> None:
    seen: list[int] = []
    sa.generate_synthetic_brats(2, 2, 32, 0, progress=seen.append)
    assert seen == [1, 2]
    with pytest.raises(ValueError):
        sa.generate_synthetic_brats(0, 4, 32, 0)
    with pytest.raises(ValueError):
        sa.generate_synthetic_brats(1, 0, 32, 0)


# ------------------------------------------------------------------ contrast-enhanced CT
def _hounsfield(data: sa.SyntheticBrats, k: int) -> np.ndarray:
    """The rendered CT of case ``k`` in Hounsfield units, ``[SLICES, SIZE, SIZE]`` (z-score undone)."""
    mean, std = data.scale[k, sa.CHANNELS.index("ct")]
    return _per_case(data.images)[k, :, sa.CHANNELS.index("ct")] * std + mean


def _et_minus_wm(data: sa.SyntheticBrats, k: int) -> float:
    hu, labels, wm = _hounsfield(data, k), _per_case(data.labels)[k], _per_case(data.white_matter)[k]
    return float(hu[labels == 4].mean() - hu[wm].mean())


@pytest.fixture(scope="module")
def enhanced() -> sa.SyntheticBrats:
    return sa.generate_synthetic_brats(CASES, SLICES, SIZE, SEED, ct_contrast=True)


def test_scale_and_white_matter_recover_the_tissue_table(data: sa.SyntheticBrats) -> None:
    assert data.scale.shape == (CASES, len(sa.CHANNELS), 2) and (data.scale[..., 1] > 0).all()
    for k in range(CASES):
        hu, wm = _hounsfield(data, k), _per_case(data.white_matter)[k]
        assert wm.sum() > 200 and not (wm & (_per_case(data.labels)[k] > 0)).any()
        assert 24.0 < hu[wm].mean() < 35.0  # white matter 29 HU (+ jitter, texture, partial volume)
        assert hu.max() > 600.0  # cortical bone


def test_unenhanced_ct_shows_no_rim(data: sa.SyntheticBrats) -> None:
    """The default CT: the enhancing rim (31 HU, partial volume with necrosis 18 HU and edema
    22 HU) within a few HU of white matter (29 HU), far from the 28 HU contrast would add."""
    for k in range(CASES):
        assert abs(_et_minus_wm(data, k)) < 10.0


def test_contrast_ct_raises_the_rim_by_the_documented_amount(data: sa.SyntheticBrats, enhanced: sa.SyntheticBrats) -> None:
    rise = sa.CT_ENHANCEMENT_HU["et"] - sa.CT_ENHANCEMENT_HU["wm"]  # 28 HU, times a dose factor in [0.8, 1.2]
    gains = []
    for k in range(CASES):
        gain = _et_minus_wm(enhanced, k) - _et_minus_wm(data, k)
        assert 0.7 * rise < gain < 1.25 * rise, (k, gain)
        assert 0.5 * rise < _et_minus_wm(enhanced, k) < 1.3 * rise + 10.0
        gains.append(gain)
        # visible after the z-score too: the rim stands out of the brain on CT
        assert _mean_z(enhanced, k, "ct", 4) > _mean_z(data, k, "ct", 4) + 1.0
        # normal brain rises by a few HU only, necrosis not at all
        wm = _per_case(data.white_matter)[k]
        assert 1.0 < (_hounsfield(enhanced, k) - _hounsfield(data, k))[wm].mean() < 5.0
        nec = _per_case(data.labels)[k] == 1
        if nec.sum() > 10:
            assert (_hounsfield(enhanced, k) - _hounsfield(data, k))[nec].mean() < 0.5 * rise
    assert 0.75 * rise < np.mean(gains) < 1.2 * rise


def test_contrast_ct_changes_only_the_ct(data: sa.SyntheticBrats, enhanced: sa.SyntheticBrats) -> None:
    ct = sa.CHANNELS.index("ct")
    others = [c for c in range(len(sa.CHANNELS)) if c != ct]
    np.testing.assert_array_equal(enhanced.images[:, others], data.images[:, others])
    np.testing.assert_array_equal(enhanced.labels, data.labels)
    np.testing.assert_array_equal(enhanced.brain, data.brain)
    assert not np.allclose(enhanced.images[:, ct], data.images[:, ct])


def test_source_fingerprint_keeps_the_default_and_follows_ct_contrast() -> None:
    from benchmark import create_dataset

    default = create_dataset("synthetic-brats").fingerprint()
    assert create_dataset("synthetic-brats", ct_contrast=False).fingerprint() == default
    # the fingerprint the unenhanced default data set had before the option existed
    assert default == "a8fed6d26600762f412d"
    assert create_dataset("synthetic-brats", ct_contrast=True).fingerprint() != default


def test_source_renders_contrast_ct(data: sa.SyntheticBrats, enhanced: sa.SyntheticBrats) -> None:
    from benchmark import create_dataset

    params = dict(cases=CASES, slices=SLICES, size=SIZE, seed=SEED)
    plain = create_dataset("synthetic-brats", **params)._generate()
    ce = create_dataset("synthetic-brats", ct_contrast=True, **params)._generate()
    np.testing.assert_array_equal(plain.images, data.images)
    np.testing.assert_array_equal(ce.images, enhanced.images)
