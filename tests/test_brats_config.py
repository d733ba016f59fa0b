"""``configs/brats.yaml``: the BraTS 2021 study validates without its data and names the folder it expects."""

from __future__ import annotations

from pathlib import Path

from benchmark.cli.main import main
from benchmark.config import load_config

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "brats.yaml"


def test_the_study_is_the_papers_experiment_on_brats():
    config = load_config(CONFIG)
    assert config.dataset.name == "brats" and config.device == "cuda" and config.seeds == [0, 1, 2]
    assert config.task.inputs == ["t1ce"] and config.task.target == "ET"
    (attack, rates), = config.attacks
    assert attack.name == "gan-synthetic" and attack.params["source"] == ["t1", "t2", "flair"]
    assert [round(r * 6, 9) for r in rates] == [0, 1, 2, 3, 4, 5]


def test_validates_without_the_data_and_says_where_it_is_expected(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "valid; 18 cell(s)" in out
    assert f"data/BraTS2021 ({tmp_path / 'data' / 'BraTS2021'})" in out and "BraTS2021_00000_" in out


def test_a_run_without_the_data_stops_with_a_usage_error_naming_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere"
    assert main(["run", str(CONFIG), "--set", f"dataset.root={missing}", "--set", "device=cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: {missing}: the 'brats' data set folder does not exist" in err and "Set dataset.root" in err
