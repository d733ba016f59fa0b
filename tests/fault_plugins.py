"""Plugins that misbehave on purpose, for the executor and reliability tests.

Importable by worker processes (the tests folder is on ``sys.path``), so the process
executor can run them too.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from benchmark import Attack, PluginParams, Segmenter, SliceSet, register_attack, register_segmenter


@register_segmenter("test-threshold")
class ThresholdSegmenter(Segmenter):
    """Predicts the brightest pixels; optionally sleeps, or kills its own process once."""

    class Params(PluginParams):
        sleep_s: float = Field(0.0, ge=0, description="pause inside fit, to be interrupted")
        started_marker: str | None = Field(None, description="file touched when fit starts")
        kill_marker: str | None = Field(None, description="if this file exists: delete it and SIGKILL this process")

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        p = self.params
        if p.started_marker:
            Path(p.started_marker).touch()
        if p.kill_marker and os.path.exists(p.kill_marker):
            os.remove(p.kill_marker)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(p.sleep_s)
        self.threshold = float(np.quantile(images[:, 0], 0.99))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return (images[:, 0] > self.threshold).astype(np.uint8)


@register_segmenter("test-nan")
class NaNSegmenter(Segmenter):
    """Returns a prediction full of NaN."""

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        pass

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.full((len(images), *images.shape[2:]), np.nan)


@register_attack("test-nan-attack")
class NaNAttack(Attack):
    """Poisons by writing NaN into the images."""

    def poison(self, train: SliceSet, rate: float, rng: np.random.Generator) -> SliceSet:
        images = np.array(train.images, copy=True)
        images[0, 0, 0, 0] = np.nan
        return train.with_arrays(images=images)


@register_attack("test-wrong-type")
class WrongTypeAttack(Attack):
    """Returns a bare array instead of a SliceSet."""

    def poison(self, train: SliceSet, rate: float, rng: np.random.Generator):
        return train.images
