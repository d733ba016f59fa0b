"""The 3-D MONAI segmenters: volumes in, masks of the same grid out; patches; sliding-window inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.monai_3d import sliding_window_logits
from benchmark import SEGMENTERS, ConfigError, PluginError, RunContext, create_segmenter

VOLUME_SEGMENTERS = [name for name, cls in SEGMENTERS.items() if cls.__module__ == "baselines.monai_3d"]
#: the smallest networks: two levels (downsampling 2), so patches of 4 x 8 x 8 fit
TINY = {
    "unet3d": {"channels": [4, 8], "num_res_units": 0},
    "segresnet3d": {"init_filters": 8, "blocks_down": [1, 1]},
}


def tiny(name: str, **params):
    segmenter = create_segmenter(name, **{"epochs": 2, "batch_size": 2, "patch_size": [4, 8, 8], **TINY[name], **params})
    segmenter.bind(RunContext(device="cpu", seed=0))
    return segmenter


def cubes(volumes: int = 4, depth: int = 6, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Volumes float32 ``[V, 1, depth, size, size]`` of noise with one bright cube each, and its masks ``[V, depth, size, size]``."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((volumes, depth, size, size), np.uint8)
    for v in range(volumes):
        s, y, x = rng.integers(0, depth - 2), *rng.integers(0, size - 5, size=2)
        masks[v, s : s + 3, y : y + 5, x : x + 5] = 1
    images = (masks[:, None] * 3.0 + rng.normal(scale=0.5, size=(volumes, 1, depth, size, size))).astype(np.float32)
    return images, masks


def test_both_networks_are_registered_as_3d_only():
    assert set(VOLUME_SEGMENTERS) == {"unet3d", "segresnet3d"}
    for name in VOLUME_SEGMENTERS:
        assert SEGMENTERS.get(name).dims == (3,)
    assert SEGMENTERS.get("unet").dims == (2,)  # the base class's default


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("in_channels, depth", [(1, 6), (2, 3)])  # 3 slices: thinner than a patch, padded to it
def test_fit_and_predict_shapes(name, in_channels, depth):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, in_channels, depth, 12, 16)).astype(np.float32)
    masks = (images[:, 0] > 1).astype(np.uint8)
    segmenter = tiny(name)
    segmenter.fit(images, masks)
    pred = segmenter.predict(images[:2])
    assert pred.shape == (2, depth, 12, 16) and pred.dtype == np.uint8
    assert set(np.unique(pred)) <= {0, 1}
    assert len(segmenter.history.losses) == 2 and all(np.isfinite(segmenter.history.losses))


@pytest.mark.parametrize("name", sorted(TINY))
def test_sliding_window_on_one_window_is_the_direct_forward_pass(name):
    """An input the size of one window: the blended sliding-window output is the network's own output."""
    images, masks = cubes(volumes=2, depth=4, size=8)
    segmenter = tiny(name)
    segmenter.fit(images, masks)
    x = torch.from_numpy(images[:1])
    segmenter.net.eval()
    with torch.no_grad():
        direct = segmenter.net(x)
    windowed = sliding_window_logits(segmenter.net, x, (4, 8, 8))
    torch.testing.assert_close(windowed, direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(segmenter.predict(images[:1]), (direct[:, 0] > 0).numpy().astype(np.uint8))


def test_sliding_window_covers_a_volume_larger_than_one_window():
    """Several windows: every voxel is predicted, and where windows do not overlap it is the forward pass of its window."""
    segmenter = tiny("unet3d", overlap=0.0)
    images, masks = cubes(volumes=2, depth=8, size=16)
    segmenter.fit(images, masks)
    x = torch.from_numpy(images[:1])
    logits = sliding_window_logits(segmenter.net, x, (4, 8, 8), overlap=0.0)
    assert logits.shape == (1, 1, 8, 16, 16) and torch.isfinite(logits).all()
    with torch.no_grad():
        corner = segmenter.net(x[..., 4:8, 8:16, 0:8])
    torch.testing.assert_close(logits[..., 4:8, 8:16, 0:8], corner, rtol=1e-5, atol=1e-5)


def test_unet3d_learns_bright_cubes():
    images, masks = cubes(volumes=6, depth=8, size=16, seed=1)
    segmenter = tiny("unet3d", epochs=40, batch_size=3, lr=0.01, foreground_fraction=0.5, channels=[8, 16])
    segmenter.fit(images, masks)
    pred = segmenter.predict(images)
    dice = 2 * (pred & masks).sum() / (pred.sum() + masks.sum())
    assert dice > 0.7, dice
    assert segmenter.history.losses[-1] < segmenter.history.losses[0]


def test_same_seed_same_predictions():
    images, masks = cubes()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        segmenter = tiny("unet3d")
        segmenter.fit(images, masks)
        runs.append((segmenter.history.losses, segmenter.predict(images)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_fit_refuses_slices():
    with pytest.raises(PluginError, match=r"volumes \[V, C, S, H, W\]"):
        tiny("unet3d").fit(np.zeros((4, 1, 8, 8), np.float32), np.zeros((4, 8, 8), np.uint8))


def test_predict_before_fit_is_an_error():
    with pytest.raises(PluginError, match="fit"):
        tiny("unet3d").predict(np.zeros((1, 1, 4, 8, 8), np.float32))


def test_cuda_without_a_gpu_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    images, masks = cubes(volumes=2)
    with pytest.raises(PluginError, match="device 'cuda'"):
        tiny("unet3d", device="cuda").fit(images, masks)


@pytest.mark.parametrize(
    "name, params, fragment",
    [
        ("unet3d", {"patch_size": [6, 16, 16]}, "multiple of 4"),  # default widths: three levels
        ("unet3d", {"channels": [8, 16], "patch_size": [3, 8, 8]}, "multiple of 2"),
        ("unet3d", {"patch_size": [0, 8, 8]}, "patch_size"),
        ("unet3d", {"patch_size": [8, 8]}, "patch_size"),
        ("unet3d", {"channels": [0, 8]}, "channels"),
        ("segresnet3d", {"init_filters": 4}, "init_filters"),
        ("segresnet3d", {"blocks_down": [1, 0]}, "blocks_down"),
        ("segresnet3d", {"blocks_down": [1, 1, 1, 1], "patch_size": [4, 16, 16]}, "multiple of 8"),
        ("segresnet3d", {"overlap": 1.0}, "overlap"),
        ("unet3d", {"depth": 3}, "depth: unknown parameter"),
    ],
)
def test_bad_parameters_are_config_errors(name, params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        create_segmenter(name, **params)
