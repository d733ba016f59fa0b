"""The defenses board's recovery: same seeds and clean baseline as ``defenses.csv``."""

from __future__ import annotations

import pytest

from leaderboard.tables import _Group, _ident, _recovery

DATASET, SEGMENTER = {"name": "synthetic-brats"}, {"name": "unet"}
GAN, NO_ATTACK = {"name": "gan-synthetic"}, {"name": "none"}
NO_DEFENSE, SPECTRAL = {"name": "none"}, {"name": "spectral"}


def _group(attack, rate, defense, dice_by_seed):
    cells = {seed: {"cases": [{"case": "a", "dice": dice}, {"case": "b", "dice": dice}]} for seed, dice in dice_by_seed.items()}
    return _Group(None, DATASET, SEGMENTER, attack, rate, defense, cells)


def _groups(*groups):
    return {(_ident(g.dataset), _ident(g.segmenter), _ident(g.attack), g.rate, _ident(g.defense)): g for g in groups}


def test_seeds_the_defense_lacks_do_not_enter_the_comparison():
    clean = _group(NO_ATTACK, 0.0, NO_DEFENSE, {0: 0.8, 1: 0.9})
    without = _group(GAN, 0.5, NO_DEFENSE, {0: 0.6, 1: 0.3})
    defended = _group(GAN, 0.5, SPECTRAL, {0: 0.7})  # seed 1 did not finish
    gain, recovery = _recovery(defended, without, _groups(clean, without, defended))
    assert gain == pytest.approx(0.1) and recovery == pytest.approx(0.5)


def test_a_negligible_damage_gives_no_ratio():
    clean = _group(NO_ATTACK, 0.0, NO_DEFENSE, {0: 0.800})
    without = _group(GAN, 0.5, NO_DEFENSE, {0: 0.795})
    defended = _group(GAN, 0.5, SPECTRAL, {0: 0.700})
    gain, recovery = _recovery(defended, without, _groups(clean, without, defended))
    assert gain == pytest.approx(-0.095) and recovery is None
