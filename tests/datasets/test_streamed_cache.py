"""The reader cache as it is streamed: arrays copied file to file from the reading
processes, recorded by block digests, verified on load, and the fast per-case steps
(label values, z-score in place) equal to the plain ones."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmark import DataError, create_dataset
from benchmark.cache import BlockDigests, FILE_DIGESTS, build_artifact
from benchmark.datasets import _parallel as parallel
from benchmark.datasets._parallel import SPILL_BYTES
from benchmark.datasets._volumes import copy_bytes, zscore_in_place
from benchmark.normalisation import ZSCORE
from benchmark.regions import BRATS_2021_TO_COMMON, to_common_labels

SHAPE = (64, 64, 20)  # large enough that each case's arrays travel through scratch files
SUFFIXES = ("t1", "t1ce", "t2", "flair")


def write_cases(root: Path, cases: int) -> Path:
    """BraTS-named cases of int16 volumes with a ball-shaped glioma."""
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    brain = ((x - 32) / 26) ** 2 + ((y - 32) / 28) ** 2 + ((z - 10) / 12) ** 2 < 1
    for i in range(cases):
        case = f"BraTS2021_{i:05d}"
        distance = np.sqrt((x - 28 - i) ** 2 + (y - 30) ** 2 + (z - 10) ** 2)
        labels = np.zeros(SHAPE, np.uint8)
        labels[brain & (distance < 9)] = 2
        labels[brain & (distance < 6)] = 4
        labels[brain & (distance < 3)] = 1
        folder = root / case
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(folder / f"{case}_seg.nii.gz"))
        for k, suffix in enumerate(SUFFIXES):
            volume = np.where(brain, 400 + 100 * k + 50 * labels.astype(np.float32) + rng.normal(0, 10, SHAPE), 0).astype(np.int16)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / f"{case}_{suffix}.nii.gz"))
    return root


def build(root: Path, cache: Path, monkeypatch, workers: int):
    monkeypatch.setenv("POISONBENCH_CACHE", str(cache))
    source = create_dataset("brats", root=str(root))
    source.workers = workers
    data = source.load()
    return data, cache / "datasets" / f"brats-{source.fingerprint()}"


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    return write_cases(tmp_path_factory.mktemp("streamed") / "brats", 3)


def test_scratch_files_copied_into_the_cache_give_the_same_bytes_and_digests(cases, tmp_path, monkeypatch):
    one, one_folder = build(cases, tmp_path / "one", monkeypatch, 1)
    assert np.asarray(one.images)[: len(one.images) // 3].nbytes >= SPILL_BYTES  # the parallel build spills
    two, two_folder = build(cases, tmp_path / "two", monkeypatch, 2)
    for name in ("images.npy", "labels.npy", "norm_masks.npy", "case_ids.npy"):
        assert (one_folder / name).read_bytes() == (two_folder / name).read_bytes(), name
    manifests = [json.loads((folder / "manifest.json").read_text())["files"] for folder in (one_folder, two_folder)]
    assert manifests[0] == manifests[1]  # digests taken by the workers equal those taken here
    images = manifests[1]["images.npy"]
    assert "blocks" in images and len(images["blocks"]) == 3 + 1  # one block per case, plus the header
    # a sound streamed artifact loads without being rebuilt
    stamp = (two_folder / "images.npy").stat().st_mtime_ns
    build(cases, tmp_path / "two", monkeypatch, 2)
    assert (two_folder / "images.npy").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("refused", [["copy_file_range"], ["copy_file_range", "sendfile"]])
def test_copy_without_the_kernel_calls_it_lacks(cases, tmp_path, monkeypatch, refused):
    _, reference = build(cases, tmp_path / "kernel", monkeypatch, 2)

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    for name in refused:
        monkeypatch.setattr(os, name, refuse, raising=False)
    _, copied = build(cases, tmp_path / "copied", monkeypatch, 2)
    assert (reference / "images.npy").read_bytes() == (copied / "images.npy").read_bytes()


def test_scratch_on_disk_where_there_is_no_shared_memory(cases, tmp_path, monkeypatch):
    _, reference = build(cases, tmp_path / "shared", monkeypatch, 2)
    monkeypatch.setattr(parallel, "SHARED_MEMORY", tmp_path / "no-shm")
    _, on_disk = build(cases, tmp_path / "disk", monkeypatch, 2)
    assert (reference / "images.npy").read_bytes() == (on_disk / "images.npy").read_bytes()


def test_a_full_scratch_folder_falls_back_to_the_next(tmp_path):
    array = np.arange(10.0)
    used = parallel._save(array, [str(tmp_path / "missing" / "0-0.npy"), str(tmp_path / "0-0.npy")])
    assert used == str(tmp_path / "0-0.npy")
    np.testing.assert_array_equal(np.load(used), array)


def test_shared_scratch_of_a_killed_driver_is_removed_and_ours_too(cases, tmp_path, monkeypatch):
    shared = tmp_path / "shm"
    shared.mkdir()
    monkeypatch.setattr(parallel, "SHARED_MEMORY", shared)
    monkeypatch.setattr(parallel, "SHARED_MEMORY_ROOM", 0)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = shared / f"poisonbench-cases-{int(finished.stdout)}-x1"
    live = shared / f"poisonbench-cases-{os.getppid()}-x2"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "0-0.npy").write_bytes(b"left over")
    made: list[Path | None] = []
    real = parallel._shared_scratch
    monkeypatch.setattr(parallel, "_shared_scratch", lambda: made.append(real()) or made[-1])
    build(cases, tmp_path / "cache", monkeypatch, 2)
    assert made and made[0] is not None and made[0].parent == shared  # the build's scratch was in shared memory ...
    assert not made[0].exists()  # ... and is gone
    assert not stale.exists() and live.exists()  # a running process's folder is left alone


def test_copy_bytes_finishes_a_partial_kernel_copy(tmp_path, monkeypatch):
    source, target = tmp_path / "source.bin", tmp_path / "target.bin"
    payload = os.urandom(10_000)
    source.write_bytes(b"H" * 16 + payload)
    target.write_bytes(b"T" * 8)
    real = os.copy_file_range

    def at_most_a_kilobyte(src, dst, count, offset_src=None, offset_dst=None):
        return real(src, dst, min(count, 1000), offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", at_most_a_kilobyte)
    with open(source, "rb") as src, open(target, "r+b") as dst:
        copy_bytes(src, dst, 16, 8, len(payload))
    assert target.read_bytes() == b"T" * 8 + payload


def test_copy_bytes_names_a_scratch_file_that_ends_early(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    source = tmp_path / "0-0.npy"
    source.write_bytes(b"x" * 10)
    with open(source, "rb") as src, open(tmp_path / "target.bin", "wb") as dst:
        with pytest.raises(DataError, match=r"0-0\.npy: ended 90 bytes early"):
            copy_bytes(src, dst, 0, 0, 100)


def test_an_altered_block_of_a_streamed_array_is_found_and_rebuilt(cases, tmp_path, monkeypatch, caplog):
    first, folder = build(cases, tmp_path / "cache", monkeypatch, 2)
    expected = np.array(first.images)
    del first
    images = folder / "images.npy"
    data = bytearray(images.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the second case's block
    images.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again, _ = build(cases, tmp_path / "cache", monkeypatch, 2)
    assert "corrupt and will be rebuilt" in caplog.text and "recorded SHA-256 of bytes" in caplog.text
    np.testing.assert_array_equal(np.asarray(again.images), expected)


def test_block_digests_that_do_not_cover_the_file_are_not_trusted(tmp_path):
    def write(folder: Path) -> dict:
        (folder / "data.bin").write_bytes(b"a" * 100)
        partial = BlockDigests()
        partial.add(0, b"a" * 60)  # 40 bytes left out
        return {FILE_DIGESTS: {"data.bin": partial.entry()}}

    folder = build_artifact(tmp_path / "artifact", write)
    entry = json.loads((folder / "manifest.json").read_text())["files"]["data.bin"]
    assert "sha256" in entry and "blocks" not in entry and entry["size"] == 100
    assert FILE_DIGESTS not in json.loads((folder / "manifest.json").read_text())


def test_zscore_in_place_equals_the_zscore_rule():
    rng = np.random.default_rng(3)
    images = rng.normal(50, 20, (5, 3, 16, 16)).astype(np.float32)
    images[:, :, :4] = 0  # background in every channel
    images[1, 2, 8, 8] = 0  # a zero inside the brain of one channel
    images[2] = 0  # a slice without brain
    mask = (images != 0).any(axis=1)
    expected = np.stack([np.where(mask, ZSCORE.normalise(images[:, c], mask), np.float32(0)) for c in range(3)], axis=1)
    zscore_in_place(images, mask)
    assert images.tobytes() == expected.astype(np.float32).tobytes()
    empty = np.zeros((2, 2, 4, 4), np.float32)
    zscore_in_place(empty, np.zeros((2, 4, 4), bool))
    assert not empty.any()


def test_a_float_source_with_negative_zero_stores_positive_zero(tmp_path, monkeypatch):
    root = write_cases(tmp_path / "brats", 1)
    for path in root.rglob("*_t2.nii.gz"):
        volume = np.asarray(nib.load(str(path)).dataobj).astype(np.float32)
        volume[volume == 0] = -0.0
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    data, _ = build(root, tmp_path / "cache", monkeypatch, 1)
    assert not np.signbit(np.asarray(data.images)[np.asarray(data.images) == 0]).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_label_values_are_checked_whatever_their_range(dtype):
    labels = np.zeros((4, 4, 3), dtype)
    labels[0, 0, 0], labels[1, 1, 1] = 4, 2
    np.testing.assert_array_equal(np.unique(to_common_labels(labels, BRATS_2021_TO_COMMON, "seg.nii.gz")), [0, 2, 3])
    labels[2, 2, 2] = 3  # inside the narrow range, not a BraTS 2021 value
    with pytest.raises(DataError, match=r"seg\.nii\.gz: unexpected label values \[3\]"):
        to_common_labels(labels, BRATS_2021_TO_COMMON, "seg.nii.gz")
    if np.iinfo(dtype).max >= 100:
        labels[2, 2, 2] = 100  # a wide range takes the sorting path
        with pytest.raises(DataError, match=r"unexpected label values \[100\]"):
            to_common_labels(labels, BRATS_2021_TO_COMMON, "seg.nii.gz")
    if np.iinfo(dtype).min < 0:
        labels[2, 2, 2] = -1
        with pytest.raises(DataError, match=r"unexpected label values \[-1\]"):
            to_common_labels(labels, BRATS_2021_TO_COMMON, "seg.nii.gz")
