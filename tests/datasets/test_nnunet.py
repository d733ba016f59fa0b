"""The ``nnunet`` reader on small nnU-Net raw folders written here, BraTS and non-BraTS label names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark import ConfigError, DataError, create_dataset
from benchmark.regions import ED, ET, NCR
from test_brats import BRAIN_SLICES, CHANNEL_LEVEL, PLANTED, planted_case, save, snapshot, summary_json

NNUNET_BRATS = {0: 0, ED: 1, NCR: 2, ET: 3}  # common -> nnU-Net's BraTS conversion
NNUNET_BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


def write_nnunet(
    root: Path,
    cases: int = 3,
    to_source: dict[int, int] | None = None,
    labels: dict | None = None,
    channel_names: dict | None = None,
    ending: str = ".nii.gz",
) -> Path:
    to_source = to_source or NNUNET_BRATS
    channel_names = channel_names or {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"}
    order = [{"t1": "t1", "t1gd": "t1ce", "t2": "t2", "flair": "flair"}[n.lower()] for n in channel_names.values()]
    table = np.zeros(4, dtype=np.uint8)
    for common, value in to_source.items():
        table[common] = value
    for i in range(cases):
        volumes, common = planted_case(i)
        for c, channel in enumerate(order):
            save(root / "imagesTr" / f"case{i:03d}_{c:04d}{ending}", volumes[channel])
        save(root / "labelsTr" / f"case{i:03d}{ending}", table[common])
    spec = {
        "channel_names": channel_names,
        "labels": labels or NNUNET_BRATS_LABELS,
        "numTraining": cases,
        "file_ending": ending,
    }
    if labels is None:
        spec["regions_class_order"] = [1, 2, 3]
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_brats_regions_from_dataset_json(tmp_path, write_config, tiny_config, capsys):
    root = write_nnunet(tmp_path / "Dataset001_BraTS", 3)
    before = snapshot(root)
    summary = summary_json(write_config, tiny_config, {"name": "nnunet", "root": str(root)}, capsys)
    assert summary["cases"] == 3 and summary["slices"] == 3 * len(BRAIN_SLICES)
    assert summary["channels"] == ["t1", "t1ce", "t2", "flair"]
    assert summary["region_voxels"] == {"WT": 3 * 128, "TC": 3 * 32, "ET": 3 * 24}
    assert summary["label_voxels"] == {"0": 3 * (24 * 24 * 6 - 128), "1": 3 * PLANTED[ED], "2": 3 * PLANTED[NCR], "3": 3 * PLANTED[ET]}
    assert snapshot(root) == before


def test_single_value_brats_names(tmp_path):
    labels = {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4}
    root = write_nnunet(tmp_path / "d", 2, {0: 0, NCR: 1, ED: 2, ET: 3}, labels)
    # value 3 is written for ET but dataset.json says enhancing is 4: labels outside the convention
    with pytest.raises(DataError, match=r"case000.nii.gz: unexpected label values \[3\]"):
        create_dataset("nnunet", root=str(root)).load()
    root = write_nnunet(tmp_path / "e", 2, {0: 0, NCR: 1, ED: 2, ET: 3}, {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 3})
    data = create_dataset("nnunet", root=str(root)).load()
    assert int((np.asarray(data.labels) == NCR).sum()) == 2 * PLANTED[NCR]


def test_non_brats_label_names_need_regions(tmp_path, write_config, tiny_config, capsys):
    labels = {"background": 0, "lesion_outer": 1, "lesion_inner": 2, "lesion_bright": 3}
    root = write_nnunet(tmp_path / "Dataset002_Other", 3, {0: 0, ED: 1, NCR: 2, ET: 3}, labels,
                        channel_names={"0": "flair", "1": "T1Gd"})
    with pytest.raises(DataError, match="not BraTS's; set the nnunet parameter 'regions'"):
        create_dataset("nnunet", root=str(root)).load()
    regions = {"ET": [3], "TC": [2, 3], "WT": [1, 2, 3]}
    summary = summary_json(write_config, tiny_config, {"name": "nnunet", "root": str(root), "regions": regions}, capsys)
    assert summary["channels"] == ["flair", "t1ce"]
    assert summary["region_voxels"] == {"WT": 3 * 128, "TC": 3 * 32, "ET": 3 * 24}
    assert summary["label_voxels"]["1"] == 3 * PLANTED[ED] and summary["label_voxels"]["3"] == 3 * PLANTED[ET]
    data = create_dataset("nnunet", root=str(root), regions=regions, normalize=False).load()
    assert np.allclose(np.asarray(data.images[:, 1]).mean(), CHANNEL_LEVEL["t1ce"], atol=0.1)


def test_regions_parameter_is_validated():
    with pytest.raises(ConfigError, match="regions"):
        create_dataset("nnunet", root="x", regions={"ET": [3]})
    with pytest.raises(ConfigError, match="other_fraction"):
        create_dataset("nnunet", root="x", other_fraction=2)


@pytest.mark.parametrize(
    "labels",
    [
        # region-based, a one-value region written as a number (nnU-Net's LabelManager reads it)
        {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
        # region-based with tuples-as-lists in another order, and an ignore label above every other
        {"background": 0, "enhancing tumor": [3], "tumor core": [3, 2], "whole tumor": [3, 2, 1], "ignore": 4},
        # one label per entry, one written as a one-value list
        {"background": 0, "edema": 1, "necrotic": [2], "enhancing": 3},
    ],
    ids=["region-as-number", "ignore-label", "label-as-list"],
)
def test_every_labels_form_nnunet_reads(tmp_path, labels):
    root = write_nnunet(tmp_path / "Dataset003_Forms", 2, labels=labels)
    data = create_dataset("nnunet", root=str(root)).load()
    common = np.asarray(data.labels)
    assert [int((common == v).sum()) for v in (NCR, ED, ET)] == [2 * PLANTED[NCR], 2 * PLANTED[ED], 2 * PLANTED[ET]]


def test_ignore_voxels_read_as_background(tmp_path):
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3], "ignore": 4}
    root = write_nnunet(tmp_path / "Dataset004_Ignore", 1, to_source={0: 4, ED: 1, NCR: 2, ET: 3}, labels=labels)
    data = create_dataset("nnunet", root=str(root)).load()
    assert set(np.unique(np.asarray(data.labels)).tolist()) == {0, NCR, ED, ET}


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": "three"}, "must have an integer value"),
        ({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": []}, "lists no value"),
        ({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3, "ignore": 3}, "ignore label 3"),
    ],
)
def test_bad_labels_forms_name_the_entry(tmp_path, labels, message):
    root = write_nnunet(tmp_path / "Dataset005_Bad", 1, labels=labels)
    with pytest.raises(DataError, match=message):
        create_dataset("nnunet", root=str(root)).load()
