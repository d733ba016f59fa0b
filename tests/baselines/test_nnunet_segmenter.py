"""The nnunet segmenter: listed and validated without nnunetv2, trained end to end through the harness on CPU,
its predictions back on the right slices, its temporary folders removed and its logs kept when it fails."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmark import RunContext, create_dataset, create_segmenter
from benchmark.cli.main import main

REPO = Path(__file__).resolve().parents[2]

#: A tiny cell: 6 cases of 4 slices at 32², one epoch of two steps.
TINY_NNUNET = {"name": "nnunet", "configuration": "2d", "epochs": 1, "iterations_per_epoch": 2, "device": "cpu"}

#: Run in a fresh interpreter where nnunetv2 and torch cannot be imported (sys.modules entries of None).
_HIDDEN = """
import sys
sys.modules["nnunetv2"] = None
sys.modules["torch"] = None
from benchmark.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _bench_without_nnunet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _HIDDEN, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def test_listed_as_needing_the_extra_when_nnunetv2_is_missing():
    done = _bench_without_nnunet("list", "segmenters")
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.split()[1:2] == ["nnunet"])
    assert "needs poisonbench[nnunet]" in line
    assert "nnunet failed to load" not in done.stderr  # the module imports without nnunetv2 and torch


def test_config_naming_it_fails_validation_with_the_install_command(tmp_path, tiny_config):
    tiny_config["segmenters"] = [TINY_NNUNET]
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    done = _bench_without_nnunet("validate", str(path))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "segmenters[0]" in done.stderr and "pip install 'poisonbench[nnunet]'" in done.stderr


def test_parameters_load_without_torch():
    pytest.importorskip("nnunetv2")  # without it the parameters refuse to load (tested above), torch or not
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        from baselines.nnunet import NnUNetParams
        params = NnUNetParams(configuration="3d_fullres", epochs=3)
        assert params.trainer == "nnUNetTrainer" and params.epochs == 3
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "params, problem",
    [({"configuration": "3d_lowres"}, "configuration"), ({"epochs": 0}, "epochs"), ({"trainer": "a b"}, "trainer")],
)
def test_bad_parameters_are_refused(params, problem):
    pytest.importorskip("nnunetv2")
    from benchmark import ConfigError
    from benchmark.catalog import SEGMENTERS, create_plugin

    with pytest.raises(ConfigError, match=problem):
        create_plugin(SEGMENTERS, "nnunet", params, "segmenters[0]")


def _input_cases(data, inputs=("t1ce",)):
    """What the runner hands a case-wise segmenter: input channels, case ids and geometry, labels 0."""
    return data.with_arrays(
        images=data.select_channels(list(inputs)), channels=tuple(inputs), labels=np.zeros((len(data), *data.shape), np.uint8),
    )


class _ThresholdPredictor:
    """Stands in for nnUNetPredictor: segments a volume as read by nnU-Net's reader into its voxels above 0.5."""

    def __init__(self, **kwargs):
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        self.plans_manager = type("Plans", (), {"image_reader_writer_class": SimpleITKIO})()

    def initialize_from_trained_model_folder(self, *args, **kwargs):
        pass

    def predict_single_npy_array(self, volume, properties):
        return (volume[0] > 0.5).astype(np.uint8)


def test_predictions_come_back_on_their_slices_in_row_order(monkeypatch, tmp_path):
    """Through nnU-Net's own reader and writer, a voxel-wise rule returns each row's own slice, whatever the row order
    and with slices left out of a case; the cell's temporary folder is gone afterwards."""
    pytest.importorskip("nnunetv2")
    import nnunetv2.inference.predict_from_raw_data as inference

    data = create_dataset("synthetic-brats", cases=3, slices=6, size=32, seed=1).load()
    rng = np.random.default_rng(0)
    first = np.flatnonzero(data.case_ids == data.cases[0])
    keep = np.setdiff1d(np.arange(len(data)), first[[1, 3]])  # two slices of the first case left out: gaps
    shuffled = keep[rng.permutation(len(keep))]  # slices out of order, cases interleaved
    val = data.with_arrays(
        images=data.select_channels(["t1ce"])[shuffled], channels=("t1ce",), labels=np.zeros((len(shuffled), *data.shape), np.uint8),
        case_ids=data.case_ids[shuffled], poisoned=data.poisoned[shuffled], norm_masks=None, geometry=data.geometry.take(shuffled),
    )
    monkeypatch.setattr(inference, "nnUNetPredictor", _ThresholdPredictor)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    segmenter = create_segmenter("nnunet", device="cpu")
    segmenter.bind(RunContext(device="cpu"))
    segmenter._workdir = tempfile.TemporaryDirectory(prefix="poisonbench-nnunet-")  # as fit_cases leaves it
    segmenter._model = Path(segmenter._workdir.name) / "model"
    pred = segmenter.predict_cases(val)
    assert pred.shape == (len(shuffled), *data.shape) and pred.dtype == np.uint8
    np.testing.assert_array_equal(pred, (val.images[:, 0] > 0.5).astype(np.uint8))
    assert not list(tmp_path.glob("poisonbench-nnunet-*"))


def test_failure_keeps_nnunets_logs_in_the_cells_artifacts(monkeypatch, tmp_path):
    pytest.importorskip("nnunetv2")
    import nnunetv2.experiment_planning.plan_and_preprocess_api as api

    def broken_fingerprint(*args, **kwargs):
        print("fingerprinting the poisonbench data set")
        raise RuntimeError("no foreground voxels")

    monkeypatch.setattr(api, "extract_fingerprint_dataset", broken_fingerprint)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    data = create_dataset("synthetic-brats", cases=2, slices=3, size=32, seed=0).load()
    segmenter = create_segmenter("nnunet", device="cpu")
    segmenter.bind(RunContext(device="cpu", artifacts_dir=tmp_path / "artifacts" / "cellkey"))
    with pytest.raises(Exception, match="no foreground voxels") as caught:
        segmenter.fit_cases(_input_cases(data), np.zeros((len(data), *data.shape), np.uint8))
    kept = tmp_path / "artifacts" / "cellkey" / "nnunet-logs"
    assert str(kept) in str(caught.value) and "fingerprinting the poisonbench data set" in str(caught.value)
    assert "fingerprinting the poisonbench data set" in (kept / "nnunet-fit.log").read_text()
    assert not list((tmp_path / "tmp").iterdir())  # the temporary nnU-Net folders are removed


@pytest.mark.slow
def test_a_cell_trains_nnunet_end_to_end_through_bench_run(tmp_path, tiny_config, write_config, monkeypatch):
    """nnU-Net's planning, preprocessing, one-epoch training on fold 'all' and prediction in one CPU cell:
    finite metrics for every validation case, nothing left in the temporary folder."""
    pytest.importorskip("nnunetv2")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tiny_config["segmenters"] = [TINY_NNUNET]
    out = tmp_path / "results"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2  # the two validation cases of the 6-case split
    assert results["segmenter"].str.contains("nnunet").all()
    for metric in ("dice", "jaccard", "accuracy", "sensitivity", "specificity"):
        assert np.isfinite(results[metric]).all(), metric
    assert not list((tmp_path / "tmp").glob("poisonbench-nnunet-*"))


@pytest.mark.slow
def test_a_cell_repeats_exactly(tmp_path, tiny_config, write_config, monkeypatch):
    """nnU-Net leaves its patch sampler unseeded; the plugin seeds it and the global generators from the
    cell's seed, so two runs of one cell give the same per-case metrics (workers 0, CPU)."""
    pytest.importorskip("nnunetv2")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tiny_config["segmenters"] = [{**TINY_NNUNET, "iterations_per_epoch": 4}]
    runs = []
    for name in ("first", "second"):
        assert main(["run", str(write_config(tiny_config)), "--out", str(tmp_path / name), "--quiet"]) == 0
        runs.append(pd.read_csv(tmp_path / name / "results.csv").sort_values("case").reset_index(drop=True))
    columns = ["case", "dice", "jaccard", "accuracy", "sensitivity", "specificity", "hd95"]
    pd.testing.assert_frame_equal(runs[0][columns], runs[1][columns])


def test_runner_hands_a_case_wise_segmenter_slicesets_and_an_artifacts_folder(tmp_path, tiny_config, write_config):
    """`Segmenter.needs_cases`: the runner calls fit_cases / predict_cases with the input channels, case ids and
    geometry, no labels or poison flags, and binds the cell's artifacts folder under the output folder."""
    from benchmark import Segmenter, register_segmenter

    seen: dict = {}

    class CaseWise(Segmenter):
        """Records what it is handed; predicts the voxels above 0.5."""

        needs_cases = True

        def fit_cases(self, train, masks):
            seen["train"], seen["masks"], seen["artifacts"] = train, masks, self.context.artifacts_dir

        def predict_cases(self, data):
            seen["val"] = data
            return (data.images[:, 0] > 0.5).astype(np.uint8)

    register_segmenter("test-case-wise")(CaseWise)
    tiny_config["segmenters"] = [{"name": "test-case-wise"}]
    tiny_config["attacks"] = [{"name": "noise", "rates": [0.5]}]
    out = tmp_path / "results"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 0
    train, val = seen["train"], seen["val"]
    assert train.channels == val.channels == ("t1ce",) and train.geometry is not None and val.geometry is not None
    assert not train.labels.any() and not val.labels.any() and not train.poisoned.any()
    assert seen["masks"].shape == (len(train), *train.shape) and seen["masks"].any()
    assert len(set(train.cases) & set(val.cases)) == 0
    key = pd.read_csv(out / "results.csv")["cell"].iloc[0]
    assert seen["artifacts"] == out / "artifacts" / key
