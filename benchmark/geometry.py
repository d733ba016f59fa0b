"""Where each slice of a `SliceSet` lies in its case's scanner space.

A reader records, per slice, the 4x4 NIfTI affine of its case's slice grid and the slice's
index in that grid; an exporter writes NIfTI headers from them and metrics measure
distances in mm from them. The grid of a case is the source volume as the reader cropped
or padded it in-plane: voxel ``(row, column, k)`` is ``images[i, :, row, column]`` of the
slice ``i`` with ``index[i] == k``, and the affine maps it to world mm (RAS+, as NIfTI).
Slices a reader left out (``slices: tumour``) leave gaps in ``k``, so every kept slice
keeps its true position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import DataError

__all__ = ["SliceGeometry", "CaseGrid", "stack_slices", "voxel_spacing"]


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each voxel axis of a 4x4 affine (the norms of its first three columns)."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))  # type: ignore[return-value]


@dataclass(frozen=True)
class CaseGrid:
    """One case's slices placed on their grid.

    Attributes:
        affine: float64 ``[4, 4]``, voxel ``(row, column, k)`` of the case's grid -> world mm.
        index: int64 ``[S]``, grid index ``k`` of each of the case's slices, in row order.
    """

    affine: np.ndarray
    index: np.ndarray

    @property
    def span(self) -> tuple[int, int]:
        """First and last grid index holding a slice."""
        return int(self.index.min()), int(self.index.max())

    @property
    def contiguous(self) -> bool:
        """Whether the slices fill every grid index between the first and the last, once each."""
        first, last = self.span
        return np.array_equal(np.sort(self.index), np.arange(first, last + 1))

    def cropped_affine(self) -> np.ndarray:
        """The affine of the grid starting at the first slice (voxel ``k = 0`` there)."""
        shift = np.eye(4)
        shift[2, 3] = self.span[0]
        return self.affine @ shift

    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) of the grid: rows, columns, slices."""
        return voxel_spacing(self.affine)


@dataclass(frozen=True, eq=False)
class SliceGeometry:
    """Per-slice geometry of a slice set.

    Attributes:
        affines: float64 ``[N, 4, 4]``, the affine of each slice's case grid (one matrix
            repeated over a case's slices).
        index: int64 ``[N]``, each slice's index ``k`` along the third axis of that grid.
    """

    affines: np.ndarray
    index: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.index)
        if self.affines.shape != (n, 4, 4) or self.index.ndim != 1:
            raise DataError(
                f"SliceGeometry needs affines [N, 4, 4] and index [N]; got {self.affines.shape} and {self.index.shape}."
            )

    @classmethod
    def for_case(cls, affine: np.ndarray, index: Sequence[int] | np.ndarray) -> SliceGeometry:
        """The geometry of one case's slices: one affine, their grid indices."""
        index = np.asarray(index, dtype=np.int64)
        affines = np.repeat(np.asarray(affine, dtype=np.float64)[None], len(index), axis=0)
        return cls(affines, index)

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: np.ndarray) -> SliceGeometry:
        """The geometry of rows ``rows`` (in that order)."""
        return SliceGeometry(self.affines[rows], self.index[rows])

    @staticmethod
    def concatenate(parts: Sequence[SliceGeometry | None]) -> SliceGeometry | None:
        """Join the geometry of slice sets; None unless every part records one."""
        if not parts or any(p is None for p in parts):
            return None
        return SliceGeometry(
            np.concatenate([p.affines for p in parts]),  # type: ignore[union-attr]
            np.concatenate([p.index for p in parts]),  # type: ignore[union-attr]
        )

    def case_grid(self, rows: np.ndarray, case: str = "") -> CaseGrid:
        """The grid of the case made of rows ``rows``.

        Raises:
            DataError: the rows disagree on the affine, or two of them sit at one index.
        """
        affines = self.affines[rows]
        if len(affines) and not np.allclose(affines, affines[0], atol=1e-6):
            raise DataError(f"case {case}: its slices carry different affines; they are not one volume.")
        index = np.asarray(self.index[rows], dtype=np.int64)
        if len(np.unique(index)) != len(index):
            raise DataError(f"case {case}: two of its slices sit at the same grid index.")
        return CaseGrid(np.array(affines[0], dtype=np.float64), index)


def stack_slices(slices: np.ndarray, grid: CaseGrid | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case's slices as a volume on its grid, from its first slice to its last.

    Args:
        slices: ``[S, ...]``, the case's slices in the order of ``grid.index``.
        grid: where they lie; None stacks them in order under an identity affine (1 mm).

    Returns:
        (volume ``[..., Z]`` of ``slices``' dtype, slices the grid has no row for are 0;
        its affine ``[4, 4]``; the position along ``Z`` of each given slice ``[S]``).
    """
    slices = np.asarray(slices)
    if grid is None:
        position, affine = np.arange(len(slices)), np.eye(4)
    else:
        position, affine = grid.index - grid.span[0], grid.cropped_affine()
    volume = np.zeros((*slices.shape[1:], int(position.max()) + 1), dtype=slices.dtype)
    volume[..., position] = np.moveaxis(slices, 0, -1)
    return volume, affine, position
