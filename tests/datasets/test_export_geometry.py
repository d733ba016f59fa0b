"""Slice geometry from the readers and the generator to the exported NIfTI headers.

Sources are written here with an oblique, anisotropic affine; exports are read back with
nibabel and every kept slice must land at its source's world position.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from benchmark import ConfigError, create_dataset
from benchmark.cli.main import main
from benchmark.datasets.export import NNUNET_IGNORE, default_folder_name
from benchmark.regions import ED, ET, NCR
from benchmark.datasets.synthetic_anatomy import _draw_anatomy, _load_templates, generate_synthetic_brats, grid_affine
from test_brats import NAMING, planted_case, save, source_labels

# an oblique, anisotropic, left-right flipped source grid (mm): what BraTS-like headers may hold
_ROTATION = np.array([[np.cos(0.2), -np.sin(0.2), 0.0], [np.sin(0.2), np.cos(0.2), 0.0], [0.0, 0.0, 1.0]])
SOURCE_AFFINE = np.eye(4)
SOURCE_AFFINE[:3, :3] = _ROTATION @ np.diag([-0.9, 1.1, 2.5])
SOURCE_AFFINE[:3, 3] = (40.0, -30.0, -12.0)


def write_brats_with_affine(root: Path, cases: int, affine: np.ndarray = SOURCE_AFFINE) -> Path:
    for i in range(cases):
        case = f"BraTS2021_{i:05d}"
        volumes, labels = planted_case(i)
        for channel, volume in volumes.items():
            save(root / case / f"{case}{NAMING['2021'][channel]}.nii.gz", volume, affine)
        save(root / case / f"{case}{NAMING['2021']['seg']}.nii.gz", source_labels(labels, "2021"), affine)
    return root


def test_reader_records_source_affine_crop_and_true_slice_positions(tmp_path):
    root = write_brats_with_affine(tmp_path / "data", 2)
    # tumour slices 3, 4 plus half of the other brain slices (1, 2, 5, 6 -> 1, 6): a gap-ridden stack
    data = create_dataset("brats", root=str(root), slices="tumour", other_fraction=0.5, size=20).load()
    assert data.geometry is not None
    for case in data.cases:
        rows = np.flatnonzero(data.case_ids == case)
        grid = data.geometry.case_grid(rows, case)
        assert grid.index.tolist() == [1, 3, 4, 6] and not grid.contiguous
        # a 24-voxel axis centre-cropped to 20 starts at source voxel 2
        assert np.allclose(apply_affine(grid.affine, [0, 0, 0]), apply_affine(SOURCE_AFFINE, [2, 2, 0]))
        assert np.allclose(grid.spacing(), (0.9, 1.1, 2.5))


def test_padding_shifts_the_origin_outwards(tmp_path):
    root = write_brats_with_affine(tmp_path / "data", 1)
    data = create_dataset("brats", root=str(root), size=30).load()
    grid = data.geometry.case_grid(np.arange(len(data)), data.cases[0])
    assert np.allclose(apply_affine(grid.affine, [3, 3, 0]), apply_affine(SOURCE_AFFINE, [0, 0, 0]))
    assert grid.index.tolist() == [1, 2, 3, 4, 5, 6] and grid.contiguous


def test_geometry_survives_subset_and_concatenate(tmp_path):
    root = write_brats_with_affine(tmp_path / "data", 3)
    data = create_dataset("brats", root=str(root)).load()
    cases = data.cases
    joined = type(data).concatenate([data.subset([cases[2]]), data.subset(cases[:1])])
    assert np.array_equal(joined.geometry.index, np.concatenate([np.arange(1, 7)] * 2))
    assert np.allclose(joined.geometry.affines, SOURCE_AFFINE)


def test_synthetic_grid_is_the_generators():
    generated = generate_synthetic_brats(2, 5, 48, 3)
    for i in range(2):
        affine = generated.affines[i]
        assert nib.aff2axcodes(affine) == ("P", "L", "S")
        z = generated.slice_z[i]
        assert np.allclose(apply_affine(affine, np.stack([np.zeros(5), np.zeros(5), np.arange(5)], 1))[:, 2], z)
        assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), (220 / 48, 220 / 48, z[1] - z[0]))
        # the tumour's centre, carried back into subject mm, is where the labels put it through the affine
        deform, tumour = _draw_anatomy(np.random.default_rng([3, i]), _load_templates())
        expected = deform.approx_inverse(tumour.centre)
        rows = slice(i * 5, (i + 1) * 5)
        k, r, c = np.nonzero(generated.labels[rows] > 0)
        centroid = apply_affine(affine, np.stack([r, c, k], 1)).mean(axis=0)
        assert abs(expected[0]) > 10  # a hemisphere, so a mirrored grid would put it on the other side
        assert np.sign(centroid[0]) == np.sign(expected[0])
        assert np.linalg.norm(centroid[:2] - expected[:2]) < 12.0
        assert np.allclose(affine, grid_affine(48, z))


# -- exports ------------------------------------------------------------------------------
NNUNET_TO_COMMON = np.array([0, ED, NCR, ET, 0], dtype=np.uint8)  # nnU-Net BraTS values (4: ignore) -> common


@pytest.fixture
def gappy_brats(tmp_path, write_config, tiny_config):
    """A BraTS folder under SOURCE_AFFINE, read with gaps (slices 1, 3, 4, 6 of 0..7) and cropped to 20 x 20."""
    root = write_brats_with_affine(tmp_path / "data", 4)
    dataset = {"name": "brats", "root": str(root), "slices": "tumour", "other_fraction": 0.5, "size": 20}
    config = {**tiny_config, "dataset": dataset, "split": {"val_fraction": 0.25, "seed": 0}}
    return root, write_config(config)


@pytest.mark.parametrize("fmt", ["nnunet", "folder"])
def test_export_headers_carry_the_source_geometry_and_true_slice_positions(tmp_path, gappy_brats, fmt):
    root, config = gappy_brats
    out = tmp_path / "Dataset777_Gaps"
    assert main(["data", "export", str(config), "--attack", "none", "--rate", "0", "--format", fmt, "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    kept = [1, 3, 4, 6]
    for case in manifest["train_cases"] + manifest["val_cases"]:
        assert manifest["slice_positions"][case] == [k - kept[0] for k in kept]
        source = nib.load(str(root / case / f"{case}_seg.nii.gz"))
        if fmt == "nnunet":
            part = "Tr" if case in manifest["train_cases"] else "Ts"
            label_file, image_file = out / f"labels{part}" / f"{case}.nii.gz", out / f"images{part}" / f"{case}_0001.nii.gz"
        else:
            folder = out / ("train" if case in manifest["train_cases"] else "val") / case
            label_file, image_file = folder / f"{case}_seg.nii.gz", folder / f"{case}_t1ce.nii.gz"
        for written in (nib.load(str(label_file)), nib.load(str(image_file))):
            assert written.shape == (20, 20, 6)
            assert np.allclose(written.header.get_zooms()[:3], (0.9, 1.1, 2.5))
            assert written.header.get_sform(coded=True)[1] == 1 and written.header.get_qform(coded=True)[1] == 1
            # voxel (r, c, k) of the export is voxel (r + 2, c + 2, k + 1) of the source: same world point
            voxels = np.array([[0, 0, 0], [19, 3, 5], [7, 11, 2]])
            assert np.allclose(apply_affine(written.affine, voxels), apply_affine(source.affine, voxels + [2, 2, 1]))
            assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine)
        labels = np.asarray(nib.load(str(label_file)).dataobj)
        truth = source_labels(planted_case(int(case[-5:]))[1], "2021")[2:22, 2:22]
        if fmt == "nnunet":
            assert np.array_equal(NNUNET_TO_COMMON[labels[..., [0, 2, 3, 5]]], planted_case(int(case[-5:]))[1][2:22, 2:22][..., kept])
            assert (labels[..., [1, 4]] == NNUNET_IGNORE).all()  # slices 2 and 5 were left out: unannotated
        else:
            assert np.array_equal(labels[..., [0, 2, 3, 5]], truth[..., kept])
            assert (labels[..., [1, 4]] == 0).all()
        assert (np.asarray(nib.load(str(image_file)).dataobj)[..., [1, 4]] == 0).all()
    spec = json.loads((out / "dataset.json").read_text()) if fmt == "nnunet" else None
    if spec is not None:
        assert spec["labels"]["ignore"] == NNUNET_IGNORE and spec["name"] == "Dataset777_Gaps"
        # read back: the gap slices hold no brain and drop out again, the kept ones are those the source gave
        back = create_dataset("nnunet", root=str(out), normalize=False).load()
        original = create_dataset("brats", root=str(root), slices="tumour", other_fraction=0.5, size=20).load()
        for case in back.cases:
            assert np.array_equal(np.asarray(back.labels[back.case_ids == case]), np.asarray(original.labels[original.case_ids == case]))
            assert np.allclose(back.geometry.case_grid(np.flatnonzero(back.case_ids == case)).affine,
                               original.geometry.case_grid(np.flatnonzero(original.case_ids == case)).cropped_affine())


def test_synthetic_export_is_on_the_generators_grid_with_z_scored_channel_names(tmp_path, write_config, tiny_config, monkeypatch):
    config = write_config(tiny_config)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "export", str(config), "--attack", "none", "--rate", "0", "--quiet"]) == 0
    out = tmp_path / "Dataset501_none_r000_s0"  # nnU-Net's DatasetNNN_Name by default
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "t1", "1": "t1ce", "2": "t2", "3": "flair", "4": "ct_zscored"}
    assert "ct" not in {name.casefold() for name in spec["channel_names"].values()}  # nnU-Net's CT scheme would clip z-scores as HU
    assert "ignore" not in spec["labels"]  # synthetic slices are contiguous: no gap
    params = tiny_config["dataset"]
    generated = generate_synthetic_brats(params["cases"], params["slices"], params["size"], params["seed"])
    manifest = json.loads((out / "manifest.json").read_text())
    for case in manifest["train_cases"]:
        written = nib.load(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
        i = int(case.rsplit("-", 1)[1])
        assert np.allclose(written.affine, generated.affines[i])
        assert nib.aff2axcodes(written.affine) == ("P", "L", "S")
        assert np.allclose(np.moveaxis(np.asarray(written.dataobj), -1, 0), generated.images[i * 4 : (i + 1) * 4, 0])
    back = create_dataset("nnunet", root=str(out), normalize=False).load()
    assert back.channels == ("t1", "t1ce", "t2", "flair", "ct")


def test_default_folder_name_follows_nnunet():
    assert default_folder_name(7, "gan-synthetic", 0.5, 3) == "Dataset007_gansynthetic_r050_s3"
    with pytest.raises(ConfigError, match="--dataset-id"):
        default_folder_name(1000, "noise", 0.5, 0)


@pytest.mark.slow  # nnU-Net's own checker over a written export
def test_nnunet_accepts_the_export(tmp_path, gappy_brats, monkeypatch):
    pytest.importorskip("nnunetv2", reason="nnU-Net's integrity check needs poisonbench[nnunet]")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    root, config = gappy_brats
    out = tmp_path / "Dataset778_Check"
    assert main(["data", "export", str(config), "--attack", "none", "--rate", "0", "--out", str(out), "--quiet"]) == 0
    verify_dataset_integrity(str(out), num_processes=1)  # raises on any problem


def test_a_defense_sees_no_geometry(tmp_path):
    from benchmark.defense_view import DefenseView, view_rng

    root = write_brats_with_affine(tmp_path / "data", 3)
    data = create_dataset("brats", root=str(root)).load()
    view = DefenseView.build(data, [data.cases[0]], view_rng("cell", "fingerprint"))
    assert data.geometry is not None and view.train.geometry is None and view.trusted.geometry is None


def test_saved_predictions_sit_on_the_case_grid(tmp_path):
    from benchmark.runner import save_predictions

    root = write_brats_with_affine(tmp_path / "data", 1)
    data = create_dataset("brats", root=str(root), slices="tumour", other_fraction=0.5).load()
    save_predictions(tmp_path / "pred", np.asarray(data.labels) > 0, data.case_ids, data.geometry)
    written = nib.load(str(tmp_path / "pred" / f"{data.cases[0]}.nii.gz"))
    assert written.shape == (24, 24, 6)  # slices 1..6 of the source, 2 and 5 left out
    assert np.allclose(apply_affine(written.affine, [0, 0, 0]), apply_affine(SOURCE_AFFINE, [0, 0, 1]))
    assert not np.asarray(written.dataobj)[..., [1, 4]].any()
