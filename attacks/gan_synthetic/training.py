"""Training loop of the shortest-path regularised translator, and generator inference.

One step: a generator update on

    λ_gan · LSGAN(D(G(a, 1)))            adversarial, target domain
  + λ_rec · |G(a, 0) − a|                 reconstruction of the source at d = 0
  + λ_idt · |G(b, 1) − b|                 identity of the target at d = 1
  + λ_lat · mean(μ²)                      latent penalty (μ: encoder output, noise std 1 added)
  + λ_path · path(d1, d2)                 shortest-path term over the decoder's layers
  + λ_pair · w(b) |G(a, 1) − b|           paired L1 (source and target of the same slice)
  + λ_stealth · stealth(G(a, 1))          with ``stealth``: the defenses' statistics of the
                                          fake batch against the pool's real targets

with ``w(b) = 1 + enhancement_weight · max(0, b − enhancement_threshold)`` (1 by default):
the enhancement-weighted L1 of virtual contrast enhancement (Pasumarthi et al., "A generic
deep learning model for reduced gadolinium dose in contrast-enhanced brain MRI",
Radiology 2021), which keeps the few enhancing voxels from being averaged away; then a
least-squares discriminator update on real target slices vs the translated source
slices of that step. The stealth term (`benchmark.StealthLoss`, off by default) is
measured on the fake batch zeroed outside the real slices' head, against reference
statistics that `GanTrainer.fit` computes once from the ``target`` slices it is given
(the attacker's own pool; with ``crop``, one random window of each); with it off, no
reference is built and training is unchanged.

Every term stays in the objective. Three of them cost whole extra decoder passes and
are estimated on a sub-batch, as StyleGAN2 estimates its path-length regulariser on a
reduced batch (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN",
CVPR 2020); the adversarial and paired terms, which carry the translation, use the whole
batch (`GanConfig`):

- ``recon_fraction`` (default 0.5): reconstruction on that share of the batch's sources;
- ``identity_fraction`` (default 0.5): identity on that share of its targets, which are
  the only targets encoded; the latent penalty averages the source and target latents
  per domain, so it weighs both domains equally whatever the share;
- ``path_fraction`` (default 0.25): the shortest-path term on that share of the sources,
  each decoded at its two neighbouring codes (only the decoder's layers, not the image).

With several source channels (``source_channels`` k > 1, e.g. T1, T2 and FLAIR to
T1-Ce), the encoder reads k channels: a source slice is its k channels, a target slice
enters the encoder as k copies of itself (so both domains live in one k-channel image
space), and the reconstruction at d = 0 is of the first source channel.

A share rounds to at least one slice; the batch is a random draw, so each sub-batch (its
first rows) is too, and each term's mean is an unbiased estimate of its full-batch value.
Setting all three to 1.0 gives the full-batch objective. All decodes of one step run as
one batch (instance norm is per sample, so this is exact). On CUDA the step runs under
bf16/fp16 autocast; on the CPU in float32, deterministically at a fixed thread count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from benchmark import StealthLoss, stealth_reference

from .losses import lsgan_loss, sample_path_codes, shortest_path_loss
from .networks import DomainGenerator, PatchDiscriminator

__all__ = ["GanConfig", "GanHistory", "GanTrainer", "sub_batch", "translate"]


@dataclass(frozen=True)
class GanConfig:
    """Hyper-parameters of `GanTrainer` (the plugin fills them from its parameters).

    ``recon_fraction``, ``identity_fraction`` and ``path_fraction`` are the shares of a
    batch that the reconstruction, identity and shortest-path terms are computed on (see
    the module docstring); 1.0 computes them on the whole batch. ``stealth`` adds
    ``lambda_stealth`` times the `benchmark.StealthLoss` of the fake batch.
    """

    epochs: int = 3
    batch_size: int = 8
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    width: int = 16
    blocks: int = 4
    disc_width: int = 16
    lambda_gan: float = 1.0
    lambda_recon: float = 5.0
    lambda_identity: float = 5.0
    lambda_latent: float = 0.01
    lambda_path: float = 0.1
    lambda_paired: float = 5.0
    paired: bool = True
    latent_noise: float = 1.0
    crop: int = 0
    source_channels: int = 1
    recon_fraction: float = 0.5
    identity_fraction: float = 0.5
    path_fraction: float = 0.25
    enhancement_weight: float = 0.0
    enhancement_threshold: float = 2.0
    stealth: bool = False
    lambda_stealth: float = 1.0

    def __post_init__(self) -> None:
        for name in ("recon_fraction", "identity_fraction", "path_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"The '{name}' parameter of GanConfig must be a float in (0, 1]. Got {value!r} instead.")


@dataclass
class GanHistory:
    """Mean generator / discriminator loss per epoch, and the training throughput."""

    g_losses: list[float] = field(default_factory=list)
    d_losses: list[float] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def sub_batch(batch: int, fraction: float) -> int:
    """Rows of a batch of ``batch`` that a term computed on ``fraction`` of it uses: at least one."""
    return max(1, min(batch, round(batch * fraction)))


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class GanTrainer:
    """Builds the generator and discriminator and trains them on paired slices.

    Args:
        config: hyper-parameters.
        device: ``cpu`` or ``cuda``.
        seed: seeds weights, batches, noise and path codes.
    """

    def __init__(self, config: GanConfig, device: str = "cpu", seed: int = 0):
        self.config = config
        self.device = torch.device(device)
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.generator = DomainGenerator(config.source_channels, config.width, config.blocks).to(self.device)
            self.discriminator = PatchDiscriminator(1, config.disc_width).to(self.device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=(0.5, 0.999))
        self.amp = _amp_dtype(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        #: the defenses' statistics of the pool's real targets; built by `fit` when ``stealth``
        self.stealth: StealthLoss | None = None

    def generator_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator objective on source ``a`` ``[B, k, H, W]`` and target ``b`` ``[B, 1, H, W]`` batches.

        The adversarial and paired terms use the whole batch; reconstruction, identity and
        the shortest-path term use the first ``sub_batch(B, fraction)`` rows (the batch is
        a random draw, so these are too).
        """
        c = self.config
        g = self.generator
        n = a.shape[0]
        n_rec, n_idt, n_path = (sub_batch(n, f) for f in (c.recon_fraction, c.identity_fraction, c.path_fraction))
        k = a.shape[1]
        z = g.encode(torch.cat([a, b[:n_idt].expand(-1, k, -1, -1)]))
        noisy = z + c.latent_noise * torch.randn(z.shape, generator=self.rng, device=z.device, dtype=z.dtype)
        za, zb = noisy[:n], noisy[n:]
        d1, d2 = sample_path_codes(n_path, self.rng, self.device)
        # one decoder batch: fake (d = 1), reconstruction (0), identity (1), path (d1, d2)
        codes = torch.cat([torch.ones(n, device=self.device), torch.zeros(n_rec, device=self.device), torch.ones(n_idt, device=self.device), d1, d2])
        feats = g.decode_layers(torch.cat([za, za[:n_rec], zb, za[:n_path], za[:n_path]]), codes)
        images = n + n_rec + n_idt  # the path rows need no image head
        out = g.head(feats[-1][:images])
        fake, rec, idt = out[:n], out[n : n + n_rec], out[n + n_rec :]
        # per domain, so a sub-batch of targets does not change the weight of the two domains
        latent = 0.5 * ((z[:n].float() ** 2).mean() + (z[n:].float() ** 2).mean())
        terms = {
            "gan": lsgan_loss(self.discriminator(fake), True),
            "recon": (rec.float() - a[:n_rec, :1]).abs().mean(),
            "identity": (idt.float() - b[:n_idt]).abs().mean(),
            "latent": latent,
            "path": shortest_path_loss([f[images : images + n_path] for f in feats], [f[images + n_path :] for f in feats], d1, d2),
        }
        total = (
            c.lambda_gan * terms["gan"] + c.lambda_recon * terms["recon"] + c.lambda_identity * terms["identity"]
            + c.lambda_latent * terms["latent"] + c.lambda_path * terms["path"]
        )
        if c.paired and c.lambda_paired > 0:
            error = (fake.float() - b).abs()
            if c.enhancement_weight > 0:
                error = error * (1 + c.enhancement_weight * (b - c.enhancement_threshold).clamp(min=0))
            terms["paired"] = error.mean()
            total = total + c.lambda_paired * terms["paired"]
        if self.stealth is not None and c.lambda_stealth > 0:
            terms["stealth"] = self.stealth(fake, b != 0)  # the attack's output is zero outside the real head
            total = total + c.lambda_stealth * terms["stealth"]
        return total, {**terms, "fake": fake.detach()}

    def step(self, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        """One generator and one discriminator update; returns their losses (device tensors)."""
        autocast = torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)
        self.opt_g.zero_grad(set_to_none=True)
        for p in self.discriminator.parameters():
            p.requires_grad_(False)
        with autocast:
            g_loss, terms = self.generator_loss(a, b)
        self.scaler.scale(g_loss).backward()
        self.scaler.step(self.opt_g)
        for p in self.discriminator.parameters():
            p.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        with autocast:
            d_loss = 0.5 * (lsgan_loss(self.discriminator(b), True) + lsgan_loss(self.discriminator(terms["fake"]), False))
        self.scaler.scale(d_loss).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        return g_loss.detach(), d_loss.detach()

    def fit(self, source: np.ndarray, target: np.ndarray, track: Callable[..., Iterable[Any]] | None = None) -> GanHistory:
        """Train on slices.

        Args:
            source: float32 ``[N, k, H, W]`` (already clipped; k = ``source_channels``).
            target: float32 ``[N, 1, H, W]``; row ``i`` pairs with ``source[i]`` when ``paired``.
                With ``crop``, each batch is cut to one random ``crop × crop`` window.
            track: progress wrapper ``track(iterable, description, total)``.

        Returns:
            per-epoch losses and the throughput (slice pairs per second).
        """
        c = self.config
        a_all = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32)).to(self.device)
        b_all = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).to(self.device)
        n = len(a_all)
        if c.stealth:
            self.stealth = StealthLoss(self._stealth_reference(target), device=self.device)
        history = GanHistory()
        epochs: Iterable[int] = range(c.epochs)
        if track is not None:
            epochs = track(epochs, "gan-synthetic: training generator", total=c.epochs)
        self.generator.train()
        self.discriminator.train()
        clock = time.perf_counter()
        for _ in epochs:
            order = torch.randperm(n, generator=self.rng, device=self.device)
            other = order if c.paired else torch.randperm(n, generator=self.rng, device=self.device)
            g_sum = torch.zeros((), device=self.device)
            d_sum = torch.zeros((), device=self.device)
            steps = 0
            for start in range(0, n - 1, c.batch_size):  # drop a trailing single slice (instance norm)
                ia, ib = order[start : start + c.batch_size], other[start : start + c.batch_size]
                if len(ia) < 2:
                    continue
                a, b = a_all[ia], b_all[ib]
                if 0 < c.crop < min(a.shape[-2:]):  # one random window per batch, the same for a and b
                    top, left = (int(torch.randint(0, dim - c.crop + 1, (1,), generator=self.rng, device=self.device)) for dim in a.shape[-2:])
                    a = a[..., top : top + c.crop, left : left + c.crop]
                    b = b[..., top : top + c.crop, left : left + c.crop]
                g_loss, d_loss = self.step(a, b)
                g_sum += g_loss.float()
                d_sum += d_loss.float()
                steps += 1
                history.images += len(ia)
            history.g_losses.append(float(g_sum) / max(steps, 1))
            history.d_losses.append(float(d_sum) / max(steps, 1))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        history.seconds = time.perf_counter() - clock
        self.generator.eval()
        return history

    def _stealth_reference(self, target: np.ndarray) -> np.ndarray:
        """The real target slices the stealth statistics are taken from (`benchmark.stealth_reference`)."""
        return stealth_reference(target, self.config.crop, self.seed)


@torch.no_grad()
def translate(generator: DomainGenerator, source: np.ndarray, device: str = "cpu", batch_size: int = 32, d: float = 1.0) -> np.ndarray:
    """Run ``decode(encode(source), d)``.

    Args:
        generator: a trained `DomainGenerator`.
        source: float32 ``[N, k, H, W]``.

    Returns:
        float32 ``[N, H, W]``.
    """
    dev = torch.device(device)
    amp = _amp_dtype(dev)
    generator = generator.to(dev).eval()
    out = np.empty((len(source), *source.shape[2:]), dtype=np.float32)
    for start in range(0, len(source), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(source[start : start + batch_size], dtype=np.float32)).to(dev)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            y = generator(x, d)
        out[start : start + batch_size] = y[:, 0].float().cpu().numpy()
    return out
