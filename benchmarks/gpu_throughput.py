"""GPU throughput: the harness's U-Net loop against a bare loop, and GAN training.

Run on a machine with a CUDA GPU (it refuses to run without one)::

    python benchmarks/gpu_throughput.py [--epochs 6] [--slices 1024]

For each size (128², 240²) it times `benchmark.fit_binary_segmentation` on both of its
GPU paths (bf16 autocast, channels-last, one host sync per epoch): ``resident`` (the
training set moved to the device once) and ``streamed`` (batches gathered from
memory-mapped ``.npy`` files by the prefetching thread, through pinned buffers; the path
a training set larger than half the free GPU memory takes), and a bare loop written
without the harness on the same random tensors (device-resident), network, loss and
batch size. It prints images/s and each path's ratio to the bare loop (goal: ≥ 0.95 on
both paths). Then it times the ``gan-synthetic`` trainer (slice pairs/s). One JSON line
per figure. Without a CUDA device it exits at once with status 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _unet(in_channels: int = 1):
    from monai.networks.nets import UNet

    return UNet(2, in_channels, 1, (16, 32, 64, 128), (2, 2, 2), num_res_units=2)


def bare_loop(x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int) -> float:
    """Images/s of a plain bf16 channels-last loop on device-resident tensors."""
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = _unet().cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(sigmoid=True)
    x = x.contiguous(memory_format=torch.channels_last)

    def epoch() -> None:
        order = torch.randperm(len(x), device="cuda")
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(net(x[index]), y[index])
            loss.backward()
            optimizer.step()

    epoch()  # warm-up (cudnn autotuning)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    torch.cuda.synchronize()
    return epochs * len(x) / (time.perf_counter() - start)


def harness_loop(x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, residency: str) -> float:
    """Images/s of the harness's own training loop (the one every segmenter uses) on one path."""
    from benchmark import RunContext, fit_binary_segmentation

    context = RunContext(device="cuda", seed=0, deterministic=False)
    torch.manual_seed(0)
    fit_binary_segmentation(_unet(), x, y, context, 1, batch_size, 1e-3, flip_augment=False, residency=residency)  # warm-up
    torch.manual_seed(0)
    net = _unet()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fit_binary_segmentation(net, x, y, context, epochs, batch_size, 1e-3, flip_augment=False, residency=residency)
    torch.cuda.synchronize()
    return epochs * len(x) / (time.perf_counter() - start)


def gan_throughput(size: int, slices: int, epochs: int) -> float:
    from attacks.gan_synthetic import GanConfig, GanTrainer

    rng = np.random.default_rng(0)
    source = rng.normal(size=(slices, 1, size, size)).astype(np.float32)
    target = rng.normal(size=(slices, 1, size, size)).astype(np.float32)
    GanTrainer(GanConfig(epochs=1), "cuda").fit(source[:64], target[:64])  # warm-up
    history = GanTrainer(GanConfig(epochs=epochs), "cuda").fit(source, target)
    return history.images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--slices", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device; this script measures the GPU paths (nothing was run).", file=sys.stderr)
        raise SystemExit(2)
    gpu = torch.cuda.get_device_name(0)
    torch.backends.cudnn.benchmark = True
    scratch = Path(tempfile.mkdtemp(prefix="gpu-throughput-"))
    try:
        for size in (128, 240):
            rng = np.random.default_rng(size)
            x = rng.normal(size=(args.slices, 1, size, size)).astype(np.float32)
            y = (rng.random((args.slices, size, size)) < 0.05).astype(np.uint8)
            np.save(scratch / "x.npy", x)
            np.save(scratch / "y.npy", y)
            x_mapped, y_mapped = np.load(scratch / "x.npy", mmap_mode="r"), np.load(scratch / "y.npy", mmap_mode="r")
            x_gpu, y_gpu = torch.from_numpy(x).cuda(), torch.from_numpy(y).float().unsqueeze(1).cuda()
            # alternate the three and keep each one's best, so clock ramp-up and drift hit all alike
            resident = streamed = bare = 0.0
            for _ in range(args.repeats):
                bare = max(bare, bare_loop(x_gpu, y_gpu, args.epochs, args.batch_size))
                resident = max(resident, harness_loop(x, y, args.epochs, args.batch_size, "resident"))
                streamed = max(streamed, harness_loop(x_mapped, y_mapped, args.epochs, args.batch_size, "streamed"))
            print(json.dumps({
                "figure": "unet_train_images_per_s", "gpu": gpu, "size": size, "batch_size": args.batch_size,
                "bare": round(bare, 1), "harness_resident": round(resident, 1), "harness_streamed": round(streamed, 1),
                "ratio_resident": round(resident / bare, 3), "ratio_streamed": round(streamed / bare, 3),
            }), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for size in (128, 240):
        rate = gan_throughput(size, 512, 3)
        print(json.dumps({"figure": "gan_train_pairs_per_s", "gpu": gpu, "size": size, "pairs_per_s": round(rate, 1)}), flush=True)


if __name__ == "__main__":
    main()
