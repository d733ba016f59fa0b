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

from benchmark import create_dataset
from benchmark.cli.main import main
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
