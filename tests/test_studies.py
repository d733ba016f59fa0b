"""One study per table: studies are recorded per run, listed, chosen; old databases still open."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from benchmark import METRICS, ResultStore, load_config
from benchmark.analysis import SUMMARY_COLUMNS
from benchmark.cli.main import main
from benchmark.store import SCHEMA_VERSION, CellRecord
from benchmark.studies import study_config, study_key


def _two_studies(tiny_config, write_config, out):
    assert main(["run", str(write_config(tiny_config, "clean.yaml")), "--out", str(out), "--quiet"]) == 0
    tiny_config["attacks"] = [{"name": "noise", "rates": [0.5]}, {"name": "none", "rates": [0]}]
    assert main(["run", str(write_config(tiny_config, "noise.yaml")), "--out", str(out), "--quiet"]) == 0
    with ResultStore(out / "results.sqlite") as store:
        return store.studies()


def test_two_configs_in_one_folder_are_two_studies(tiny_config, write_config, tmp_path, capsys):
    out = tmp_path / "out"
    studies = _two_studies(tiny_config, write_config, out)
    assert len(studies) == 2 and list(studies["cells"]) == [2, 1]  # the last run first; the clean cell is in both
    noise_key, clean_key = studies["study"]

    capsys.readouterr()
    assert main(["report", "--out", str(out), "--studies"]) == 0
    listing = capsys.readouterr().out
    assert noise_key in listing and clean_key in listing and "noise@0.5" in listing

    assert main(["report", "--out", str(out)]) == 0  # default: the study last run
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert sorted(summary["attack"]) == ["noise", "none"]
    assert f"study {noise_key}" in capsys.readouterr().out

    assert main(["report", "--out", str(out), "--study", clean_key[:6]]) == 0
    assert list(pd.read_csv(out / "summary.csv")["attack"]) == ["none"]
    assert "smallest detectable Dice difference: unknown with 1 seed" in capsys.readouterr().out

    assert main(["report", "--out", str(out), "--study", "zzzz"]) == 2
    assert main(["report", "--out", str(out), "--study", noise_key, "--study", clean_key]) == 2
    err = capsys.readouterr().err
    assert "no study with key 'zzzz'" in err and noise_key in err and clean_key in err


def test_the_study_key_ignores_seeds_executor_and_output_folder(tiny_config, write_config):
    base = load_config(write_config(tiny_config))
    other = load_config(write_config(tiny_config), ["seeds=[0,1,2]", "out=elsewhere", "executor.name=process", "executor.workers=2"])
    changed = load_config(write_config(tiny_config), ["split.seed=1"])
    key = lambda c, version="1.0": study_key(study_config(c, "fp", version))  # noqa: E731
    assert key(base) == key(other)
    assert key(base) != key(changed) and key(base) != key(base, "2.0")
    assert study_key(study_config(base, "fp", "1.0")) != study_key(study_config(base, "fp2", "1.0"))


def _record(key: str, attack: str, rate: float, dataset: str = "synthetic-brats") -> CellRecord:
    frame = pd.DataFrame({m: [0.8, 0.7] for m in METRICS}, index=pd.Index(["a", "b"], name="case"))
    for count in ("tp", "fp", "tn", "fn"):
        frame[count] = 1
    config = {"dataset": {"name": dataset}, "segmenter": {"name": "unet"}, "attack": {"name": attack}, "rate": rate,
              "defense": {"name": "none"}, "seed": 0}
    env = {"dataset_fingerprint": "fp", "versions": {"poisonbench": "0.1.0"}}
    return CellRecord(key, config, "finished", 1.0, 2.0, environment=env, case_metrics=frame)


def test_a_database_from_before_studies_opens_and_reports(tmp_path, capsys):
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        store.write(_record("clean", "none", 0.0))
        store.write(_record("hit", "noise", 0.5))
    with sqlite3.connect(path) as db:  # back to schema 1: no study tables
        db.execute("DROP TABLE study_cells")
        db.execute("DROP TABLE studies")
        db.execute("PRAGMA user_version=1")
    with ResultStore(path) as store:
        studies = store.studies()
        assert len(studies) == 1 and not studies.iloc[0]["recorded"] and studies.iloc[0]["cells"] == 2
        assert len(store.runs()) == 2  # nothing lost
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert "stored without a study" in capsys.readouterr().out
    assert sorted(pd.read_csv(tmp_path / "summary.csv")["attack"]) == ["noise", "none"]


def test_cells_of_two_data_sets_without_a_study_are_kept_apart(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.write(_record("a", "none", 0.0, "synthetic-brats"))
        store.write(_record("b", "none", 0.0, "brats"))
        assert len(store.studies()) == 2


def test_an_unknown_schema_is_refused(tmp_path):
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=7")
    with pytest.raises(Exception, match="schema 7 is not supported"):
        ResultStore(path)
