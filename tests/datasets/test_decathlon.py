"""The ``decathlon`` reader on a small MSD Task01_BrainTumour folder (4-D images) written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark import create_dataset
from benchmark.regions import ED, ET, NCR
from test_brats import BRAIN_SLICES, CHANNEL_LEVEL, PLANTED, planted_case, save, snapshot, source_labels, summary_json

MSD_ORDER = ("flair", "t1", "t1ce", "t2")  # FLAIR, T1w, T1gd, T2w
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def write_msd(root: Path, cases: int = 3, ending: str = ".nii.gz") -> Path:
    training = []
    for i in range(cases):
        name = f"BRATS_{i + 1:03d}"
        volumes, labels = planted_case(i)
        save(root / "imagesTr" / f"{name}{ending}", np.stack([volumes[c] for c in MSD_ORDER], axis=-1))
        save(root / "labelsTr" / f"{name}{ending}", source_labels(labels, "msd"))
        training.append({"image": f"./imagesTr/{name}{ending}", "label": f"./labelsTr/{name}{ending}"})
    spec = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": MSD_LABELS,
        "numTraining": cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork, as in the MSD tarball
    return root


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_summary_counts_in_msd_values(tmp_path, write_config, tiny_config, capsys, ending):
    root = write_msd(tmp_path / "Task01_BrainTumour", 3, ending)
    before = snapshot(root)
    summary = summary_json(write_config, tiny_config, {"name": "decathlon", "root": str(root)}, capsys)
    assert summary["cases"] == 3 and summary["slices"] == 3 * len(BRAIN_SLICES)
    assert summary["channels"] == list(MSD_ORDER)
    assert summary["region_voxels"] == {"WT": 3 * 128, "TC": 3 * 32, "ET": 3 * 24}
    # MSD values: 1 edema, 2 non-enhancing, 3 enhancing
    assert summary["label_voxels"]["1"] == 3 * PLANTED[ED]
    assert summary["label_voxels"]["2"] == 3 * PLANTED[NCR]
    assert summary["label_voxels"]["3"] == 3 * PLANTED[ET]
    assert snapshot(root) == before


def test_4d_channels_are_named_and_split(tmp_path):
    root = write_msd(tmp_path / "Task01_BrainTumour", 2)
    data = create_dataset("decathlon", root=str(root), normalize=False, modalities=["t1ce", "flair"]).load()
    assert data.channels == ("t1ce", "flair")
    assert data.cases == ["BRATS_001", "BRATS_002"]
    assert np.allclose(np.asarray(data.images[:, 0]).mean(), CHANNEL_LEVEL["t1ce"], atol=0.1)
    assert np.allclose(np.asarray(data.images[:, 1]).mean(), CHANNEL_LEVEL["flair"], atol=0.1)
    _, labels = planted_case(0)
    assert np.array_equal(np.asarray(data.labels[data.case_ids == "BRATS_001"]), np.moveaxis(labels[:, :, 1:7], -1, 0))
    assert data.meta["source_labels"] == {0: 0, ED: 1, NCR: 2, ET: 3}
