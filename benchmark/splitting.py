"""Case-level splits: validation (never attacked or filtered), trusted and attackable training cases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .sliceset import SliceSet

__all__ = ["Split", "split_cases"]


@dataclass(frozen=True)
class Split:
    """Case ids of each part of a split, sorted."""

    train: list[str]
    val: list[str]
    trusted: list[str]

    @property
    def attackable(self) -> list[str]:
        trusted = set(self.trusted)
        return [c for c in self.train if c not in trusted]


def split_cases(data: SliceSet, val_fraction: float, seed: int, trusted: float = 0) -> Split:
    """Divide cases into training and validation, and pick trusted training cases.

    Args:
        data: the whole data set.
        val_fraction: share of cases held out, rounded to at least one case.
        seed: seed of the permutation; the same for every cell of a sweep.
        trusted: a fraction (< 1) or count (>= 1) of the training cases given to defenses
            as known-clean; they are never attacked. Defaults to 0.
    """
    cases = sorted(data.cases)
    n = len(cases)
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < 1:
        raise ConfigError(f"split.val_fraction: {val_fraction} of {n} cases leaves no training case.")
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(cases[i] for i in order[:n_val])
    train = sorted(cases[i] for i in order[n_val:])
    n_trusted = int(trusted) if trusted >= 1 else int(round(trusted * len(train)))
    if n_trusted >= len(train):
        raise ConfigError(f"split.trusted: {trusted} asks for {n_trusted} of {len(train)} training cases; some must remain attackable.")
    trusted_cases = sorted(train[i] for i in np.random.default_rng([seed, 1]).permutation(len(train))[:n_trusted])
    return Split(train=train, val=val, trusted=trusted_cases)
