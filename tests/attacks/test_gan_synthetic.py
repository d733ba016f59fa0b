"""The gan-synthetic attack: networks, the shortest-path term, training, cache and poisoning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attack_toys import CHANNELS, toy_sliceset

from attacks.gan_synthetic import (
    DomainGenerator,
    GanConfig,
    GanSyntheticAttack,
    GanTrainer,
    PatchDiscriminator,
    sample_path_codes,
    shortest_path_loss,
)
from benchmark import generative
from benchmark import ZSCORE, ConfigError, RunContext, SliceSet, create_attack

TINY = dict(epochs=2, batch_size=4, width=4, blocks=2, disc_width=4, holdout_cases=1)


@pytest.mark.parametrize(
    "width, blocks, size",
    [(4, 2, 16), (8, 4, 32), (4, 0, 48), (6, 3, 64)],
)
def test_generator_shapes(width, blocks, size):
    g = DomainGenerator(1, width, blocks)
    x = torch.randn(2, 1, size, size)
    z = g.encode(x)
    assert z.shape == (2, 4 * width, size // 4, size // 4)
    out, feats = g.decode(z, torch.tensor([0.0, 1.0]), return_features=True)
    assert out.shape == (2, 1, size, size)
    assert len(feats) == (blocks - blocks // 2) + 2
    assert g(x).shape == (2, 1, size, size)


@pytest.mark.parametrize("size, expected", [(32, 2), (48, 4), (64, 6), (128, 14)])
def test_discriminator_shapes(size, expected):
    d = PatchDiscriminator(1, 4)
    assert d(torch.randn(3, 1, size, size)).shape == (3, 1, expected, expected)


def _path_term(g: DomainGenerator) -> float:
    torch.manual_seed(0)
    z = torch.randn(4, g.latent_channels, 8, 8)
    d1, d2 = sample_path_codes(4, torch.Generator().manual_seed(1))
    _, f1 = g.decode(z, d1, return_features=True)
    _, f2 = g.decode(z, d2, return_features=True)
    return float(shortest_path_loss(f1, f2, d1, d2).detach())


def test_shortest_path_zero_when_decoder_ignores_d():
    torch.manual_seed(0)
    g = DomainGenerator(1, 4, 2)
    assert _path_term(g) > 1e-6
    with torch.no_grad():  # the modulation no longer depends on d
        for name, p in g.named_parameters():
            if name.endswith("affine.weight"):
                p.zero_()
    assert _path_term(g) == pytest.approx(0.0, abs=1e-12)


def test_path_codes_are_close_and_in_range():
    d1, d2 = sample_path_codes(1000, torch.Generator().manual_seed(0))
    assert (d1 >= d2).all() and (d1 <= 1).all() and (d2 >= 0).all()
    assert ((d1 - d2) <= 0.2 + 1e-6).all()


def test_training_lowers_generator_loss():
    data = toy_sliceset(cases=2, slices=4, size=32)
    a = np.clip(data.images[:, 4:5], -5, 5)
    b = data.images[:, 1:2]
    trainer = GanTrainer(GanConfig(epochs=6, batch_size=4, width=4, blocks=2, disc_width=4, lr_g=2e-3, lr_d=2e-4), "cpu", 0)
    history = trainer.fit(a, b)
    assert len(history.g_losses) == 6
    assert np.mean(history.g_losses[-2:]) < 0.8 * np.mean(history.g_losses[:2])
    assert history.images == 6 * 8 and history.images_per_s > 0


def test_training_is_deterministic_on_cpu():
    data = toy_sliceset(cases=1, slices=4, size=32)
    a, b = data.images[:, 4:5], data.images[:, 1:2]
    weights = []
    for _ in range(2):
        trainer = GanTrainer(GanConfig(epochs=1, batch_size=4, width=4, blocks=2, disc_width=4), "cpu", 3)
        trainer.fit(a, b)
        weights.append(torch.cat([p.detach().flatten() for p in trainer.generator.parameters()]))
    assert torch.equal(weights[0], weights[1])


def _attack(tmp_path, seed=0, **params) -> GanSyntheticAttack:
    attack = create_attack("gan-synthetic", **{**TINY, **params})
    attack.bind(RunContext(seed=seed, cache_dir=tmp_path, dataset_fingerprint="toy"))
    return attack


def test_cache_hit_skips_training(tmp_path, toy):
    before = GanSyntheticAttack.trainings
    first = _attack(tmp_path)
    first.fit(toy, np.random.default_rng(0))
    assert first.generator_cached is False and GanSyntheticAttack.trainings == before + 1
    report = first.report()
    assert set(report) >= {"mae", "psnr", "ssim", "generator_cached"} and np.isfinite([report["mae"], report["psnr"], report["ssim"]]).all()

    second = _attack(tmp_path)  # another cell / rate / run: same key
    second.fit(toy, np.random.default_rng(5))
    assert second.generator_cached is True and second.report()["generator_cached"] is True
    assert GanSyntheticAttack.trainings == before + 1
    a = first.poison(toy, 0.5, np.random.default_rng(1))
    b = second.poison(toy, 0.5, np.random.default_rng(1))
    np.testing.assert_array_equal(a.images, b.images)

    other = _attack(tmp_path, seed=1)  # a different seed is a different generator
    other.fit(toy, np.random.default_rng(0))
    assert other.generator_cached is False and GanSyntheticAttack.trainings == before + 2


@pytest.mark.parametrize("rate, expected", [(0.0, 0), (1 / 6, 1), (2 / 6, 2), (3 / 6, 3), (5 / 6, 5), (1.0, 6)])
def test_replace_poisons_whole_cases(tmp_path, toy, rate, expected):
    attack = _attack(tmp_path)
    attack.fit(toy, np.random.default_rng(0))
    out = attack.poison(toy, rate, np.random.default_rng(7))
    assert len(out.poisoned_cases()) == expected
    np.testing.assert_array_equal(out.labels, toy.labels)  # masks unchanged
    assert out.images.shape == toy.images.shape
    t = CHANNELS.index("t1ce")
    for case in toy.cases:
        rows = toy.case_ids == case
        flags = out.poisoned[rows]
        assert flags.all() or not flags.any()  # whole cases
        others = [i for i in range(len(CHANNELS)) if i != t]
        np.testing.assert_array_equal(out.images[rows][:, others], toy.images[rows][:, others])
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


def test_selection_follows_the_seed(tmp_path, toy):
    attack = _attack(tmp_path)
    attack.fit(toy, np.random.default_rng(0))
    picks = [tuple(attack.poison(toy, 0.5, np.random.default_rng(s)).poisoned_cases()) for s in (0, 0, 1, 2, 3)]
    assert picks[0] == picks[1]
    assert len(set(picks)) > 1


def brain_masked(toy: SliceSet) -> SliceSet:
    """The toy as a data set with skull: z-scored over a brain disc inside the head, which it records."""
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
    return toy.with_arrays(images=images, norm_masks=brain, normalisation=ZSCORE)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_synthetic_target_is_normalised_over_the_data_sets_mask(tmp_path, toy, mode):
    data = brain_masked(toy)
    attack = _attack(tmp_path, mode=mode)
    attack.fit(data, np.random.default_rng(0))
    out = attack.poison(data, 0.5, np.random.default_rng(0))
    t = CHANNELS.index("t1ce")
    for case in out.poisoned_cases():
        rows = np.flatnonzero(out.case_ids == case)
        real_rows = np.flatnonzero(data.case_ids == case.removesuffix("~syn"))
        synthetic, real = out.images[rows, t], data.images[real_rows, t]
        brain = data.norm_masks[real_rows]
        assert abs(synthetic[brain].mean()) < 1e-4 and abs(synthetic[brain].std() - 1) < 1e-4
        assert (synthetic[real == 0] == 0).all() and (synthetic[real != 0] != 0).mean() > 0.99
        # over the head the moments are the generator's business, not forced to those of the brain
        head = real != 0
        assert abs(synthetic[head].std() - 1) > 1e-3


def test_cache_key_follows_device_threads_and_torch(tmp_path, toy, monkeypatch):
    """A generator trained elsewhere (GPU, other torch, other thread count) is never reused."""
    facts = {"versions": {"torch": "2.0.0"}, "torch_threads": 1}
    monkeypatch.setattr(generative, "environment", lambda device: {**facts, "device": device, **({"gpu": "H200"} if device == "cuda" else {})})
    attack = _attack(tmp_path)
    base = attack.cache_key(toy)
    assert attack.cache_key(toy) == base
    keys = {base}
    attack.bind(RunContext(device="cuda", seed=0, cache_dir=tmp_path, dataset_fingerprint="toy"))
    keys.add(attack.cache_key(toy))
    attack.bind(RunContext(device="cpu", seed=0, cache_dir=tmp_path, dataset_fingerprint="toy"))
    assert attack.cache_key(toy) == base
    facts["torch_threads"] = 2
    keys.add(attack.cache_key(toy))
    facts["versions"] = {"torch": "2.1.0"}
    keys.add(attack.cache_key(toy))
    assert len(keys) == 4


def test_cache_key_reads_the_real_thread_count(tmp_path, toy):
    attack = _attack(tmp_path)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attack.cache_key(toy)
        torch.set_num_threads(2)
        two = attack.cache_key(toy)
    finally:
        torch.set_num_threads(threads)
    assert one != two


def test_add_mode_appends_synthetic_copies(tmp_path, toy):
    attack = _attack(tmp_path, mode="add")
    attack.fit(toy, np.random.default_rng(0))
    out = attack.poison(toy, 2 / 6, np.random.default_rng(0))
    assert len(out) == len(toy) + 2 * 4
    np.testing.assert_array_equal(out.images[: len(toy)], toy.images)
    assert not out.poisoned[: len(toy)].any() and out.poisoned[len(toy) :].all()
    added = out.poisoned_cases()
    assert len(added) == 2 and all(c.endswith("~syn") and c[:-4] in toy.cases for c in added)
    for case in added:
        np.testing.assert_array_equal(out.labels[out.case_ids == case], toy.labels[toy.case_ids == case[:-4]])


def test_missing_source_channel_is_a_config_error(tmp_path, toy):
    attack = _attack(tmp_path, source="pet")
    with pytest.raises(ConfigError, match=r"'source'.*available channels"):
        attack.fit(toy, np.random.default_rng(0))


def test_parameters_are_validated():
    with pytest.raises(ConfigError, match="source"):
        create_attack("gan-synthetic", source="t1ce", target="t1ce")
    with pytest.raises(ConfigError, match="epochs"):
        create_attack("gan-synthetic", epochs=0)


def test_fit_never_sees_validation_cases(tmp_path, monkeypatch):
    """Through the runner: the attack's pool is the training split, never a validation case."""
    from benchmark.config import validate_config, expand_cells
    from benchmark.runner import run_cell

    data = toy_sliceset(cases=6, slices=2, size=32)
    config = validate_config({
        "dataset": {"name": "synthetic-brats", "cases": 6, "slices": 2, "size": 32},
        "split": {"val_fraction": 0.34, "seed": 0},
        "segmenters": [{"name": "unet", "epochs": 1, "batch_size": 8, "channels": [4, 8]}],
        "attacks": [{"name": "gan-synthetic", "rates": [0.5], **TINY, "epochs": 1}],
        "device": "cpu",
    })
    cell = expand_cells(config, "toy", "test")[0]
    seen: list[set[str]] = []
    original_fit, original_poison = GanSyntheticAttack.fit, GanSyntheticAttack.poison
    monkeypatch.setattr(GanSyntheticAttack, "fit", lambda self, pool, rng: (seen.append(set(pool.cases)), original_fit(self, pool, rng))[1])
    monkeypatch.setattr(GanSyntheticAttack, "poison", lambda self, train, rate, rng: (seen.append(set(train.cases)), original_poison(self, train, rate, rng))[1])
    record = run_cell(cell, data, "cpu", "toy", cache_dir=tmp_path)
    assert record.status == "finished", record.error
    from benchmark.splitting import split_cases

    val = set(split_cases(data, 0.34, 0).val)
    assert seen and all(not (s & val) for s in seen)
    assert record.attack_report["poisoned_cases"] == 2
