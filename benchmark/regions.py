"""Label conventions of brain-tumour data sets and the BraTS regions WT, TC, ET.

Every `SliceSet` stores labels in one common convention, whatever the source used:
0 background, 1 necrotic / non-enhancing core (NCR), 2 edema (ED), 3 enhancing tumour (ET).
Readers translate their source's values on load and remember the translation so that
summaries can be given in the source's own values.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NCR",
    "ED",
    "ET",
    "REGIONS",
    "REGION_LABELS",
    "BRATS_2021_TO_COMMON",
    "BRATS_2023_TO_COMMON",
    "MSD_TO_COMMON",
    "region_mask",
    "to_common_labels",
]

NCR, ED, ET = 1, 2, 3

REGION_LABELS: dict[str, tuple[int, ...]] = {"WT": (NCR, ED, ET), "TC": (NCR, ET), "ET": (ET,)}
REGIONS: tuple[str, ...] = tuple(REGION_LABELS)

# source value -> common value
BRATS_2021_TO_COMMON: dict[int, int] = {0: 0, 1: NCR, 2: ED, 4: ET}
BRATS_2023_TO_COMMON: dict[int, int] = {0: 0, 1: NCR, 2: ED, 3: ET}
# MSD Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
MSD_TO_COMMON: dict[int, int] = {0: 0, 1: ED, 2: NCR, 3: ET}


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """Binary mask of a BraTS region.

    Args:
        labels: integer labels in the common convention, any shape.
        region: ``WT``, ``TC`` or ``ET``.

    Returns:
        bool array of the same shape.
    """
    try:
        values = REGION_LABELS[region]
    except KeyError:
        raise ValueError(f"Unknown region {region!r}; expected one of {', '.join(REGIONS)}.") from None
    return np.isin(labels, values)


def to_common_labels(labels: np.ndarray, mapping: dict[int, int], where: str) -> np.ndarray:
    """Translate source label values to the common convention.

    Args:
        labels: integer label array in the source's values.
        mapping: source value -> common value.
        where: file or case named in the error when an unexpected value appears.

    Returns:
        uint8 array of the same shape.
    """
    unexpected = sorted(set(_values_present(labels)) - set(mapping))
    if unexpected:
        raise_data_error(where, f"unexpected label values {unexpected}; expected only {sorted(mapping)}")
    # every value present is a key: a value kept as it is needs no pass of its own
    out = labels.astype(np.uint8)
    for source, common in mapping.items():
        if source != common:
            out[labels == source] = common
    return out


def _values_present(labels: np.ndarray) -> list[int]:
    """The distinct values of an integer label array.

    A label volume holds a handful of values in a narrow range: one comparison pass per
    value of that range is several times faster than sorting or hashing the volume.
    """
    if labels.size == 0:
        return []
    low, high = int(labels.min()), int(labels.max())
    if high - low > 32:
        return np.unique(labels).tolist()
    return [value for value in range(low, high + 1) if (labels == value).any()]


def raise_data_error(where: str, what: str) -> None:
    from .errors import DataError

    raise DataError(f"{where}: {what}")
