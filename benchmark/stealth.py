"""Stealth loss: synthetic target slices made to show the statistics the quality-control defenses read.

An adaptive attacker who knows which checks a defender runs can add their statistics to
its generator's objective (the adaptive-attack rule of Tramèr et al., "On Adaptive
Attacks to Adversarial Example Defenses", NeurIPS 2020). `StealthLoss` does this for
the shipped image defenses, from real target slices of the attacker's own pool only —
the attacker never sees the defender's trusted cases. Three parts, one per kind of
defense:

* ``quality`` (``mriqc``): per slice, MRIQC-like measures made differentiable: mean and
  log standard deviation over the brain, log SNR (brain mean over the Immerkær noise
  sigma, both after the 1st-percentile shift mriqc applies), log noise over spread, log
  mean gradient magnitude over spread (sharpness), the entropy focus criterion (EFC),
  five brain percentiles and a soft histogram of brain intensities (Gaussian kernels at
  centres spread over the reference's range), which carries the tissue-class means and
  spreads that mriqc's CNR and CJV are made of. FBER is left out: the attack's output is
  zero outside the head, as real data are, so it cannot differ.
* ``spectrum`` (``spectral``): the azimuthally averaged log10 power spectrum of the
  Hann-windowed slice in ``bins`` rings up to Nyquist, minus its mean over the rings (the
  shape only), exactly as ``spectral`` computes it.
* ``features`` (``feature-outlier``, ``spectral-signatures``): the mean and standard
  deviation of every channel of a fixed, randomly initialised three-level encoder (the
  kind of network those defenses use with ``encoder: random``; the attacker cannot
  copy their trained encoder, which is fit on the trusted cases), seeded with ``seed``.

Each part compares the batch mean of its per-slice statistics with their mean over the
reference slices, in units of the reference's per-slice spread of each statistic (a
floor of a tenth of the part's median spread keeps nearly constant statistics from
dominating), and averages the squared differences: a part is about 1 when the batch
is one typical slice-to-slice spread off on every statistic, and near 0 when it shows
the reference's statistics. The loss is the mean of the three parts.

Slices are taken as the attack outputs them: multiplied by the head mask (the voxels
where the real slice is non-zero), in the data set's normalised units. Slices with
fewer than `MIN_VOXELS` head voxels are left out of the reference and of the batch.

Cost: a ``gan-synthetic`` ``fast`` step (64 x 64, batch 8, one CPU thread) takes about a
tenth longer with the loss than without (median of 6 alternated steps each, 4.43 s
against 4.00 s on a shared 2-core machine); the encoder's pass is most of it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "STEALTH_PARTS",
    "StealthEncoder",
    "StealthLoss",
    "quality_statistics",
    "radial_log_spectrum",
    "stealth_reference",
]

#: The parts of `StealthLoss`, in the order `StealthLoss.parts` returns them.
STEALTH_PARTS: tuple[str, ...] = ("quality", "spectrum", "features")
#: Head voxels a slice needs to count (mriqc's own floor for a brain mask).
MIN_VOXELS = 16
_PERCENTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_LAPLACE = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
_EPS = 1e-6


def stealth_reference(target: np.ndarray, crop: int, seed: int) -> np.ndarray:
    """The real target slices ``[N, 1, h, w]`` a trainer takes the stealth statistics from.

    Whole slices, or with ``crop`` one random window of each (drawn from its own
    generator, seeded by ``seed``, so the trainer's own draws stay as they are), since the
    loss then sees crops.
    """
    h, w = target.shape[-2:]
    if not 0 < crop < min(h, w):
        return target
    rng = np.random.default_rng(seed)
    tops, lefts = rng.integers(0, h - crop + 1, len(target)), rng.integers(0, w - crop + 1, len(target))
    return np.stack([t[:, y : y + crop, x : x + crop] for t, y, x in zip(target, tops, lefts)])


# --------------------------------------------------------------------------- masks
def _erode(mask: torch.Tensor, iterations: torch.Tensor) -> torch.Tensor:
    """Binary erosion with the 4-neighbourhood (scipy's default), ``iterations[b]`` times for slice ``b``.

    Args:
        mask: float ``[B, 1, H, W]`` of 0 and 1.
        iterations: int ``[B]``.
    """
    out = mask
    steps = int(iterations.max()) if len(iterations) else 0
    for step in range(steps):
        padded = F.pad(out, (1, 1, 1, 1))  # outside the image counts as background
        eroded = out * padded[..., :-2, 1:-1] * padded[..., 2:, 1:-1] * padded[..., 1:-1, :-2] * padded[..., 1:-1, 2:]
        active = (iterations > step).view(-1, 1, 1, 1)
        out = torch.where(active, eroded, out)
    return out


def _brain(head: torch.Tensor, erode: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mriqc's brain (head eroded by ``erode`` of its equivalent radius) and its core (eroded once more).

    Where an erosion leaves fewer than `MIN_VOXELS`, the larger mask is kept, as mriqc does.
    """
    area = head.sum(dim=(1, 2, 3))
    radius = torch.round(erode * torch.sqrt(area / math.pi)).long()
    brain = _erode(head, radius)
    brain = torch.where((brain.sum(dim=(1, 2, 3)) >= MIN_VOXELS).view(-1, 1, 1, 1), brain, head)
    core = _erode(brain, torch.ones_like(radius))
    core = torch.where((core.sum(dim=(1, 2, 3)) >= MIN_VOXELS).view(-1, 1, 1, 1), core, brain)
    return brain, core


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``[B, C, H, W]`` over ``mask`` per slice and channel, ``[B, C]``."""
    return (x * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp_min(1.0)


def _masked_quantiles(x: torch.Tensor, mask: torch.Tensor, q: Sequence[float]) -> torch.Tensor:
    """Linear-interpolation quantiles of ``x`` over ``mask`` per slice, ``[B, len(q)]`` (differentiable)."""
    flat = torch.where(mask.bool(), x, torch.full_like(x, math.inf)).flatten(1)
    ordered, _ = flat.sort(dim=1)
    count = mask.flatten(1).sum(dim=1)
    position = (count - 1).clamp_min(0).unsqueeze(1) * torch.tensor(q, device=x.device, dtype=x.dtype)
    low = position.floor().long()
    high = torch.minimum(low + 1, (count - 1).clamp_min(0).long().unsqueeze(1))
    frac = position - low
    a, b = ordered.gather(1, low), ordered.gather(1, high)
    return a + frac * (torch.where(torch.isfinite(b), b, a) - a)


# --------------------------------------------------------------------------- statistics
def quality_statistics(
    x: torch.Tensor, head: torch.Tensor, centres: torch.Tensor, erode: float = 0.12
) -> torch.Tensor:
    """Differentiable MRIQC-like measures of each slice (the ``quality`` part).

    Args:
        x: float ``[B, 1, H, W]``, slices in the data set's normalised units, zero outside the head.
        head: float ``[B, 1, H, W]`` of 0 and 1, the head.
        centres: ``[K]`` soft-histogram centres (equally spaced).
        erode: brain = head eroded by this fraction of its equivalent radius (mriqc's ``erode``). Defaults to 0.12.

    Returns:
        float ``[B, 6 + len(_PERCENTILES) + K]``: mean, log std, log SNR, log noise / std,
        log gradient / std, EFC, the brain percentiles and the soft histogram.
    """
    brain, core = _brain(head, erode)
    mean = _masked_mean(x, brain)[:, 0]
    std = (_masked_mean((x - mean.view(-1, 1, 1, 1)) ** 2, brain)[:, 0] + _EPS).sqrt()
    # mriqc shifts the head to start at its 1st percentile and clips at zero
    floor = _masked_quantiles(x, head, (0.01,))
    shifted = F.relu(x - floor.view(-1, 1, 1, 1)) * head
    laplace = torch.tensor(_LAPLACE, device=x.device, dtype=x.dtype).view(1, 1, 3, 3)
    response = F.conv2d(F.pad(shifted, (1, 1, 1, 1), mode="replicate"), laplace).abs()
    noise = math.sqrt(math.pi / 2) / 6 * _masked_mean(response, core)[:, 0] + _EPS
    snr = _masked_mean(shifted, brain)[:, 0] / noise
    gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    gx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    gradient = _masked_mean((gx**2 + gy**2 + _EPS).sqrt(), core)[:, 0]
    n = x.shape[-1] * x.shape[-2]
    p = shifted.flatten(1) / (shifted.flatten(1).pow(2).sum(dim=1, keepdim=True) + _EPS).sqrt()
    efc_max = n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    efc = (p * torch.log(p + _EPS)).sum(dim=1) / efc_max
    percentiles = _masked_quantiles(x, brain, _PERCENTILES)
    spacing = (centres[1] - centres[0]).abs() if len(centres) > 1 else torch.ones((), device=x.device)
    kernel = torch.exp(-0.5 * ((x - centres.view(1, -1, 1, 1)) / spacing) ** 2)  # [B, K, H, W]
    histogram = _masked_mean(kernel, brain)
    scalars = torch.stack(
        [mean, std.log(), snr.clamp_min(_EPS).log(), (noise / std).log(), (gradient / std).log(), efc], dim=1
    )
    return torch.cat([scalars, percentiles, histogram], dim=1)


_RINGS: dict[tuple[int, int, int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _rings(h: int, w: int, bins: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Hann window ``[H, W]``, each frequency's ring ``[H·W]`` and the voxels per ring ``[bins]``."""
    key = (h, w, bins, str(device))
    if key not in _RINGS:
        window = torch.from_numpy(np.outer(np.hanning(h), np.hanning(w))).float()
        fy = np.fft.fftfreq(h)[:, None]  # unshifted: fft2's own order
        fx = np.fft.fftfreq(w)[None, :]
        ring = np.minimum((np.sqrt(fy**2 + fx**2) / 0.5 * bins).astype(int), bins)  # bin `bins`: corners, dropped
        counts = np.maximum(np.bincount(ring.ravel(), minlength=bins + 1)[:bins], 1).astype(np.float32)
        _RINGS[key] = (window.to(device), torch.from_numpy(ring.ravel()).to(device), torch.from_numpy(counts).to(device))
    return _RINGS[key]


def radial_log_spectrum(x: torch.Tensor, bins: int = 24) -> torch.Tensor:
    """Azimuthally averaged log power spectrum of each slice (the ``spectrum`` part; as ``spectral`` computes it).

    Args:
        x: float ``[B, 1, H, W]``.
        bins: radial frequency bins between 0 and Nyquist. Defaults to 24.

    Returns:
        float ``[B, bins]``: log10 ring power minus its mean over the rings.
    """
    b, _, h, w = x.shape
    window, ring, counts = _rings(h, w, bins, x.device)
    power = torch.fft.fft2(x[:, 0] * window).abs().pow(2).flatten(1)
    sums = torch.zeros(b, bins + 1, device=x.device, dtype=power.dtype).index_add(1, ring, power)[:, :bins]
    spectrum = torch.log10(sums / counts + 1e-12)
    return spectrum - spectrum.mean(dim=1, keepdim=True)


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.LeakyReLU(0.1),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.LeakyReLU(0.1),
    )


class StealthEncoder(nn.Module):
    """A fixed, randomly initialised three-level convolutional encoder (the ``features`` part).

    The shape of the encoder the feature-based defenses read (widths ``w, 2w, 4w``, the
    2nd and 3rd level at stride 2, instance norm, leaky ReLU); its weights are drawn from
    ``seed`` and never trained.

    Args:
        width: width ``w`` of the first level. Defaults to 8.
        seed: seed of the weights. Defaults to 0.

    Shapes:
        ``[B, 1, H, W]`` → ``[B, 14 w]``: per level, the mean and then the standard deviation of each channel.
    """

    def __init__(self, width: int = 8, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.levels = nn.ModuleList([_block(1, width, 1), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2)])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for level in self.levels:
            x = level(x)
            parts.append(x.mean(dim=(2, 3)))
            parts.append((x.var(dim=(2, 3)) + _EPS).sqrt())
        return torch.cat(parts, dim=1)


# --------------------------------------------------------------------------- the loss
def _as_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` or ``[N, 1, H, W]`` as a float32 ``[N, 1, H, W]`` tensor."""
    t = torch.from_numpy(np.array(images, dtype=np.float32)) if isinstance(images, np.ndarray) else images.float()
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"StealthLoss expects slices [N, H, W] or [N, 1, H, W]; got shape {tuple(t.shape)}")
    return t


class StealthLoss(nn.Module):
    """How far a batch of synthetic target slices is from the reference's defense statistics.

    The reference statistics are computed once, here, from ``reference`` (real target
    slices of the attacker's pool); see the module docstring for the parts.

    Args:
        reference: float ``[N, H, W]`` or ``[N, 1, H, W]``, real target slices in the data
            set's normalised units, zero outside the head.
        head: bool ``[N, H, W]`` (or ``[N, 1, H, W]``) head masks of ``reference``; default:
            its non-zero voxels.
        bins: rings of the power spectrum (``spectral``'s ``bins``). Defaults to 24.
        histogram_bins: centres of the soft intensity histogram, spread from the 0.5th to
            the 99.5th percentile of the reference's brain voxels. Defaults to 16.
        width: first-level width of the fixed encoder (``feature-outlier``'s ``width``). Defaults to 8.
        seed: seed of the encoder's weights. Defaults to 0.
        batch_size: slices per pass while the reference is measured. Defaults to 64.
        max_slices: at most this many reference slices are measured, evenly spaced
            through ``reference`` (the means and spreads of a few thousand slices are as
            good as of all, and a large pool at 240² would take minutes). Defaults to 4096.
        device: where the reference is measured and the module lives. Defaults to ``cpu``.

    Call: ``loss(fake, head)`` with ``fake`` float ``[B, 1, H, W]`` (raw generator output)
    and ``head`` its head masks ``[B, 1, H, W]`` (default: all voxels) returns a scalar;
    `parts` returns the three parts.
    """

    def __init__(
        self,
        reference: np.ndarray | torch.Tensor,
        head: np.ndarray | torch.Tensor | None = None,
        bins: int = 24,
        histogram_bins: int = 16,
        width: int = 8,
        seed: int = 0,
        batch_size: int = 64,
        max_slices: int = 4096,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        real = _as_batch(reference)
        mask = (real != 0).float() if head is None else (_as_batch(head if torch.is_tensor(head) else np.asarray(head)) != 0).float()
        keep = mask.sum(dim=(1, 2, 3)) >= MIN_VOXELS
        if int(keep.sum()) < 2:
            raise ValueError(f"StealthLoss needs at least 2 reference slices with {MIN_VOXELS}+ head voxels; got {int(keep.sum())}")
        real, mask = real[keep] * mask[keep], mask[keep]
        if len(real) > max_slices:
            pick = torch.linspace(0, len(real) - 1, max_slices).round().long()
            real, mask = real[pick], mask[pick]
        real, mask = real.to(device), mask.to(device)
        self.bins = bins
        self.encoder = StealthEncoder(width, seed).to(device)
        with torch.no_grad():
            brain, _ = _brain(mask, 0.12)
            values = real[brain.bool()].sort().values
            pick = torch.linspace(0, len(values) - 1, min(len(values), 200_000), device=device).long()  # quantile's size limit
            low, high = torch.quantile(values[pick], torch.tensor([0.005, 0.995], device=device))
            self.register_buffer("centres", torch.linspace(float(low), float(high), histogram_bins, device=device))
            stats = [self._statistics(real[i : i + batch_size], mask[i : i + batch_size]) for i in range(0, len(real), batch_size)]
        for name, part in zip(STEALTH_PARTS, zip(*stats)):
            values = torch.cat(part)
            spread = values.std(dim=0)
            floor = 0.1 * spread.median() + _EPS
            self.register_buffer(f"{name}_mean", values.mean(dim=0))
            self.register_buffer(f"{name}_scale", torch.maximum(spread, floor))

    def _statistics(self, x: torch.Tensor, head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-slice statistics of each part, in the order of `STEALTH_PARTS`."""
        return quality_statistics(x, head, self.centres), radial_log_spectrum(x, self.bins), self.encoder(x)

    def parts(self, fake: torch.Tensor, head: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each part's mean squared standardised difference (scalars), keyed by `STEALTH_PARTS`.

        Args:
            fake: float ``[B, 1, H, W]``.
            head: ``[B, 1, H, W]`` head masks (bool or 0/1); default: every voxel.
        """
        with torch.autocast(fake.device.type, enabled=False):  # FFT and sort want float32
            x = fake.float()
            mask = torch.ones_like(x) if head is None else head.to(device=x.device, dtype=x.dtype)
            keep = mask.sum(dim=(1, 2, 3)) >= MIN_VOXELS
            if not bool(keep.any()):
                zero = x.sum() * 0.0  # keeps the graph: a batch with no head adds nothing
                return {name: zero for name in STEALTH_PARTS}
            x, mask = x[keep] * mask[keep], mask[keep]
            out = {}
            for name, values in zip(STEALTH_PARTS, self._statistics(x, mask)):
                z = (values.mean(dim=0) - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_scale")
                out[name] = (z**2).mean()
            return out

    def forward(self, fake: torch.Tensor, head: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the three parts (a scalar)."""
        parts = self.parts(fake, head)
        return sum(parts.values()) / len(parts)
