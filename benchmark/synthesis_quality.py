"""How close synthetic images are to real ones, and whether they reproduce enhancement.

Shared by the generative attacks (their quality report in ``OUT/attacks.csv``): MAE,
PSNR and SSIM over the brain, and the enhancing-rim contrast (`rim_contrast`) of
synthetic and real target, so a reader sees whether a generator reproduces enhancement.
"""

from __future__ import annotations

import numpy as np

from .regions import region_mask

__all__ = ["NORMAL_BRAIN_MARGIN", "image_quality", "rim_contrast"]

#: Pixels by which the whole tumour is dilated (in-plane) before the rest of the brain
#: counts as normal-appearing (`rim_contrast`).
NORMAL_BRAIN_MARGIN = 3


def rim_contrast(image: np.ndarray, labels: np.ndarray, brain: np.ndarray, margin: int = NORMAL_BRAIN_MARGIN) -> float:
    """Contrast-to-noise ratio of the enhancing tumour against normal-appearing brain.

    ``(mean(ET) - mean(NAB)) / std(NAB)``: ET the enhancing-tumour voxels of the brain,
    NAB (normal-appearing brain) the brain voxels outside the whole tumour dilated
    in-plane by ``margin`` pixels. White matter is not labelled in BraTS; the rest of the
    brain (white and grey matter, CSF) is the reference any data set has. A difference
    in units of a spread is unchanged by the per-case affine normalisation (a z-score
    shifts and scales both terms alike), where a ratio of means is not defined on
    z-scores (means near 0 or negative).

    Args:
        image: float ``[S, H, W]``, one channel of one case (all its slices).
        labels: integer ``[S, H, W]`` in the common convention (`benchmark.regions`).
        brain: bool ``[S, H, W]``, the brain (the data set's normalisation mask).
        margin: pixels of in-plane dilation of the whole tumour. Defaults to
            `NORMAL_BRAIN_MARGIN`.

    Returns:
        The ratio, or NaN when the case has no enhancing tumour or fewer than two
        normal-appearing voxels (or they are all equal).
    """
    from scipy import ndimage

    brain = np.asarray(brain, dtype=bool)
    et = region_mask(labels, "ET") & brain
    cross = np.zeros((1, 3, 3), dtype=bool)
    cross[0, 1, :] = cross[0, :, 1] = True  # in-plane 4-neighbourhood: slices are not neighbours
    near_tumour = region_mask(labels, "WT")
    if margin:
        near_tumour = ndimage.binary_dilation(near_tumour, structure=cross, iterations=margin)
    image = np.asarray(image, dtype=np.float64)
    normal = image[brain & ~near_tumour]
    if not et.any() or normal.size < 2 or normal.std() == 0:
        return float("nan")
    return float((image[et].mean() - normal.mean()) / normal.std())


def image_quality(
    synthetic: np.ndarray,
    real: np.ndarray,
    brain: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    case_ids: np.ndarray | None = None,
) -> dict[str, float]:
    """How close synthetic target slices are to the real ones, over the brain.

    ``mae``: mean absolute difference over the brain's voxels; ``psnr``: peak
    signal-to-noise ratio (dB) of the brain's voxels, the peak being the real brain's
    intensity range; ``ssim``: the SSIM map (MONAI, 7 x 7 Gaussian window, sigma 1.5,
    the same range) averaged over the windows centred in the brain. With ``labels``,
    ``rim_contrast_synthetic`` and ``rim_contrast_real``: `rim_contrast` of each, per
    case, averaged over the cases with enhancing tumour (NaN when there is none).

    Args:
        synthetic: float ``[N, H, W]``, the synthetic target, normalised as the real one.
        real: float ``[N, H, W]``, the real target of the same slices.
        brain: bool ``[N, H, W]``, the data set's normalisation mask (`SliceSet.norm_masks`);
            None: the real target's non-zero voxels. Defaults to None.
        labels: integer ``[N, H, W]`` in the common convention; None: no rim contrast.
            Defaults to None.
        case_ids: ``[N]``, the case of each slice (rim contrast is per case); None: one
            case. Defaults to None.

    Returns:
        ``mae``, ``psnr``, ``ssim`` and, with ``labels``, ``rim_contrast_synthetic`` and
        ``rim_contrast_real``.
    """
    import torch
    from monai.metrics.regression import compute_ssim_and_cs

    synthetic = np.asarray(synthetic, dtype=np.float64)
    real = np.asarray(real, dtype=np.float64)
    brain = real != 0 if brain is None else np.asarray(brain, dtype=bool)
    if not brain.any():
        brain = np.ones_like(brain)
    s, r = synthetic[brain], real[brain]
    data_range = float(r.max() - r.min()) or 1.0
    mse = float(np.mean((s - r) ** 2))
    quality = {
        "mae": float(np.mean(np.abs(s - r))),
        "psnr": float(10.0 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf"),
    }
    win = min(7, *real.shape[1:]) | 1
    if win > min(real.shape[1:]):
        win -= 2
    y_pred, y = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1) for a in (synthetic, real))
    ssim_map, _ = compute_ssim_and_cs(y_pred, y, spatial_dims=2, kernel_size=[win, win], kernel_sigma=[1.5, 1.5], data_range=data_range)
    half = win // 2
    centres = brain[:, half : brain.shape[1] - half, half : brain.shape[2] - half]  # windows of the valid SSIM map
    ssim_map = ssim_map[:, 0].numpy()
    quality["ssim"] = float(ssim_map[centres].mean() if centres.any() else ssim_map.mean())
    if labels is not None:
        case_ids = np.zeros(len(real), dtype=int) if case_ids is None else np.asarray(case_ids)
        pairs = []
        for case in dict.fromkeys(case_ids.tolist()):
            rows = case_ids == case
            pair = [rim_contrast(image[rows], labels[rows], brain[rows]) for image in (synthetic, real)]
            if np.isfinite(pair[1]):  # the case has enhancing tumour and normal brain
                pairs.append(pair)
        synthetic_rim, real_rim = np.mean(pairs, axis=0) if pairs else (float("nan"), float("nan"))
        quality.update(rim_contrast_synthetic=float(synthetic_rim), rim_contrast_real=float(real_rim))
    return quality
