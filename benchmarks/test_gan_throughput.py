"""GAN training throughput of gan-synthetic, against a plain generator loop on the same tensors.

    OMP_NUM_THREADS=1 pytest benchmarks/test_gan_throughput.py --benchmark-only -s -k cpu

``test_gan_training_throughput_*`` reports images/s (slice pairs per second) of
`GanTrainer.fit` — the discriminator update plus the generator's batched decode with the
adversarial, paired, reconstruction, identity, latent and shortest-path terms, at the
trainer's default sub-batch shares — and of the same trainer with every term on the whole
batch, each as a ratio to one plain forward/backward/Adam step of the same generator
(``L1(G(source), target)``) on the same tensors. The three loops take turns (one epoch
each on the CPU) for a few rounds in one process and each keeps its best round, so that
load from other processes on a shared machine hits them alike; on the CPU the ratios are
also given by process CPU time, which such load does not inflate. On CUDA all run under
autocast, as the attack does. The goal on the CPU: ``gan_vs_plain`` ≥ 0.4 (the GAN step
at most 2.5 times the plain one).

``test_gan_step_profile_*`` prints where the time of one step goes: each part of the step
(data handling, encoder, each group of decoder rows, path term, discriminator, optimiser
steps) run on its own with its backward pass, best of a few alternated repeats, next to
the whole step and the plain step.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np
import pytest
import torch

from attacks.gan_synthetic import GanConfig, GanTrainer, lsgan_loss, sample_path_codes, shortest_path_loss
from attacks.gan_synthetic.training import sub_batch
from conftest import report

SIZE, SLICES, BATCH = 64, 64, 8
FULL_BATCH = dict(recon_fraction=1.0, identity_fraction=1.0, path_fraction=1.0)


def _data(size: int = SIZE, slices: int = SLICES) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    head = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.2).astype(np.float32)
    source = (head * rng.normal(size=(slices, 1, size, size))).astype(np.float32)
    target = (head * (0.5 * source + 0.2 * rng.normal(size=source.shape))).astype(np.float32)
    return source, target


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _PlainLoop:
    """A plain generator loop: ``L1(G(source, 1), target)``, Adam, no discriminator, no extra decodes."""

    def __init__(self, trainer: GanTrainer):
        self.generator = trainer.generator
        self.device = trainer.device
        self.amp = trainer.amp
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def step(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = (self.generator(a, 1.0).float() - b).abs().mean()
        loss.backward()
        self.optimizer.step()

    def fit(self, source: np.ndarray, target: np.ndarray, epochs: int) -> int:
        """``epochs`` passes over the slices in batches of `BATCH`; returns the images seen."""
        a_all = torch.from_numpy(source).to(self.device)
        b_all = torch.from_numpy(target).to(self.device)
        for _ in range(epochs):
            for start in range(0, len(a_all), BATCH):
                self.step(a_all[start : start + BATCH], b_all[start : start + BATCH])
        return epochs * len(a_all)


def _alternated_best(runs: dict[str, Callable[[], int]], device: torch.device, rounds: int) -> dict[str, tuple[float, float]]:
    """Call each of ``runs`` (returning the images it trained on) once per round, in turn.

    Returns:
        per run, its best images/s over the rounds by wall time and by the process's CPU
        time (on a shared machine the CPU time does not count the time other processes
        hold the core).
    """
    best = {name: (0.0, 0.0) for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            images = run()
            _sync(device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (max(best[name][0], images / wall), max(best[name][1], images / cpu))
    return best


def _throughput(benchmark, device: str, rounds: int, epochs: int) -> None:
    source, target = _data()
    config = GanConfig(epochs=epochs, batch_size=BATCH)  # the attack's default widths and sub-batch shares
    gan = GanTrainer(config, device, 0)
    full = GanTrainer(replace(config, **FULL_BATCH), device, 0)
    plain = _PlainLoop(GanTrainer(config, device, 0))
    runs = {
        "gan": lambda: gan.fit(source, target).images,
        "full_batch": lambda: full.fit(source, target).images,
        "plain": lambda: plain.fit(source, target, epochs),
    }
    _alternated_best(runs, gan.device, 1)  # first-call overheads (allocator, cuDNN) out of the timing
    best = benchmark.pedantic(_alternated_best, args=(runs, gan.device, rounds), rounds=1, iterations=1)
    (gan_wall, gan_cpu), (full_wall, full_cpu), (plain_wall, plain_cpu) = best["gan"], best["full_batch"], best["plain"]
    cpu_figures = {} if gan.device.type == "cuda" else {"gan_vs_plain_cpu_time": gan_cpu / plain_cpu, "full_batch_vs_plain_cpu_time": full_cpu / plain_cpu}
    report(
        f"gan-throughput-{device}",
        images_per_s=gan_wall,
        full_batch_images_per_s=full_wall,
        plain_generator_images_per_s=plain_wall,
        gan_vs_plain=gan_wall / plain_wall,
        full_batch_vs_plain=full_wall / plain_wall,
        **cpu_figures,
        size=SIZE,
        width=config.width,
        rounds=rounds,
        epochs_per_round=epochs,
        torch_threads=torch.get_num_threads(),
    )
    assert gan_wall > 0 and plain_wall > 0


def _step_parts(trainer: GanTrainer, a_all: torch.Tensor, b_all: torch.Tensor) -> dict[str, Callable[[], None]]:
    """Each part of `GanTrainer.step` on one batch, runnable on its own with its backward pass.

    The parts follow `GanTrainer.generator_loss` (its sub-batch shares and row groups);
    each decoder part starts from a detached latent, so the encoder's backward is counted
    once, under ``encode``.
    """
    c = trainer.config
    g, disc, device = trainer.generator, trainer.discriminator, trainer.device
    n = BATCH
    n_rec, n_idt, n_path = (sub_batch(n, f) for f in (c.recon_fraction, c.identity_fraction, c.path_fraction))
    a, b = a_all[:n], b_all[:n]
    with torch.no_grad():
        z = g.encode(torch.cat([a, b[:n_idt]]))
        fake = g.decode(z[:n], 1.0)
    d1, d2 = sample_path_codes(n_path, torch.Generator(device=device).manual_seed(0), device)

    def clear() -> None:
        for p in (*g.parameters(), *disc.parameters()):
            p.grad = None

    def data() -> None:
        order = torch.randperm(len(a_all), generator=trainer.rng, device=device)[:n]
        x, y = a_all[order], b_all[order]
        if 0 < c.crop < min(x.shape[-2:]):
            top, left = (int(torch.randint(0, dim - c.crop + 1, (1,), generator=trainer.rng, device=device)) for dim in x.shape[-2:])
            x, y = x[..., top : top + c.crop, left : left + c.crop], y[..., top : top + c.crop, left : left + c.crop]

    def encode() -> None:
        clear()
        latent = g.encode(torch.cat([a, b[:n_idt]]))
        (latent**2).mean().backward()

    def decode(latent: torch.Tensor, d: float, target: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            clear()
            image = g.head(g.decode_layers(latent.detach().requires_grad_(), d)[-1])
            (image - target).abs().mean().backward()

        return run

    def path() -> None:
        clear()
        rows = z[:n_path].detach().requires_grad_()
        feats = g.decode_layers(torch.cat([rows, rows]), torch.cat([d1, d2]))
        shortest_path_loss([f[:n_path] for f in feats], [f[n_path:] for f in feats], d1, d2).backward()

    def adversarial() -> None:
        clear()
        for p in disc.parameters():
            p.requires_grad_(False)
        lsgan_loss(disc(fake.detach().requires_grad_()), True).backward()
        for p in disc.parameters():
            p.requires_grad_(True)

    def discriminator_update() -> None:
        trainer.opt_d.zero_grad(set_to_none=True)
        (0.5 * (lsgan_loss(disc(b), True) + lsgan_loss(disc(fake), False))).backward()
        trainer.opt_d.step()

    def generator_adam() -> None:
        for p in g.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        trainer.opt_g.step()

    return {
        "data: batch gather and crop": data,
        f"encode: {n} sources + {n_idt} targets": encode,
        f"decode: {n} fakes at d=1 (adversarial, paired)": decode(z[:n], 1.0, b),
        f"decode: {n_rec} reconstructions at d=0": decode(z[:n_rec], 0.0, a[:n_rec]),
        f"decode: {n_idt} identities at d=1": decode(z[n:], 1.0, b[:n_idt]),
        f"path term: {n_path} x 2 codes, decoder layers": path,
        "discriminator in the generator loss": adversarial,
        "discriminator update (real + fake, Adam)": discriminator_update,
        "generator Adam step": generator_adam,
    }


def _best_ms(calls: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict[str, tuple[float, float]]:
    """Best wall and CPU time in ms of each call over ``repeats`` rounds, the calls alternating within a round."""
    for call in calls.values():  # first-call overheads out of the timing
        call()
    best = {name: (float("inf"), float("inf")) for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            _sync(device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], 1000 * wall), min(best[name][1], 1000 * cpu))
    return best


def _profile(benchmark, device: str, repeats: int) -> None:
    source, target = _data()
    config = GanConfig(batch_size=BATCH)
    trainer = GanTrainer(config, device, 0)
    dev = trainer.device
    a_all, b_all = torch.from_numpy(source).to(dev), torch.from_numpy(target).to(dev)
    a, b = a_all[:BATCH], b_all[:BATCH]
    stepper, full = GanTrainer(config, device, 0), GanTrainer(replace(config, **FULL_BATCH), device, 0)
    plain = _PlainLoop(GanTrainer(config, device, 0))
    parts = _step_parts(trainer, a_all, b_all)
    wholes = {
        "whole step": lambda: stepper.step(a, b),
        "whole step, every term on the whole batch": lambda: full.step(a, b),
        "plain generator step": lambda: plain.step(a, b),
    }
    ms = benchmark.pedantic(_best_ms, args=({**parts, **wholes}, dev, repeats), rounds=1, iterations=1)
    ms["sum of the parts"] = tuple(sum(ms[name][i] for name in parts) for i in (0, 1))
    clock = 0 if dev.type == "cuda" else 1  # shares by CPU time on the CPU: other processes' load does not count
    whole = ms["whole step"][clock]
    width = max(map(len, ms))
    lines = [f"{f'one GAN step, batch {BATCH}, {SIZE}x{SIZE}, {torch.get_num_threads()} thread(s)':<{width}}  {'wall ms':>8}  {'CPU ms':>8}  {'share':>6}"]
    for name in (*parts, "sum of the parts", *wholes):
        lines.append(f"{name:<{width}}  {ms[name][0]:8.1f}  {ms[name][1]:8.1f}  {ms[name][clock] / whole:6.1%}")
    print("\n" + "\n".join(lines))
    report(
        f"gan-step-profile-{device}",
        step_ms=whole,
        full_batch_step_ms=ms["whole step, every term on the whole batch"][clock],
        plain_step_ms=ms["plain generator step"][clock],
        gan_vs_plain=ms["plain generator step"][clock] / whole,
        repeats=repeats,
        torch_threads=torch.get_num_threads(),
    )
    assert all(np.isfinite(t) and t > 0 for name in wholes for t in ms[name][: clock + 1])


def test_gan_training_throughput_cpu(benchmark):
    _throughput(benchmark, "cpu", rounds=3, epochs=1)


def test_gan_step_profile_cpu(benchmark):
    _profile(benchmark, "cpu", repeats=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_gan_training_throughput_cuda(benchmark):
    _throughput(benchmark, "cuda", rounds=3, epochs=10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_gan_step_profile_cuda(benchmark):
    _profile(benchmark, "cuda", repeats=20)
