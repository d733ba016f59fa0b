"""gan-synthetic with several source channels (virtual contrast enhancement from T1, T2, FLAIR)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attack_toys import CHANNELS, toy_sliceset

from attacks.gan_synthetic import GanConfig, GanTrainer
from benchmark import ConfigError, RunContext, create_attack

TINY = dict(epochs=2, batch_size=4, width=4, blocks=2, disc_width=4, holdout_cases=1)
MR = ["t1", "t2", "flair"]


def _attack(tmp_path, **params):
    attack = create_attack("gan-synthetic", **{**TINY, **params})
    attack.bind(RunContext(seed=0, cache_dir=tmp_path, dataset_fingerprint="toy"))
    return attack


def test_a_list_of_sources_trains_a_generator_that_reads_every_one(tmp_path):
    toy = toy_sliceset(cases=4, slices=4, size=32)
    attack = _attack(tmp_path, source=MR)
    assert attack.source_channels() == tuple(MR)
    attack.fit(toy, np.random.default_rng(0))
    assert attack.generator.encoder[0].in_channels == 3
    poisoned = attack.poison(toy, 0.5, np.random.default_rng(1))
    t1ce = CHANNELS.index("t1ce")
    case = poisoned.poisoned_cases()[0]
    rows = np.flatnonzero(toy.case_ids == case)
    assert not np.array_equal(poisoned.images[rows, t1ce], toy.images[rows, t1ce])
    # the translation depends on every source: change FLAIR alone and the synthetic T1-Ce changes
    flair = CHANNELS.index("flair")
    x = attack.source_slices(toy.images[rows], toy.channels)
    y = x.copy()
    y[:, MR.index("flair")] += 1.0
    from attacks.gan_synthetic import translate

    assert not np.allclose(translate(attack.generator, x), translate(attack.generator, y))
    assert flair != t1ce


def test_one_source_and_a_one_element_list_train_the_same_generator(tmp_path):
    toy = toy_sliceset(cases=4, slices=4, size=32)
    one = _attack(tmp_path / "a", source="ct")
    listed = _attack(tmp_path / "b", source=["ct"])
    for attack in (one, listed):
        attack.fit(toy, np.random.default_rng(0))
    for p, q in zip(one.generator.parameters(), listed.generator.parameters()):
        assert torch.equal(p, q)


def test_the_cache_key_follows_the_sources(tmp_path):
    toy = toy_sliceset(cases=4, slices=4, size=32)
    keys = {_attack(tmp_path, source=s).cache_key(toy) for s in (["t1", "t2"], ["t2", "t1"], ["t1", "t2", "flair"], "t1")}
    assert len(keys) == 4


@pytest.mark.parametrize(
    "source, message",
    [(["t1", "t1"], "twice"), (["t1", "t1ce"], "different channels"), ([], "one channel or a list"), (["t1", ""], "one channel or a list")],
)
def test_bad_source_lists_are_refused(source, message):
    with pytest.raises(ConfigError, match=message):
        create_attack("gan-synthetic", source=source)


def test_a_missing_source_channel_is_named(tmp_path):
    toy = toy_sliceset(cases=4, slices=4, size=32)
    attack = _attack(tmp_path, source=["t1", "pd"])
    with pytest.raises(ConfigError, match=r"'source'.*\['pd'\].*available channels"):
        attack.fit(toy, np.random.default_rng(0))


def test_the_trainer_takes_k_channel_sources_and_one_channel_targets():
    torch.manual_seed(0)
    trainer = GanTrainer(GanConfig(epochs=1, batch_size=4, width=4, blocks=2, disc_width=4, source_channels=3), "cpu", 0)
    a = torch.randn(4, 3, 32, 32)
    b = torch.randn(4, 1, 32, 32)
    total, terms = trainer.generator_loss(a, b)
    assert torch.isfinite(total) and terms["fake"].shape == (4, 1, 32, 32)
    history = trainer.fit(a.numpy(), b.numpy())
    assert history.images == 4
