"""Every registered segmenter trains and predicts masks of the right shape on tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import SEGMENTERS, ConfigError, RunContext, create_segmenter

MONAI_SEGMENTERS = [name for name, cls in SEGMENTERS.items() if cls.__module__ == "baselines.monai_nets"]
TINY = {"unet": {"channels": [4, 8, 16]}, "attention-unet": {"channels": [4, 8, 16]}, "basic-unet": {"channels": [4, 4, 8, 8, 16, 4]}}


def test_the_four_monai_networks_are_registered():
    assert set(MONAI_SEGMENTERS) >= {"unet", "basic-unet", "attention-unet", "segresnet"}


@pytest.mark.parametrize("name", MONAI_SEGMENTERS)
@pytest.mark.parametrize("in_channels", [1, 2])
def test_fit_and_predict_shapes(name, in_channels):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, in_channels, 32, 32)).astype(np.float32)
    masks = (images[:, 0] > 1).astype(np.uint8)
    segmenter = create_segmenter(name, epochs=2, batch_size=4, **TINY.get(name, {}))
    segmenter.bind(RunContext(device="cpu", seed=0))
    segmenter.fit(images, masks)
    pred = segmenter.predict(images[:3])
    assert pred.shape == (3, 32, 32) and pred.dtype == np.uint8
    assert set(np.unique(pred)) <= {0, 1}
    assert len(segmenter.history.losses) == 2 and all(np.isfinite(segmenter.history.losses))


def test_unet_learns_an_easy_task():
    """Bright blobs are the target: after training, Dice on training data is high."""
    rng = np.random.default_rng(1)
    masks = np.zeros((16, 32, 32), np.uint8)
    for i in range(16):
        y, x = rng.integers(6, 26, size=2)
        masks[i, y - 4 : y + 4, x - 4 : x + 4] = 1
    images = (masks[:, None] * 3.0 + rng.normal(scale=0.5, size=(16, 1, 32, 32))).astype(np.float32)
    segmenter = create_segmenter("unet", epochs=30, batch_size=8, lr=0.01, channels=[8, 16, 32])
    segmenter.bind(RunContext(device="cpu", seed=0))
    segmenter.fit(images, masks)
    pred = segmenter.predict(images)
    dice = 2 * (pred & masks).sum() / (pred.sum() + masks.sum())
    assert dice > 0.8
    assert segmenter.history.losses[-1] < segmenter.history.losses[0]


def test_same_seed_same_weights():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(8, 1, 32, 32)).astype(np.float32)
    masks = (images[:, 0] > 0.5).astype(np.uint8)
    predictions = []
    for _ in range(2):
        import torch

        torch.manual_seed(0)
        segmenter = create_segmenter("unet", epochs=2, batch_size=4, channels=[4, 8, 16])
        segmenter.bind(RunContext(device="cpu", seed=0))
        segmenter.fit(images, masks)
        predictions.append((segmenter.history.losses, segmenter.predict(images)))
    assert predictions[0][0] == predictions[1][0]
    np.testing.assert_array_equal(predictions[0][1], predictions[1][1])


@pytest.mark.parametrize(
    "params, fragment",
    [({"channels": [0, 8]}, "channels"), ({"epochs": 0}, "epochs"), ({"lr": -1}, "lr"), ({"depth": 3}, "depth: unknown parameter")],
)
def test_bad_parameters_are_config_errors(params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        create_segmenter("unet", **params)
