"""Bad input to the NIfTI readers: a clear DataError naming the file (or a warning where skipping is sane)."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from benchmark import DataError, create_dataset
from benchmark.cli.main import main
from test_brats import NAMING, planted_case, save, snapshot, write_brats
from test_decathlon import write_msd
from test_nnunet import write_nnunet


def load(name: str, root, **params):
    return create_dataset(name, root=str(root), **params).load()


def case_file(root, i: int, kind: str):
    case = f"BraTS2021_{i:05d}"
    return root / case / f"{case}{NAMING['2021'][kind]}.nii.gz"


def test_missing_modality_file(tmp_path):
    root = write_brats(tmp_path / "d", 2)
    case_file(root, 1, "t1ce").unlink()
    with pytest.raises(DataError, match=r"BraTS2021_00001_t1ce.nii.gz: missing t1ce image of case BraTS2021_00001"):
        load("brats", root)
    assert len(load("brats", root, modalities=["flair"]).cases) == 2  # t1ce not asked for


def test_missing_segmentation_is_skipped_with_a_warning_or_an_error(tmp_path):
    root = write_brats(tmp_path / "d", 3)
    case_file(root, 1, "seg").unlink()
    with pytest.warns(UserWarning, match="case BraTS2021_00001: no segmentation"):
        data = load("brats", root)
    assert data.cases == ["BraTS2021_00000", "BraTS2021_00002"]
    with pytest.raises(DataError, match="BraTS2021_00001_seg.nii.gz is missing"):
        load("brats", root, missing_segmentation="error")


def test_shape_mismatch(tmp_path):
    root = write_brats(tmp_path / "d", 1)
    volumes, _ = planted_case(0)
    save(case_file(root, 0, "t2"), volumes["t2"][:, :20])
    with pytest.raises(DataError, match=r"BraTS2021_00000_t2.nii.gz: t2 image of case BraTS2021_00000 has shape \(24, 20, 8\).*must match"):
        load("brats", root)


def test_affine_mismatch_beyond_tolerance(tmp_path):
    root = write_brats(tmp_path / "d", 1)
    volumes, _ = planted_case(0)
    shifted = np.eye(4)
    shifted[0, 3] = 0.0001
    save(case_file(root, 0, "flair"), volumes["flair"], shifted)
    load("brats", root)  # within the default tolerance
    shifted[0, 3] = 2.0
    save(case_file(root, 0, "flair"), volumes["flair"], shifted)
    with pytest.raises(DataError, match=r"BraTS2021_00000_flair.nii.gz: affine differs .* by 2 .*not co-registered"):
        load("brats", root)
    load("brats", root, affine_tolerance=5.0)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_or_truncated_nifti(tmp_path, damage):
    root = write_brats(tmp_path / "d", 1)
    path = case_file(root, 0, "t1")
    if damage == "garbage":
        path.write_bytes(b"this is not a NIfTI file at all" * 20)
    elif damage == "truncated":
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError, match=r"BraTS2021_00000_t1.nii.gz: cannot read this t1 image of case BraTS2021_00000"):
        load("brats", root)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, bad):
    root = write_brats(tmp_path / "d", 1)
    volumes, _ = planted_case(0)
    volumes["t1ce"][3, 3, 3] = bad
    save(case_file(root, 0, "t1ce"), volumes["t1ce"])
    with pytest.raises(DataError, match=r"BraTS2021_00000_t1ce.nii.gz: t1ce image .* 1 NaN or infinite voxels"):
        load("brats", root)


@pytest.mark.parametrize("value", [3, 7])
def test_label_values_outside_the_convention(tmp_path, value):
    root = write_brats(tmp_path / "d", 1)
    _, labels = planted_case(0)
    seg = np.where(labels == 3, 4, labels).astype(np.uint8)
    seg[0, 0, 0] = value
    save(case_file(root, 0, "seg"), seg)
    with pytest.raises(DataError, match=rf"BraTS2021_00000_seg.nii.gz: unexpected label values \[{value}\]; expected only \[0, 1, 2, 4\]"):
        load("brats", root)


def test_non_integer_labels(tmp_path):
    root = write_brats(tmp_path / "d", 1)
    save(case_file(root, 0, "seg"), np.full((24, 24, 8), 0.5, dtype=np.float32))
    with pytest.raises(DataError, match="BraTS2021_00000_seg.nii.gz: .* integer label values"):
        load("brats", root)


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for name in ("brats", "decathlon", "nnunet"):
        with pytest.raises(DataError, match=r"empty|missing|no "):
            load(name, tmp_path / "empty")
        with pytest.raises(DataError, match="does not exist"):
            load(name, tmp_path / "nowhere")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme").mkdir()
    with pytest.raises(DataError, match="no BraTS files found"):
        load("brats", tmp_path / "notes")


def test_decathlon_dataset_json_disagrees_with_files(tmp_path):
    root = write_msd(tmp_path / "t", 2)
    spec = json.loads((root / "dataset.json").read_text())
    (root / "imagesTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(DataError, match=r"BRATS_002.nii.gz: listed in .*dataset.json \(training\[1\]\) but not found"):
        load("decathlon", root)
    root = write_msd(tmp_path / "u", 3)
    (root / "dataset.json").write_text(json.dumps({**spec, "training": spec["training"][:2]}))
    with pytest.raises(DataError, match=r"numTraining is 2 but 'training' lists 2|1 image\(s\) not listed in 'training'"):
        load("decathlon", root)
    spec3 = json.loads((write_msd(tmp_path / "v", 2) / "dataset.json").read_text())
    (tmp_path / "v" / "dataset.json").write_text(json.dumps({**spec3, "numTraining": 5}))
    with pytest.raises(DataError, match="numTraining is 5 but 'training' lists 2 cases"):
        load("decathlon", tmp_path / "v")
    (tmp_path / "v" / "dataset.json").write_text(json.dumps({**spec3, "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w", "4": "CT"}}))
    with pytest.raises(DataError, match=r"BRATS_001.nii.gz: expected a 4-D image with at least 5 volumes \(channel ct\)"):
        load("decathlon", tmp_path / "v")
    (tmp_path / "v" / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json: not valid JSON"):
        load("decathlon", tmp_path / "v")


def test_nnunet_dataset_json_disagrees_with_files(tmp_path):
    root = write_nnunet(tmp_path / "a", 2)
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "numTraining": 3}))
    with pytest.raises(DataError, match=r"numTraining is 3 but .*imagesTr holds 2 cases"):
        load("nnunet", root)
    root = write_nnunet(tmp_path / "b", 2)
    (root / "imagesTr" / "case001_0002.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case001_0002.nii.gz: missing t2 image of case case001"):
        load("nnunet", root)
    root = write_nnunet(tmp_path / "c", 2)
    shutil.copy(root / "imagesTr" / "case000_0000.nii.gz", root / "imagesTr" / "case000_0004.nii.gz")
    with pytest.raises(DataError, match=r"case000_0004.nii.gz: channel 0004 is not in dataset.json's channel_names"):
        load("nnunet", root)
    root = write_nnunet(tmp_path / "d", 2)
    (root / "dataset.json").write_text(json.dumps({**spec, "file_ending": ".nii"}))
    with pytest.raises(DataError, match=r"case000_0000.nii.gz: not named \{case\}_XXXX.nii"):
        load("nnunet", root)
    (root / "dataset.json").write_text(json.dumps({**spec, "file_ending": ".png"}))
    with pytest.raises(DataError, match="file_ending '.png' is not supported"):
        load("nnunet", root)
    (root / "dataset.json").unlink()
    with pytest.raises(DataError, match="dataset.json: missing"):
        load("nnunet", root)


def test_nnunet_missing_label_file_is_skipped(tmp_path):
    root = write_nnunet(tmp_path / "a", 3)
    (root / "labelsTr" / "case002.nii.gz").unlink()
    with pytest.warns(UserWarning, match="case case002: no segmentation"):
        assert load("nnunet", root).cases == ["case000", "case001"]


def test_cli_exits_2_naming_the_file(tmp_path, write_config, tiny_config, capsys):
    root = write_brats(tmp_path / "d", 2)
    case_file(root, 0, "flair").write_bytes(b"broken")
    before = snapshot(root)
    config = write_config({**tiny_config, "dataset": {"name": "brats", "root": str(root)}})
    assert main(["data", "summary", str(config), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "BraTS2021_00000_flair.nii.gz" in err
    assert snapshot(root) == before
