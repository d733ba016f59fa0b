"""The streamed training path (prefetching thread) gives the resident path's batches, order and results."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from benchmark import RunContext, fit_binary_segmentation
from benchmark.training import RESIDENT_FRACTION, _BatchStream, fits_on_device, training_set_bytes


def _net() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=2, out_channels=1, channels=(4, 8), strides=(2,), num_res_units=1)


@pytest.fixture
def mapped_set(tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """26 slices (not a multiple of the batch) of two channels, memory-mapped as a cached data set is."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(26, 2, 16, 16)).astype(np.float32)
    masks = (images[:, 0] > 0.8).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    return np.load(tmp_path / "images.npy", mmap_mode="r"), np.load(tmp_path / "masks.npy", mmap_mode="r")


def _train(images, masks, residency: str, **kwargs) -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    net = _net()
    history = fit_binary_segmentation(
        net, images, masks, RunContext(device="cpu", seed=7), epochs=3, batch_size=8, lr=1e-2, residency=residency, **kwargs
    )
    return history.losses, {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("steps_per_epoch", [None, 5])  # one pass (last batch short), several passes per epoch
def test_streamed_equals_resident_and_the_cpu_default(mapped_set, steps_per_epoch):
    images, masks = mapped_set
    runs = {r: _train(images, masks, r, steps_per_epoch=steps_per_epoch) for r in ("resident", "streamed", "auto")}
    for residency in ("streamed", "auto"):
        assert runs[residency][0] == runs["resident"][0], residency  # bit-identical losses
        for name, tensor in runs["resident"][1].items():
            assert torch.equal(tensor, runs[residency][1][name]), (residency, name)
    assert len(set(runs["resident"][0])) == 3  # it trained: the losses move


def test_stream_delivers_the_requested_rows_in_order(mapped_set):
    images, masks = mapped_set
    stream = _BatchStream(images, masks, torch.device("cpu"), torch.channels_last, batch_size=4, prefetch=2)
    order = np.random.default_rng(1).permutation(26)
    batches = list(stream.epoch(order))
    assert [len(x) for x, _ in batches] == [4] * 6 + [2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x, torch.from_numpy(np.asarray(images)[order]))
    assert torch.equal(y, torch.from_numpy(np.asarray(masks)[order]).unsqueeze(1).float())
    assert all(b[0].is_contiguous(memory_format=torch.channels_last) for b in batches)


def test_a_failing_gather_reaches_the_training_loop_and_the_thread_ends(mapped_set):
    images, masks = mapped_set
    stream = _BatchStream(images, masks, torch.device("cpu"), torch.contiguous_format, batch_size=4)
    before = threading.active_count()
    with pytest.raises(IndexError):
        list(stream.epoch(np.array([0, 1, 2, 3, 99])))  # row 99 does not exist
    assert threading.active_count() == before


def test_leaving_an_epoch_early_stops_the_thread(mapped_set):
    images, masks = mapped_set
    stream = _BatchStream(images, masks, torch.device("cpu"), torch.contiguous_format, batch_size=2, prefetch=1)
    before = threading.active_count()
    batches = stream.epoch(np.arange(26))
    next(batches)
    batches.close()
    assert threading.active_count() == before


def test_the_resident_choice_follows_free_memory():
    images = np.zeros((100, 4, 240, 240), dtype=np.float32)
    masks = np.zeros((100, 240, 240), dtype=np.uint8)
    size = training_set_bytes(images, masks)
    assert size == 100 * (4 * 240 * 240 * 4 + 240 * 240 * 5)
    assert fits_on_device(images, masks, int(size / RESIDENT_FRACTION))
    assert not fits_on_device(images, masks, int(size / RESIDENT_FRACTION) - 1)


def test_an_unknown_residency_is_refused(mapped_set):
    with pytest.raises(ValueError, match="residency must be auto, resident or streamed; got 'disk'"):
        _train(*mapped_set, "disk")


def test_gpu_throughput_refuses_to_run_without_cuda():
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_throughput.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, whatever the machine has
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert "error: no CUDA device" in done.stderr and done.stdout == ""
