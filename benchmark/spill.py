"""Arrays too large for memory live in anonymous temporary files instead.

Copies the harness makes of a data set (a split's slices, its input channels, an
attack's output) go to RAM when small and to a memory-mapped temporary file under the
cache folder when larger than ``$POISONBENCH_SPILL_BYTES`` (default 2 GiB), so a data
set larger than memory is never held whole; the file vanishes when the array is freed.
Copies are made in chunks of slices for the same reason.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np

from .paths import cache_root

__all__ = ["SPILL_ENV", "allocate", "take_rows", "map_rows", "concat_rows", "all_finite"]

SPILL_ENV = "POISONBENCH_SPILL_BYTES"
_CHUNK_BYTES = 256 << 20


def _limit() -> int:
    return int(os.environ.get(SPILL_ENV, 2 << 30))


def allocate(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised array in RAM, or memory-mapped on disk when larger than the limit."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes <= _limit() or nbytes == 0:
        return np.empty(shape, dtype)
    folder = cache_root() / "spill"
    folder.mkdir(parents=True, exist_ok=True)
    return np.memmap(tempfile.TemporaryFile(dir=folder), dtype=dtype, mode="w+", shape=shape)


def _rows_per_chunk(array: np.ndarray) -> int:
    row = max(1, int(np.prod(array.shape[1:])) * array.dtype.itemsize)
    return max(1, _CHUNK_BYTES // row)


def map_rows(
    source: np.ndarray, index: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], dtype
) -> np.ndarray:
    """``fn(source[index])`` computed a chunk of rows at a time into a (possibly spilled) array."""
    out = allocate((len(index), *shape), dtype)
    step = _rows_per_chunk(source)
    for start in range(0, len(index), step):
        out[start : start + step] = fn(source[index[start : start + step]])
    return out


def take_rows(source: np.ndarray, index: np.ndarray, dtype=None) -> np.ndarray:
    """``source[index]`` (rows along the first axis) as a new array."""
    return map_rows(source, index, lambda rows: rows, source.shape[1:], dtype or source.dtype)


def concat_rows(parts: list[np.ndarray]) -> np.ndarray:
    """Join arrays along the first axis into a new (possibly spilled) array."""
    out = allocate((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    start = 0
    for part in parts:
        step = _rows_per_chunk(part)
        for offset in range(0, len(part), step):
            chunk = part[offset : offset + step]
            out[start + offset : start + offset + len(chunk)] = chunk
        start += len(part)
    return out


def all_finite(array: np.ndarray) -> bool:
    """No NaN or inf, checked a chunk at a time."""
    step = _rows_per_chunk(array)
    return all(np.isfinite(array[start : start + step]).all() for start in range(0, len(array), step))
