"""gan-synthetic's ``stealth`` option: the stealth loss in the generator's objective, from pool slices only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from attack_toys import toy_sliceset

from attacks.gan_synthetic import GanConfig, GanSyntheticAttack, GanTrainer, translate
from attacks.gan_synthetic import training as gan_training
from benchmark import ConfigError, RunContext, StealthLoss, create_attack
from defenses.mriqc import quality_measures
from defenses.spectral import radial_spectrum

TINY = dict(epochs=2, batch_size=4, width=4, blocks=2, disc_width=4, holdout_cases=1)
TRAINER = dict(batch_size=4, width=4, blocks=2, disc_width=4)


def _pairs(cases: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    data = toy_sliceset(cases=cases, slices=4, size=32, seed=seed)
    return np.clip(data.images[:, 4:5], -5, 5), data.images[:, 1:2]


def _weights(trainer: GanTrainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.generator.parameters()])


def _train(config: GanConfig, a: np.ndarray, b: np.ndarray, seed: int = 3) -> GanTrainer:
    trainer = GanTrainer(config, "cpu", seed)
    trainer.fit(a, b)
    return trainer


# -------------------------------------------------------------------- the trainer
def test_stealth_off_trains_exactly_as_without_it(monkeypatch):
    """stealth false (whatever its weight) builds no reference and gives the same weights as the default config."""

    def refuse(*args, **kwargs):
        raise AssertionError("a StealthLoss was built with stealth off")

    a, b = _pairs()
    default = _weights(_train(GanConfig(epochs=1, crop=24, **TRAINER), a, b))
    monkeypatch.setattr(gan_training, "StealthLoss", refuse)
    off = _train(GanConfig(epochs=1, crop=24, stealth=False, lambda_stealth=9.0, **TRAINER), a, b)
    assert off.stealth is None
    assert torch.equal(default, _weights(off))


def test_stealth_on_changes_the_generator_and_adds_its_term():
    a, b = _pairs()
    off = _train(GanConfig(epochs=1, **TRAINER), a, b)
    on = _train(GanConfig(epochs=1, stealth=True, **TRAINER), a, b)
    assert isinstance(on.stealth, StealthLoss)
    assert not torch.equal(_weights(off), _weights(on))
    _, terms = on.generator_loss(torch.from_numpy(a[:4]), torch.from_numpy(b[:4]))
    assert float(terms["stealth"].detach()) > 0
    _, terms = off.generator_loss(torch.from_numpy(a[:4]), torch.from_numpy(b[:4]))
    assert "stealth" not in terms
    # a zero weight keeps the reference but leaves the objective as it was
    zero = _train(GanConfig(epochs=1, stealth=True, lambda_stealth=0.0, **TRAINER), a, b)
    assert torch.equal(_weights(off), _weights(zero))


def test_stealth_training_is_deterministic():
    a, b = _pairs()
    config = GanConfig(epochs=1, stealth=True, **TRAINER)
    assert torch.equal(_weights(_train(config, a, b)), _weights(_train(config, a, b)))


def test_with_crop_the_reference_is_one_window_of_each_target():
    a, b = _pairs()
    trainer = GanTrainer(GanConfig(epochs=1, crop=16, stealth=True, **TRAINER), "cpu", 0)
    reference = trainer._stealth_reference(b)
    assert reference.shape == (len(b), 1, 16, 16)
    for window, full in zip(reference, b):
        found = [
            (y, x) for y in range(17) for x in range(17) if np.array_equal(full[:, y : y + 16, x : x + 16], window)
        ]
        assert found
    assert GanTrainer(GanConfig(crop=0, stealth=True, **TRAINER), "cpu", 0)._stealth_reference(b) is b


def test_stealth_moves_held_out_statistics_toward_real():
    """Same budget, stealth off vs on, over four generator seeds: on held-out slices, the defenses' own
    measures of the synthetic target move toward the real target's (spectral's spectrum, mriqc's SNR),
    and so does the stealth loss of a reference built from the held-out real slices. Measured at this
    size over seeds 0-7 under torch 2.13 and 2.14 at one thread: on / off ratios of about 0.2-0.45
    (spectrum), 0.02-0.35 (SNR gap) and 0.13-0.68 (loss), except one seed in eight whose stealth
    training destabilises (ratios 0.7-0.9, 2-4) and which seed that is depends on the torch build:
    hence the median over seeds, and three of four seeds improving every measure."""
    data = toy_sliceset(cases=8, slices=4, size=32, seed=1)
    a, b = np.clip(data.images[:, 4:5], -5, 5), data.images[:, 1:2]
    train, held = slice(0, 24), slice(24, 32)
    real = b[held]
    head = real != 0
    judge = StealthLoss(real)

    def measure(stealth: bool, seed: int) -> np.ndarray:
        trainer = _train(GanConfig(epochs=4, lr_g=2e-3, stealth=stealth, **TRAINER), a[train], b[train], seed)
        fake = translate(trainer.generator, a[held])[:, None] * head
        spectrum = np.abs(radial_spectrum(fake[:, 0]).mean(0) - radial_spectrum(real[:, 0]).mean(0)).mean()
        snr_gap = np.mean([
            abs(quality_measures(fake[i : i + 4, 0], head[i : i + 4, 0])[0] - quality_measures(real[i : i + 4, 0], head[i : i + 4, 0])[0])
            for i in (0, 4)
        ])
        loss = float(judge(torch.from_numpy(fake), torch.from_numpy(head)))
        return np.array([spectrum, snr_gap, loss])

    ratios = np.array([measure(True, seed) / measure(False, seed) for seed in range(4)])  # [seed, measure]: on / off
    median = np.median(ratios, axis=0)
    assert median[0] < 0.5 and median[1] < 0.5 and median[2] < 0.6, ratios
    assert ((ratios < 1).sum(axis=0) >= 3).all(), ratios


# -------------------------------------------------------------------- the plugin
def _attack(tmp_path, seed=0, **params) -> GanSyntheticAttack:
    attack = create_attack("gan-synthetic", **{**TINY, **params})
    attack.bind(RunContext(seed=seed, cache_dir=tmp_path, dataset_fingerprint="toy"))
    return attack


def test_cache_key_changes_only_with_stealth_on(tmp_path, toy, monkeypatch):
    base = _attack(tmp_path).cache_key(toy)
    assert _attack(tmp_path, stealth=False, lambda_stealth=7.0).cache_key(toy) == base
    on = _attack(tmp_path, stealth=True).cache_key(toy)
    assert on != base and _attack(tmp_path, stealth=True, lambda_stealth=7.0).cache_key(toy) not in (base, on)
    # off, the key's parameters are those of before the option: generators cached then are found
    payloads = []
    original = json.dumps
    monkeypatch.setattr(json, "dumps", lambda obj, **kw: (payloads.append(obj), original(obj, **kw))[1])
    _attack(tmp_path, stealth=False, lambda_stealth=7.0).cache_key(toy)
    _attack(tmp_path, stealth=True).cache_key(toy)
    assert not {"stealth", "lambda_stealth"} & set(payloads[0]["params"])
    assert payloads[1]["params"]["stealth"] is True and payloads[1]["params"]["lambda_stealth"] == 1.0


def test_stealth_generator_is_cached(tmp_path, toy):
    before = GanSyntheticAttack.trainings
    first = _attack(tmp_path, stealth=True, epochs=1)
    first.fit(toy, np.random.default_rng(0))
    second = _attack(tmp_path, stealth=True, epochs=1)
    second.fit(toy, np.random.default_rng(0))
    assert (first.generator_cached, second.generator_cached) == (False, True)
    plain = _attack(tmp_path, epochs=1)  # not served the stealth generator
    plain.fit(toy, np.random.default_rng(0))
    assert plain.generator_cached is False and GanSyntheticAttack.trainings == before + 2
    assert set(first.report()) >= {"mae", "psnr", "ssim"}


def test_parameters_are_validated():
    assert create_attack("gan-synthetic").params.stealth is False
    with pytest.raises(ConfigError, match="lambda_stealth"):
        create_attack("gan-synthetic", lambda_stealth=-1.0)


def test_reference_comes_from_the_pool_s_training_cases_only(tmp_path, monkeypatch):
    """Through the runner, with trusted and validation cases: the stealth reference is the target
    channel of the pool's training cases (not the held-out pool case, never a trusted or validation case)."""
    from benchmark.config import expand_cells, validate_config
    from benchmark.runner import run_cell
    from benchmark.splitting import split_cases

    data = toy_sliceset(cases=8, slices=2, size=32)
    config = validate_config({
        "dataset": {"name": "synthetic-brats", "cases": 8, "slices": 2, "size": 32},
        "split": {"val_fraction": 0.25, "seed": 0, "trusted": 2},
        "segmenters": [{"name": "unet", "epochs": 1, "batch_size": 8, "channels": [4, 8]}],
        "attacks": [{"name": "gan-synthetic", "rates": [0.5], **TINY, "epochs": 1, "stealth": True}],
        "defenses": [{"name": "spectral"}],
        "device": "cpu",
    })
    cell = expand_cells(config, "toy", "test")[0]
    references: list[np.ndarray] = []
    pools: list[list[str]] = []

    class Recording(StealthLoss):
        def __init__(self, reference, *args, **kwargs):
            references.append(np.array(reference))
            super().__init__(reference, *args, **kwargs)

    original_fit = GanSyntheticAttack.fit
    monkeypatch.setattr(gan_training, "StealthLoss", Recording)
    monkeypatch.setattr(GanSyntheticAttack, "fit", lambda self, pool, rng: (pools.append(pool.cases), original_fit(self, pool, rng))[1])
    record = run_cell(cell, data, "cpu", "toy", cache_dir=tmp_path)
    assert record.status == "finished", record.error

    split = split_cases(data, 0.25, 0, 2)
    assert split.trusted and split.val
    assert len(references) == 1 and pools
    pool = pools[0]
    assert set(pool) == set(split.attackable)
    assert not set(pool) & (set(split.trusted) | set(split.val))
    training = data.subset(pool[:-1])  # the last pool case is held out to measure quality
    expected = training.images[:, training.channel_index("t1ce")][:, None]
    np.testing.assert_array_equal(references[0], expected)
    json.dumps(record.attack_report)  # the report stays serialisable
