"""The small network of the encoder-based defenses (imports torch; not a plugin).

`TinySegNet`: a three-level convolutional encoder with a light decoder, used as the
"briefly trained segmenter" of the encoder-based defenses, and `encode` to read its
multi-scale features. The defenses import this module inside their methods, so that
their parameter models load without torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["TinySegNet", "encode"]


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
    )


class TinySegNet(nn.Module):
    """A small encoder-decoder segmenter whose encoder doubles as a feature extractor.

    Three encoder levels (widths ``w, 2w, 4w``; the 2nd and 3rd at stride 2) and a decoder
    of bilinear up-sampling with skip additions, ending in one logit channel.

    Args:
        in_channels: input channels ``C``.
        width: width ``w`` of the first level. Defaults to 8.

    Shapes:
        ``forward``: ``[B, C, H, W]`` → logits ``[B, 1, H, W]``;
        ``features``: list of ``[B, w, H, W]``, ``[B, 2w, H/2, W/2]``, ``[B, 4w, H/4, W/4]``.
    """

    def __init__(self, in_channels: int, width: int = 8):
        super().__init__()
        self.enc = nn.ModuleList([_block(in_channels, width, 1), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2)])
        self.lat = nn.ModuleList([nn.Conv2d(2 * width, width, 1), nn.Conv2d(4 * width, width, 1)])
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(width, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.enc:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1, f2, f3 = self.features(x)
        size = f1.shape[-2:]
        up = lambda t: nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        return self.head(f1 + up(self.lat[0](f2)) + up(self.lat[1](f3)))


@torch.no_grad()
def encode(net: TinySegNet, images: np.ndarray, labels: np.ndarray | None, device: str, batch_size: int = 64) -> np.ndarray:
    """Per-slice representation: mean and standard deviation of every encoder channel.

    With ``labels``, the mean of each channel inside the mask is appended as well (the
    representation then says what the image looks like where the mask says tumour is).

    Args:
        net: the encoder.
        images: float32 ``[N, C, H, W]``.
        labels: ``[N, H, W]`` binary masks, or None.
        device: torch device.

    Returns:
        float64 ``[N, D]``.
    """
    net = net.to(device).eval()
    rows = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)).to(device)
        parts = []
        feats = net.features(x)
        for f in feats:
            parts.append(f.mean(dim=(2, 3)))
            parts.append(f.std(dim=(2, 3)))
        if labels is not None:
            m = torch.from_numpy(np.ascontiguousarray(labels[start : start + batch_size], dtype=np.float32)).to(device)
            m = m.unsqueeze(1)
            for f in feats:
                mm = nn.functional.adaptive_avg_pool2d(m, f.shape[-2:])
                parts.append((f * mm).sum(dim=(2, 3)) / (mm.sum(dim=(2, 3)) + 1.0))
        rows.append(torch.cat(parts, dim=1).float().cpu().numpy())
    return np.concatenate(rows).astype(np.float64)
