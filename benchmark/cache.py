"""On-disk cache of expensive artifacts (generated data sets, trained generators).

Artifacts live under ``$POISONBENCH_CACHE`` (default: the per-user cache folder) in
``<kind>/<key>/``. A folder is written under a temporary name and renamed into place
when complete, so a crash never leaves a half-written artifact under its real name; a
``manifest.json`` records the SHA-256 and size of every file, and an artifact whose
files do not match is reported and rebuilt, never loaded silently.

A file written block by block (a data set's arrays, streamed case after case) may be
recorded as the SHA-256 of each of its consecutive byte ranges instead (`BlockDigests`),
computed while it is written: the builder then does not read a large file back whole
after writing it, which would be a serial pass at the end of an otherwise parallel build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import BenchError
from .geometry import SliceGeometry
from .normalisation import normalisation_named
from .paths import CACHE_ENV, cache_root
from .sliceset import SliceSet, meta_from_json

__all__ = [
    "CACHE_ENV", "SLICESET_FORMAT", "cache_root", "artifact_dir", "build_artifact", "load_sliceset", "save_sliceset",
    "save_geometry", "load_geometry",
    "cached_sliceset", "sha256_file", "BlockDigests", "FILE_DIGESTS",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Layout of a cached SliceSet, recorded in its manifest: a cache written in another
#: layout (1: before normalisation masks and rule were stored; 2: before slice geometry
#: was stored) is rebuilt, not misread.
SLICESET_FORMAT = 3


def artifact_dir(kind: str, key: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / kind / key


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# files above this size are verified on load by a sampled digest (64 spread 1-MiB blocks
# plus the size) rather than a full SHA-256, so a 100 GB cache opens in seconds
FULL_HASH_LIMIT = 1 << 30
_SAMPLE_BLOCKS, _BLOCK = 64, 1 << 20


def sample_sha256(path: Path) -> str:
    """SHA-256 of ``_SAMPLE_BLOCKS`` evenly spread blocks of a file and its size."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for i in range(_SAMPLE_BLOCKS):
            handle.seek(max(0, (size - _BLOCK) * i // (_SAMPLE_BLOCKS - 1)))
            digest.update(handle.read(_BLOCK))
    return digest.hexdigest()


#: Key of the manifest fields a builder returns for files it digested itself (`BlockDigests.entry`).
FILE_DIGESTS = "file_digests"


class BlockDigests:
    """SHA-256 of a file's consecutive byte ranges, taken from the bytes as they are written.

    Record each range with `add` (in any order); `entry` gives the manifest entry, which
    `build_artifact` accepts through `FILE_DIGESTS` when the ranges cover the file exactly.
    """

    def __init__(self) -> None:
        self.blocks: list[tuple[int, int, str]] = []

    def add(self, start: int, data: bytes | memoryview) -> None:
        if len(data):
            self.blocks.append((int(start), len(data), hashlib.sha256(data).hexdigest()))

    def add_known(self, start: int, length: int, sha256: str) -> None:
        """Record a range whose digest was taken elsewhere (by the process that produced the bytes)."""
        if length:
            self.blocks.append((int(start), int(length), sha256))

    def entry(self) -> dict[str, Any]:
        blocks = sorted(self.blocks)
        return {"size": sum(length for _, length, _ in blocks), "blocks": [list(block) for block in blocks]}


def _blocks_problem(path: Path, blocks: list) -> str | None:
    """None when the recorded byte ranges cover ``path`` contiguously and each matches its SHA-256."""
    position = 0
    with open(path, "rb") as handle:
        for start, length, digest in blocks:
            if start != position:
                return f"{path}: its manifest's byte ranges do not cover the file contiguously (gap at byte {position})"
            handle.seek(start)
            hasher = hashlib.sha256()
            left = length
            while left > 0:
                chunk = handle.read(min(left, 1 << 20))
                if not chunk:
                    break
                hasher.update(chunk)
                left -= len(chunk)
            if left or hasher.hexdigest() != digest:
                return f"{path} does not match its recorded SHA-256 of bytes {start}..{start + length}"
            position = start + length
    return None


def _covers(blocks: list, size: int) -> bool:
    """Whether byte ranges ``[start, length, digest]`` follow each other from 0 to ``size``."""
    position = 0
    for start, length, _ in blocks:
        if start != position:
            return False
        position += length
    return position == size and bool(blocks)


def _file_entry(path: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest entry of ``path``: its SHA-256 and size, or ``known`` block digests when they cover it."""
    size = path.stat().st_size
    if known is not None and _covers(known.get("blocks") or [], size):
        entry: dict[str, Any] = {"size": size, "blocks": known["blocks"]}
    else:
        entry = {"sha256": sha256_file(path), "size": size}
    if size > FULL_HASH_LIMIT:
        entry["sample_sha256"] = sample_sha256(path)
    return entry


def _verify(folder: Path) -> str | None:
    """None when every file matches the manifest, otherwise what is wrong."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{manifest_path} is missing or unreadable ({exc})"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{path} has {path.stat().st_size} bytes; the manifest says {entry['size']}"
        if "sample_sha256" in entry:
            if sample_sha256(path) != entry["sample_sha256"]:
                return f"{path} does not match its recorded (sampled) SHA-256"
        elif "blocks" in entry:
            problem = _blocks_problem(path, entry["blocks"])
            if problem is not None:
                return problem
        elif sha256_file(path) != entry["sha256"]:
            return f"{path} does not match its recorded SHA-256"
    return None


def build_artifact(folder: Path, write: Callable[[Path], dict[str, Any] | None]) -> Path:
    """Return a verified artifact folder, building it with ``write(tmp_folder)`` if needed.

    ``write`` fills the temporary folder and may return extra manifest fields; under
    `FILE_DIGESTS` it may give the entries of files it digested while writing them
    (`BlockDigests.entry`), which are used, not recomputed, when they cover the file. A
    corrupt existing artifact is reported and rebuilt.
    """
    if folder.exists():
        problem = _verify(folder)
        if problem is None:
            return folder
        logger.warning("cached artifact is corrupt and will be rebuilt: %s", problem)
        shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        raise BenchError(f"cannot write to the cache folder {folder.parent}: {exc.strerror or exc}") from None
    try:
        extra = dict(write(tmp) or {})
        known = extra.pop(FILE_DIGESTS, {})
        files = {p.name: _file_entry(p, known.get(p.name)) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"files": files, **extra}, indent=1, sort_keys=True))
        try:
            os.replace(tmp, folder)
        except OSError:
            if _verify(folder) is not None:  # another process won the race with a bad copy
                raise
    except OSError as exc:
        raise BenchError(f"cannot write the cached artifact {folder}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def save_sliceset(folder: Path, data: SliceSet) -> dict[str, Any]:
    """Write a SliceSet as ``.npy`` files (memory-mappable) plus its channels, meta and normalisation."""
    for name in ("images", "labels", "case_ids", "poisoned"):
        np.save(folder / f"{name}.npy", np.asarray(getattr(data, name)), allow_pickle=False)
    if data.norm_masks is not None:
        np.save(folder / "norm_masks.npy", np.asarray(data.norm_masks, dtype=bool), allow_pickle=False)
    if data.geometry is not None:
        save_geometry(folder, data.geometry)
    return {
        "format": SLICESET_FORMAT,
        "channels": list(data.channels),
        "meta": data.meta,
        "normalisation": data.normalisation.name if data.normalisation is not None else None,
    }


def load_sliceset(folder: Path, mmap: bool = True) -> SliceSet:
    """Read a SliceSet written by `save_sliceset`; images and normalisation masks are memory-mapped by default."""
    manifest = json.loads((folder / MANIFEST).read_text())
    mapped = ("images", "norm_masks")
    arrays = {
        name: np.load(folder / f"{name}.npy", mmap_mode="r" if mmap and name in mapped else None, allow_pickle=False)
        for name in ("images", "labels", "case_ids", "poisoned", "norm_masks")
        if name != "norm_masks" or (folder / "norm_masks.npy").is_file()
    }
    meta = meta_from_json(manifest.get("meta", {}))
    return SliceSet(
        channels=tuple(manifest["channels"]), meta=meta, normalisation=normalisation_named(manifest.get("normalisation")),
        geometry=load_geometry(folder), **arrays
    )


def save_geometry(folder: Path, geometry: SliceGeometry) -> None:
    """Write a slice set's geometry as ``slice_affines.npy`` and ``slice_index.npy``."""
    np.save(folder / "slice_affines.npy", np.asarray(geometry.affines, dtype=np.float64), allow_pickle=False)
    np.save(folder / "slice_index.npy", np.asarray(geometry.index, dtype=np.int64), allow_pickle=False)


def load_geometry(folder: Path) -> SliceGeometry | None:
    """The geometry `save_geometry` wrote in ``folder``, or None when there is none."""
    if not (folder / "slice_affines.npy").is_file():
        return None
    return SliceGeometry(
        np.load(folder / "slice_affines.npy", allow_pickle=False), np.load(folder / "slice_index.npy", allow_pickle=False)
    )


def cached_sliceset(kind: str, key: str, build: Callable[[], SliceSet], mmap: bool = True) -> SliceSet:
    """Load the SliceSet cached as ``kind/key``, building and caching it first if needed.

    An artifact written in another layout than `SLICESET_FORMAT` is rebuilt, never misread.
    """
    folder = artifact_dir(kind, key)
    write = lambda tmp: save_sliceset(tmp, build())  # noqa: E731
    folder = build_artifact(folder, write)
    stored = _manifest_field(folder, "format")
    if stored != SLICESET_FORMAT:
        logger.warning("cached data set %s has layout %s, not %s; it is rebuilt", folder, stored, SLICESET_FORMAT)
        shutil.rmtree(folder, ignore_errors=True)
        folder = build_artifact(folder, write)
    return load_sliceset(folder, mmap=mmap)


def _manifest_field(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / MANIFEST).read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None
