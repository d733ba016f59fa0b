"""``bench data export`` writes exactly the training split a sweep cell trains on (one attack path)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark import CaseAttack, Segmenter, create_dataset, register_attack, register_segmenter
from benchmark.cli.main import main
from benchmark.config import load_config
from benchmark.regions import region_mask
from benchmark.runner import plan_sweep, run_cell


@pytest.fixture
def noisy_attack():
    @register_attack("test-noisy")
    class NoisyAttack(CaseAttack):
        """Adds random noise drawn from the attack's stream to the chosen cases (test only)."""

        def corrupt_case(self, images, labels, channels, rng):
            noise = rng.normal(0.0, 0.5, images.shape).astype(np.float32)
            return np.where(images != 0, images + noise, 0).astype(np.float32), labels

    return "test-noisy"


@pytest.fixture
def recorder():
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    @register_segmenter("test-recorder-path")
    class Recorder(Segmenter):
        def fit(self, images, masks):
            seen.append((np.array(images, dtype=np.float32), np.array(masks, dtype=np.uint8)))

        def predict(self, images):
            return np.zeros((len(images), *images.shape[2:]), dtype=np.uint8)

    return seen


@pytest.mark.parametrize("trusted", [0, 1])
def test_export_equals_what_the_cell_trains_on(tmp_path, write_config, tiny_config, noisy_attack, recorder, trusted):
    channels = ["t1", "t1ce", "t2", "flair", "ct"]
    config = {
        **tiny_config,
        "task": {"inputs": channels, "target": "WT"},
        "split": {"val_fraction": 0.34, "seed": 0, "trusted": trusted},
        "segmenters": [{"name": "test-recorder-path"}],
        "attacks": [{"name": noisy_attack, "rates": [0.5]}],
        "seeds": [2],
    }
    path = write_config(config)
    plan = plan_sweep(load_config(path))
    (cell,) = plan.cells
    record = run_cell(cell, plan.source.load(), "cpu", plan.fingerprint)
    assert record.status == "finished", record.error
    ((images, masks),) = recorder

    out = tmp_path / "Dataset601_Path"
    assert main(["data", "export", str(path), "--attack", noisy_attack, "--rate", "0.5", "--seed", "2", "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["poisoned_cases"]) == sorted(record.attack_report["poisoned_case_ids"])
    back = create_dataset("nnunet", root=str(out), normalize=False).load()
    order = np.concatenate([np.flatnonzero(back.case_ids == case) for case in manifest["train_cases"]])
    assert np.array_equal(np.asarray(back.images)[order], images)  # noise and all: the same random draws
    assert np.array_equal(region_mask(np.asarray(back.labels)[order], "WT"), masks)
