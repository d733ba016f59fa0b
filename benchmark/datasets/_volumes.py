"""Shared machinery of the NIfTI dataset readers (``brats``, ``decathlon``, ``nnunet``).

A reader lists its cases as `CaseFiles` (which file holds which channel and the
segmentation); everything after that is common: reading and checking each NIfTI file,
slice selection, centre crop/pad, per-case z-score over the brain mask of the kept slices
(voxels non-zero in any channel; recorded on the `SliceSet` so that attacks writing new
intensities normalise them alike, see `benchmark.normalisation`), and a cache
builder that streams case after case into ``.npy`` files on disk, so a data set larger
than RAM is never held whole. The cached images (and labels) are memory-mapped on load.
Cases are read by ``dataset.workers`` processes at once (default: the cores this process
may use; `benchmark.datasets._parallel`) and appended in case order, so the cache is the
same bytes whatever the count.

Volumes are taken as stored (no reorientation): the third voxel axis is the slice axis,
as in BraTS, MSD and nnU-Net conversions of them; slice ``k`` is ``volume[:, :, k]``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator

from ..cache import FILE_DIGESTS, MANIFEST, BlockDigests, artifact_dir, build_artifact, load_geometry, save_geometry
from ..errors import DataError, DataNotFoundError
from ..geometry import SliceGeometry
from ..normalisation import ZSCORE, normalisation_named
from ..plugins import DatasetSource, PluginParams, RunContext
from ..regions import to_common_labels
from ..sliceset import SliceSet, meta_from_json
from ._parallel import CaseReads, SpilledArray, default_workers

__all__ = [
    "READER_VERSION",
    "NIFTI_ENDINGS",
    "VolumeParams",
    "CaseFiles",
    "VolumeSource",
    "normalise_channel",
    "read_nifti",
    "zscore_in_place",
    "copy_bytes",
    "brain_mask",
    "select_slices",
    "crop_or_pad",
    "crop_shift",
    "folder_fingerprint",
    "StreamingArray",
    "load_mapped_sliceset",
    "list_nifti",
    "strip_ending",
    "read_json",
    "invert",
]

logger = logging.getLogger(__name__)

#: Bump when the arrays a reader produces change; part of the data set fingerprint.
READER_VERSION = "2"
NIFTI_ENDINGS = (".nii.gz", ".nii")

_CHANNEL_ALIASES = {
    "t1": "t1", "t1w": "t1", "t1n": "t1", "native": "t1", "t1native": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1cegd": "t1ce", "t1contrast": "t1ce", "t1post": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "t2flair": "flair",
    "ct": "ct", "ctzscored": "ct",  # an export names its z-scored ct channel so (nnU-Net would treat 'CT' as Hounsfield units)
}


def normalise_channel(name: str) -> str:
    """Common channel name of a source's modality name (``T1Gd`` -> ``t1ce``, ``t2f`` -> ``flair``)."""
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    return _CHANNEL_ALIASES.get(key, key or str(name))


class VolumeParams(PluginParams):
    """Parameters every NIfTI folder reader shares (names fixed by the harness)."""

    root: str = Field(..., min_length=1, description="the data set's folder (read only; nothing is written there)")
    modalities: list[str] | None = Field(
        None, min_length=1, description="channels to load (t1, t1ce, t2, flair, ...); null loads all"
    )
    max_cases: int | None = Field(None, ge=1, description="load only the first N cases (sorted by id); null loads all")
    slices: Literal["all", "tumour"] = Field(
        "all", description="'all' axial slices containing brain, or 'tumour' slices plus other_fraction of the rest"
    )
    other_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="with slices: tumour, the share of the other brain slices also kept (evenly spaced)"
    )
    size: int | None = Field(None, ge=8, le=1024, description="in-plane output size by centre crop/pad; null keeps the native size")
    normalize: bool = Field(
        True,
        description="z-score each channel per case over the brain mask (voxels non-zero in any channel) of the kept slices; "
        "false for data already normalised (an export)",
    )
    missing_segmentation: Literal["skip", "error"] = Field(
        "skip", description="a case without segmentation is skipped with a warning, or is an error"
    )
    affine_tolerance: float = Field(
        1e-3, ge=0.0, description="largest allowed difference between the affines of a case's files (mm)"
    )

    @field_validator("modalities")
    @classmethod
    def _normalise_modalities(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [normalise_channel(v) for v in value]
        if len(set(names)) != len(names):
            raise ValueError(f"modalities must be distinct; got {value}")
        return names


@dataclass
class CaseFiles:
    """Where one case's data lives.

    Attributes:
        case_id: the case's identity (folder or file stem).
        channels: channel name -> (file, index of the volume in a 4-D file or None).
        label: the segmentation file, None when the case has none.
    """

    case_id: str
    channels: dict[str, tuple[Path, int | None]]
    label: Path | None
    extra: dict[str, Any] = field(default_factory=dict)


def read_nifti(path: Path, what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file completely.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        what: what the file should hold, for error messages.

    Returns:
        (data in the file's own dtype, 4x4 affine).

    Raises:
        DataError: the file is missing, unreadable or truncated.
    """
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"{path}: missing {what}; expected a NIfTI file (.nii or .nii.gz) here.")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for bad or truncated files
        raise DataError(
            f"{path}: cannot read this {what} as NIfTI ({type(exc).__name__}: {exc}); the file may be truncated or not NIfTI."
        ) from None
    return np.asarray(data), affine


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels non-zero in any channel: the brain of a skull-stripped scan.

    Args:
        image: float ``[C, ...]``.

    Returns:
        bool array ``[...]``.
    """
    return (np.asarray(image) != 0).any(axis=0)


def _stack_slices(volumes: Sequence[np.ndarray], keep: np.ndarray, size: int | None) -> np.ndarray:
    """The kept axial slices of each ``[X, Y, Z]`` volume, cropped or padded, as one float32 ``[S, C, H, W]`` array.

    Slice by slice, each cast as it is copied: the same values as `crop_or_pad` of the
    gathered slices, without a gathered copy of every volume on the way.
    """
    shape = volumes[0].shape[:2]
    windows = [_crop_window(n, size) for n in shape]  # (source slice, target slice) per axis
    height, width = (n if size is None else size for n in shape)
    padded = size is not None and any(n < size for n in shape)
    images = (np.zeros if padded else np.empty)((len(keep), len(volumes), height, width), dtype=np.float32)
    (source_x, target_x), (source_y, target_y) = windows
    for c, volume in enumerate(volumes):
        for s, k in enumerate(keep):
            images[s, c, target_x, target_y] = volume[source_x, source_y, k]
    return images


def _crop_window(n: int, size: int | None) -> tuple[slice, slice]:
    """(source, target) ranges of one axis of length ``n`` centre-cropped or zero-padded to ``size``, as `crop_or_pad` does."""
    if size is None or n == size:
        return slice(0, n), slice(0, n)
    if n > size:
        start = (n - size) // 2
        return slice(start, start + size), slice(0, size)
    before = (size - n) // 2
    return slice(0, n), slice(before, before + n)


def zscore_in_place(images: np.ndarray, mask: np.ndarray) -> None:
    """Z-score each channel of a case's float32 ``[S, C, H, W]`` slices over ``mask``, in place.

    Inside the mask, each channel becomes `benchmark.normalisation.ZSCORE` of it (the same
    float64 statistics and bytes as ``ZSCORE.normalise``), computed over the voxels in the
    mask alone; outside it every channel already holds 0, since the mask is where any
    channel is non-zero (a float source's -0.0 is made +0.0 when it is read).
    """
    if not mask.any():
        images[...] = 0
        return
    for c in range(images.shape[1]):
        channel = images[:, c]
        inside = channel[mask].astype(np.float64)
        shift, scale = ZSCORE.affine_map(inside)
        channel[mask] = ((inside - shift) / scale).astype(np.float32)


def select_slices(brain: np.ndarray, tumour: np.ndarray, mode: str, other_fraction: float) -> np.ndarray:
    """Indices of the kept axial slices.

    Args:
        brain: bool ``[Z]``, slices with any non-zero image voxel.
        tumour: bool ``[Z]``, slices with any tumour label.
        mode: ``all`` (every brain slice) or ``tumour`` (tumour slices plus ``other_fraction``
            of the other brain slices, evenly spaced).
        other_fraction: share in [0, 1].

    Returns:
        sorted int array of slice indices.
    """
    if mode == "all":
        return np.flatnonzero(brain | tumour)
    keep = np.flatnonzero(tumour)
    rest = np.flatnonzero(brain & ~tumour)
    count = int(round(other_fraction * len(rest)))
    if count > 0:
        picks = np.unique(np.linspace(0, len(rest) - 1, count).round().astype(int))
        keep = np.union1d(keep, rest[picks])
    return np.sort(keep)


def crop_or_pad(array: np.ndarray, size: int | None) -> np.ndarray:
    """Centre crop or zero-pad the last two axes to ``size × size`` (no-op when None)."""
    if size is None:
        return array
    out = array
    for axis in (-2, -1):
        n = out.shape[axis]
        if n > size:
            start = (n - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
        elif n < size:
            before = (size - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, size - n - before)
            out = np.pad(out, pad)
    return out


def crop_shift(shape: Sequence[int], size: int | None) -> np.ndarray:
    """Voxel shift (4x4) from the grid `crop_or_pad` makes of a volume's first two axes to the volume's own.

    Composed after the volume's affine, it gives the affine of the cropped or padded grid:
    row ``r`` of the output is row ``r + start`` of a cropped axis, ``r - before`` of a padded one.
    """
    shift = np.eye(4)
    if size is not None:
        for axis in (0, 1):
            n = int(shape[axis])
            shift[axis, 3] = (n - size) // 2 if n > size else -((size - n) // 2)
    return shift


def folder_fingerprint(root: Path, name: str, params: dict[str, Any]) -> str:
    """Hash of the folder's file list, sizes and modification times, the params and the reader version."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    payload = {"name": name, "reader": READER_VERSION, "params": params, "files": entries}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class StreamingArray:
    """A ``.npy`` file filled block after block along its first axis, without knowing N in advance.

    The header is written with room to spare and rewritten with the final shape on close,
    so the result is an ordinary ``.npy`` that ``np.load(mmap_mode="r")`` maps. Each
    block's SHA-256 is taken as it is written (``digests``), so the cache does not read
    the file back to record it.
    """

    _HEADER = 256  # bytes, a multiple of 64; room for any 4-D shape

    def __init__(self, path: Path, dtype: np.dtype, tail: tuple[int, ...]):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.tail = tuple(int(t) for t in tail)
        self.rows = 0
        self.digests = BlockDigests()
        self._file = open(path, "wb")
        self._file.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        shape = (rows, *self.tail)
        text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (self.dtype.str, shape)
        room = self._HEADER - 10 - 1
        if len(text) > room:
            raise ValueError(f"shape {shape} does not fit the .npy header")
        text = text + " " * (room - len(text)) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")

    def append(self, block: np.ndarray | SpilledArray) -> None:
        """Add rows: an array, or one a reading process wrote to a file (copied file to file, its digest reused)."""
        array = block.array if isinstance(block, SpilledArray) else block
        if tuple(array.shape[1:]) != self.tail:
            raise DataError(f"{self.path.name}: block of shape {array.shape} does not continue {self.tail}.")
        start = self._HEADER + self.rows * self._row_bytes
        if isinstance(block, SpilledArray) and array.dtype == self.dtype and array.flags.c_contiguous:
            with open(block.path, "rb") as source:
                copy_bytes(source, self._file, block.offset, start, array.nbytes)
            self.digests.add_known(start, array.nbytes, block.sha256)
        else:
            # written from the array's own buffer: a memory-mapped block is not copied first
            data = memoryview(np.ascontiguousarray(array, dtype=self.dtype)).cast("B")
            self.digests.add(start, data)
            self._file.write(data)
        self.rows += len(array)

    @property
    def _row_bytes(self) -> int:
        return int(np.prod(self.tail, dtype=np.int64)) * self.dtype.itemsize

    def close(self) -> None:
        header = self._header(self.rows)
        self._file.seek(0)
        self._file.write(header)
        self._file.close()
        self.digests.add(0, header)


def copy_bytes(source: BinaryIO, target: BinaryIO, source_start: int, target_start: int, length: int) -> None:
    """Copy ``length`` bytes of one open file into another at the given positions.

    In the kernel where the system offers it, so the bytes never pass through this
    process: ``copy_file_range`` within one file system, ``sendfile`` between two (shared
    memory to disk); otherwise through a buffer.
    """
    copied = 0
    target.flush()
    if hasattr(os, "copy_file_range"):
        try:
            while copied < length:
                done = os.copy_file_range(
                    source.fileno(), target.fileno(), length - copied, source_start + copied, target_start + copied
                )
                if done == 0:
                    break
                copied += done
        except OSError:  # not between these file systems, or not on this one
            pass
    if copied < length and hasattr(os, "sendfile"):
        try:
            os.lseek(target.fileno(), target_start + copied, os.SEEK_SET)
            while copied < length:
                done = os.sendfile(target.fileno(), source.fileno(), source_start + copied, length - copied)
                if done == 0:
                    break
                copied += done
        except OSError:  # not for these files: copy through a buffer
            pass
    source.seek(source_start + copied)
    target.seek(target_start + copied)
    while copied < length:
        chunk = source.read(min(length - copied, 1 << 22))
        if not chunk:
            raise DataError(f"{getattr(source, 'name', 'a scratch file')}: ended {length - copied} bytes early while being copied.")
        target.write(chunk)
        copied += len(chunk)
    target.flush()
    target.seek(target_start + length)


def load_mapped_sliceset(folder: Path) -> SliceSet:
    """Read a cached reader artifact; images, labels and normalisation masks are memory-mapped (read only)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(folder / "labels.npy", mmap_mode="r", allow_pickle=False)
    case_ids = np.load(folder / "case_ids.npy", allow_pickle=False)
    masks_file = folder / "norm_masks.npy"
    norm_masks = np.load(masks_file, mmap_mode="r", allow_pickle=False) if masks_file.is_file() else None
    poisoned = np.zeros(len(case_ids), dtype=bool)
    meta = meta_from_json(manifest.get("meta", {}))
    return SliceSet(
        images=images, labels=labels, case_ids=case_ids, poisoned=poisoned, channels=tuple(manifest["channels"]), meta=meta,
        norm_masks=norm_masks, normalisation=normalisation_named(manifest.get("normalisation")), geometry=load_geometry(folder),
    )


class VolumeSource(DatasetSource):
    """Base of the NIfTI folder readers: subclasses list cases and say how labels map.

    Subclasses implement `discover` (cases and channel names, checked against the
    folder) and `label_mapping` (source value -> common value, for one case).
    """

    Params = VolumeParams

    # -- what subclasses provide ---------------------------------------------------
    def discover(self) -> tuple[list[CaseFiles], list[str]]:
        """Every case of the folder (sorted by id) and the channel names available."""
        raise NotImplementedError

    def label_mapping(self, case: CaseFiles) -> dict[int, int]:
        """Source label value -> common value for ``case``."""
        raise NotImplementedError

    def source_meta(self) -> dict[str, Any]:
        """``meta`` of the loaded SliceSet (must hold ``source_labels``)."""
        raise NotImplementedError

    # -- common behaviour -----------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.params.root).expanduser()

    def channels(self) -> tuple[str, ...] | None:
        """The ``modalities`` asked for, else those the folder's cases have (its files are
        listed, none is read); None while the folder cannot be listed."""
        if self.params.modalities:
            return tuple(self.params.modalities)
        if not self.root.is_dir():
            return None
        try:
            return tuple(self.discover()[1])
        except DataError:  # reported with its file when the data set is loaded
            return None

    def protected_folders(self) -> tuple[Path, ...]:
        return (self.root,)

    #: What the folder should hold, appended to the error when it is missing.
    layout: ClassVar[str] = ""

    def check_root(self) -> Path:
        """The data set's folder; `DataNotFoundError` naming it (and its `layout`) when it is not there."""
        root = self.root
        if not root.is_dir():
            expected = f" It should hold {self.layout}." if self.layout else ""
            where = f"{root}" if root.is_absolute() else f"{root} ({root.absolute()})"
            raise DataNotFoundError(
                f"{where}: the '{self.name}' data set folder does not exist or is not a folder.{expected} "
                "Set dataset.root to the folder where the data set lies."
            )
        return root

    def fingerprint(self) -> str:
        root = self.check_root()
        return folder_fingerprint(root.resolve(), self.name, self.params.model_dump(mode="json"))

    def load(self) -> SliceSet:
        key = f"{self.name}-{self.fingerprint()}"
        folder = build_artifact(artifact_dir("datasets", key), self._build)
        if load_geometry(folder) is None:  # cached before slice geometry was recorded: same arrays, rebuilt once
            shutil.rmtree(folder, ignore_errors=True)
            folder = build_artifact(folder, self._build)
        return load_mapped_sliceset(folder)

    def plan(self) -> tuple[list[CaseFiles], list[str]]:
        """Cases to load (segmentation checked, ``max_cases`` applied) and the channels."""
        cases, available = self.discover()
        if not cases:
            raise DataError(f"{self.root}: no cases found for the '{self.name}' reader.")
        wanted = list(self.params.modalities or available)
        missing = [m for m in wanted if m not in available]
        if missing:
            raise DataError(f"{self.root}: modalities {missing} are not in this data set; it has {available}.")
        kept = []
        for case in cases:
            if case.label is None or not case.label.is_file():
                expected = case.label or "a segmentation file"
                message = f"case {case.case_id}: no segmentation ({expected} is missing)"
                if self.params.missing_segmentation == "error":
                    raise DataError(message + "; set missing_segmentation: skip to leave such cases out.")
                warnings.warn(message + "; the case is left out.", stacklevel=2)
                logger.warning("%s; the case is left out.", message)
                continue
            kept.append(case)
        if self.params.max_cases is not None:
            kept = kept[: self.params.max_cases]
        if not kept:
            raise DataError(f"{self.root}: no case with a segmentation was found.")
        return kept, wanted

    def read_case(
        self, case: CaseFiles, channels: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, SliceGeometry]:
        """One case's kept slices.

        Statistics of the z-score are those of the kept, cropped slices, so the stored
        case is exactly what `benchmark.normalisation.ZSCORE` makes of it over its mask.

        Returns:
            (float32 images ``[S, C, H, W]``, uint8 common labels ``[S, H, W]``, bool brain
            masks ``[S, H, W]``: the voxels the z-score was computed over, their geometry: the
            segmentation's affine shifted by the in-plane crop/pad, and each slice's index
            in the source volume).
        """
        p = self.params
        label_raw, label_affine = read_nifti(case.label, f"segmentation of case {case.case_id}")  # type: ignore[arg-type]
        if label_raw.ndim == 4 and label_raw.shape[3] == 1:
            label_raw = label_raw[..., 0]
        if label_raw.ndim != 3:
            raise DataError(f"{case.label}: segmentation of case {case.case_id} must be 3-D; got shape {label_raw.shape}.")
        if not np.issubdtype(label_raw.dtype, np.integer):
            if not np.isfinite(label_raw).all() or not np.array_equal(label_raw, np.round(label_raw)):
                raise DataError(f"{case.label}: segmentation of case {case.case_id} must hold integer label values.")
            label_raw = label_raw.astype(np.int64)
        labels = to_common_labels(label_raw, self.label_mapping(case), str(case.label))
        volumes = []
        files: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        for channel in channels:
            path, index = case.channels[channel]
            if path not in files:
                files[path] = read_nifti(path, f"{channel} image of case {case.case_id}")
            data, affine = files[path]
            if index is not None:
                if data.ndim != 4 or index >= data.shape[3]:
                    raise DataError(
                        f"{path}: expected a 4-D image with at least {index + 1} volumes (channel {channel}); got shape {data.shape}."
                    )
                data = data[..., index]
            elif data.ndim == 4 and data.shape[3] == 1:
                data = data[..., 0]
            if data.shape != label_raw.shape:
                raise DataError(
                    f"{path}: {channel} image of case {case.case_id} has shape {data.shape[:3] if data.ndim >= 3 else data.shape}; "
                    f"its segmentation {case.label.name} has {label_raw.shape}; they must match."  # type: ignore[union-attr]
                )
            gap = float(np.abs(affine - label_affine).max())
            if gap > p.affine_tolerance:
                raise DataError(
                    f"{path}: affine differs from that of the segmentation {case.label.name} by {gap:.4g} "  # type: ignore[union-attr]
                    f"(tolerance {p.affine_tolerance}); the files of case {case.case_id} are not co-registered."
                )
            # integers stay as stored until the kept slices are cast: every one is finite,
            # and non-zero exactly where its float32 value is
            if not np.issubdtype(data.dtype, np.integer):
                data = np.asarray(data, dtype=np.float32)
                if not np.isfinite(data).all():
                    bad = int((~np.isfinite(data)).sum())
                    raise DataError(f"{path}: {channel} image of case {case.case_id} has {bad} NaN or infinite voxels.")
                if p.normalize:
                    data = data + np.float32(0.0)  # -0.0 becomes +0.0: the z-score writes +0.0 outside the brain
            volumes.append(data)
        del files
        brain = np.zeros(label_raw.shape[2], dtype=bool)
        for data in volumes:
            brain |= (data != 0).any(axis=(0, 1))
        tumour = (labels > 0).any(axis=(0, 1))
        keep = select_slices(brain, tumour, p.slices, p.other_fraction)
        images = _stack_slices(volumes, keep, p.size)  # [S, C, H, W]
        del volumes
        masks = crop_or_pad(np.moveaxis(labels[..., keep], -1, 0), p.size).astype(np.uint8)
        head = brain_mask(np.moveaxis(images, 1, 0))  # [S, H, W]
        if p.normalize:
            zscore_in_place(images, head)
        geometry = SliceGeometry.for_case(label_affine @ crop_shift(label_raw.shape, p.size), keep)
        return images, masks, head, geometry

    def _build(self, tmp: Path) -> dict[str, Any]:
        cases, channels = self.plan()
        images_out: StreamingArray | None = None
        labels_out: StreamingArray | None = None
        masks_out: StreamingArray | None = None
        case_ids: list[str] = []
        geometries: list[SliceGeometry] = []
        shape: tuple[int, int] | None = None
        first_case = ""
        # cases are read in parallel (`dataset.workers`) and appended here in case order
        reads = CaseReads(_CaseReader(self, channels), cases, self.workers or default_workers(), tmp / ".cases", _case_file)
        try:
            for case, read in self.context.track(reads, f"reading {self.name}", total=len(cases)):
                images, labels, brain, geometry = read
                case_images = images.array if isinstance(images, SpilledArray) else images
                if len(case_images) == 0:
                    warnings.warn(f"case {case.case_id}: no slice selected (slices: {self.params.slices}); the case is left out.", stacklevel=2)
                    continue
                if shape is None:
                    shape, first_case = case_images.shape[2:], case.case_id
                    images_out = StreamingArray(tmp / "images.npy", np.float32, (len(channels), *shape))
                    labels_out = StreamingArray(tmp / "labels.npy", np.uint8, shape)
                    masks_out = StreamingArray(tmp / "norm_masks.npy", np.bool_, shape)
                elif case_images.shape[2:] != shape:
                    raise DataError(
                        f"case {case.case_id}: slices are {list(case_images.shape[2:])} but case {first_case} has {list(shape)}; "
                        "set 'size' to crop/pad every case to one in-plane size."
                    )
                images_out.append(images)  # type: ignore[union-attr]
                labels_out.append(labels)  # type: ignore[union-attr]
                masks_out.append(brain)  # type: ignore[union-attr]
                case_ids.extend([case.case_id] * len(case_images))
                geometries.append(geometry)
        finally:
            reads.close()
            for out in (images_out, labels_out, masks_out):
                if out is not None:
                    out.close()
        if not case_ids:
            raise DataError(f"{self.root}: no slice was selected from any case.")
        np.save(tmp / "case_ids.npy", np.asarray(case_ids, dtype=str), allow_pickle=False)
        save_geometry(tmp, SliceGeometry.concatenate(geometries))  # type: ignore[arg-type]
        if not self.params.normalize:  # normalised elsewhere: the rule and its mask are unknown
            (tmp / "norm_masks.npy").unlink()
        normalisation = ZSCORE.name if self.params.normalize else None
        digests = {out.path.name: out.digests.entry() for out in (images_out, labels_out, masks_out) if out is not None}
        return {
            "channels": list(channels), "meta": self.source_meta(), "root": str(self.root), "normalisation": normalisation,
            FILE_DIGESTS: digests,
        }


class _CaseReader:
    """``source.read_case(case, channels)`` as a picklable callable for the reading processes.

    It holds a copy of the source without its run context: progress bars stay with the
    process that appends the cases.
    """

    def __init__(self, source: VolumeSource, channels: Sequence[str]):
        self.source = copy.copy(source)
        self.source.context = RunContext()
        self.channels = list(channels)

    def __call__(self, case: CaseFiles) -> tuple[Any, ...]:
        return self.source.read_case(case, self.channels)


def _case_file(case: CaseFiles) -> str:
    """A case named by its segmentation file (or first image), for errors about the whole case."""
    path = case.label or next(iter(case.channels.values()))[0]
    return f"{path} (case {case.case_id})"


def list_nifti(folder: Path) -> list[Path]:
    """NIfTI files in ``folder`` (not recursive), skipping macOS ``._`` resource files."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_ENDINGS) and not p.name.startswith("._"))


def strip_ending(name: str) -> str:
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` or a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: missing; expected the data set's dataset.json here.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object; got {type(data).__name__}.")
    return data


def invert(mapping: dict[int, int]) -> dict[int, int]:
    """common value -> source value (first source value wins)."""
    out: dict[int, int] = {}
    for source, common in sorted(mapping.items()):
        out.setdefault(int(common), int(source))
    return out
