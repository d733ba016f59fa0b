"""The identity attack and defense that every sweep may use as its baseline."""

from __future__ import annotations

import numpy as np

from .catalog import register_attack, register_defense
from .plugins import Attack, Defense
from .sliceset import SliceSet

__all__ = ["NO_ATTACK", "NO_DEFENSE", "NoAttack", "NoDefense"]

NO_ATTACK = NO_DEFENSE = "none"


@register_attack(NO_ATTACK)
class NoAttack(Attack):
    """Leave the training set untouched (the clean baseline)."""

    def poison(self, train: SliceSet, rate: float, rng: np.random.Generator) -> SliceSet:
        return train


@register_defense(NO_DEFENSE)
class NoDefense(Defense):
    """Keep every training case."""

    def score(self, train: SliceSet) -> dict[str, float]:
        return {case: 0.0 for case in train.cases}

    def decide(self, scores: dict[str, float], trusted_scores: dict[str, float] | None = None) -> list[str]:
        """Nothing: the identity defense never removes a case, whatever the default rule of the others."""
        return []
