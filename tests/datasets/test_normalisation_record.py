"""Data sets record how they normalised intensities (mask and rule), and the cache keeps the record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_brats import NAMING, SHAPE, planted_case, save, source_labels

from benchmark import ZSCORE, DataError, SliceSet, create_attack, create_dataset
from benchmark.cache import MANIFEST, SLICESET_FORMAT, artifact_dir, cached_sliceset


def write_skull_stripped(root: Path, cases: int = 2) -> Path:
    """BraTS-2021 cases whose brain is a disc (zeros around it) and whose intensity rises slice by slice."""
    xx, yy = np.mgrid[: SHAPE[0], : SHAPE[1]]
    disc = (xx - 11.5) ** 2 + (yy - 11.5) ** 2 < 10**2
    for i in range(cases):
        case = f"BraTS2021_{i:05d}"
        volumes, labels = planted_case(i)
        for channel, volume in volumes.items():
            ramp = 1.0 + 0.5 * np.arange(SHAPE[2])  # the tumour slices are brighter than the others
            save(root / case / f"{case}{NAMING['2021'][channel]}.nii.gz", (volume * disc[..., None] * ramp).astype(np.float32))
        save(root / case / f"{case}{NAMING['2021']['seg']}.nii.gz", source_labels(labels * disc[..., None], "2021"))
    return root


@pytest.mark.parametrize("slices", ["all", "tumour"])
def test_reader_records_its_brain_mask_and_rule(tmp_path, slices):
    data = create_dataset("brats", root=str(write_skull_stripped(tmp_path / "data")), slices=slices).load()
    assert data.normalisation == ZSCORE and data.norm_masks is not None and data.norm_masks.dtype == bool
    for case in data.cases:
        index = np.flatnonzero(data.case_ids == case)
        mask = np.asarray(data.norm_masks[index])
        assert 0 < mask.mean() < 1  # a brain inside zeros
        for c in range(len(data.channels)):
            x = np.asarray(data.images[index, c])
            # z-scored over the mask of the stored slices: the stored case is a fixed point of the rule
            assert abs(x[mask].mean()) < 1e-4 and abs(x[mask].std() - 1) < 1e-4
            assert (x[~mask] == 0).all()
            np.testing.assert_allclose(np.where(mask, ZSCORE.normalise(x, mask), 0), x, atol=1e-5)


def test_unnormalised_reader_records_no_rule(tmp_path):
    data = create_dataset("brats", root=str(write_skull_stripped(tmp_path / "data")), normalize=False).load()
    assert data.normalisation is None and data.norm_masks is None


def test_attack_on_a_reader_keeps_the_brain_statistics(tmp_path):
    data = create_dataset("brats", root=str(write_skull_stripped(tmp_path / "data")), slices="tumour").load()
    out = create_attack("blur", sigma=2.0).poison(data, 1.0, np.random.default_rng(0))
    t = data.channel_index("t1ce")
    for case in data.cases:
        index = np.flatnonzero(data.case_ids == case)
        mask = np.asarray(data.norm_masks[index])
        blurred = out.images[index, t]
        assert abs(blurred[mask].mean()) < 1e-4 and abs(blurred[mask].std() - 1) < 1e-4
        assert (blurred[~mask] == 0).all()


def _recorded(n: int = 2) -> SliceSet:
    rng = np.random.default_rng(0)
    masks = rng.random((n * 2, 8, 8)) > 0.3
    return SliceSet.create(
        rng.normal(size=(n * 2, 1, 8, 8)).astype(np.float32) * masks[:, None], np.zeros((n * 2, 8, 8), np.uint8),
        np.repeat([f"c{i}" for i in range(n)], 2), ["t1ce"], norm_masks=masks, normalisation=ZSCORE,
    )


def test_cache_keeps_the_record_and_slicing_keeps_it_aligned(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path))
    original = _recorded(3)
    loaded = cached_sliceset("datasets", "recorded", lambda: original)
    assert loaded.normalisation == ZSCORE
    np.testing.assert_array_equal(loaded.norm_masks, original.norm_masks)
    part = loaded.subset(["c2", "c0"])
    np.testing.assert_array_equal(part.norm_masks, original.norm_masks[np.isin(original.case_ids, ["c0", "c2"])])
    joined = SliceSet.concatenate([part, loaded.subset(["c1"])])
    assert joined.normalisation == ZSCORE and joined.norm_masks.shape == joined.labels.shape
    np.testing.assert_array_equal(joined.norm_masks[len(part) :], original.norm_masks[original.case_ids == "c1"])
    unrecorded = SliceSet.create(part.images, part.labels, part.case_ids, part.channels)
    mixed = SliceSet.concatenate([part, unrecorded])  # one part without a record: the join claims none
    assert mixed.normalisation is None and mixed.norm_masks is None


def test_cache_of_an_older_layout_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path))
    builds: list[int] = []
    cached_sliceset("datasets", "old", lambda: builds.append(1) or _recorded())
    folder = artifact_dir("datasets", "old")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["format"] == SLICESET_FORMAT
    del manifest["format"], manifest["normalisation"]  # as written before the record existed
    (folder / "norm_masks.npy").unlink()
    del manifest["files"]["norm_masks.npy"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    again = cached_sliceset("datasets", "old", lambda: builds.append(1) or _recorded())
    assert len(builds) == 2 and again.normalisation == ZSCORE and again.norm_masks is not None


def test_norm_masks_must_match_the_slices():
    data = _recorded()
    with pytest.raises(DataError, match="norm_masks"):
        data.with_arrays(norm_masks=np.ones((1, 8, 8), dtype=bool))
