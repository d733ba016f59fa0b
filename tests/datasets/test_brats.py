"""The ``brats`` reader on small BraTS folders written here (2021 and 2023 naming, .nii and .nii.gz).

The helpers at the top also serve the other dataset tests (imported as ``test_brats``).
Every case is 24 × 24 × 8 voxels: brain in slices 1..6, a tumour in slices 3..4 with
exactly 96 edema, 8 necrotic-core and 24 enhancing voxels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmark import DataError, create_dataset
from benchmark.cli.main import main
from benchmark.regions import ED, ET, NCR

SHAPE = (24, 24, 8)
BRAIN_SLICES = range(1, 7)
TUMOUR_SLICES = (3, 4)
PLANTED = {NCR: 8, ED: 96, ET: 24}  # common value -> voxels per case
CHANNEL_LEVEL = {"t1": 10.0, "t1ce": 20.0, "t2": 30.0, "flair": 40.0}  # raw brain intensity per channel

NAMING = {
    "2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
TO_SOURCE = {"2021": {0: 0, NCR: 1, ED: 2, ET: 4}, "2023": {0: 0, NCR: 1, ED: 2, ET: 3}, "msd": {0: 0, NCR: 2, ED: 1, ET: 3}}


def planted_case(index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Channel volumes (raw intensities) and common labels of case ``index``."""
    rng = np.random.default_rng(index)
    volumes = {}
    for channel, level in CHANNEL_LEVEL.items():
        volume = np.zeros(SHAPE, dtype=np.float32)
        volume[:, :, BRAIN_SLICES.start : BRAIN_SLICES.stop] = level + rng.uniform(-2, 2, (24, 24, 6))
        volumes[channel] = volume
    labels = np.zeros(SHAPE, dtype=np.uint8)
    x, y = 4 + index % 4, 6 + index % 3  # move the tumour a little per case
    z = slice(TUMOUR_SLICES[0], TUMOUR_SLICES[-1] + 1)
    labels[x : x + 8, y : y + 8, z] = ED
    labels[x + 2 : x + 6, y + 2 : y + 6, z] = ET
    labels[x + 3 : x + 5, y + 3 : y + 5, z] = NCR
    return volumes, labels


def source_labels(labels: np.ndarray, convention: str) -> np.ndarray:
    table = np.zeros(4, dtype=np.uint8)
    for common, value in TO_SOURCE[convention].items():
        table[common] = value
    return table[labels]


def save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def write_brats(root: Path, cases: int = 3, naming: str = "2021", ending: str = ".nii.gz") -> Path:
    """A BraTS folder of ``cases`` planted cases."""
    for i in range(cases):
        case = f"BraTS2021_{i:05d}" if naming == "2021" else f"BraTS-GLI-{i:05d}-000"
        volumes, labels = planted_case(i)
        for channel, volume in volumes.items():
            save(root / case / f"{case}{NAMING[naming][channel]}{ending}", volume)
        save(root / case / f"{case}{NAMING[naming]['seg']}{ending}", source_labels(labels, naming))
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def config_for(dataset: dict, tiny_config: dict) -> dict:
    return {**tiny_config, "dataset": dataset}


def summary_json(write_config, tiny_config: dict, dataset: dict, capsys) -> dict:
    path = write_config(config_for(dataset, tiny_config))
    capsys.readouterr()
    assert main(["data", "summary", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# -- tests -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "naming, ending, et_value",
    [("2021", ".nii.gz", "4"), ("2021", ".nii", "4"), ("2023", ".nii.gz", "3"), ("2023", ".nii", "3")],
)
def test_summary_counts_equal_what_was_planted(tmp_path, write_config, tiny_config, capsys, naming, ending, et_value):
    root = write_brats(tmp_path / "data", 3, naming, ending)
    summary = summary_json(write_config, tiny_config, {"name": "brats", "root": str(root)}, capsys)
    assert summary["cases"] == 3
    assert summary["slices"] == 3 * len(BRAIN_SLICES)
    assert summary["channels"] == ["t1", "t1ce", "t2", "flair"]
    assert summary["shape"] == [24, 24]
    assert summary["region_voxels"] == {"WT": 3 * 128, "TC": 3 * 32, "ET": 3 * 24}
    labels = summary["label_voxels"]
    assert labels["1"] == 3 * PLANTED[NCR] and labels["2"] == 3 * PLANTED[ED] and labels[et_value] == 3 * PLANTED[ET]
    assert set(labels) == {"0", "1", "2", et_value}


def test_arrays_channels_and_zscore(tmp_path):
    root = write_brats(tmp_path / "data", 2, "2023")
    data = create_dataset("brats", root=str(root)).load()
    assert data.images.dtype == np.float32 and data.labels.dtype == np.uint8
    assert data.cases == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert data.meta["source_labels"] == {0: 0, NCR: 1, ED: 2, ET: 3}
    case = np.asarray(data.images[data.case_ids == data.cases[0]])  # [6, 4, 24, 24]
    for c in range(4):
        values = case[:, c][case[:, c] != 0]
        assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-3
    raw = create_dataset("brats", root=str(root), normalize=False, modalities=["FLAIR", "t1c"]).load()
    assert raw.channels == ("flair", "t1ce")
    assert np.allclose(np.asarray(raw.images[:, 0]).mean(), CHANNEL_LEVEL["flair"], atol=0.1)
    assert np.allclose(np.asarray(raw.images[:, 1]).mean(), CHANNEL_LEVEL["t1ce"], atol=0.1)
    volumes, labels = planted_case(1)
    index = np.flatnonzero(raw.case_ids == raw.cases[1])
    assert np.array_equal(np.asarray(raw.labels[index]), np.moveaxis(labels[:, :, 1:7], -1, 0))
    assert np.allclose(np.asarray(raw.images[index, 0]), np.moveaxis(volumes["flair"][:, :, 1:7], -1, 0))


def test_memory_mapped_and_cached_by_folder_state(tmp_path):
    root = write_brats(tmp_path / "data", 2)
    source = create_dataset("brats", root=str(root))
    first = source.fingerprint()
    data = source.load()
    assert isinstance(data.images, np.memmap) or isinstance(getattr(data.images, "base", None), np.memmap)
    assert create_dataset("brats", root=str(root)).fingerprint() == first
    assert create_dataset("brats", root=str(root), size=16).fingerprint() != first
    seg = root / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 10**9))
    assert create_dataset("brats", root=str(root)).fingerprint() != first


def test_nothing_is_written_into_the_data_folder(tmp_path, write_config, tiny_config, capsys):
    root = write_brats(tmp_path / "data", 3)
    before = snapshot(root)
    create_dataset("brats", root=str(root), slices="tumour").load()
    summary_json(write_config, tiny_config, {"name": "brats", "root": str(root)}, capsys)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "params, slices, shape",
    [
        ({"slices": "tumour"}, 2, (24, 24)),
        ({"slices": "tumour", "other_fraction": 1.0}, 6, (24, 24)),
        ({"slices": "tumour", "other_fraction": 0.5}, 4, (24, 24)),
        ({"size": 16}, 6, (16, 16)),
        ({"size": 32}, 6, (32, 32)),
    ],
)
def test_slice_selection_and_size(tmp_path, params, slices, shape):
    root = write_brats(tmp_path / "data", 2)
    data = create_dataset("brats", root=str(root), **params).load()
    assert len(data) == 2 * slices
    assert data.shape == shape
    if params.get("size") == 32:  # padding keeps every label voxel
        assert int((np.asarray(data.labels) == ET).sum()) == 2 * PLANTED[ET]


def test_max_cases_and_modalities(tmp_path):
    root = write_brats(tmp_path / "data", 3)
    data = create_dataset("brats", root=str(root), max_cases=2, modalities=["t1ce"]).load()
    assert data.cases == ["BraTS2021_00000", "BraTS2021_00001"] and data.channels == ("t1ce",)


def test_forced_convention(tmp_path):
    """2021 file names holding 2023 label values (ET = 3) read with convention: '2023'."""
    root = tmp_path / "data"
    volumes, labels = planted_case(0)
    for channel, volume in volumes.items():
        save(root / "c0" / f"c0{NAMING['2021'][channel]}.nii.gz", volume)
    save(root / "c0" / "c0_seg.nii.gz", source_labels(labels, "2023"))
    with pytest.raises(DataError, match=r"c0_seg.nii.gz.*unexpected label values \[3\].*convention: '2023'"):
        create_dataset("brats", root=str(root)).load()
    data = create_dataset("brats", root=str(root), convention="2023").load()
    assert int((np.asarray(data.labels) == ET).sum()) == PLANTED[ET]
    assert data.meta["source_labels"][ET] == 3
