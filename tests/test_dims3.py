"""Volumetric tasks (``task.dims: 3``): config, validation, volumes from slices and back, and 3-D cells.

A 3-D segmenter gets each case's slices stacked as a volume; its predictions go back on
the slices, so a 3-D cell is scored over the same voxels as a 2-D cell of the same sweep,
and attacks and defenses, which work per case, hand it the same data.
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pandas as pd
import pytest

import benchmark.runner as runner_module
from benchmark import (
    ATTACKS,
    DEFENSES,
    Attack,
    ConfigError,
    Segmenter,
    SliceGeometry,
    register_attack,
    register_segmenter,
    validate_config,
)
from benchmark.cli import main
from benchmark.config import TaskConfig, cell_key
from benchmark.environment import package_version
from benchmark.runner import case_volumes, plan_sweep, run_cell, volume_slices
from plugin_scope import user_plugin_names

TINY_3D_SEGMENTER = {"name": "unet3d", "epochs": 2, "batch_size": 2, "patch_size": [4, 16, 16], "channels": [4, 8, 16], "num_res_units": 0}


def sweep(config: dict, dims: int, **changes) -> dict:
    """``config`` with ``task.dims`` and top-level keys changed."""
    config = copy.deepcopy(config)
    config["task"]["dims"] = dims
    config.update(copy.deepcopy(changes))
    return config


# --------------------------------------------------------------------------- config and cell keys
def test_dims_defaults_to_2_and_a_2d_task_dumps_as_before():
    assert TaskConfig().dims == 2
    assert TaskConfig().model_dump() == {"inputs": ["t1ce"], "target": "ET"}
    assert TaskConfig(dims=3).model_dump() == {"inputs": ["t1ce"], "target": "ET", "dims": 3}


def test_cell_keys_of_2d_configs_do_not_change(tiny_config):
    """The key of a 2-D cell is the hash of a config without ``dims``, whether dims is left out or written as 2."""
    keys = set()
    for config in (tiny_config, sweep(tiny_config, 2)):
        plan = plan_sweep(validate_config(config))
        (cell,) = plan.cells
        without_dims = {**cell.config(), "task": {"inputs": ["t1ce"], "target": "ET"}}
        assert cell.key == cell_key(without_dims, plan.fingerprint, package_version())
        keys.add(cell.key)
    assert len(keys) == 1


def test_dims_3_is_in_the_key_and_the_resolved_config(tiny_config):
    config = validate_config(sweep(tiny_config, 3, segmenters=[TINY_3D_SEGMENTER]))
    assert config.resolved()["task"]["dims"] == 3
    assert validate_config(config.resolved()).task.dims == 3  # the stored config reads back as 3-D
    two_d = validate_config(tiny_config)
    assert plan_sweep(config).cells[0].key != plan_sweep(two_d).cells[0].key


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "dims, segmenter, expected",
    [
        (3, {"name": "unet", "channels": [4, 8]}, "segmenters[0]: segmenter 'unet' works in 2-D only; task.dims is 3."),
        (3, {"name": "segresnet"}, "segmenter 'segresnet' works in 2-D only; task.dims is 3. Segmenters for 3-D: segresnet3d, unet3d"),
        (2, {"name": "unet3d"}, "segmenters[0]: segmenter 'unet3d' works in 3-D only; task.dims is 2."),
        (2, {"name": "segresnet3d"}, "segmenter 'segresnet3d' works in 3-D only; task.dims is 2."),
    ],
)
def test_a_plugin_in_the_wrong_dims_fails_validation_naming_both(dims, segmenter, expected, tiny_config, write_config, capsys):
    config = sweep(tiny_config, dims, segmenters=[segmenter])
    assert main(["validate", str(write_config(config))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err


def test_dims_other_than_2_or_3_are_refused(tiny_config, write_config, capsys):
    assert main(["validate", str(write_config(sweep(tiny_config, 4)))]) == 2
    assert "task.dims: Input should be 2 or 3; got 4." in capsys.readouterr().err


def test_every_plugin_that_declares_dims_is_checked(tiny_config):
    """Attacks and defenses declare nothing (they work per case in either), but one that declares 2-D is refused in 3-D."""

    @register_attack("test-slicewise")
    class SliceWise(Attack):
        """An attack that declares it works on 2-D tasks only."""

        dims = (2,)

        def poison(self, train, rate, rng):
            return train

    config = sweep(tiny_config, 3, segmenters=[TINY_3D_SEGMENTER], attacks=[{"name": "test-slicewise", "rates": [0]}])
    with pytest.raises(ConfigError, match=r"attacks\[0\]: attack 'test-slicewise' works in 2-D only; task.dims is 3"):
        validate_config(config)
    validate_config(sweep(tiny_config, 2, attacks=[{"name": "test-slicewise", "rates": [0]}]))


def test_a_segmenter_may_work_in_both(tiny_config):
    @register_segmenter("test-both")
    class Both(Recording):
        """Works on slices and on volumes."""

    for dims in (2, 3):
        validate_config(sweep(tiny_config, dims, segmenters=[{"name": "test-both"}]))


# --------------------------------------------------------------------------- volumes from slices and back
def test_case_volumes_stack_each_case_in_its_true_slice_order_and_pad_the_thinner():
    # case a: 3 slices given out of grid order (grid indices 7, 5, 6); case b: 2 slices with a gap (2, 9)
    case_ids = np.array(["a", "b", "a", "a", "b"])
    index = np.array([7, 9, 5, 6, 2])
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    geometry = SliceGeometry(np.repeat(affine[None], 5, axis=0), index)
    slices = np.arange(5, dtype=np.float32)[:, None, None, None] + np.zeros((5, 2, 3, 4), np.float32)
    slices[:, 1] *= 10  # the second channel differs from the first
    volumes, rows = case_volumes(slices, case_ids, geometry)
    assert volumes.shape == (2, 2, 3, 3, 4)
    np.testing.assert_array_equal(volumes[0, 0, :, 0, 0], [2, 3, 0])  # the rows at grid 5, 6, 7
    np.testing.assert_array_equal(volumes[0, 1, :, 0, 0], [20, 30, 0])
    np.testing.assert_array_equal(volumes[1, 0, :, 0, 0], [4, 1, 0])  # grid 2, 9, then a padding slice
    np.testing.assert_array_equal(volumes[1, :, 2], 0)
    assert [list(r) for r in rows] == [[2, 3, 0], [4, 1]]

    masks = (np.arange(5)[:, None, None] % 2 + np.zeros((5, 3, 4))).astype(np.uint8)
    mask_volumes, mask_rows = case_volumes(masks, case_ids, geometry)
    assert mask_volumes.shape == (2, 3, 3, 4) and mask_volumes.dtype == np.uint8
    assert [list(r) for r in mask_rows] == [list(r) for r in rows]
    np.testing.assert_array_equal(volume_slices(mask_volumes, mask_rows), masks)  # back on the slices, padding dropped


def test_case_volumes_without_geometry_keep_row_order():
    slices = np.arange(4, dtype=np.uint8)[:, None, None] + np.zeros((4, 2, 2), np.uint8)
    volumes, rows = case_volumes(slices, np.array(["x", "y", "x", "x"]), None)
    np.testing.assert_array_equal(volumes[:, :, 0, 0], [[0, 2, 3], [1, 0, 0]])
    np.testing.assert_array_equal(volume_slices(volumes, rows), slices)


# --------------------------------------------------------------------------- cells
def test_a_3d_cell_runs_end_to_end_through_bench_run(tiny_config, write_config, tmp_path):
    segresnet = {"name": "segresnet3d", "epochs": 2, "batch_size": 2, "patch_size": [4, 16, 16], "blocks_down": [1, 1, 1]}
    config = sweep(tiny_config, 3, segmenters=[TINY_3D_SEGMENTER, segresnet], attacks=[{"name": "noise", "rates": [0, 0.5]}])
    out = tmp_path / "out"
    assert main(["run", str(write_config(config)), "--out", str(out), "--quiet"]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert set(frame["segmenter"]) == {"unet3d", "segresnet3d"}
    assert len(frame) == 2 * 2 * 2  # segmenters x rates x validation cases
    assert np.isfinite(frame[["dice", "jaccard", "accuracy", "sensitivity", "specificity", "hd95"]].to_numpy()).all()


def test_a_3d_and_a_2d_cell_of_one_sweep_are_scored_over_the_same_voxels(tiny_config):
    """Same data, split, poison and seed: per validation case the same voxels and the same true positives."""
    tiny_config["attacks"] = [{"name": "noise", "rates": [0.5]}]
    records = {}
    for dims, segmenter in ((2, tiny_config["segmenters"][0]), (3, TINY_3D_SEGMENTER)):
        plan = plan_sweep(validate_config(sweep(tiny_config, dims, segmenters=[segmenter])))
        (cell,) = plan.cells
        records[dims] = run_cell(cell, plan.source.load())
        assert records[dims].status == "finished", records[dims].error
    two, three = (records[d].case_metrics for d in (2, 3))
    assert list(two.index) == list(three.index) and len(two) == 2
    voxels = lambda m: m[["tp", "fp", "tn", "fn"]].sum(axis=1)  # noqa: E731
    pd.testing.assert_series_equal(voxels(two), voxels(three))
    pd.testing.assert_series_equal(two["tp"] + two["fn"], three["tp"] + three["fn"])  # the same truth
    assert records[2].attack_report["poisoned_case_ids"] == records[3].attack_report["poisoned_case_ids"]


# --------------------------------------------------------------------------- attacks and defenses across the registry
class Recording(Segmenter):
    """Keeps what it is trained on; predicts nothing (the stage before it is under test)."""

    dims = (2, 3)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def fit(self, images, masks):
        Recording.seen.append((np.array(images), np.array(masks)))

    def predict(self, images):
        return np.zeros((len(images), *images.shape[2:]), np.uint8)


#: Short settings of the plugins that train a model, where they declare the parameter.
FAST = {
    "gan-synthetic": {"epochs": 1, "width": 8, "blocks": 2, "crop": 0, "holdout_cases": 1},
    "diffusion-synthetic": {"epochs": 1, "ddim_steps": 2, "train_timesteps": 10, "crop": 0, "holdout_cases": 1},
    "loss-filter": {"epochs": 3, "warmup": 1},
    "feature-outlier": {"epochs": 3},
    "spectral-signatures": {"epochs": 3},
    "cross-modal": {"iterations": 40, "voxels": 5000},
}


def _fast(registry, name: str) -> dict:
    fields = registry.get(name).Params.model_fields
    return {key: value for key, value in FAST.get(name, {}).items() if key in fields}


def _per_case(data) -> list[str]:
    """One digest per case of a slice set (its images and labels, slices in any order), sorted: the
    cases' data whatever their ids and order."""
    if data is None:
        return []
    digests = []
    for case in data.cases:
        rows = np.flatnonzero(data.case_ids == case)
        slices = sorted(hashlib.sha256(data.images[r].tobytes() + data.labels[r].tobytes()).hexdigest() for r in rows)
        digests.append(hashlib.sha256("".join(slices).encode()).hexdigest())
    return sorted(digests)


def _run_in_both_dims(tiny_config, monkeypatch, attack: dict, defense: dict) -> dict:
    """Run the cell in 2-D and in 3-D with a recording segmenter; the 3-D segmenter must get the
    volumes of exactly the training slices its own cell's attack and defense left.

    Returns:
        per dims: the slices the segmenter was trained on (2-D), or the slices the volumes were
        stacked from (3-D), as ``(images, masks)``.
    """
    register_segmenter("test-recording")(Recording)
    volume_inputs = []

    def recorded_case_volumes(slices, case_ids, geometry):
        volume_inputs.append((np.array(slices), np.array(case_ids), geometry))
        return case_volumes(slices, case_ids, geometry)

    monkeypatch.setattr(runner_module, "case_volumes", recorded_case_volumes)
    config = copy.deepcopy(tiny_config)
    config["dataset"]["cases"] = 8
    config["split"]["trusted"] = 2
    config.update(segmenters=[{"name": "test-recording"}], attacks=[attack], defenses=[defense])
    Recording.seen = []
    for dims in (2, 3):
        plan = plan_sweep(validate_config(sweep(config, dims)))
        (cell,) = plan.cells
        record = run_cell(cell, plan.source.load())
        assert record.status == "finished", record.error
    (images_2d, masks_2d), (volumes, mask_volumes) = Recording.seen
    (images_in, case_ids, geometry), (masks_in, _, _) = volume_inputs[:2]
    # the volumes are the kept training slices, case by case in grid order, with zero padding only
    expected, rows = case_volumes(images_in, case_ids, geometry)
    np.testing.assert_array_equal(volumes, expected)
    np.testing.assert_array_equal(mask_volumes, case_volumes(masks_in, case_ids, geometry)[0])
    assert volumes.shape[0] == len(pd.unique(case_ids)) and sum(len(r) for r in rows) == len(images_in)
    return {2: (images_2d, masks_2d), 3: (images_in, masks_in)}


@pytest.mark.parametrize("name", [n for n in user_plugin_names("attacks") if n != "none"])
def test_every_attack_hands_a_3d_segmenter_the_2d_cells_data(name, tiny_config, monkeypatch):
    """Attacks draw from the cell seed: the 3-D cell trains on the 2-D cell's poisoned slices, bit for bit."""
    trained = _run_in_both_dims(tiny_config, monkeypatch, {"name": name, "rates": [0.5], **_fast(ATTACKS, name)}, {"name": "none"})
    for two, three in zip(trained[2], trained[3]):
        np.testing.assert_array_equal(two, three)


@pytest.mark.parametrize("name", [n for n in user_plugin_names("defenses") if n != "none"])
def test_every_defense_gets_the_same_cases_in_3d(name, tiny_config, monkeypatch):
    """A defense of a 3-D cell is fitted and scored on the 2-D cell's cases (under other opaque ids: the view's
    shuffle, like the defense's own seed, follows the cell key), and the 3-D segmenter gets what it kept."""
    cls = DEFENSES.get(name)
    seen: dict[str, list] = {"fit": [], "score": []}
    fit, score = cls.fit, cls.score

    def recorded_fit(self, trusted):
        seen["fit"].append(_per_case(trusted))
        return fit(self, trusted)

    def recorded_score(self, train):
        seen["score"].append(_per_case(train))
        return score(self, train)

    monkeypatch.setattr(cls, "fit", recorded_fit)
    monkeypatch.setattr(cls, "score", recorded_score)
    _run_in_both_dims(tiny_config, monkeypatch, {"name": "noise", "rates": [0.5]}, {"name": name, "budget": 0.5, **_fast(DEFENSES, name)})
    for stage in ("fit", "score"):
        two, three = seen[stage]
        assert two == three
    assert len(seen["fit"][1]) == 2 and len(seen["score"][1]) > 2  # the trusted cases; every training case
