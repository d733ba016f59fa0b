"""MONAI 2-D segmentation networks as segmenters: U-Net, BasicUNet, Attention U-Net, SegResNet.

All predict one logit channel for the task's binary target region, train with MONAI's
``DiceCELoss`` (Dice over the batch by default: per-slice Dice on slices without tumour
drives small targets such as ET to an all-background collapse) and Adam through `benchmark.fit_binary_segmentation`, and run on CUDA with
mixed precision when the cell's device is ``cuda``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field, field_validator

from benchmark import PluginParams, Segmenter, register_segmenter

if TYPE_CHECKING:  # torch and the training loop are imported when a network is built or trained
    from torch import nn

__all__ = ["MonaiSegmenter", "UNetSegmenter", "BasicUNetSegmenter", "AttentionUNetSegmenter", "SegResNetSegmenter"]


class TrainingParams(PluginParams):
    epochs: int = Field(20, ge=1, le=10_000, description="training epochs")
    steps_per_epoch: int | None = Field(
        None, ge=1, le=1_000_000,
        description="optimisation steps per epoch; default one pass over the training slices. A fixed count keeps "
        "the training budget equal when a defense removes or an attack adds cases",
    )
    batch_size: int = Field(16, ge=1, le=4096, description="slices per optimisation step")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate")
    channels: tuple[int, ...] = Field((16, 32, 64, 128), min_length=2, max_length=7, description="feature widths per resolution level")
    flip_augment: bool = Field(True, description="random left-right flips during training")
    batch_dice: bool = Field(
        True, description="Dice term over the whole batch rather than per slice (stable on small targets such as ET)"
    )
    channels_last: bool = Field(
        True, description="train in channels-last layout: faster for 2-D convs on CPUs and GPUs; numbers differ from "
        "the contiguous layout by float-sum order only (training noise), and are bit-identical across runs either way",
    )
    compile: bool = Field(
        False, description="train through torch.compile: the first cell of a process pays the compile (about a "
        "minute on a CPU core; seconds once its kernels are in the on-disk cache), later cells reuse it",
    )

    @field_validator("channels")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(c < 1 for c in value):
            raise ValueError(f"channels must be positive integers; got {list(value)}")
        return value


class MonaiSegmenter(Segmenter):
    """Shared fit/predict of the MONAI networks; subclasses build the network."""

    Params = TrainingParams

    def build(self, in_channels: int) -> nn.Module:
        raise NotImplementedError

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        from monai.losses import DiceCELoss

        from benchmark import fit_binary_segmentation

        self.net = self.build(images.shape[1])
        p = self.params
        self.history = fit_binary_segmentation(
            self.net, images, masks, self.context, p.epochs, p.batch_size, p.lr,
            loss_fn=DiceCELoss(sigmoid=True, batch=p.batch_dice), flip_augment=p.flip_augment,
            description=f"{self.name} epochs", steps_per_epoch=p.steps_per_epoch,
            channels_last=p.channels_last, compile=p.compile,
        )

    def predict(self, images: np.ndarray) -> np.ndarray:
        from benchmark import predict_binary_segmentation

        return predict_binary_segmentation(self.net, images, self.context)


@register_segmenter("unet")
class UNetSegmenter(MonaiSegmenter):
    """MONAI residual U-Net (2-D), stride-2 levels, two residual units each."""

    class Params(TrainingParams):
        num_res_units: int = Field(2, ge=0, le=8, description="residual units per level")
        dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability")

    def build(self, in_channels: int) -> nn.Module:
        from monai.networks.nets import UNet

        p = self.params
        return UNet(
            spatial_dims=2, in_channels=in_channels, out_channels=1, channels=p.channels,
            strides=(2,) * (len(p.channels) - 1), num_res_units=p.num_res_units, dropout=p.dropout,
        )


@register_segmenter("basic-unet")
class BasicUNetSegmenter(MonaiSegmenter):
    """MONAI BasicUNet (2-D): the original U-Net's double convolutions, five levels."""

    class Params(TrainingParams):
        channels: tuple[int, ...] = Field(
            (16, 16, 32, 64, 128, 16), min_length=6, max_length=6, description="the six feature widths of BasicUNet"
        )

    def build(self, in_channels: int) -> nn.Module:
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=1, features=self.params.channels)


@register_segmenter("attention-unet")
class AttentionUNetSegmenter(MonaiSegmenter):
    """MONAI Attention U-Net (2-D): attention gates on the skip connections."""

    def build(self, in_channels: int) -> nn.Module:
        from monai.networks.nets import AttentionUnet

        p = self.params
        return AttentionUnet(
            spatial_dims=2, in_channels=in_channels, out_channels=1, channels=p.channels, strides=(2,) * (len(p.channels) - 1)
        )


@register_segmenter("segresnet")
class SegResNetSegmenter(MonaiSegmenter):
    """MONAI SegResNet (2-D): residual encoder with a light decoder (Myronenko 2018)."""

    class Params(TrainingParams):
        channels: tuple[int, ...] = Field((16,), min_length=1, max_length=1, description="initial filter count, doubled per level")
        blocks_down: tuple[int, ...] = Field((1, 2, 2, 4), min_length=2, description="residual blocks per encoder level")

    def build(self, in_channels: int) -> nn.Module:
        from monai.networks.nets import SegResNet

        p = self.params
        return SegResNet(
            spatial_dims=2, in_channels=in_channels, out_channels=1, init_filters=p.channels[0],
            blocks_down=p.blocks_down, blocks_up=(1,) * (len(p.blocks_down) - 1),
        )
