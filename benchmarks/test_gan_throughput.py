"""GAN training throughput of gan-synthetic, against a plain generator loop on the same tensors.

    pytest benchmarks/test_gan_throughput.py --benchmark-only -s

Reports images/s (slice pairs per second) of the full GAN step — discriminator update plus
the generator's five-way batched decode with reconstruction, identity, latent, path and
paired terms — and the ratio to one plain forward/backward/Adam step of the same generator
(``L1(G(source), target)``) on the same tensors in the same run. On CUDA both run under
autocast, as the attack does.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from attacks.gan_synthetic import GanConfig, GanTrainer
from conftest import report

SIZE, SLICES, BATCH = 64, 64, 8


def _data(size: int = SIZE, slices: int = SLICES) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    head = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.2).astype(np.float32)
    source = (head * rng.normal(size=(slices, 1, size, size))).astype(np.float32)
    target = (head * (0.5 * source + 0.2 * rng.normal(size=source.shape))).astype(np.float32)
    return source, target


def _plain_loop(trainer: GanTrainer, source: np.ndarray, target: np.ndarray, epochs: int) -> float:
    """images/s of a plain generator step (no discriminator, no extra decodes)."""
    g = trainer.generator
    device = trainer.device
    optimizer = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    a_all = torch.from_numpy(source).to(device)
    b_all = torch.from_numpy(target).to(device)
    amp = trainer.amp
    images = 0
    clock = time.perf_counter()
    for _ in range(epochs):
        for start in range(0, len(a_all), BATCH):
            a, b = a_all[start : start + BATCH], b_all[start : start + BATCH]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = (g(a, 1.0).float() - b).abs().mean()
            loss.backward()
            optimizer.step()
            images += len(a)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - clock)


def _throughput(benchmark, device: str, epochs: int) -> None:
    source, target = _data()
    config = GanConfig(epochs=epochs, batch_size=BATCH)  # the attack's default widths
    warm = GanTrainer(GanConfig(epochs=1, batch_size=BATCH), device, 0)
    warm.fit(source[:16], target[:16])  # first-call overheads (allocator, cuDNN) out of the timing
    trainer = GanTrainer(config, device, 0)
    history = benchmark.pedantic(trainer.fit, args=(source, target), rounds=1, iterations=1)
    gan = history.images_per_s
    plain = _plain_loop(GanTrainer(config, device, 0), source, target, epochs)
    report(
        f"gan-throughput-{device}",
        images_per_s=gan,
        plain_generator_images_per_s=plain,
        gan_vs_plain=gan / plain,
        size=SIZE,
        width=config.width,
        torch_threads=torch.get_num_threads(),
    )
    assert gan > 0 and plain > 0


def test_gan_training_throughput_cpu(benchmark):
    _throughput(benchmark, "cpu", epochs=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_gan_training_throughput_cuda(benchmark):
    _throughput(benchmark, "cuda", epochs=20)
