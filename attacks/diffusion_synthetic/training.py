"""Training of the conditional denoising diffusion translator, and its DDIM sampling.

The model is MONAI's `DiffusionModelUNet` predicting the noise ``ε`` of a noisy target
(Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020), or with
``prediction: v`` the velocity ``v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0`` (Salimans and Ho,
ICLR 2022), which at high noise is mostly ``−x0`` and so teaches the translation from
the first steps (the loss below then compares ``v``), conditioned
on the source channels by concatenation, the image-to-image form of Saharia et al.,
"Palette: Image-to-Image Diffusion Models" (SIGGRAPH 2022). One step on a batch of
target slices ``x0`` ``[B, 1, H, W]`` and their sources ``s`` ``[B, k, H, W]``:

    t ~ U{0, …, T − 1},  ε ~ N(0, I)
    x_t = sqrt(ᾱ_t) · x0 + sqrt(1 − ᾱ_t) · ε                    (`DDPMScheduler.add_noise`)
    loss = mean((UNet([x_t, s], t) − ε)²)

with ``T`` = ``train_timesteps`` and MONAI's linear β schedule (1e-4 to 0.02, Ho et al.).
With ``stealth`` (off by default) the objective gains ``lambda_stealth`` times
`benchmark.StealthLoss` of the denoised estimate

    x0_hat = (x_t − sqrt(1 − ᾱ_t) · ε̂) / sqrt(ᾱ_t),

clipped as the sampler clips it and zeroed outside the real slices' head, against
reference statistics that `DiffusionTrainer.fit` takes once from the ``target`` slices it
is given (the attacker's own pool; with ``crop``, one random window of each). The term is
taken over the rows of the batch with ``ᾱ_t ≥ STEALTH_MIN_ALPHA``: there ``x0_hat`` is an
image (the noise-prediction error enters it at most once, where at ``t`` near ``T`` it is
amplified a hundredfold), and those are the last steps of sampling, which set the
statistics of the output.
Sampling (`ddim_translate`) starts from seeded noise and runs ``ddim_steps`` deterministic
DDIM steps (η = 0; Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021),
the estimate of ``x0`` clipped at each step to the range the target was trained in.

Intensities: the network sees the z-scored target and sources (clipped to
``±input_clip``) divided by `DATA_SCALE`, so that the brain's spread is that of images in
[-1, 1], the range the β schedule was designed for. Slices whose size is not a multiple
of the UNet's downsampling factor are zero-padded (the background of a skull-stripped or
head image is 0) and cropped back. On the CPU everything runs in float32 and is
deterministic at a fixed thread count: weights, batches, crops, timesteps and noise all
come from generators seeded by the trainer's seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import StealthLoss, stealth_reference

__all__ = ["DATA_SCALE", "PREDICTIONS", "STEALTH_MIN_ALPHA", "DiffusionConfig", "DiffusionHistory", "DiffusionTrainer", "build_unet", "ddim_translate", "norm_groups"]

#: The z-scored intensities are divided by this before they enter the network: a brain of
#: spread 1 becomes one of spread 0.5, as images scaled to [-1, 1] (Ho et al. 2020).
DATA_SCALE = 2.0
#: What the UNet predicts -> MONAI's name for it: the noise ε, or the velocity
#: v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0 (Salimans and Ho, "Progressive Distillation for
#: Fast Sampling of Diffusion Models", ICLR 2022).
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}
#: The stealth term is taken on the denoised estimates of the rows whose ``ᾱ_t`` is at least this.
STEALTH_MIN_ALPHA = 0.5


@dataclass(frozen=True)
class DiffusionConfig:
    """Hyper-parameters of `DiffusionTrainer` and `ddim_translate` (the plugin fills them from its parameters).

    ``clip`` is the range ``±clip`` (z-scores) of the sources and the target, and of the
    sampled target's estimate at every DDIM step. ``stealth`` adds ``lambda_stealth``
    times the `benchmark.StealthLoss` of the denoised estimate (module docstring).
    """

    epochs: int = 16
    batch_size: int = 16
    lr: float = 1e-3
    channels: tuple[int, ...] = (16, 32, 64)
    res_blocks: int = 1
    train_timesteps: int = 1000
    ddim_steps: int = 20
    crop: int = 32
    source_channels: int = 1
    clip: float = 5.0
    stealth: bool = False
    lambda_stealth: float = 1.0
    prediction: str = "v"

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"The 'prediction' parameter of DiffusionConfig must be one of {sorted(PREDICTIONS)}. Got {self.prediction!r} instead.")
        if not 1 <= self.ddim_steps <= self.train_timesteps:
            raise ValueError(
                f"The 'ddim_steps' parameter of DiffusionConfig must be in [1, train_timesteps = {self.train_timesteps}]. "
                f"Got {self.ddim_steps!r} instead."
            )

    @property
    def factor(self) -> int:
        """The UNet's total downsampling: slice sides are padded to a multiple of it."""
        return 2 ** (len(self.channels) - 1)


@dataclass
class DiffusionHistory:
    """Mean noise-prediction loss per epoch (and of the ``stealth`` term over the steps that had it), and the throughput."""

    losses: list[float] = field(default_factory=list)
    stealth_losses: list[float] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def norm_groups(channels: tuple[int, ...], most: int = 8) -> int:
    """The largest group count of at most ``most`` that divides every width (GroupNorm needs one)."""
    common = math.gcd(*channels)
    return max(g for g in range(1, most + 1) if common % g == 0)


def build_unet(config: DiffusionConfig) -> torch.nn.Module:
    """MONAI's `DiffusionModelUNet` for ``1 + source_channels`` inputs (noisy target, sources) and one output (noise).

    No attention in the levels (`channels` sets the widths, one per level); the middle
    block's attention, which MONAI always includes, has one head.
    """
    from monai.networks.nets import DiffusionModelUNet

    levels = len(config.channels)
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1 + config.source_channels,
        out_channels=1,
        channels=tuple(config.channels),
        num_res_blocks=config.res_blocks,
        attention_levels=(False,) * levels,
        norm_num_groups=norm_groups(tuple(config.channels)),
        num_head_channels=config.channels[-1],
    )


def _scheduler(config: DiffusionConfig, kind: str = "ddpm") -> Any:
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    bound = config.clip / DATA_SCALE
    kinds = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
    return kinds[kind](
        config.train_timesteps, clip_sample=True, clip_sample_min=-bound, clip_sample_max=bound,
        prediction_type=PREDICTIONS[config.prediction],
    )


def _pad(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Zero-pad ``[B, C, H, W]`` at the bottom and right to sides that are multiples of ``factor``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % factor, 0, -h % factor))


class DiffusionTrainer:
    """Builds the UNet and trains it to predict the noise of noisy targets given their sources.

    Args:
        config: hyper-parameters.
        device: ``cpu`` or ``cuda``.
        seed: seeds weights, batches, crops, timesteps and noise.
    """

    def __init__(self, config: DiffusionConfig, device: str = "cpu", seed: int = 0):
        self.config = config
        self.device = torch.device(device)
        self.seed = seed
        #: the defenses' statistics of the pool's real targets; built by `fit` when ``stealth``
        self.stealth: StealthLoss | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet = build_unet(config).to(self.device)
        self.scheduler = _scheduler(config)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=config.lr)
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self._alphas = self.scheduler.alphas_cumprod.to(self.device)

    def loss(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training objective on ``source`` ``[B, k, H, W]`` and ``target`` ``[B, 1, H, W]`` (z-scores, clipped).

        Returns:
            the total loss and its terms: ``noise`` (the DDPM loss) and, with a stealth
            loss, ``stealth`` on ``x0_hat = (x_t − sqrt(1 − ᾱ_t) · ε̂) / sqrt(ᾱ_t)``.
        """
        c = self.config
        x0 = target / DATA_SCALE
        cond = source / DATA_SCALE
        n = x0.shape[0]
        noise = torch.randn(x0.shape, generator=self.rng, device=self.device)
        t = torch.randint(0, c.train_timesteps, (n,), generator=self.rng, device=self.device)
        xt = self.scheduler.add_noise(x0, noise, t)
        alpha = self._alphas[t].view(-1, 1, 1, 1)
        out = self.unet(torch.cat([xt, cond], dim=1), t)
        if c.prediction == "v":
            terms = {"noise": F.mse_loss(out, alpha.sqrt() * noise - (1 - alpha).sqrt() * x0)}
            eps = alpha.sqrt() * out + (1 - alpha).sqrt() * xt  # the noise the predicted velocity implies
        else:
            terms = {"noise": F.mse_loss(out, noise)}
            eps = out
        total = terms["noise"]
        if self.stealth is not None and c.lambda_stealth > 0:
            late = alpha.flatten() >= STEALTH_MIN_ALPHA
            if bool(late.any()):
                bound = c.clip / DATA_SCALE
                x0_hat = ((xt - (1 - alpha).sqrt() * eps) / alpha.sqrt()).clamp(-bound, bound)
                # in z-score units and zero outside the real head, as the attack's output is
                terms["stealth"] = self.stealth(x0_hat[late] * DATA_SCALE, target[late] != 0)
                total = total + c.lambda_stealth * terms["stealth"]
        return total, terms

    def fit(self, source: np.ndarray, target: np.ndarray, track: Callable[..., Iterable[Any]] | None = None) -> DiffusionHistory:
        """Train on paired slices.

        Args:
            source: float32 ``[N, k, H, W]``, already clipped (k = ``source_channels``).
            target: float32 ``[N, 1, H, W]``, row ``i`` the target of ``source[i]``. With
                ``crop``, each batch is cut to one random ``crop × crop`` window.
            track: progress wrapper ``track(iterable, description, total)``.

        Returns:
            the per-epoch losses and the throughput (slices per second).
        """
        c = self.config
        clip = c.clip
        a_all = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32)).to(self.device)
        b_all = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).clamp(-clip, clip).to(self.device)
        n = len(a_all)
        if c.stealth:
            self.stealth = StealthLoss(self._stealth_reference(b_all.cpu().numpy())).to(self.device)
        steps_per_epoch = math.ceil(n / c.batch_size)
        # cosine decay of the learning rate to zero: the short budget ends on small steps
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, c.epochs * steps_per_epoch))
        history = DiffusionHistory()
        epochs: Iterable[int] = range(c.epochs)
        if track is not None:
            epochs = track(epochs, "diffusion-synthetic: training the denoiser", total=c.epochs)
        self.unet.train()
        clock = time.perf_counter()
        for _ in epochs:
            order = torch.randperm(n, generator=self.rng, device=self.device)
            total = torch.zeros((), device=self.device)
            stealth = torch.zeros((), device=self.device)
            steps = stealth_steps = 0
            for start in range(0, n, c.batch_size):
                rows = order[start : start + c.batch_size]
                a, b = a_all[rows], b_all[rows]
                if 0 < c.crop < min(a.shape[-2:]):  # one random window per batch, the same for source and target
                    top, left = (int(torch.randint(0, dim - c.crop + 1, (1,), generator=self.rng, device=self.device)) for dim in a.shape[-2:])
                    a = a[..., top : top + c.crop, left : left + c.crop]
                    b = b[..., top : top + c.crop, left : left + c.crop]
                a, b = _pad(a, c.factor), _pad(b, c.factor)
                self.opt.zero_grad(set_to_none=True)
                loss, terms = self.loss(a, b)
                loss.backward()
                self.opt.step()
                schedule.step()
                total += terms["noise"].detach()
                if "stealth" in terms:
                    stealth += terms["stealth"].detach()
                    stealth_steps += 1
                steps += 1
                history.images += len(rows)
            history.losses.append(float(total) / max(steps, 1))
            if c.stealth:
                history.stealth_losses.append(float(stealth) / max(stealth_steps, 1))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        history.seconds = time.perf_counter() - clock
        self.unet.eval()
        return history

    def _stealth_reference(self, target: np.ndarray) -> np.ndarray:
        """The real target slices the stealth statistics are taken from (`benchmark.stealth_reference`)."""
        return stealth_reference(target, self.config.crop, self.seed)


@torch.no_grad()
def ddim_translate(
    unet: torch.nn.Module, source: np.ndarray, config: DiffusionConfig, seed: int, device: str = "cpu", batch_size: int = 32
) -> np.ndarray:
    """Sample target slices for ``source`` with deterministic DDIM (η = 0) from seeded noise.

    Args:
        unet: a trained `build_unet` model.
        source: float32 ``[N, k, H, W]``, clipped as in training.
        config: the trained model's configuration (``ddim_steps``, ``train_timesteps``, ``clip``).
        seed: seeds the starting noise of all ``N`` slices (drawn at once, so the output
            does not depend on ``batch_size``).
        device: ``cpu`` or ``cuda``.
        batch_size: slices denoised together.

    Returns:
        float32 ``[N, H, W]`` in z-score units.
    """
    dev = torch.device(device)
    unet = unet.to(dev).eval()
    scheduler = _scheduler(config, "ddim")
    scheduler.set_timesteps(config.ddim_steps)
    h, w = source.shape[-2:]
    cond_all = _pad(torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32)) / DATA_SCALE, config.factor)
    generator = torch.Generator().manual_seed(seed)
    noise_all = torch.randn((len(source), 1, *cond_all.shape[-2:]), generator=generator)  # on the CPU: the same draw on any device
    out = np.empty((len(source), h, w), dtype=np.float32)
    for start in range(0, len(source), batch_size):
        cond = cond_all[start : start + batch_size].to(dev)
        x = noise_all[start : start + batch_size].to(dev)
        for t in scheduler.timesteps:
            eps = unet(torch.cat([x, cond], dim=1), t.expand(len(x)).to(dev))
            x, _ = scheduler.step(eps, int(t), x)
        x = x.clamp(-config.clip / DATA_SCALE, config.clip / DATA_SCALE)
        out[start : start + batch_size] = (x[:, 0, :h, :w] * DATA_SCALE).float().cpu().numpy()
    return out
