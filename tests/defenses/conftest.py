"""Tiny procedural multi-contrast slice sets for the defense tests (32 × 32, a few slices a case).

A case is a head disc (scalp rim, brain with two smooth "tissues" and a tumour of necrotic
core, enhancing ring and edema) rendered in five channels like the embedded data set
(t1, t1ce, t2, flair, ct), z-scored per case over the head and zero outside it. A
*corrupted* case has its t1ce replaced the way a poor synthetic image would be: made
from its CT (no enhancing ring), blurred, with strong noise — visibly wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from benchmark import SliceSet

CHANNELS = ("t1", "t1ce", "t2", "flair", "ct")
#            bg    scalp  gm    wm    nec   et    ed
_VALUES = np.array(
    [
        [0.0, 0.95, 0.58, 0.82, 0.22, 0.55, 0.45],  # t1
        [0.0, 0.95, 0.58, 0.82, 0.15, 1.30, 0.47],  # t1ce
        [0.0, 0.70, 0.62, 0.48, 0.95, 0.68, 0.86],  # t2
        [0.0, 0.75, 0.62, 0.48, 0.55, 0.80, 0.95],  # flair
        [0.0, 1.50, 0.38, 0.29, 0.18, 0.31, 0.22],  # ct (scaled)
    ]
)


def _zscore(volume: np.ndarray, head: np.ndarray) -> np.ndarray:
    out = np.zeros_like(volume)
    values = volume[head]
    out[head] = (values - values.mean()) / max(values.std(), 1e-6)
    return out


def make_case(rng: np.random.Generator, slices: int = 4, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One clean case: images ``[S, 5, size, size]`` and common labels ``[S, size, size]``."""
    yy, xx = np.mgrid[:size, :size].astype(float)
    cy, cx = size / 2 + rng.uniform(-1, 1, 2)
    radius = size * rng.uniform(0.38, 0.42)
    ty, tx = cy + rng.uniform(-4, 4), cx + rng.uniform(-4, 4)
    images = np.zeros((slices, len(CHANNELS), size, size))
    labels = np.zeros((slices, size, size), dtype=np.uint8)
    for s in range(slices):
        r = np.hypot(yy - cy, xx - cx)
        head = r < radius
        field = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2.5)
        tissue = np.where(head, np.where(r < radius - 2.5, np.where(field > 0, 3, 2), 1), 0)
        rt = np.hypot(yy - ty, xx - tx) / (1.0 + 0.25 * np.sin(np.pi * (s + 0.5) / slices))
        tumour = np.zeros_like(labels[s])
        tumour[rt < 6.0] = 2  # edema
        tumour[rt < 3.5] = 3  # enhancing
        tumour[rt < 1.8] = 1  # necrotic
        tumour[tissue < 2] = 0
        tissue = np.where(tumour == 1, 4, np.where(tumour == 3, 5, np.where(tumour == 2, 6, tissue)))
        labels[s] = tumour
        for c in range(len(CHANNELS)):
            image = _VALUES[c][tissue] * (1 + 0.05 * field) + 0.03 * rng.normal(size=(size, size))
            images[s, c] = np.where(head, image, 0.0)
    head = images.any(axis=1)
    for c in range(len(CHANNELS)):
        images[:, c] = _zscore(images[:, c], head)
    return images.astype(np.float32), labels


def corrupt_case(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A poor synthetic t1ce: from CT, blurred, noisy, renormalised; other channels untouched."""
    out = images.copy()
    head = images.any(axis=1)
    fake = ndimage.gaussian_filter(images[:, 4], (0, 1.2, 1.2)) + 0.6 * rng.normal(size=images[:, 4].shape)
    out[:, 1] = _zscore(np.where(head, fake, 0.0), head)
    return out.astype(np.float32)


def make_set(n_cases: int, corrupted: list[int], seed: int = 0, prefix: str = "case") -> SliceSet:
    """``n_cases`` cases, those with an index in ``corrupted`` corrupted and flagged."""
    rng = np.random.default_rng(seed)
    images, labels, ids, flags = [], [], [], []
    for i in range(n_cases):
        im, lab = make_case(rng)
        bad = i in corrupted
        if bad:
            im = corrupt_case(im, rng)
        images.append(im)
        labels.append(lab)
        ids += [f"{prefix}{i:02d}"] * len(im)
        flags += [bad] * len(im)
    return SliceSet.create(np.concatenate(images), np.concatenate(labels), ids, CHANNELS, poisoned=np.array(flags))


class ForbiddenFlags:
    """Stands in for ``SliceSet.poisoned``: has a length, raises on any other use."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def _refuse(self, *args, **kwargs):
        raise AssertionError("a defense read the ground-truth poisoned flags")

    __getitem__ = __iter__ = __array__ = __array_ufunc__ = __array_function__ = __bool__ = _refuse
    __eq__ = __ne__ = __invert__ = __and__ = __or__ = sum = any = all = astype = _refuse


@pytest.fixture(scope="session")
def toy_data() -> dict[str, SliceSet]:
    """``trusted``: 4 clean cases; ``train``: 12 cases, the odd ones corrupted, plus the trusted cases."""
    trusted = make_set(4, [], seed=1, prefix="trusted")
    attackable = make_set(12, list(range(1, 12, 2)), seed=2, prefix="case")
    return {"trusted": trusted, "train": SliceSet.concatenate([trusted, attackable])}
