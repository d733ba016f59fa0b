"""Independent random streams of one cell, all derived from its seed.

A cell's seed is the one knob a sweep turns (``seeds`` in ``bench.yaml``). Each source
of randomness draws from its own stream, so that changing one leaves the others as
they were (e.g. the cases an attack poisons do not move when the U-Net's initialisation
does):

========== ===== ==========================================================================
stream     index what it decides
========== ===== ==========================================================================
poison     0     which cases an attack poisons (and the attack's own per-case draws)
generator  1     an attack's trained model: initialisation, batches and noise of its GAN
init       2     the segmenter's initialisation (torch's global generator)
batches    3     the segmenter's batch order and flips
========== ===== ==========================================================================

Stream ``name`` of seed ``s`` is ``numpy.random.SeedSequence(s, spawn_key=(index,))``,
i.e. the ``index``-th child of ``SeedSequence(s).spawn``: fixed, named indices, so adding
a stream never moves the others. ``overrides`` pins one stream to the stream of another
seed (``{"poison": 0}``: every seed poisons the cases seed 0 poisons), which lets a study
vary one source of randomness and hold the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .errors import ConfigError

__all__ = ["SEED_STREAMS", "SeedStreams"]

#: stream name -> its fixed spawn index
SEED_STREAMS: dict[str, int] = {"poison": 0, "generator": 1, "init": 2, "batches": 3}


@dataclass(frozen=True)
class SeedStreams:
    """The streams of one cell.

    Attributes:
        seed: the cell's seed (>= 0).
        overrides: stream name -> the seed whose stream it uses instead of ``seed``.
    """

    seed: int
    overrides: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.overrides) - set(SEED_STREAMS))
        if unknown:
            raise ConfigError(f"unknown seed streams {unknown}; the streams are {list(SEED_STREAMS)}.")
        for name, value in {"seed": self.seed, **self.overrides}.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"seed stream '{name}': expected a non-negative integer seed; got {value!r}.")

    def sequence(self, name: str) -> np.random.SeedSequence:
        """The `numpy.random.SeedSequence` of stream ``name``."""
        if name not in SEED_STREAMS:
            raise KeyError(f"unknown seed stream '{name}'; the streams are {list(SEED_STREAMS)}")
        return np.random.SeedSequence(int(self.overrides.get(name, self.seed)), spawn_key=(SEED_STREAMS[name],))

    def generator(self, name: str) -> np.random.Generator:
        """A numpy generator on stream ``name``."""
        return np.random.default_rng(self.sequence(name))

    def integer(self, name: str) -> int:
        """An integer seed in ``[0, 2**63)`` of stream ``name`` (for ``torch.manual_seed``)."""
        return int(self.sequence(name).generate_state(1, np.uint64)[0] >> np.uint64(1))
