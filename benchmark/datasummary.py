"""Counts that describe a loaded data set (``bench data summary``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .regions import REGIONS, region_mask
from .sliceset import SliceSet

__all__ = ["summarise"]


def summarise(data: SliceSet) -> dict[str, Any]:
    """Cases, slices, channels, ``[H, W]``, voxels per source label value and per region."""
    values, counts = np.unique(np.asarray(data.labels), return_counts=True)
    source = data.meta.get("source_labels", {})
    label_voxels = {str(source.get(int(v), int(v))): int(c) for v, c in zip(values, counts)}
    return {
        "cases": len(data.cases),
        "slices": len(data),
        "channels": list(data.channels),
        "shape": list(data.shape),
        "label_voxels": dict(sorted(label_voxels.items(), key=lambda kv: int(kv[0]))),
        "region_voxels": {region: int(region_mask(data.labels, region).sum()) for region in REGIONS},
    }
