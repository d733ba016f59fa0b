"""MONAI 3-D segmentation networks as segmenters of volumetric tasks (``task.dims: 3``): U-Net and SegResNet.

Each case reaches the segmenter as one volume ``[C, S, H, W]`` (its slices in their true
order, `benchmark.Segmenter`). Training draws random patches of ``patch_size``: a third of
them (``foreground_fraction``, nnU-Net's oversampling; Isensee et al., Nature Methods 2021)
centred on a voxel of the target, so small targets such as ET are seen at all, the rest
anywhere in the volume; each step is one batch of patches, optimised with Adam on MONAI's
``DiceCELoss``. Prediction runs MONAI's sliding-window inference with windows of
``patch_size`` and Gaussian blending, and thresholds the logits at 0. On CUDA, steps run
under bf16 (fp16 on older GPUs) autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from benchmark import PluginError, PluginParams, Segmenter, register_segmenter

if TYPE_CHECKING:  # torch is imported when a network is built or trained
    import torch
    from torch import nn

__all__ = ["VolumeParams", "VolumeHistory", "MonaiVolumeSegmenter", "UNet3DSegmenter", "SegResNet3DSegmenter", "sliding_window_logits"]


class VolumeParams(PluginParams):
    epochs: int = Field(20, ge=1, le=10_000, description="training epochs")
    steps_per_epoch: int | None = Field(
        None, ge=1, le=1_000_000,
        description="optimisation steps per epoch; default enough for one patch per training volume. A fixed count keeps "
        "the training budget equal when a defense removes or an attack adds cases",
    )
    batch_size: int = Field(2, ge=1, le=1024, description="patches per optimisation step")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate")
    patch_size: tuple[int, int, int] = Field(
        (16, 32, 32), description="training patch and inference window, slices x rows x columns; each a multiple of the "
        "network's downsampling (smaller volumes are zero-padded to it)",
    )
    foreground_fraction: float = Field(
        0.33, ge=0.0, le=1.0, description="share of training patches centred on a target voxel (the rest anywhere)"
    )
    flip_augment: bool = Field(True, description="random left-right flips of training patches")
    batch_dice: bool = Field(
        True, description="Dice term over the whole batch rather than per patch (stable on small targets such as ET)"
    )
    overlap: float = Field(0.25, ge=0.0, lt=1.0, description="overlap of neighbouring sliding windows at inference")
    sw_batch_size: int = Field(4, ge=1, le=1024, description="sliding windows evaluated at once")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the network trains and predicts; auto: the cell's device")

    @field_validator("patch_size")
    @classmethod
    def _positive_patch(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(size < 1 for size in value):
            raise ValueError(f"patch_size must be positive integers; got {list(value)}")
        return value

    def downsampling(self) -> int:
        """Factor by which the network shrinks each axis of a patch (sizes must be its multiples); 1 here, a network's own below."""
        return 1

    @model_validator(mode="after")
    def _patch_fits_network(self) -> VolumeParams:
        factor = self.downsampling()
        if any(size % factor for size in self.patch_size):
            raise ValueError(
                f"patch_size {list(self.patch_size)}: every size must be a multiple of {factor}, the network's downsampling"
            )
        return self


@dataclass
class VolumeHistory:
    """Mean training loss per epoch."""

    losses: list[float] = field(default_factory=list)


class MonaiVolumeSegmenter(Segmenter):
    """Shared patch training and sliding-window prediction of the 3-D MONAI networks; subclasses build the network."""

    dims: ClassVar[tuple[int, ...]] = (3,)
    Params = VolumeParams

    def build(self, in_channels: int) -> nn.Module:
        raise NotImplementedError

    def _device(self) -> torch.device:
        import torch

        name = self.context.device if self.params.device == "auto" else self.params.device
        if name == "cuda" and not torch.cuda.is_available():
            raise PluginError(f"segmenter {self.name}: device 'cuda' was asked for, but torch sees no CUDA device.")
        return torch.device(name)

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Train on random patches of the volumes.

        Args:
            images: float32 ``[V, C, S, H, W]``.
            masks: uint8 ``[V, S, H, W]``, 1 inside the target region.
        """
        import torch
        from monai.losses import DiceCELoss

        if images.ndim != 5 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise PluginError(
                f"segmenter {self.name}: fit() takes volumes [V, C, S, H, W] and masks [V, S, H, W]; got {images.shape} and {masks.shape}."
            )
        if len(images) == 0:
            raise PluginError(f"segmenter {self.name}: the training set is empty.")
        p = self.params
        device = self._device()
        amp = _autocast_dtype(device)
        self.net = self.build(images.shape[1]).to(device)
        loss_fn = DiceCELoss(sigmoid=True, batch=p.batch_dice)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=p.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

        # patches are read from the arrays as given (possibly memory-mapped), so the volumes are never copied
        # whole; along an axis shorter than a patch, the patch is zero-padded at the end
        shape = tuple(max(size, patch) for size, patch in zip(images.shape[2:], p.patch_size))
        foreground = [np.argwhere(np.asarray(m) > 0) for m in masks]

        rng = np.random.default_rng(self.context.seed)
        steps = p.steps_per_epoch or math.ceil(len(images) / p.batch_size)
        self.history = VolumeHistory()
        self.net.train()
        for _ in self.context.track(range(p.epochs), f"{self.name} epochs", total=p.epochs):
            order = _volume_order(len(images), steps * p.batch_size, rng)
            epoch_loss = torch.zeros((), device=device)
            for step in range(steps):
                chosen = order[step * p.batch_size : (step + 1) * p.batch_size]
                corners = [_patch_corner(shape, p.patch_size, foreground[v], p.foreground_fraction, rng) for v in chosen]
                x = torch.from_numpy(np.stack([_crop(images[v], c, p.patch_size, np.float32) for v, c in zip(chosen, corners)]))
                y = torch.from_numpy(np.stack([_crop(masks[v][None], c, p.patch_size, np.float32) for v, c in zip(chosen, corners)]))
                x, y = x.to(device), y.to(device)
                if p.flip_augment:
                    flip = torch.from_numpy(rng.random(len(chosen)) < 0.5).to(device).view(-1, 1, 1, 1, 1)
                    x = torch.where(flip, x.flip(-1), x)
                    y = torch.where(flip, y.flip(-1), y)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = loss_fn(self.net(x), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                epoch_loss += loss.detach().float()
            self.history.losses.append(float(epoch_loss) / steps)  # one sync per epoch

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Segment volumes (float32 ``[V, C, S, H, W]``) into uint8 masks ``[V, S, H, W]`` by sliding-window inference."""
        import torch

        if not hasattr(self, "net"):
            raise PluginError(f"segmenter {self.name}: call fit() before predict().")
        device = self._device()
        out = np.empty((len(images), *images.shape[2:]), dtype=np.uint8)
        for v in range(len(images)):
            volume = torch.from_numpy(np.ascontiguousarray(images[v : v + 1], dtype=np.float32)).to(device)
            logits = sliding_window_logits(self.net, volume, self.params.patch_size, self.params.sw_batch_size, self.params.overlap)
            out[v] = (logits[0, 0] > 0).to("cpu", torch.uint8).numpy()
        return out


def sliding_window_logits(
    net: nn.Module, volume: torch.Tensor, patch_size: tuple[int, int, int], sw_batch_size: int = 4, overlap: float = 0.25
) -> torch.Tensor:
    """``net``'s logits over whole volumes by MONAI's sliding-window inference (Gaussian blending).

    Args:
        net: maps ``[B, C, *patch_size]`` to logits ``[B, 1, *patch_size]``.
        volume: float32 ``[B, C, S, H, W]`` on the network's device; smaller than a window
            along an axis, it is zero-padded for inference and cropped back.
        patch_size: the window, ``(S, H, W)``.
        sw_batch_size: windows evaluated at once.
        overlap: overlap of neighbouring windows.

    Returns:
        float32 logits ``[B, 1, S, H, W]``.
    """
    import torch
    from monai.inferers import sliding_window_inference

    amp = _autocast_dtype(volume.device)
    net.eval()
    with torch.no_grad(), torch.autocast(volume.device.type, dtype=amp, enabled=amp is not None):
        logits = sliding_window_inference(volume, patch_size, sw_batch_size, net, overlap=overlap, mode="gaussian")
    return torch.as_tensor(logits).float()


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _volume_order(volumes: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``draws`` volume indices from successive shuffles, so each volume is drawn equally often to within one."""
    return np.concatenate([rng.permutation(volumes) for _ in range(-(-draws // volumes))])[:draws]


def _patch_corner(
    shape: tuple[int, ...], patch: tuple[int, ...], foreground: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[int, ...]:
    """First voxel of a patch of ``patch`` inside ``shape``: centred on a random target voxel with
    probability ``fraction`` (when the volume has one), else uniformly placed."""
    on_target = rng.random() < fraction and len(foreground) > 0
    if on_target:
        centre = foreground[rng.integers(len(foreground))]
        return tuple(int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, shape))
    return tuple(int(rng.integers(0, s - p + 1)) for p, s in zip(patch, shape))


def _crop(volume: np.ndarray, corner: tuple[int, ...], patch: tuple[int, ...], dtype: type) -> np.ndarray:
    """``volume[:, corner : corner + patch]`` over the three spatial axes of ``[C, S, H, W]``, as ``dtype``,
    zero beyond the volume's end."""
    (s, h, w), (ps, ph, pw) = corner, patch
    region = np.asarray(volume[:, s : s + ps, h : h + ph, w : w + pw], dtype=dtype)
    if region.shape[1:] == patch:
        return region
    out = np.zeros((len(volume), *patch), dtype=dtype)
    out[:, : region.shape[1], : region.shape[2], : region.shape[3]] = region
    return out


@register_segmenter("unet3d")
class UNet3DSegmenter(MonaiVolumeSegmenter):
    """MONAI residual U-Net (3-D), stride-2 levels, trained on patches of each case's volume."""

    class Params(VolumeParams):
        channels: tuple[int, ...] = Field((8, 16, 32), min_length=2, max_length=7, description="feature widths per resolution level")
        num_res_units: int = Field(1, ge=0, le=8, description="residual units per level")
        dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability")

        @field_validator("channels")
        @classmethod
        def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
            if any(c < 1 for c in value):
                raise ValueError(f"channels must be positive integers; got {list(value)}")
            return value

        def downsampling(self) -> int:
            return 2 ** (len(self.channels) - 1)

    def build(self, in_channels: int) -> nn.Module:
        from monai.networks.nets import UNet

        p = self.params
        return UNet(
            spatial_dims=3, in_channels=in_channels, out_channels=1, channels=p.channels,
            strides=(2,) * (len(p.channels) - 1), num_res_units=p.num_res_units, dropout=p.dropout,
        )


@register_segmenter("segresnet3d")
class SegResNet3DSegmenter(MonaiVolumeSegmenter):
    """MONAI SegResNet (3-D): residual encoder with a light decoder (Myronenko 2018), trained on patches."""

    class Params(VolumeParams):
        init_filters: int = Field(
            8, ge=8, le=512, multiple_of=8, description="filters of the first level, doubled per level (a multiple of 8: "
            "SegResNet's group norm has 8 groups)",
        )
        blocks_down: tuple[int, ...] = Field((1, 2, 2), min_length=2, max_length=6, description="residual blocks per encoder level")

        @field_validator("blocks_down")
        @classmethod
        def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
            if any(b < 1 for b in value):
                raise ValueError(f"blocks_down must be positive integers; got {list(value)}")
            return value

        def downsampling(self) -> int:
            return 2 ** (len(self.blocks_down) - 1)

    def build(self, in_channels: int) -> nn.Module:
        from monai.networks.nets import SegResNet

        p = self.params
        return SegResNet(
            spatial_dims=3, in_channels=in_channels, out_channels=1, init_filters=p.init_filters,
            blocks_down=p.blocks_down, blocks_up=(1,) * (len(p.blocks_down) - 1),
        )
