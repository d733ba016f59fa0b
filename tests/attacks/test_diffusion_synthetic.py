"""The diffusion-synthetic attack: the denoiser, DDIM sampling, cache, poisoning and parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attack_toys import CHANNELS, toy_sliceset

from attacks.diffusion_synthetic import (
    DIFFUSION_PRESETS,
    DiffusionConfig,
    DiffusionSyntheticAttack,
    DiffusionTrainer,
    build_unet,
    ddim_translate,
    norm_groups,
)
from benchmark import generative
from benchmark import ConfigError, RunContext, create_attack

TINY = dict(epochs=1, batch_size=8, channels=(4, 8), crop=16, ddim_steps=3, train_timesteps=50, holdout_cases=1)
TINY_CONFIG = DiffusionConfig(epochs=1, batch_size=4, channels=(4, 8), crop=16, ddim_steps=3, train_timesteps=50)


def _attack(cache, seed=0, **params) -> DiffusionSyntheticAttack:
    attack = create_attack("diffusion-synthetic", **{**TINY, **params})
    attack.bind(RunContext(seed=seed, cache_dir=cache, dataset_fingerprint="toy"))
    return attack


def _random_unet(config: DiffusionConfig, seed: int = 0) -> torch.nn.Module:
    """An untrained UNet whose output layer is not zero (MONAI zero-initialises it): its output depends on its input."""
    torch.manual_seed(seed)
    unet = build_unet(config)
    with torch.no_grad():
        for p in unet.out.parameters():
            p.normal_(0, 0.1)
    return unet


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One tiny model fitted to the toy, shared by the poisoning tests (they only sample)."""
    torch.set_num_threads(1)
    toy = toy_sliceset()
    attack = _attack(tmp_path_factory.mktemp("diffusion-cache"))
    attack.fit(toy, np.random.default_rng(0))
    return attack, toy


# ------------------------------------------------------------------ model and sampling
@pytest.mark.parametrize("channels, expected", [((16, 32, 64), 8), ((4, 8), 4), ((6, 12), 6), ((12, 20), 4), ((5, 10), 5)])
def test_norm_groups_divide_every_width(channels, expected):
    assert norm_groups(channels) == expected
    assert all(width % expected == 0 for width in channels)


@pytest.mark.parametrize("channels, sources, size", [((4, 8), 1, 16), ((4, 8, 8), 3, 32), ((4, 8, 8), 1, 30), ((4, 8), 2, 21)])
def test_sampling_returns_whole_slices_of_any_size(channels, sources, size):
    config = DiffusionConfig(channels=channels, source_channels=sources, ddim_steps=2, train_timesteps=20)
    torch.manual_seed(0)
    unet = build_unet(config)
    assert unet.conv_in.conv.in_channels == 1 + sources
    out = ddim_translate(unet, np.zeros((3, sources, size, size), np.float32), config, seed=0)
    assert out.shape == (3, size, size) and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out).max() <= config.clip + 1e-5  # the estimate stays in the range the target was trained in


def test_sampling_follows_its_seed_and_its_source():
    config = DiffusionConfig(channels=(4, 8), ddim_steps=3, train_timesteps=30)
    unet = _random_unet(config)
    source = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    first, again = (ddim_translate(unet, source, config, seed=5) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, ddim_translate(unet, source, config, seed=6))
    assert not np.allclose(first, ddim_translate(unet, source + 1.0, config, seed=5))
    # the starting noise is drawn for all slices at once: the batch size does not change it
    np.testing.assert_allclose(first, ddim_translate(unet, source, config, seed=5, batch_size=1), atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_training_lowers_the_noise_loss(prediction):
    data = toy_sliceset(cases=2, slices=4, size=16)
    config = DiffusionConfig(epochs=40, batch_size=8, lr=3e-3, channels=(8, 16), crop=0, train_timesteps=100, prediction=prediction)
    history = DiffusionTrainer(config, "cpu", 0).fit(data.images[:, 4:5], data.images[:, 1:2])
    assert len(history.losses) == 40 and history.images == 40 * 8 and history.images_per_s > 0
    assert np.mean(history.losses[-10:]) < 0.7 * np.mean(history.losses[:5])


def test_training_is_deterministic_on_cpu():
    data = toy_sliceset(cases=1, slices=4, size=32)
    weights = []
    for _ in range(2):
        trainer = DiffusionTrainer(TINY_CONFIG, "cpu", 3)
        trainer.fit(data.images[:, 4:5], data.images[:, 1:2])
        weights.append(torch.cat([p.detach().flatten() for p in trainer.unet.parameters()]))
    assert torch.equal(weights[0], weights[1])
    other = DiffusionTrainer(TINY_CONFIG, "cpu", 4)
    other.fit(data.images[:, 4:5], data.images[:, 1:2])
    assert not torch.equal(weights[0], torch.cat([p.detach().flatten() for p in other.unet.parameters()]))


def test_the_denoiser_reads_every_source_channel():
    config = DiffusionConfig(channels=(4, 8), source_channels=3, train_timesteps=20)
    unet = _random_unet(config)
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([3, 7])
    base = unet(x, t)
    for channel in (1, 2, 3):
        y = x.clone()
        y[:, channel] += 1.0
        assert not torch.allclose(base, unet(y, t)), channel


# ------------------------------------------------------------------------ the cache
def test_cache_hit_skips_training(tmp_path, toy):
    before = DiffusionSyntheticAttack.trainings
    first = _attack(tmp_path)
    first.fit(toy, np.random.default_rng(0))
    assert first.generator_cached is False and DiffusionSyntheticAttack.trainings == before + 1
    report = first.report()
    for key in ("mae", "psnr", "ssim", "rim_contrast_synthetic", "rim_contrast_real", "diffusion_train_s"):
        assert np.isfinite(report[key]), key
    assert report["generator_cached"] is False

    second = _attack(tmp_path, mode="add")  # another cell / rate / mode: same key
    second.fit(toy, np.random.default_rng(5))
    assert second.generator_cached is True and second.report()["generator_cached"] is True
    assert DiffusionSyntheticAttack.trainings == before + 1
    for p, q in zip(first.unet.parameters(), second.unet.parameters()):
        assert torch.equal(p, q)
    assert second.report()["mae"] == report["mae"]

    other = _attack(tmp_path, seed=1)  # a different seed is a different model
    other.fit(toy, np.random.default_rng(0))
    assert other.generator_cached is False and DiffusionSyntheticAttack.trainings == before + 2


def test_cache_key_follows_what_changes_the_model(tmp_path, toy, monkeypatch):
    facts = {"versions": {"torch": "2.0.0"}, "torch_threads": 1}
    monkeypatch.setattr(generative, "environment", lambda device: {**facts, "device": device})
    base = _attack(tmp_path).cache_key(toy)
    assert _attack(tmp_path, mode="add").cache_key(toy) == base  # one model for both modes
    assert _attack(tmp_path, preset="fast").cache_key(toy) == base  # the preset is its values
    keys = {
        base,
        _attack(tmp_path, seed=1).cache_key(toy),
        _attack(tmp_path, ddim_steps=4).cache_key(toy),
        _attack(tmp_path, source=["t1", "t2"]).cache_key(toy),
        _attack(tmp_path).cache_key(toy.subset(toy.cases[:4])),
    }
    on_gpu = _attack(tmp_path)
    on_gpu.bind(RunContext(device="cuda", seed=0, cache_dir=tmp_path, dataset_fingerprint="toy"))
    keys.add(on_gpu.cache_key(toy))
    other_data = _attack(tmp_path)
    other_data.bind(RunContext(seed=0, cache_dir=tmp_path, dataset_fingerprint="other"))
    keys.add(other_data.cache_key(toy))
    facts["torch_threads"] = 2
    keys.add(_attack(tmp_path).cache_key(toy))
    facts["versions"] = {"torch": "2.1.0"}
    keys.add(_attack(tmp_path).cache_key(toy))
    assert len(keys) == 9


# ------------------------------------------------------------------------ poisoning
@pytest.mark.parametrize("rate, expected", [(0.0, 0), (1 / 6, 1), (3 / 6, 3), (5 / 6, 5), (1.0, 6)])
def test_replace_poisons_whole_cases_target_channel_only(fitted, rate, expected):
    attack, toy = fitted
    out = attack.poison(toy, rate, np.random.default_rng(7))
    assert len(out.poisoned_cases()) == expected == round(rate * len(toy.cases))
    np.testing.assert_array_equal(out.labels, toy.labels)  # masks unchanged
    np.testing.assert_array_equal(out.case_ids, toy.case_ids)
    assert out.images.shape == toy.images.shape
    t = CHANNELS.index("t1ce")
    others = [i for i in range(len(CHANNELS)) if i != t]
    np.testing.assert_array_equal(out.images[:, others], toy.images[:, others])
    for case in toy.cases:
        rows = toy.case_ids == case
        flags = out.poisoned[rows]
        assert flags.all() or not flags.any()  # whole cases
        if flags.any():
            synthetic, real = out.images[rows, t], toy.images[rows, t]
            assert not np.allclose(synthetic, real)
            # the toy records no normalisation: the real target's zeros and moments over its foreground
            foreground = real != 0
            assert (synthetic[~foreground] == 0).all()
            assert abs(synthetic[foreground].mean() - real[foreground].mean()) < 1e-3
            assert abs(synthetic[foreground].std() - real[foreground].std()) < 1e-3
        else:
            np.testing.assert_array_equal(out.images[rows], toy.images[rows])
    if expected == 0:
        assert out is toy  # rate 0 is the identity


def test_add_mode_appends_synthetic_copies(fitted, tmp_path):
    replace, toy = fitted
    attack = _attack(replace.context.cache_dir, mode="add")
    attack.fit(toy, np.random.default_rng(0))
    assert attack.generator_cached is True
    out = attack.poison(toy, 2 / 6, np.random.default_rng(0))
    assert len(out) == len(toy) + 2 * 4
    np.testing.assert_array_equal(out.images[: len(toy)], toy.images)
    np.testing.assert_array_equal(out.labels[: len(toy)], toy.labels)
    assert not out.poisoned[: len(toy)].any() and out.poisoned[len(toy) :].all()
    added = out.poisoned_cases()
    assert len(added) == 2 and all(c.endswith("~syn") and c[:-4] in toy.cases for c in added)
    t = CHANNELS.index("t1ce")
    replaced = replace.poison(toy, 1.0, np.random.default_rng(0))
    for case in added:
        copy, original = out.case_ids == case, toy.case_ids == case[:-4]
        np.testing.assert_array_equal(out.labels[copy], toy.labels[original])
        others = [i for i in range(len(CHANNELS)) if i != t]
        np.testing.assert_array_equal(out.images[copy][:, others], toy.images[original][:, others])
        # a case's sample is the same in either mode and whichever cases are drawn with it
        np.testing.assert_array_equal(out.images[copy, t], replaced.images[original, t])


def test_poisoning_is_deterministic(fitted):
    attack, toy = fitted
    twin = _attack(attack.context.cache_dir)
    twin.fit(toy, np.random.default_rng(3))
    a = attack.poison(toy, 0.5, np.random.default_rng(1))
    b = twin.poison(toy, 0.5, np.random.default_rng(1))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.poisoned, b.poisoned)
    picks = {tuple(attack.poison(toy, 0.5, np.random.default_rng(s)).poisoned_cases()) for s in range(4)}
    assert len(picks) > 1  # the selection follows the poison stream


def test_cases_get_their_own_noise(fitted):
    attack, toy = fitted
    seeds = {attack.sample_seed(attack.source_slices(toy.images[toy.case_ids == case], toy.channels)) for case in toy.cases}
    assert len(seeds) == len(toy.cases)


# ----------------------------------------------------------------------- parameters
@pytest.mark.parametrize("parameter, value", [("source", "pet"), ("source", ["t1", "pd"]), ("target", "t1gd")])
def test_a_missing_channel_is_a_config_error_naming_the_key(tmp_path, toy, parameter, value):
    attack = _attack(tmp_path, **{parameter: value})
    before = DiffusionSyntheticAttack.trainings
    with pytest.raises(ConfigError, match=rf"'{parameter}' parameter of diffusion-synthetic.*available channels: \['t1', 't1ce'"):
        attack.fit(toy, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=rf"'{parameter}'"):
        attack.poison(toy, 0.5, np.random.default_rng(0))
    assert DiffusionSyntheticAttack.trainings == before


@pytest.mark.parametrize(
    "params, message",
    [
        ({"source": "t1ce", "target": "t1ce"}, "different channels"),
        ({"source": ["t1", "t1"]}, "twice"),
        ({"source": []}, "one channel or a list"),
        ({"epochs": 0}, "epochs"),
        ({"ddim_steps": 60, "train_timesteps": 50}, "ddim_steps"),
        ({"channels": [16]}, "channels"),
        ({"channels": [2, 4]}, "channels"),
        ({"channels": [8, 16, 32], "crop": 30}, "multiple of 4"),
        ({"preset": "huge"}, "preset"),
        ({"prediction": "x0"}, "prediction"),
    ],
)
def test_parameters_are_validated(params, message):
    with pytest.raises(ConfigError, match=message):
        create_attack("diffusion-synthetic", **params)


def test_fast_preset_is_the_default_and_explicit_values_override_it():
    default = create_attack("diffusion-synthetic").params
    assert default.preset == "fast"
    assert {key: getattr(default, key) for key in DIFFUSION_PRESETS["fast"]} == DIFFUSION_PRESETS["fast"]
    assert create_attack("diffusion-synthetic", preset="fast").params == default
    mixed = create_attack("diffusion-synthetic", epochs=3, channels=[8, 16]).params
    assert (mixed.epochs, mixed.channels, mixed.crop) == (3, (8, 16), DIFFUSION_PRESETS["fast"]["crop"])
    # the resolved parameters validate again to themselves (stored configs re-load)
    assert create_attack("diffusion-synthetic", **default.model_dump(mode="json")).params == default


def test_the_parameters_load_without_torch():
    import subprocess
    import sys

    code = (
        "import sys\nfrom attacks.diffusion_synthetic import DiffusionParams\n"
        "DiffusionParams(source=['t1', 't2'])\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_case_is_sampled_once_per_model(fitted):
    attack, toy = fitted
    attack.poison(toy, 1.0, np.random.default_rng(0))
    before = DiffusionSyntheticAttack.samplings
    twin = _attack(attack.context.cache_dir, mode="add")  # another cell sharing the model
    twin.fit(toy, np.random.default_rng(0))
    twin.poison(toy, 0.5, np.random.default_rng(9))
    assert DiffusionSyntheticAttack.samplings == before
    reseeded = _attack(attack.context.cache_dir, seed=2)  # another model samples afresh
    reseeded.fit(toy, np.random.default_rng(0))
    assert DiffusionSyntheticAttack.samplings > before


# -------------------------------------------------------------------------- stealth
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_stealth_is_taken_on_the_denoised_estimate_of_late_rows(prediction):
    from attacks.diffusion_synthetic import DATA_SCALE, STEALTH_MIN_ALPHA

    config = DiffusionConfig(channels=(4, 8), train_timesteps=1000, stealth=True, lambda_stealth=2.0, prediction=prediction)
    trainer = DiffusionTrainer(config, "cpu", 0)
    trainer.unet = _random_unet(config)
    seen = {}

    def record(x0_hat, head):
        seen.update(x0_hat=x0_hat.detach().clone(), head=head)
        return x0_hat.pow(2).mean()

    trainer.stealth = record
    data = toy_sliceset(cases=2, slices=8, size=16)
    source = torch.from_numpy(data.images[:, 4:5])
    target = torch.from_numpy(data.images[:, 1:2])
    state = trainer.rng.get_state()
    total, terms = trainer.loss(source, target)
    # the same draws again: the estimate the loss must have been given
    rng = torch.Generator().set_state(state)
    noise = torch.randn(target.shape, generator=rng)
    t = torch.randint(0, config.train_timesteps, (len(target),), generator=rng)
    alpha = trainer.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = trainer.scheduler.add_noise(target / DATA_SCALE, noise, t)
    with torch.no_grad():
        out = trainer.unet(torch.cat([xt, source / DATA_SCALE], dim=1), t)
    x0 = target / DATA_SCALE
    if prediction == "v":  # the velocity sqrt(a)·noise − sqrt(1 − a)·x0, and the noise it implies
        expected_loss = torch.nn.functional.mse_loss(out, alpha.sqrt() * noise - (1 - alpha).sqrt() * x0)
        eps = alpha.sqrt() * out + (1 - alpha).sqrt() * xt
    else:
        expected_loss = torch.nn.functional.mse_loss(out, noise)
        eps = out
    torch.testing.assert_close(terms["noise"].detach(), expected_loss)
    late = alpha.flatten() >= STEALTH_MIN_ALPHA
    assert 0 < int(late.sum()) < len(target)  # the draw has rows on both sides
    bound = config.clip / DATA_SCALE
    expected = ((xt - (1 - alpha).sqrt() * eps) / alpha.sqrt()).clamp(-bound, bound)[late] * DATA_SCALE
    torch.testing.assert_close(seen["x0_hat"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["head"], target[late] != 0)
    torch.testing.assert_close(total, terms["noise"] + 2.0 * terms["stealth"])
    total.backward()
    assert trainer.unet.out[2].conv.weight.grad.abs().sum() > 0


def test_stealth_reference_is_the_targets_the_trainer_is_given(monkeypatch):
    from attacks.diffusion_synthetic import training

    references = []
    real = training.StealthLoss

    def spy(reference, *args, **kwargs):
        references.append(np.array(reference))
        return real(reference, *args, **kwargs)

    monkeypatch.setattr(training, "StealthLoss", spy)
    data = toy_sliceset(cases=2, slices=4, size=32)
    config = DiffusionConfig(epochs=1, batch_size=4, channels=(4, 8), crop=16, train_timesteps=20, stealth=True)
    history = DiffusionTrainer(config, "cpu", 0).fit(data.images[:, 4:5], data.images[:, 1:2])
    (reference,) = references
    assert reference.shape == (8, 1, 16, 16)  # one crop of each target slice
    windows = {data.images[i, 1, y : y + 16, x : x + 16].tobytes() for i in range(8) for y in range(17) for x in range(17)}
    assert all(slice_[0].tobytes() in windows for slice_ in reference)
    assert len(history.stealth_losses) == 1 and np.isfinite(history.stealth_losses[0])


def test_stealth_off_trains_as_before_and_keeps_the_key(tmp_path, toy):
    data = toy_sliceset(cases=1, slices=4, size=32)
    weights = []
    for config in (TINY_CONFIG, DiffusionConfig(**{**TINY_CONFIG.__dict__, "lambda_stealth": 5.0})):
        trainer = DiffusionTrainer(config, "cpu", 3)
        history = trainer.fit(data.images[:, 4:5], data.images[:, 1:2])
        assert trainer.stealth is None and history.stealth_losses == []
        weights.append(torch.cat([p.detach().flatten() for p in trainer.unet.parameters()]))
    assert torch.equal(*weights)
    base = _attack(tmp_path).cache_key(toy)
    assert _attack(tmp_path, lambda_stealth=3.0).cache_key(toy) == base
    on = _attack(tmp_path, stealth=True).cache_key(toy)
    assert len({base, on, _attack(tmp_path, stealth=True, lambda_stealth=3.0).cache_key(toy)}) == 3


def test_a_stealth_attack_fits_and_poisons(tmp_path, toy):
    attack = _attack(tmp_path, stealth=True, lambda_stealth=0.5)
    attack.fit(toy, np.random.default_rng(0))
    report = attack.report()
    assert np.isfinite([report["mae"], report["psnr"], report["ssim"]]).all()
    out = attack.poison(toy, 0.5, np.random.default_rng(0))
    assert len(out.poisoned_cases()) == 3 and np.isfinite(out.images).all()


def test_attacks_csv_carries_the_quality_report(tmp_path, write_config, tiny_config):
    import csv

    from benchmark.cli import main

    tiny_config["attacks"] = [{"name": "diffusion-synthetic", "rates": [0.5], **TINY, "channels": [4, 8]}]
    out = tmp_path / "out"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 0
    with open(out / "attacks.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["attack"] == "diffusion-synthetic" and int(row["poisoned_cases"]) == 2
    for key in ("mae", "psnr", "ssim", "rim_contrast_synthetic", "rim_contrast_real"):
        assert np.isfinite(float(row[key])), key
    assert float(row["rim_contrast_real"]) > 1.0  # real T1-Ce of synthetic-brats: the rim enhances


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_synthetic_target_is_normalised_over_the_data_sets_mask(tmp_path, toy, mode):
    """On a data set with skull, z-scored over a brain it records, the sample is z-scored over that brain."""
    from benchmark import ZSCORE

    size = toy.shape[0]
    yy, xx = np.mgrid[:size, :size] / size
    brain = np.broadcast_to((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.1, toy.labels.shape).copy()
    images = np.array(toy.images, copy=True)
    for case in toy.cases:
        rows = toy.case_ids == case
        for c in range(images.shape[1]):
            x = images[rows, c]
            inside = x[brain[rows]]
            images[rows, c] = np.where(x != 0, (x - inside.mean()) / inside.std(), 0.0)
    data = toy.with_arrays(images=images, norm_masks=brain, normalisation=ZSCORE)
    attack = _attack(tmp_path, mode=mode)
    attack.fit(data, np.random.default_rng(0))
    out = attack.poison(data, 0.5, np.random.default_rng(0))
    t = CHANNELS.index("t1ce")
    assert len(out.poisoned_cases()) == 3
    for case in out.poisoned_cases():
        rows = np.flatnonzero(out.case_ids == case)
        real_rows = np.flatnonzero(data.case_ids == case.removesuffix("~syn"))
        synthetic, real = out.images[rows, t], data.images[real_rows, t]
        inside = data.norm_masks[real_rows]
        assert abs(synthetic[inside].mean()) < 1e-4 and abs(synthetic[inside].std() - 1) < 1e-4
        assert (synthetic[real == 0] == 0).all()
