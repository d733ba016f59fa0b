"""The data contract every plugin speaks: a stack of 2-D slices with case identities."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from .errors import DataError
from .geometry import SliceGeometry
from .normalisation import Normalisation
from .spill import concat_rows, map_rows, take_rows

__all__ = ["INT_KEYED_META", "SliceSet", "meta_from_json"]


#: Keys of a SliceSet's ``meta`` whose mapping has integer keys (``source_labels``: common
#: value -> source value); JSON writes them as text, and `meta_from_json` restores them.
INT_KEYED_META = frozenset({"source_labels"})


def meta_from_json(meta: dict[str, Any], int_keyed: frozenset[str] | set[str] = INT_KEYED_META) -> dict[str, Any]:
    """A SliceSet's ``meta`` as read back from JSON, with its integer-keyed mappings restored.

    JSON writes every mapping key as text. Only the mappings under the keys listed in
    ``int_keyed`` get integer keys back; any other mapping keeps its text keys, even when
    they read as numbers (a plugin's own case-keyed map keeps ``"001"``).

    Args:
        meta: the ``meta`` mapping as parsed from JSON.
        int_keyed: the top-level keys whose mappings are integer-keyed. Defaults to
            `INT_KEYED_META`.

    Returns:
        a new mapping; ``meta`` is left as it was.
    """
    return {key: _int_keys(value) if key in int_keyed else value for key, value in meta.items()}


def _int_keys(mapping: Any) -> Any:
    if not isinstance(mapping, dict):
        return mapping
    return {int(key) if isinstance(key, str) and key.lstrip("-").isdigit() else key: value for key, value in mapping.items()}


@dataclass(frozen=True, eq=False)
class SliceSet:
    """Axial slices of several cases, their labels and ground-truth poison flags.

    Attributes:
        images: float32 ``[N, C, H, W]``, channels named by ``channels``.
        labels: uint8 ``[N, H, W]`` in the common convention (see `benchmark.regions`).
        case_ids: str ``[N]``, the case each slice belongs to. Splits are by case.
        poisoned: bool ``[N]``, ground truth for the harness only; a defense never reads it.
        channels: names of the ``C`` channels (``t1``, ``t1ce``, ``t2``, ``flair``, ``ct``...).
        meta: free-form facts about the source (e.g. ``source_labels``: common value ->
            source value, used to report counts in the source's own values). Through a
            cache, mappings under `INT_KEYED_META` keys get their integer keys back; any
            other mapping comes back with text keys, as JSON writes them.
        norm_masks: bool ``[N, H, W]``, the voxels over which the data set normalised each
            case's intensities (its brain mask), or None when the source records none.
        normalisation: the data set's normalisation rule, or None when unrecorded (see
            `benchmark.normalisation`; attacks that write intensities follow both).
        geometry: each slice's case grid affine and index in it (`benchmark.geometry`),
            or None when the source records none. Not part of any data fingerprint.
    """

    images: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    poisoned: np.ndarray
    channels: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    norm_masks: np.ndarray | None = None
    normalisation: Normalisation | None = None
    geometry: SliceGeometry | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4:
            raise DataError(f"SliceSet images must be [N, C, H, W]; got shape {self.images.shape}.")
        if self.labels.shape != (n, *self.images.shape[2:]):
            raise DataError(
                f"SliceSet labels must be [N, H, W] = {(n, *self.images.shape[2:])}; got {self.labels.shape}."
            )
        if len(self.case_ids) != n or len(self.poisoned) != n:
            raise DataError(f"SliceSet case_ids and poisoned must have {n} entries.")
        if len(self.channels) != self.images.shape[1]:
            raise DataError(
                f"SliceSet has {self.images.shape[1]} image channels but names {list(self.channels)}."
            )
        if self.norm_masks is not None and (self.norm_masks.shape != self.labels.shape or self.norm_masks.dtype != bool):
            raise DataError(
                f"SliceSet norm_masks must be bool [N, H, W] = {self.labels.shape}; "
                f"got {self.norm_masks.dtype} {self.norm_masks.shape}."
            )
        if self.geometry is not None and len(self.geometry) != n:
            raise DataError(f"SliceSet geometry must describe its {n} slices; it describes {len(self.geometry)}.")

    @classmethod
    def create(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        case_ids: Sequence[str] | np.ndarray,
        channels: Sequence[str],
        poisoned: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        norm_masks: np.ndarray | None = None,
        normalisation: Normalisation | None = None,
        geometry: SliceGeometry | None = None,
    ) -> SliceSet:
        case_ids = np.asarray(case_ids, dtype=str)
        if poisoned is None:
            poisoned = np.zeros(len(case_ids), dtype=bool)
        return cls(
            images=np.asarray(images, dtype=np.float32) if not isinstance(images, np.memmap) else images,
            labels=np.asarray(labels, dtype=np.uint8),
            case_ids=case_ids,
            poisoned=np.asarray(poisoned, dtype=bool),
            channels=tuple(channels),
            meta=dict(meta or {}),
            norm_masks=None if norm_masks is None else np.asarray(norm_masks, dtype=bool),
            normalisation=normalisation,
            geometry=geometry,
        )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def cases(self) -> list[str]:
        """Case ids in order of first appearance."""
        _, first = np.unique(self.case_ids, return_index=True)
        return [str(self.case_ids[i]) for i in sorted(first)]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def channel_index(self, name: str) -> int:
        try:
            return self.channels.index(name)
        except ValueError:
            raise DataError(f"Channel '{name}' is not in this data set; it has {list(self.channels)}.") from None

    def case_mask(self, case_id: str) -> np.ndarray:
        return self.case_ids == case_id

    def subset(self, cases: Sequence[str]) -> SliceSet:
        """The slices of ``cases``, keeping the original slice order."""
        keep = np.isin(self.case_ids, np.asarray(list(cases), dtype=str))
        index = np.flatnonzero(keep)
        return replace(
            self,
            images=take_rows(self.images, index),
            labels=take_rows(self.labels, index),
            case_ids=self.case_ids[index],
            poisoned=self.poisoned[index],
            norm_masks=None if self.norm_masks is None else take_rows(self.norm_masks, index),
            geometry=None if self.geometry is None else self.geometry.take(index),
        )

    def select_channels(self, names: Sequence[str]) -> np.ndarray:
        """Images of the named channels, float32 ``[N, len(names), H, W]``."""
        index = [self.channel_index(n) for n in names]
        rows = np.arange(len(self))
        return map_rows(self.images, rows, lambda chunk: chunk[:, index], (len(index), *self.shape), np.float32)

    def poisoned_cases(self) -> list[str]:
        return sorted({str(c) for c in self.case_ids[self.poisoned]})

    def with_arrays(self, **changes: Any) -> SliceSet:
        """A copy with some arrays replaced (validated again)."""
        return replace(self, **changes)

    def norm_mask_rows(self, index: np.ndarray) -> np.ndarray | None:
        """The normalisation masks of rows ``index`` (bool ``[len(index), H, W]``), or None."""
        return None if self.norm_masks is None else np.asarray(self.norm_masks[index], dtype=bool)

    @staticmethod
    def concatenate(parts: Sequence[SliceSet]) -> SliceSet:
        """Join slice sets of one data set.

        The normalisation rule and masks survive only where every part records the same
        rule and has masks; otherwise the result records none (see `benchmark.normalisation`).
        """
        first = parts[0]
        for part in parts[1:]:
            if part.channels != first.channels:
                raise DataError(f"Cannot join slice sets with channels {first.channels} and {part.channels}.")
        rule = first.normalisation if all(p.normalisation == first.normalisation for p in parts) else None
        masks = None
        if rule is not None and all(p.norm_masks is not None for p in parts):
            masks = concat_rows([p.norm_masks for p in parts])  # type: ignore[misc]
        return SliceSet(
            images=concat_rows([p.images for p in parts]),
            labels=concat_rows([p.labels for p in parts]),
            case_ids=np.concatenate([p.case_ids for p in parts]),
            poisoned=np.concatenate([p.poisoned for p in parts]),
            channels=first.channels,
            meta=dict(first.meta),
            norm_masks=masks,
            normalisation=rule,
            geometry=SliceGeometry.concatenate([p.geometry for p in parts]),
        )
