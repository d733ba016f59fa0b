"""``bench data export``: poisoned training split + real validation split, read back identically."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from benchmark import CaseAttack, create_dataset, register_attack
from benchmark.cli.main import main
from test_brats import snapshot, write_brats

SHIFT = 5.0


@pytest.fixture
def shift_attack():
    @register_attack("test-shift")
    class ShiftAttack(CaseAttack):
        """Adds a constant to every brain voxel of the chosen cases (test only)."""

        def corrupt_case(self, images, labels, channels, rng):
            return np.where(images != 0, images + SHIFT, 0).astype(np.float32), labels

    return "test-shift"


@pytest.fixture
def brats_config(tmp_path, write_config, tiny_config):
    root = write_brats(tmp_path / "data", 6)
    config = {**tiny_config, "dataset": {"name": "brats", "root": str(root)}, "split": {"val_fraction": 0.34, "seed": 0}}
    return root, write_config(config)


def per_case(data):
    return {case: (np.asarray(data.images[data.case_ids == case]), np.asarray(data.labels[data.case_ids == case])) for case in data.cases}


def check_manifest(out, manifest):
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["files"]) == written
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_nnunet_export_round_trip(tmp_path, brats_config, shift_attack):
    root, config = brats_config
    before = snapshot(root)
    out = tmp_path / "Dataset501_Poisoned"
    args = ["data", "export", str(config), "--attack", shift_attack, "--rate", "0.5", "--seed", "0", "--format", "nnunet", "--out", str(out)]
    assert main(args) == 0
    assert snapshot(root) == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attack"]["name"] == "test-shift" and manifest["rate"] == 0.5 and manifest["format"] == "nnunet"
    assert len(manifest["train_cases"]) == 4 and len(manifest["val_cases"]) == 2
    assert len(manifest["poisoned_cases"]) == 2 and set(manifest["poisoned_cases"]) <= set(manifest["train_cases"])
    check_manifest(out, manifest)
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["numTraining"] == 4 and spec["file_ending"] == ".nii.gz"
    assert spec["channel_names"] == {"0": "t1", "1": "t1ce", "2": "t2", "3": "flair"}

    original = per_case(create_dataset("brats", root=str(root)).load())
    back = create_dataset("nnunet", root=str(out), normalize=False).load()
    assert back.channels == ("t1", "t1ce", "t2", "flair")
    assert back.cases == manifest["train_cases"]
    for case, (images, labels) in per_case(back).items():
        expected_images, expected_labels = original[case]
        if case in manifest["poisoned_cases"]:
            expected_images = np.where(expected_images != 0, expected_images + SHIFT, 0)
        assert np.array_equal(labels, expected_labels)
        assert np.allclose(images, expected_images, atol=1e-6)


def test_folder_export_round_trip_of_both_splits(tmp_path, brats_config, shift_attack):
    root, config = brats_config
    out = tmp_path / "export"
    args = ["data", "export", str(config), "--attack", shift_attack, "--rate", "0.25", "--seed", "3", "--format", "folder", "--out", str(out)]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    check_manifest(out, manifest)
    assert len(manifest["poisoned_cases"]) == 1
    original = per_case(create_dataset("brats", root=str(root)).load())
    for part in ("train", "val"):
        back = create_dataset("brats", root=str(out / part), normalize=False).load()
        assert back.cases == manifest[f"{part}_cases"]
        assert back.meta["convention"] == "brats2021"
        for case, (images, labels) in per_case(back).items():
            expected = original[case][0]
            if case in manifest["poisoned_cases"]:
                expected = np.where(expected != 0, expected + SHIFT, 0)
            assert np.array_equal(labels, original[case][1])
            assert np.allclose(images, expected, atol=1e-6)
    assert not set(manifest["poisoned_cases"]) & set(manifest["val_cases"])


def test_export_refuses_the_data_folder_and_non_empty_folders(tmp_path, brats_config, capsys):
    root, config = brats_config
    before = snapshot(root)
    base = ["data", "export", str(config), "--attack", "none", "--rate", "0", "--format", "folder", "--out"]
    assert main([*base, str(root / "export")]) == 2
    assert "nothing is ever written there" in capsys.readouterr().err
    assert snapshot(root) == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert main([*base, str(tmp_path / "busy")]) == 2
    assert "must be empty" in capsys.readouterr().err
    assert main([*base[:-1], "--rate", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "--rate: expected a poison rate in [0, 1]; got 1.5" in capsys.readouterr().err
    assert main(["data", "export", str(config), "--attack", "no-such-attack", "--rate", "0", "--out", str(tmp_path / "y")]) == 2
    assert "Unknown attack 'no-such-attack'" in capsys.readouterr().err


@pytest.mark.parametrize("seed", [0, 3])
def test_export_poisons_the_cases_a_sweep_cell_of_that_seed_poisons(tmp_path, brats_config, shift_attack, seed):
    from benchmark import SeedStreams, select_cases
    from benchmark.splitting import split_cases

    root, config = brats_config
    out = tmp_path / f"export-{seed}"
    args = ["data", "export", str(config), "--attack", shift_attack, "--rate", "0.5", "--seed", str(seed), "--format", "folder", "--out", str(out)]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    data = create_dataset("brats", root=str(root)).load()
    pool = data.subset(split_cases(data, 0.34, 0).attackable)
    expected = select_cases(pool, 0.5, SeedStreams(seed).generator("poison"))
    assert sorted(manifest["poisoned_cases"]) == expected


TINY_GAN = {"name": "gan-synthetic", "rates": [0.5], "epochs": 1, "batch_size": 4, "width": 4, "blocks": 0, "disc_width": 4, "holdout_cases": 1, "crop": 0}


@pytest.fixture
def recording_segmenter():
    """A segmenter that keeps the training images it is given and predicts nothing."""
    from benchmark import Segmenter, register_segmenter

    seen: list[np.ndarray] = []

    @register_segmenter("test-recorder")
    class Recorder(Segmenter):
        def fit(self, images, masks):
            seen.append(np.array(images, dtype=np.float32))

        def predict(self, images):
            return np.zeros((len(images), *images.shape[2:]), dtype=np.uint8)

    return seen


@pytest.mark.slow  # trains a tiny GAN
def test_export_writes_the_training_split_a_sweep_cell_trains_on(tmp_path, write_config, tiny_config, recording_segmenter):
    """A tiny GAN cell run as the local executor runs it, then exported: the same images, the cached generator reused."""
    import torch

    from attacks.gan_synthetic import GanSyntheticAttack
    from benchmark.config import load_config
    from benchmark.environment import package_version
    from benchmark.executors import LocalExecutor
    from benchmark.runner import plan_sweep, run_cell

    seed = 1
    threads = torch.get_num_threads() + 1  # a count the export only uses if it reads the config's
    channels = ["t1", "t1ce", "t2", "flair", "ct"]
    config = {
        **tiny_config,
        "task": {"inputs": channels, "target": "ET"},
        "segmenters": [{"name": "test-recorder"}],
        "attacks": [TINY_GAN],
        "seeds": [seed],
        "device": "auto",
        "executor": {"name": "local", "threads": threads},
    }
    path = write_config(config)
    plan = plan_sweep(load_config(path))
    (cell,) = plan.cells
    data = plan.source.load()
    trainings = GanSyntheticAttack.trainings
    (record,) = LocalExecutor(lambda c: run_cell(c, data, "cpu", plan.fingerprint), threads=threads).run([cell])
    assert record.status == "finished", record.error
    assert record.environment["torch_threads"] == threads
    assert GanSyntheticAttack.trainings == trainings + 1 and not record.attack_report["generator_cached"]
    (trained_on,) = recording_segmenter

    before = torch.get_num_threads()
    out = tmp_path / "export"
    args = ["data", "export", str(path), "--attack", "gan-synthetic", "--rate", "0.5", "--seed", str(seed), "--out", str(out)]
    assert main(args) == 0
    assert torch.get_num_threads() == before
    assert GanSyntheticAttack.trainings == trainings + 1, "the export trained its own generator instead of the cell's"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attack"]["report"]["generator_cached"] is True
    assert sorted(manifest["poisoned_cases"]) == sorted(record.attack_report["poisoned_case_ids"])
    assert len(manifest["poisoned_cases"]) == 2

    back = create_dataset("nnunet", root=str(out), normalize=False).load()
    exported = np.concatenate([np.asarray(back.images[back.case_ids == case]) for case in manifest["train_cases"]])
    assert exported.shape == trained_on.shape
    assert np.array_equal(exported, trained_on)
    real = {case: np.asarray(data.images[data.case_ids == case]) for case in data.cases}
    target = channels.index("t1ce")
    for case in manifest["poisoned_cases"]:  # the poison is the generator's, not the real image
        images = np.asarray(back.images[back.case_ids == case])
        assert not np.allclose(images[:, target], real[case][:, target], atol=1e-3)
    assert package_version() == manifest["poisonbench_version"]


def test_export_resolves_the_config_device_as_a_sweep_does(tmp_path, write_config, tiny_config, shift_attack, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_config({**tiny_config, "device": "cuda"})
    args = ["data", "export", str(path), "--attack", shift_attack, "--rate", "0.5", "--out", str(tmp_path / "export")]
    assert main(args) == 2
    assert "device: 'cuda' was asked for" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


def test_cell_threads_follow_the_executor_rule(monkeypatch):
    from benchmark.config import ExecutorConfig
    from benchmark.datasets import export

    monkeypatch.setattr("benchmark.executors._usable_cores", lambda: 8)
    assert export.cell_threads(ExecutorConfig(name="local")) is None
    assert export.cell_threads(ExecutorConfig(name="local", threads=3)) == 3
    assert export.cell_threads(ExecutorConfig(name="process", workers=4)) == 2
    assert export.cell_threads(ExecutorConfig(name="process")) == 4
    assert export.cell_threads(ExecutorConfig(name="ray", num_cpus=2.0)) == 2
    assert export.cell_threads(ExecutorConfig(name="ray", num_cpus=2.0, threads=1)) == 1
