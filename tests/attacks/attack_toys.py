"""Tiny multi-contrast slice sets for attack tests (written by the tests, no generator)."""

from __future__ import annotations

import numpy as np

from benchmark import SliceSet

CHANNELS = ("t1", "t1ce", "t2", "flair", "ct")


def toy_sliceset(cases: int = 6, slices: int = 4, size: int = 32, seed: int = 0) -> SliceSet:
    """A head disc with a bright 'tumour' blob; the ct channel is a smooth function of t1ce.

    Returns:
        a SliceSet with images ``[cases·slices, 5, size, size]`` and labels in {0, 2, 3}.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images, labels, ids = [], [], []
    for c in range(cases):
        cy, cx = rng.uniform(0.35, 0.65, 2)
        for s in range(slices):
            head = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.2
            r = 0.06 + 0.02 * s / max(slices - 1, 1)
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            et = d2 < r**2
            ed = (d2 < (1.8 * r) ** 2) & ~et
            lab = np.where(et, 3, np.where(ed, 2, 0)).astype(np.uint8) * head
            base = 0.5 + 0.2 * np.sin(6 * yy + c) + 0.05 * rng.normal(size=(size, size))
            t1ce = base + 1.0 * et + 0.3 * ed
            chans = [base, t1ce, 1 - base + 0.4 * ed, base + 0.6 * ed, 0.5 * t1ce + 0.1 * base]
            img = np.stack([np.where(head, ch, 0.0) for ch in chans])
            images.append(img)
            labels.append(lab)
            ids.append(f"case{c:02d}")
    images = np.asarray(images, dtype=np.float32)
    # z-score per case and channel over the head, as the data sets are
    ids_arr = np.asarray(ids)
    for case in np.unique(ids_arr):
        rows = ids_arr == case
        for ch in range(images.shape[1]):
            block = images[rows, ch]
            head = block != 0
            block[head] = (block[head] - block[head].mean()) / block[head].std()
            images[rows, ch] = block
    return SliceSet.create(images, np.asarray(labels), ids, CHANNELS)
