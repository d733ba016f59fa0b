"""The CPU fast paths of the shared training loop: channels-last layout and torch.compile.

Each path is bit-identical across runs at a fixed thread count; the paths agree with each
other to float-sum order (the last bits after one step, a stated tolerance after a few).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from benchmark import RunContext, fit_binary_segmentation


def _data(n: int = 12, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 2, size, size)).astype(np.float32)
    masks = (images[:, 0] + 0.3 * rng.normal(size=(n, size, size)) > 0.8).astype(np.uint8)
    return images, masks


def _net() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=2, out_channels=1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def _train(steps: int, **paths) -> tuple[torch.nn.Module, list[float]]:
    images, masks = _data()
    net = _net()
    history = fit_binary_segmentation(
        net, images, masks, RunContext(device="cpu", seed=3), epochs=steps, batch_size=4, lr=1e-2,
        steps_per_epoch=1, **paths,
    )
    return net, history.losses


def _weights(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@torch.no_grad()
def _logits(net: torch.nn.Module) -> torch.Tensor:
    """What the trained net computes. Weights themselves are no measure of agreement: Adam
    turns float noise on a zero gradient (a bias before instance norm) into a full step."""
    return net.eval()(torch.from_numpy(_data(seed=1)[0]))


def _assert_same_training(a: torch.nn.Module, b: torch.nn.Module, share: float) -> None:
    """a and b compute what the other does to within ``share`` of how far training moved
    the output from the initial net's (Adam turns float noise on tiny gradients into
    lr-sized steps, so an absolute tolerance would measure the learning rate)."""
    moved = (_logits(a) - _logits(_net())).abs().mean()
    apart = (_logits(a) - _logits(b)).abs().mean()
    assert moved > 0.1
    assert apart < share * moved, f"paths differ by {float(apart):.4f}, training moved the output by {float(moved):.4f}"


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("channels_last", [True, False])
def test_each_layout_is_bit_identical_across_runs(one_thread, channels_last):
    first, losses_first = _train(5, channels_last=channels_last)
    second, losses_second = _train(5, channels_last=channels_last)
    assert losses_first == losses_second
    assert torch.equal(_weights(first), _weights(second))


def test_channels_last_trains_in_channels_last_and_agrees_with_contiguous(one_thread):
    fast, fast_losses = _train(3, channels_last=True)
    plain, plain_losses = _train(3, channels_last=False)
    conv_weights = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert conv_weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights if w.shape[-1] > 1)
    assert not all(w.is_contiguous() for w in conv_weights if w.shape[-1] > 1)
    # the same training up to float-sum order
    assert fast_losses == pytest.approx(plain_losses, rel=1e-4)
    _assert_same_training(fast, plain, share=0.05)


@pytest.mark.slow
def test_compiled_training_agrees_with_eager_and_repeats_exactly(one_thread, tmp_path, monkeypatch):
    monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    eager, eager_losses = _train(4)
    compiled, compiled_losses = _train(4, compile=True)
    again, again_losses = _train(4, compile=True)
    # compiled kernels fuse differently: equal to eager within float tolerance over a few steps
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-3, abs=1e-4)
    _assert_same_training(compiled, eager, share=0.05)
    # the second compiled cell of the process reuses the compiled code and repeats exactly
    assert again_losses == compiled_losses
    assert torch.equal(_weights(again), _weights(compiled))
    assert (tmp_path / "torchinductor").is_dir(), (os.environ.get("TORCHINDUCTOR_CACHE_DIR"), list(tmp_path.iterdir()))
