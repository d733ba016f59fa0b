"""gan-synthetic: image quality over the brain, enhancing-rim contrast, presets."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from attack_toys import CHANNELS

from attacks.gan_synthetic.plugin import GAN_PRESETS, NORMAL_BRAIN_MARGIN, image_quality, rim_contrast
from benchmark import ZSCORE, ConfigError, RunContext, SliceSet, create_attack
from benchmark.cli import main
from benchmark.regions import ED, ET

TINY = dict(epochs=2, batch_size=4, width=4, blocks=2, disc_width=4, holdout_cases=1)
SIZE = 32


def _phantom(rng: np.random.Generator, slices: int = 3, et_value: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case: a brain disc of N(0, 1) noise with a ring of ET around edema, and a bright skull.

    Returns:
        ``(image, labels, brain)``, each ``[slices, SIZE, SIZE]``.
    """
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r2 = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2
    brain = np.broadcast_to(r2 < 13**2, (slices, SIZE, SIZE)).copy()
    skull = np.broadcast_to((r2 >= 13**2) & (r2 < 15**2), (slices, SIZE, SIZE))
    labels = np.zeros((slices, SIZE, SIZE), np.uint8)
    labels[:, r2 < 4**2] = ET
    labels[:, r2 < 2**2] = ED
    image = rng.standard_normal((slices, SIZE, SIZE))
    image[labels == ET] = et_value
    image[skull] = 8.0
    image[~brain & ~skull] = 0.0
    return image, labels, brain


def _normal_brain(labels: np.ndarray, brain: np.ndarray, margin: int) -> np.ndarray:
    """Brain pixels farther than ``margin`` (city-block, in-plane) from the whole tumour."""
    tumour = labels > 0
    near = tumour.copy()
    for _ in range(margin):
        grown = near.copy()
        grown[:, 1:] |= near[:, :-1]
        grown[:, :-1] |= near[:, 1:]
        grown[:, :, 1:] |= near[:, :, :-1]
        grown[:, :, :-1] |= near[:, :, 1:]
        near = grown
    return brain & ~near


# -------------------------------------------------------------------- rim contrast
def test_rim_contrast_is_a_contrast_to_noise_ratio():
    image, labels, brain = _phantom(np.random.default_rng(0))
    normal = _normal_brain(labels, brain, NORMAL_BRAIN_MARGIN)
    expected = (image[labels == ET].mean() - image[normal].mean()) / image[normal].std()
    assert rim_contrast(image, labels, brain) == pytest.approx(expected, rel=1e-9)
    assert expected > 2.5  # ET at 3 against N(0, 1) brain


def test_rim_contrast_ignores_the_tumour_margin_and_the_skull():
    image, labels, brain = _phantom(np.random.default_rng(1))
    base = rim_contrast(image, labels, brain)
    ring = brain & ~_normal_brain(labels, brain, NORMAL_BRAIN_MARGIN) & (labels == 0)
    assert ring.any()
    changed = image.copy()
    changed[ring] = 50.0  # e.g. enhancing vessels or edema just outside the label
    changed[~brain] = -50.0  # skull and air are not brain
    assert rim_contrast(changed, labels, brain) == pytest.approx(base, rel=1e-9)
    # without the margin the ring counts as normal brain and the contrast collapses
    assert rim_contrast(changed, labels, brain, margin=0) < 0.5 * base


@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (2.5, -4.0), (0.3, 7.0)])
def test_rim_contrast_is_unchanged_by_a_per_case_normalisation(scale, shift):
    image, labels, brain = _phantom(np.random.default_rng(2))
    assert rim_contrast(scale * image + shift, labels, brain) == pytest.approx(rim_contrast(image, labels, brain), rel=1e-9)


def test_rim_contrast_is_nan_without_enhancing_tumour():
    image, labels, brain = _phantom(np.random.default_rng(3))
    labels[labels == ET] = ED
    assert np.isnan(rim_contrast(image, labels, brain))


# ------------------------------------------------------------------- image quality
def test_quality_is_measured_over_the_brain():
    image, labels, brain = _phantom(np.random.default_rng(4))
    perfect = image_quality(image, image, brain, labels)
    assert perfect["mae"] == 0 and perfect["psnr"] == np.inf and perfect["ssim"] == pytest.approx(1.0)
    assert perfect["rim_contrast_synthetic"] == perfect["rim_contrast_real"] > 2.5

    outside = image.copy()
    outside[~brain] += 3.0  # wrong skull and air, the brain untouched
    quality = image_quality(outside, image, brain, labels)
    assert quality["mae"] == 0 and quality["psnr"] == np.inf
    assert quality["rim_contrast_synthetic"] == perfect["rim_contrast_real"]
    # the same error inside the brain is seen
    inside = image + 0.5 * brain
    assert image_quality(inside, image, brain, labels)["mae"] == pytest.approx(0.5)
    # without a mask the real image's non-zero voxels (here brain and skull) count
    assert image_quality(outside, image)["mae"] > 0


def test_psnr_and_ssim_follow_the_error_inside_the_brain():
    rng = np.random.default_rng(5)
    image, labels, brain = _phantom(rng)
    small = image + 0.1 * rng.standard_normal(image.shape) * brain
    large = image + 1.0 * rng.standard_normal(image.shape) * brain
    q_small, q_large = image_quality(small, image, brain, labels), image_quality(large, image, brain, labels)
    assert q_small["psnr"] > q_large["psnr"] + 15  # ten times the error: 20 dB
    assert 1.0 > q_small["ssim"] > q_large["ssim"]
    r = image[brain]
    assert q_small["psnr"] == pytest.approx(10 * np.log10((r.max() - r.min()) ** 2 / np.mean((small - image)[brain] ** 2)))


def test_a_generator_without_enhancement_has_no_rim_contrast():
    image, labels, brain = _phantom(np.random.default_rng(6))
    flat = image.copy()
    flat[labels == ET] = np.random.default_rng(7).standard_normal((labels == ET).sum())  # the rim looks like brain
    quality = image_quality(flat, image, brain, labels)
    assert abs(quality["rim_contrast_synthetic"]) < 0.5 < 2.5 < quality["rim_contrast_real"]


def test_rim_contrast_is_averaged_over_cases_with_enhancing_tumour():
    rng = np.random.default_rng(8)
    parts = [_phantom(rng, et_value=v) for v in (2.0, 4.0, 3.0)]
    parts[2][1][parts[2][1] == ET] = ED  # the third case has no enhancing tumour
    image, labels, brain = (np.concatenate(p) for p in zip(*parts))
    case_ids = np.repeat(["a", "b", "c"], 3)
    quality = image_quality(image, image, brain, labels, case_ids)
    each = [rim_contrast(*part) for part in parts[:2]]
    assert quality["rim_contrast_real"] == pytest.approx(np.mean(each))
    none = image_quality(image, image, brain, np.where(labels == ET, ED, labels).astype(np.uint8), case_ids)
    assert np.isnan(none["rim_contrast_real"]) and np.isfinite(none["ssim"])


# --------------------------------------------------------------- the attack's report
def _attack(tmp_path, **params):
    attack = create_attack("gan-synthetic", **{**TINY, **params})
    attack.bind(RunContext(seed=0, cache_dir=tmp_path, dataset_fingerprint="toy"))
    return attack


def _with_brain(toy: SliceSet) -> SliceSet:
    """The toy with a recorded brain mask that excludes a band of its head."""
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    brain = np.broadcast_to((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.12, toy.labels.shape).copy()
    return toy.with_arrays(norm_masks=brain, normalisation=ZSCORE)


def test_report_measures_held_out_cases_over_the_data_sets_brain(tmp_path, toy, monkeypatch):
    data = _with_brain(toy)
    seen: dict[str, np.ndarray] = {}
    from benchmark import generative as plugin

    def spy(synthetic, real, brain=None, labels=None, case_ids=None):
        seen.update(brain=brain, labels=labels, case_ids=case_ids, real=real)
        return image_quality(synthetic, real, brain, labels, case_ids)

    monkeypatch.setattr(plugin, "image_quality", spy)
    attack = _attack(tmp_path)
    attack.fit(data, np.random.default_rng(0))
    report = attack.report()
    held = data.cases[-1:]  # holdout_cases=1: the last pool case
    rows = np.isin(data.case_ids, held)
    np.testing.assert_array_equal(seen["brain"], data.norm_masks[rows])
    np.testing.assert_array_equal(seen["labels"], data.labels[rows])
    assert set(seen["case_ids"]) == set(held)
    np.testing.assert_array_equal(seen["real"], data.images[rows, CHANNELS.index("t1ce")])
    for key in ("mae", "psnr", "ssim", "rim_contrast_synthetic", "rim_contrast_real"):
        assert np.isfinite(report[key]), key
    # the toy's real T1-Ce enhances its ET disc by 1.0 over a brain of spread ~0.2
    assert report["rim_contrast_real"] > 2.0


def test_attacks_csv_carries_the_rim_contrast(tmp_path, write_config, tiny_config):
    tiny_config["attacks"] = [{"name": "gan-synthetic", "rates": [0.5], **TINY}]
    out = tmp_path / "out"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 0
    with open(out / "attacks.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    for key in ("mae", "psnr", "ssim", "rim_contrast_synthetic", "rim_contrast_real"):
        assert np.isfinite(float(row[key])), key
    assert float(row["rim_contrast_real"]) > 1.0  # real T1-Ce of synthetic-brats: the rim enhances


# ------------------------------------------------------------------------ presets
def test_fast_preset_is_the_default():
    default = create_attack("gan-synthetic").params
    assert default.preset == "fast"
    assert {key: getattr(default, key) for key in GAN_PRESETS["fast"]} == GAN_PRESETS["fast"]
    assert create_attack("gan-synthetic", preset="fast").params == default


def test_paper_preset_and_explicit_overrides():
    paper = create_attack("gan-synthetic", preset="paper").params
    assert {key: getattr(paper, key) for key in GAN_PRESETS["paper"]} == GAN_PRESETS["paper"]
    assert paper.width > GAN_PRESETS["fast"]["width"] and paper.epochs > 10 * GAN_PRESETS["fast"]["epochs"]
    mixed = create_attack("gan-synthetic", preset="paper", epochs=7, crop=96).params
    assert (mixed.epochs, mixed.crop, mixed.width) == (7, 96, GAN_PRESETS["paper"]["width"])
    # an explicit value equal to the fast default still overrides paper
    assert create_attack("gan-synthetic", preset="paper", width=GAN_PRESETS["fast"]["width"]).params.width == GAN_PRESETS["fast"]["width"]
    # the resolved parameters validate again to themselves (stored configs re-load)
    dumped = paper.model_dump(mode="json")
    assert create_attack("gan-synthetic", **dumped).params == paper


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="preset"):
        create_attack("gan-synthetic", preset="huge")


def test_cache_key_follows_the_resolved_values(tmp_path, toy):
    fast = _attack(tmp_path, preset="fast").cache_key(toy)
    assert _attack(tmp_path).cache_key(toy) == fast
    paper = create_attack("gan-synthetic", preset="paper")
    paper.bind(RunContext(seed=0, cache_dir=tmp_path, dataset_fingerprint="toy"))
    fast_default = create_attack("gan-synthetic")
    fast_default.bind(RunContext(seed=0, cache_dir=tmp_path, dataset_fingerprint="toy"))
    assert paper.cache_key(toy) != fast_default.cache_key(toy)
    # paper with every preset value overridden to fast's trains the same generator as fast
    same = create_attack("gan-synthetic", preset="paper", **GAN_PRESETS["fast"])
    same.bind(RunContext(seed=0, cache_dir=tmp_path, dataset_fingerprint="toy"))
    assert same.cache_key(toy) == fast_default.cache_key(toy)
    # and a change of one resolved value is another generator
    longer = create_attack("gan-synthetic", preset="paper", epochs=GAN_PRESETS["paper"]["epochs"] + 1)
    longer.bind(RunContext(seed=0, cache_dir=tmp_path, dataset_fingerprint="toy"))
    assert longer.cache_key(toy) != paper.cache_key(toy)
