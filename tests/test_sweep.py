"""End-to-end ``bench run``: results files, resume, failing cells, predictions."""

from __future__ import annotations

import sqlite3

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from benchmark import Segmenter, register_segmenter
from benchmark.cli import main
from benchmark.outputs import RESULTS_CSV_COLUMNS


def _db_rows(path):
    with sqlite3.connect(path) as db:
        runs = db.execute("SELECT * FROM runs ORDER BY cell_key").fetchall()
        cases = db.execute("SELECT * FROM case_metrics ORDER BY cell_key, case_id").fetchall()
    return runs, cases


@pytest.mark.slow
def test_run_writes_results_and_resume_runs_nothing(tiny_config, write_config, tmp_path, capsys):
    tiny_config["attacks"] = [{"name": "none", "rates": [0, 0.5]}]
    config = write_config(tiny_config)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--save-predictions"]) == 0

    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns) == RESULTS_CSV_COLUMNS
    assert frame["rate"].dtype == float
    assert frame["cell"].nunique() == 2
    assert frame.groupby("cell")["case"].count().tolist() == [2, 2]  # 6 cases, 34 % validation
    assert frame[["dice", "jaccard", "accuracy", "sensitivity", "specificity"]].apply(lambda c: c.between(0, 1).all()).all()

    runs, cases = _db_rows(out / "results.sqlite")
    assert len(runs) == 2 and len(cases) == 4
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        statuses = {row[0] for row in db.execute("SELECT status FROM runs")}
        env = db.execute("SELECT environment_json FROM runs").fetchone()[0]
    assert statuses == {"finished"}
    assert '"torch"' in env and '"device": "cpu"' in env

    # predictions: one NIfTI per validation case, slices stacked on the last axis
    cell = frame["cell"].iloc[0]
    files = sorted((out / "predictions" / cell).glob("*.nii.gz"))
    assert [f.name.removesuffix(".nii.gz") for f in files] == sorted(frame[frame.cell == cell]["case"])
    volume = np.asarray(nib.load(files[0]).dataobj)
    assert volume.shape == (32, 32, 4) and set(np.unique(volume)) <= {0, 1}

    before_csv = (out / "results.csv").read_text()
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out)]) == 0
    assert "nothing to run" in capsys.readouterr().err
    assert _db_rows(out / "results.sqlite") == (runs, cases)
    assert (out / "results.csv").read_text() == before_csv

    # report reprints from the database
    assert main(["report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "finished" in printed and "dice" in printed


@pytest.mark.slow
def test_same_cell_twice_gives_identical_metrics(tiny_config, write_config, tmp_path):
    config = write_config(tiny_config)
    assert main(["run", str(config), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["run", str(config), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    a = pd.read_csv(tmp_path / "a" / "results.csv")
    b = pd.read_csv(tmp_path / "b" / "results.csv")
    pd.testing.assert_frame_equal(a, b)


class _Exploding(Segmenter):
    """Always fails, to test failure handling."""

    def fit(self, images, masks):
        raise RuntimeError("boom in fit")


class _WrongShape(Segmenter):
    """Predicts masks of the wrong shape."""

    def fit(self, images, masks):
        pass

    def predict(self, images):
        return np.zeros((len(images), 3, 3), np.uint8)


@pytest.mark.slow
def test_failing_cell_is_recorded_and_others_finish(tiny_config, write_config, tmp_path, capsys):
    register_segmenter("exploding")(_Exploding)
    register_segmenter("wrong-shape")(_WrongShape)
    tiny_config["segmenters"] = [{"name": "exploding"}, {"name": "wrong-shape"}, tiny_config["segmenters"][0]]
    out = tmp_path / "out"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cell(s) failed" in err
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = dict(db.execute("SELECT segmenter, status FROM runs").fetchall())
        errors = dict(db.execute("SELECT segmenter, error FROM runs").fetchall())
    assert rows == {"exploding": "failed", "wrong-shape": "failed", "unet": "finished"}
    assert "boom in fit" in errors["exploding"]
    assert "segmenter 'wrong-shape': predict() returned shape" in errors["wrong-shape"]
    assert pd.read_csv(out / "results.csv")["segmenter"].unique().tolist() == ["unet"]
    assert main(["report", "--out", str(out)]) == 1
    assert "failed" in capsys.readouterr().out


def test_report_without_database_exits_2(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "no results database" in capsys.readouterr().err


def test_unknown_input_channel_is_a_config_error(tiny_config, write_config, tmp_path, capsys):
    tiny_config["task"]["inputs"] = ["t1ce", "dwi"]
    assert main(["run", str(write_config(tiny_config)), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "task.inputs[1]: channel 'dwi' is not in data set 'synthetic-brats'" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    assert main(["run", "--no-such-flag"]) == 2


@pytest.mark.slow
def test_run_and_report_write_the_same_study_tables_over_every_seed(tiny_config, write_config, tmp_path, capsys):
    tiny_config["attacks"] = [{"name": "none", "rates": [0]}, {"name": "noise", "rates": [0.5]}]
    out = tmp_path / "out"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    # one seed: the study table is printed too, with "1 seed" where a p-value would be
    assert "per cell: mean [95 % CI over validation cases, one training run]" in err
    assert "over seeds and cases (summary.csv)" in err and "1 seed" in err

    tiny_config["seeds"] = [1]  # the same study, another seed, into the same folder
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 0
    after_run = {name: (out / name).read_text() for name in ("summary.csv", "defenses.csv", "results.csv")}
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["seeds"]) == {2} and set(summary["seed_list"]) == {"0 1"}
    assert sorted(summary["note"]) == ["2 seeds", "clean baseline"] and summary["p_value"].isna().all()
    assert pd.read_csv(out / "results.csv")["seed"].tolist().count(0) == pd.read_csv(out / "results.csv")["seed"].tolist().count(1)

    assert main(["report", "--out", str(out)]) == 0
    assert (out / "summary.csv").read_text() == after_run["summary.csv"]
