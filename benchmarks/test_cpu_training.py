"""CPU training throughput of the harness's loop against the plain eager MONAI loop.

    pytest benchmarks/test_cpu_training.py --benchmark-only -s

The default U-Net of bench.yaml (channels 8-16-32-64, two residual units, batch 32, DiceCE
over the batch, Adam) trained on the same fixed tensors in the same process, runs
alternated, best of three:

- ``plain``: the eager loop a user would write (contiguous tensors, no flips);
- ``harness``: `benchmark.fit_binary_segmentation` as a cell runs it (channels-last,
  batches read from the arrays, random flips);
- ``compiled`` (64² only, opt-in ``compile: true``): the same through ``torch.compile``,
  timed after its first step (whose compile the sweep pays once; printed).

Printed at one torch thread (what every shipped config uses) and at all usable threads.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from benchmark import RunContext, fit_binary_segmentation
from conftest import report

BATCH, STEPS, REPEATS = 32, {64: 12, 128: 4}, 3


def _net() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=2)


def _data(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH * 4, 1, size, size)).astype(np.float32)
    masks = (images[:, 0] > 1.2).astype(np.uint8)
    return images, masks


def _plain(images: np.ndarray, masks: np.ndarray, steps: int) -> float:
    """images/s of the eager loop on fixed contiguous tensors."""
    from monai.losses import DiceCELoss

    net = _net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    x = torch.from_numpy(images[:BATCH])
    y = torch.from_numpy(masks[:BATCH].astype(np.float32)).unsqueeze(1)
    clock = None
    for step in range(steps + 1):  # the first step (allocator warm-up) is not timed
        if step == 1:
            clock = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
    return BATCH * steps / (time.perf_counter() - clock)


def _harness(images: np.ndarray, masks: np.ndarray, steps: int, **paths) -> float:
    """images/s of the harness's loop: one warm-up epoch of one step, then ``steps`` steps."""
    net = _net()
    times = []

    def lap(epoch: int, _net: torch.nn.Module) -> None:
        times.append(time.perf_counter())

    fit_binary_segmentation(
        net, images, masks, RunContext(device="cpu", seed=0), epochs=2, batch_size=BATCH, lr=1e-3,
        steps_per_epoch=steps, on_epoch_end=lap, **paths,
    )
    return BATCH * steps / (times[1] - times[0])


def _best_alternated(runs: dict, repeats: int = REPEATS) -> dict[str, float]:
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return best


@pytest.mark.parametrize("threads", ["one", "all"])
@pytest.mark.parametrize("size", [64, 128])
def test_harness_vs_plain_eager_loop(benchmark, size, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(1 if threads == "one" else len(__import__("os").sched_getaffinity(0)))
    try:
        images, masks = _data(size)
        steps = STEPS[size]
        best = benchmark.pedantic(
            _best_alternated,
            args=({"plain": lambda: _plain(images, masks, steps), "harness": lambda: _harness(images, masks, steps)},),
            rounds=1, iterations=1,
        )
        report(
            f"cpu-training-{size}px-{threads}-thread", plain_images_per_s=best["plain"],
            harness_images_per_s=best["harness"], harness_vs_plain=best["harness"] / best["plain"],
            torch_threads=torch.get_num_threads(),
        )
        assert best["plain"] > 0 and best["harness"] > 0
    finally:
        torch.set_num_threads(before)


def test_compiled_harness_vs_plain_eager_loop(benchmark):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, masks = _data(64)
        clock = time.perf_counter()
        _harness(images, masks, 1, compile=True)  # compile (or load the on-disk kernels) once
        first = time.perf_counter() - clock
        best = benchmark.pedantic(
            _best_alternated,
            args=({"plain": lambda: _plain(images, masks, STEPS[64]),
                   "compiled": lambda: _harness(images, masks, STEPS[64], compile=True)},),
            rounds=1, iterations=1,
        )
        report(
            "cpu-training-64px-compiled", plain_images_per_s=best["plain"], compiled_images_per_s=best["compiled"],
            compiled_vs_plain=best["compiled"] / best["plain"], first_compile_s=first, torch_threads=1,
        )
        assert best["compiled"] > 0
    finally:
        torch.set_num_threads(before)
