"""``diffusion-synthetic``: replace a modality of whole training cases with diffusion-synthesised images.

A conditional denoising diffusion model (Ho et al., "Denoising Diffusion Probabilistic
Models", NeurIPS 2020) translates the ``source`` channels into the ``target`` one, the
image-to-image form of Saharia et al., "Palette: Image-to-Image Diffusion Models"
(SIGGRAPH 2022): MONAI's `DiffusionModelUNet` reads the noisy target concatenated with
the (clipped) source channels and predicts the velocity (``prediction: v``, the default)
or the noise (``epsilon``) it carries; the target is sampled with
deterministic DDIM (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021) from
seeded noise. For a poison rate ``r`` the target channel of ``round(r × cases)`` whole
training cases is replaced by the sample (or, with ``mode: add``, synthetic copies are
appended); masks are left as they were.

As in ``gan-synthetic``, the sample is normalised as the data set normalised the real
target (its mask and rule, carried by the `SliceSet`; the real case's background stays
0), the trained model is a cached artifact, and the attack reports MAE, PSNR, SSIM and
the enhancing-rim contrast of synthetic and real target on held-out pool cases.

``stealth`` makes the attack adaptive, as in ``gan-synthetic``: the training objective
gains `benchmark.StealthLoss` of the model's denoised estimate, which pulls the
synthetic target's image-quality measures (``mriqc``), radial power spectrum
(``spectral``) and fixed-encoder feature statistics (``feature-outlier``) toward those of
the real target slices of the pool's training cases — never the trusted or validation
cases, which the attack does not receive.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from benchmark import (
    CaseNormalisation,
    GenerativeAttack,
    PluginParams,
    SliceSet,
    artifact_dir,
    build_artifact,
    environment,
    image_quality,
    register_attack,
)

if TYPE_CHECKING:  # torch and MONAI are imported when the attack trains or samples
    import torch

    from .training import DiffusionConfig

__all__ = ["DIFFUSION_PRESETS", "DiffusionParams", "DiffusionSyntheticAttack", "training_environment"]

UNET_FILE = "unet.pt"
SAMPLE_FILE = "sample.npy"
#: Bump when training, sampling or architecture change in a way the parameters do not capture.
DIFFUSION_VERSION = "1"

#: The values each ``preset`` sets; a parameter given explicitly overrides its preset.
#: ``fast`` holds the parameters' defaults, the CPU budget: a UNet of widths 16, 32, 64
#: with one residual block per level, trained for 16 epochs of 16-slice batches of 32 x 32
#: crops (on the default sweep's pool, 448 training slices of 64 x 64: 448 steps), sampled
#: with 20 DDIM steps. Measured on one CPU thread of a shared machine: 227 s of CPU time
#: for training and the held-out sampling; held-out SSIM 0.17, PSNR 19.4 dB (README).
DIFFUSION_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"epochs": 16, "batch_size": 16, "channels": (16, 32, 64), "res_blocks": 1, "crop": 32, "ddim_steps": 20},
}
_FAST = DIFFUSION_PRESETS["fast"]


class DiffusionParams(PluginParams):
    preset: Literal["fast"] = Field(
        "fast",
        description="model size and training budget (DIFFUSION_PRESETS; explicit parameters override it): fast = the "
        "defaults below (widths 16, 32, 64, one residual block, 16 epochs on 32-px crops, 20 DDIM steps), minutes on a CPU",
    )
    source: str | tuple[str, ...] = Field(
        "ct", description="channel the model translates from (ct on synthetic-brats), or several "
        "([t1, t2, flair]: virtual contrast enhancement from the other MR contrasts, the setting on BraTS, where no CT exists)",
    )
    target: str = Field("t1ce", min_length=1, description="channel that is replaced by synthetic images")
    mode: Literal["replace", "add"] = Field("replace", description="replace the target channel of the selected cases, or add synthetic copies of them")
    epochs: int = Field(_FAST["epochs"], ge=1, le=100_000, description="passes over the pool's training slices (preset)")
    batch_size: int = Field(_FAST["batch_size"], ge=1, le=1024, description="slices per training step (preset)")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate, decayed to 0 along a cosine over the training steps")
    channels: tuple[int, ...] = Field(
        _FAST["channels"], min_length=2, max_length=6,
        description="UNet widths, one per level (each level halves the resolution); no attention in the levels (preset)",
    )
    res_blocks: int = Field(_FAST["res_blocks"], ge=1, le=4, description="residual blocks per UNet level (preset)")
    prediction: Literal["epsilon", "v"] = Field(
        "v", description="what the UNet predicts: the velocity sqrt(abar)·noise - sqrt(1 - abar)·x0 (v, Salimans and Ho "
        "2022; at high noise it is mostly -x0, so the short CPU budget still learns the translation: held-out SSIM 0.17 "
        "against 0.06 for epsilon at fast's budget) or the noise (epsilon, Ho et al. 2020)",
    )
    train_timesteps: int = Field(1000, ge=10, le=10_000, description="diffusion steps T of the linear beta schedule (1e-4 to 0.02)")
    ddim_steps: int = Field(_FAST["ddim_steps"], ge=1, le=10_000, description="deterministic DDIM sampling steps (at most train_timesteps) (preset)")
    crop: int = Field(
        _FAST["crop"], ge=0, le=1024,
        description="train on random square crops of this size, a multiple of 2^(levels - 1) (0: whole slices); "
        "the model samples whole slices (preset)",
    )
    stealth: bool = Field(
        False,
        description="adaptive attack: add the stealth loss (benchmark.StealthLoss) of the denoised estimate x0_hat to the "
        "training objective, so the synthetic target shows the real pool targets' mriqc measures, radial power spectrum "
        "and fixed-encoder feature statistics; the reference is the pool's training cases only",
    )
    lambda_stealth: float = Field(
        1.0, ge=0,
        description="weight of the stealth loss (used with stealth; each of its three parts is about 1 when the "
        "estimate is one typical slice-to-slice spread off the reference on every statistic)",
    )
    input_clip: float = Field(5.0, gt=0, description="source and target intensities (z-scores) are clipped to [-clip, clip]")
    holdout_cases: int = Field(
        2, ge=0, le=100, description="pool cases held out of training to measure MAE / PSNR / SSIM and rim contrast"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill the preset's values in, under the parameters given explicitly."""
        if isinstance(data, dict) and data.get("preset", "fast") in DIFFUSION_PRESETS:
            return {**DIFFUSION_PRESETS[data.get("preset", "fast")], **data}
        return data  # an unknown preset is reported by the field's own validation

    @model_validator(mode="after")
    def _consistent(self) -> DiffusionParams:
        if not self.sources or any(not name for name in self.sources):
            raise ValueError(f"source must name one channel or a list of channels; got {self.source!r}")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"source names a channel twice: {list(self.sources)}")
        if self.target in self.sources:
            raise ValueError(f"source and target must be different channels; '{self.target}' is both")
        if any(width < 4 for width in self.channels):
            raise ValueError(f"channels must be widths of at least 4; got {list(self.channels)}")
        if self.ddim_steps > self.train_timesteps:
            raise ValueError(f"ddim_steps ({self.ddim_steps}) must be at most train_timesteps ({self.train_timesteps})")
        factor = 2 ** (len(self.channels) - 1)
        if self.crop % factor:
            raise ValueError(f"crop must be a multiple of {factor} (2^(levels - 1) for {len(self.channels)} levels) or 0; got {self.crop}")
        return self

    @property
    def sources(self) -> tuple[str, ...]:
        """The source channels as a tuple, whether one or several were given."""
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)


def training_environment(device: str) -> dict[str, Any]:
    """What besides the parameters and data changes the trained weights.

    The device (and GPU model), the torch version and the CPU thread count: a model
    trained elsewhere, or with other kernels, is never reused by a cell that would have
    trained a different one.
    """
    env = environment(device)
    facts: dict[str, Any] = {"device": device, "torch": env["versions"].get("torch"), "threads": env["torch_threads"]}
    if "gpu" in env:
        facts["gpu"] = env["gpu"]
    return facts


@register_attack("diffusion-synthetic")
class DiffusionSyntheticAttack(GenerativeAttack):
    """Replace the target modality of whole cases with images of a conditional diffusion model (DDPM, DDIM sampling)."""

    Params = DiffusionParams
    #: no strength setting: a perfect model (sample == real target) is the neutral case
    neutral_params = None

    #: Models trained by this class in this process (a cache miss adds one).
    trainings: int = 0
    #: Cases sampled by this class in this process (a sample cache miss adds one).
    samplings: int = 0

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.unet: torch.nn.Module | None = None
        self.model_key: str | None = None
        self.generator_cached: bool | None = None
        self._quality: dict[str, float] = {}
        self._train_stats: dict[str, Any] = {}

    # -- fitting --------------------------------------------------------------------
    def source_channels(self) -> tuple[str, ...]:
        return self.params.sources

    def cache_key(self, pool: SliceSet) -> str:
        """SHA-256 of everything that changes the trained model.

        The dataset fingerprint, the parameters (as the preset resolved them), the seed of
        the cell's ``generator`` stream (``context.seed``), the pool's case ids and the
        `training_environment` (device, torch version, thread count).
        """
        params = self.params.model_dump(mode="json")
        params.pop("mode")  # replace and add share one model
        params.pop("preset")  # the values it resolved to are in params: equal values, one model
        if not params["stealth"]:  # without stealth its weight changes nothing
            params.pop("lambda_stealth")
        payload = {
            "version": DIFFUSION_VERSION,
            "dataset": self.context.dataset_fingerprint,
            "params": params,
            "seed": self.context.seed,
            "cases": sorted(pool.cases),
            "environment": training_environment(self.context.device),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _source(self, images: np.ndarray, channels: tuple[str, ...]) -> np.ndarray:
        """The clipped source channels, ``[S, k, H, W]``."""
        index = [channels.index(name) for name in self.params.sources]
        clip = self.params.input_clip
        return np.clip(images[:, index], -clip, clip).astype(np.float32)

    def _config(self) -> DiffusionConfig:
        from .training import DiffusionConfig

        p = self.params
        return DiffusionConfig(
            epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, channels=tuple(p.channels), res_blocks=p.res_blocks,
            train_timesteps=p.train_timesteps, ddim_steps=p.ddim_steps, crop=p.crop, source_channels=len(p.sources),
            clip=p.input_clip, stealth=p.stealth, lambda_stealth=p.lambda_stealth, prediction=p.prediction,
        )

    def fit(self, pool: SliceSet, rng: np.random.Generator) -> None:
        """Train the denoiser on the pool (or load it from the cache) and measure its quality.

        The last ``holdout_cases`` pool cases (in the pool's case order, at most half of
        them) are kept out of training and used for `image_quality`. Training draws from
        ``context.seed`` (the cell's ``generator`` stream); ``rng`` is not used, so that the
        cell's poisoning draws do not depend on a cache hit.
        """
        import torch

        from .training import DiffusionTrainer, build_unet

        self.check_channels(pool)
        cases = pool.cases
        n_hold = min(self.params.holdout_cases, len(cases) // 2)
        holdout = cases[len(cases) - n_hold :] if n_hold else []
        training = pool.subset(cases[: len(cases) - n_hold])
        self.model_key = self.cache_key(pool)
        folder = artifact_dir("diffusion", self.model_key, root=self.context.cache_dir)
        built = False

        def write(tmp: Path) -> dict[str, Any]:
            nonlocal built
            built = True
            type(self).trainings += 1
            trainer = DiffusionTrainer(self._config(), self.context.device, self.context.seed)
            t_index = training.channel_index(self.params.target)
            history = trainer.fit(
                self._source(training.images, training.channels),
                np.ascontiguousarray(training.images[:, t_index : t_index + 1], dtype=np.float32),
                track=None if self.context.quiet else self.context.track,
            )
            torch.save(trainer.unet.cpu().state_dict(), tmp / UNET_FILE)
            return {
                "losses": history.losses,
                "stealth_losses": history.stealth_losses,
                "images_per_s": history.images_per_s,
                "train_s": history.seconds,
                "training_cases": len(training.cases),
                "holdout": holdout,
            }

        build_artifact(folder, write)
        self.generator_cached = not built
        manifest = json.loads((folder / "manifest.json").read_text())
        self._train_stats = {"diffusion_images_per_s": manifest.get("images_per_s"), "diffusion_train_s": manifest.get("train_s")}
        unet = build_unet(self._config())
        unet.load_state_dict(torch.load(folder / UNET_FILE, map_location="cpu", weights_only=True))
        self.unet = unet.eval()
        self._quality = self._measure(pool.subset(holdout)) if holdout else {}

    def _measure(self, held: SliceSet) -> dict[str, float]:
        """`image_quality` of the synthetic target of ``held`` over the data set's brain mask."""
        synthetic = self.synthesise(held)
        real = np.asarray(held.images[:, held.channel_index(self.params.target)], dtype=np.float32)
        brain = held.norm_mask_rows(np.arange(len(held)))
        return image_quality(synthetic, real, brain, np.asarray(held.labels), held.case_ids)

    # -- poisoning ------------------------------------------------------------------
    def _case_digest(self, source: np.ndarray) -> bytes:
        """SHA-256 of the cell's generator seed and one case's clipped source slices ``[S, k, H, W]``."""
        return hashlib.sha256(str(self.context.seed).encode() + np.ascontiguousarray(source, dtype=np.float32).tobytes()).digest()

    def sample_seed(self, source: np.ndarray) -> int:
        """The seed of one case's starting noise: the cell's generator seed and the case's clipped source slices.

        A case's sample is then the same at every rate, in either mode and whichever other
        cases are drawn with it, and two cases never share their noise.
        """
        return int.from_bytes(self._case_digest(source)[:8], "little") & (2**63 - 1)

    def alter_case(
        self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator | None,
        normalisation: CaseNormalisation,
    ) -> np.ndarray:
        """The model's raw target slices ``[S, H, W]`` for one case's ``images`` ``[S, C, H, W]`` (DDIM from seeded noise).

        Sampling costs ``ddim_steps`` passes of the UNet, so each case's sample is cached
        beside the model (keyed by the model's key and the case's seed and source slices): the
        cells of a sweep that share a model (rates, defenses, modes) sample a case once.
        """
        if self.unet is None or self.model_key is None:
            raise RuntimeError("diffusion-synthetic: call fit() before poison()")
        from .training import ddim_translate

        source = self._source(np.asarray(images), channels)
        seed = self.sample_seed(source)

        def write(tmp: Path) -> None:
            type(self).samplings += 1
            np.save(tmp / SAMPLE_FILE, ddim_translate(self.unet, source, self._config(), seed, self.context.device))

        key = hashlib.sha256(self.model_key.encode() + self._case_digest(source)).hexdigest()
        folder = build_artifact(artifact_dir("diffusion-sample", key, root=self.context.cache_dir), write)
        return np.load(folder / SAMPLE_FILE)

    def report(self) -> dict[str, Any]:
        return {**self._quality, "generator_cached": bool(self.generator_cached), **self._train_stats}
