"""Networks of the shortest-path regularised translator: a d-conditioned generator and a PatchGAN.

Reference: Xie, Xu, Gong, Zhang, "Unpaired Image-to-Image Translation with Shortest Path
Regularization", CVPR 2023. One generator with a shared encoder for both domains and a
decoder whose normalisation layers are modulated (AdaIN-style) by an MLP of the scalar
domain code ``d`` (0 = source modality, 1 = target modality).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptiveInstanceNorm", "DomainGenerator", "PatchDiscriminator"]


class AdaptiveInstanceNorm(nn.Module):
    """Instance norm without affine weights, then ``x * (1 + gamma(d)) + beta(d)``.

    Args:
        channels: feature channels ``C``.
        style_dim: width of the domain embedding that predicts ``gamma`` and ``beta``.
    """

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, H, W]``; ``style``: ``[B, style_dim]``."""
        gamma, beta = self.affine(style).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class _EncoderBlock(nn.Module):
    """Residual block with instance norm (encoder side)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _DecoderBlock(nn.Module):
    """Residual block whose two norms are modulated by the domain embedding."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.norm1 = AdaptiveInstanceNorm(channels, style_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.norm2 = AdaptiveInstanceNorm(channels, style_dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x), style))
        return x + self.norm2(self.conv2(h), style)


class _UpBlock(nn.Module):
    """Nearest ×2 upsampling, 3 × 3 conv, AdaIN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="reflect")
        self.norm = AdaptiveInstanceNorm(out_channels, style_dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(self.up(x)), style))


class _OneChannelHead(nn.Conv2d):
    """A reflect-padded conv to one channel, computed on the CPU as a depthwise conv and a channel sum.

    The same parameters (and state-dict keys) and, up to float rounding, the same result
    as `nn.Conv2d`. On the CPU, oneDNN's kernel for a single output channel is slow: the
    depthwise conv in channels-last plus the sum over channels (contiguous in that layout)
    measured 2.5× faster forward and backward (16 channels, 7 × 7, 64², one thread), about
    10 % of a generator step. Elsewhere it is the plain conv.
    """

    def __init__(self, in_channels: int, kernel_size: int):
        super().__init__(in_channels, 1, kernel_size, padding=kernel_size // 2, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, in_channels, H, W]`` → ``[B, 1, H, W]``."""
        if x.device.type != "cpu":
            return super().forward(x)
        padded = F.pad(x, self._reversed_padding_repeated_twice, mode="reflect").contiguous(memory_format=torch.channels_last)
        per_channel = F.conv2d(padded, self.weight.transpose(0, 1), groups=self.in_channels)
        return per_channel.sum(1, keepdim=True) + self.bias.view(1, 1, 1, 1)


class DomainGenerator(nn.Module):
    """Shared encoder + decoder conditioned on a domain code ``d`` ∈ [0, 1].

    The encoder is a ResNet-style stem (7 × 7 conv), ``downsamplings`` stride-2 convs and
    ``blocks // 2`` residual blocks; the decoder has the remaining residual blocks and the
    upsampling stages, every norm modulated by ``MLP(d)``, then a 7 × 7 conv to one
    channel (linear output: the data are z-scored, not bounded).

    Args:
        in_channels: channels of the images to translate. Defaults to 1.
        width: channels of the first stage, doubled per downsampling. Defaults to 16.
        blocks: residual blocks at the bottleneck, split between encoder and decoder. Defaults to 4.
        downsamplings: stride-2 stages. Defaults to 2.
        style_dim: width of the domain embedding. Defaults to 64.

    Shapes:
        ``encode``: ``[B, in_channels, H, W]`` → latent ``[B, width·2^downsamplings, H/2^k, W/2^k]``;
        ``decode``: latent, ``d`` ``[B]`` (or a float) → ``[B, 1, H, W]``. ``H`` and ``W``
        must be divisible by ``2^downsamplings``.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, blocks: int = 4, downsamplings: int = 2, style_dim: int = 64):
        super().__init__()
        self.downsamplings = downsamplings
        enc: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 7, padding=3, padding_mode="reflect"),
            nn.InstanceNorm2d(width, affine=True),
            nn.ReLU(inplace=True),
        ]
        channels = width
        for _ in range(downsamplings):
            enc += [nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(channels * 2, affine=True), nn.ReLU(inplace=True)]
            channels *= 2
        enc += [_EncoderBlock(channels) for _ in range(blocks // 2)]
        self.encoder = nn.Sequential(*enc)
        self.latent_channels = channels
        self.style = nn.Sequential(nn.Linear(1, style_dim), nn.ReLU(inplace=True), nn.Linear(style_dim, style_dim), nn.ReLU(inplace=True))
        self.res_blocks = nn.ModuleList(_DecoderBlock(channels, style_dim) for _ in range(blocks - blocks // 2))
        ups = []
        for _ in range(downsamplings):
            ups.append(_UpBlock(channels, channels // 2, style_dim))
            channels //= 2
        self.up_blocks = nn.ModuleList(ups)
        self.head = _OneChannelHead(channels, 7)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode_layers(self, z: torch.Tensor, d: torch.Tensor | float) -> list[torch.Tensor]:
        """The decoder's feature maps of latent ``z`` at domain code ``d``, without the image head.

        Args:
            z: latent ``[B, latent_channels, h, w]``.
            d: codes ``[B]`` (or one float for the whole batch).

        Returns:
            one map per residual and upsampling block, in order; the last one
            ``[B, width, H, W]`` is what `head` turns into the image. These are the layers
            the shortest-path term compares, which needs no image.
        """
        if not torch.is_tensor(d):
            d = torch.full((z.shape[0],), float(d), device=z.device)
        style = self.style(d.to(device=z.device, dtype=torch.float32).reshape(-1, 1).expand(z.shape[0], 1))
        features = []
        h = z
        for block in self.res_blocks:
            h = block(h, style)
            features.append(h)
        for block in self.up_blocks:
            h = block(h, style)
            features.append(h)
        return features

    def decode(self, z: torch.Tensor, d: torch.Tensor | float, return_features: bool = False):
        """Decode latent ``z`` at domain code ``d``.

        Returns:
            the image ``[B, 1, H, W]``; with ``return_features``, also the list of the
            decoder's intermediate feature maps (`decode_layers`).
        """
        features = self.decode_layers(z, d)
        out = self.head(features[-1])
        return (out, features) if return_features else out

    def forward(self, x: torch.Tensor, d: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Translate ``x`` ``[B, C, H, W]`` to domain ``d`` (1 = target)."""
        return self.decode(self.encode(x), d)


class PatchDiscriminator(nn.Module):
    """70 × 70-style PatchGAN: ``layers`` stride-2 convs, one stride-1 conv, a 1-channel head.

    Args:
        in_channels: image channels. Defaults to 1.
        width: channels of the first conv, doubled per layer up to 8×. Defaults to 16.
        layers: stride-2 layers. Defaults to 3.

    Shapes:
        ``[B, in_channels, H, W]`` → patch scores ``[B, 1, H/2^layers − 2, W/2^layers − 2]``
        (``H ≥ 2^layers · 3``).
    """

    def __init__(self, in_channels: int = 1, width: int = 16, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = width
        for i in range(1, layers):
            out = width * min(2**i, 8)
            mods += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.InstanceNorm2d(out, affine=True), nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        out = width * min(2**layers, 8)
        mods += [nn.Conv2d(channels, out, 4, stride=1, padding=1), nn.InstanceNorm2d(out, affine=True), nn.LeakyReLU(0.2, inplace=True)]
        mods += [nn.Conv2d(out, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
