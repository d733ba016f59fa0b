"""``bench export --mlflow``: the store is read back with MLflow's own client.

One parent run per study, one nested run per cell with its resolved config as
parameters, per-cell metrics (mean and interval per metric, drop, detection figures),
the environment as tags and the figures as artifacts.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from benchmark import ResultStore, study_tables, summary_frame, summary_table
from benchmark.cli import main

mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed (pip install 'poisonbench[mlflow]')")
from mlflow.tracking import MlflowClient  # noqa: E402

FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"


@pytest.fixture(autouse=True)
def _file_store_opt_in_unset(monkeypatch):
    """Start each test without MLflow 3's file-store opt-in; the export must set it itself (undone after the test)."""
    monkeypatch.setenv(FILE_STORE_OPT_IN, "unset-by-test")
    monkeypatch.delenv(FILE_STORE_OPT_IN)


def _runs(uri: str, experiment: str = "poisonbench") -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    return client, client.search_runs([found.experiment_id], max_results=1000)


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


def _store(results_dir):
    with ResultStore(results_dir / "results.sqlite") as store:
        return store.runs(), store.case_metrics(), summary_frame(store).set_index("cell_key")


@pytest.mark.slow
def test_one_parent_per_study_and_one_nested_run_per_cell(results_dir, tmp_path, capsys):
    uri = (tmp_path / "mlruns").as_uri()
    assert main(["export", "--out", str(results_dir), "--mlflow", str(tmp_path / "mlruns")]) == 0
    assert "with 17 cell run(s)" in capsys.readouterr().out
    client, runs = _runs(uri)
    parents = [r for r in runs if r.data.tags.get("poisonbench.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("poisonbench.kind") == "cell"]
    assert len(parents) == 1 and len(children) == 17 and len(runs) == 18
    parent = parents[0]
    assert "mlflow.parentRunId" not in parent.data.tags
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.tags["poisonbench.study"] for r in runs} == {parent.data.tags["poisonbench.study"]}

    stored, cases, per_cell = _store(results_dir)
    assert sorted(r.data.tags["poisonbench.cell"] for r in children) == sorted(stored["cell_key"])
    by_key = {r.data.tags["poisonbench.cell"]: r for r in children}
    for _, cell in stored.iterrows():
        run = by_key[cell["cell_key"]]
        assert run.data.params == _flat(cell["config"])  # the resolved config, nothing else
        assert run.data.tags["env.versions.torch"] == "2.3.0" and run.data.tags["env.device"] == "cpu"
        assert run.data.tags["env.torch_threads"] == "1"
        assert run.info.status == ("FINISHED" if cell["status"] == "finished" else "FAILED")

    failed = next(r for r in children if r.info.status == "FAILED")
    assert failed.data.tags["poisonbench.error"] == "RuntimeError: boom" and "dice" not in failed.data.metrics

    # per-cell metrics: the cell's mean over its cases and the per-cell table's interval
    for run in children:
        key = run.data.tags["poisonbench.cell"]
        if run.info.status != "FINISHED":
            continue
        mine = cases[cases["cell"] == key]
        assert run.data.metrics["dice"] == pytest.approx(mine["dice"].mean(), abs=1e-12)
        assert run.data.metrics["cases"] == len(mine) == 8
        for metric in ("dice", "sensitivity", "specificity"):
            assert run.data.metrics[f"{metric}_ci_low"] == pytest.approx(per_cell.loc[key, f"{metric}_ci_low"])
            assert run.data.metrics[f"{metric}_ci_low"] < run.data.metrics[metric] < run.data.metrics[f"{metric}_ci_high"]


@pytest.mark.slow
def test_drop_group_and_detection_metrics(results_dir, tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    assert main(["export", "--out", str(results_dir), "--mlflow", uri]) == 0
    _, runs = _runs(uri)
    stored, cases, _ = _store(results_dir)
    config = {r["cell_key"]: r["config"] for _, r in stored.iterrows()}

    def find(rate: float, defense: str, seed: int):
        return next(r for r in runs if r.data.tags.get("poisonbench.kind") == "cell" and r.info.status == "FINISHED"
                    and config[r.data.tags["poisonbench.cell"]]["rate"] == rate
                    and config[r.data.tags["poisonbench.cell"]]["defense"]["name"] == defense
                    and config[r.data.tags["poisonbench.cell"]]["seed"] == seed
                    and (rate > 0 or config[r.data.tags["poisonbench.cell"]]["attack"]["name"] == "none"))

    def dice(run) -> np.ndarray:
        return cases[cases["cell"] == run.data.tags["poisonbench.cell"]].set_index("case")["dice"]

    # the drop of a cell: the same seed's clean cell minus this one, paired over cases
    clean, attacked = find(0.0, "none", 1), find(1.0, "none", 1)
    assert "drop" not in clean.data.metrics
    assert attacked.data.metrics["drop"] == pytest.approx(float((dice(clean) - dice(attacked)).mean()), abs=1e-9)
    assert attacked.data.metrics["drop_ci_low"] < attacked.data.metrics["drop"] < attacked.data.metrics["drop_ci_high"]

    # the group over seeds: the numbers of summary.csv (benchmark.summary_table)
    summary = summary_table(*study_tables(stored, cases))
    row = summary[(summary["attack"] == "noise") & (summary["rate"] == 1.0) & (summary["defense"] == "none")].iloc[0]
    assert attacked.data.metrics["group.drop"] == pytest.approx(row["drop"])
    assert attacked.data.metrics["group.drop_ci_high"] == pytest.approx(row["drop_ci_high"])
    assert attacked.data.metrics["group.seeds"] == 2

    # detection figures: what the defense reported for this cell
    defended = find(1.0, "spectral", 0)
    assert defended.data.metrics["detection.auroc"] == pytest.approx(0.9)
    assert defended.data.metrics["detection.f1"] == pytest.approx(0.6)
    assert defended.data.metrics["group.dice_without"] == pytest.approx(row["dice"])
    assert "attack.psnr" in attacked.data.metrics and "attack.ssim" not in attacked.data.metrics  # NaN is left out


@pytest.mark.slow
def test_figures_and_tables_are_artifacts(results_dir, tmp_path):
    # an example figure as the runner draws it, next to the results
    (results_dir / "figures").mkdir()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(results_dir / "figures" / "noise-examples.png")
    uri = (tmp_path / "mlruns").as_uri()
    assert main(["export", "--out", str(results_dir), "--mlflow", uri]) == 0
    client, runs = _runs(uri)
    parent = next(r for r in runs if r.data.tags.get("poisonbench.kind") == "study")
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "defenses.csv", "figures"} <= top
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {"figures/noise-dose-response.png", "figures/noise-examples.png"}
    local = client.download_artifacts(parent.info.run_id, "figures/noise-dose-response.png", str(tmp_path))
    assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    attacked = next(r for r in runs if r.data.tags.get("poisonbench.attack") == "noise" and r.info.status == "FINISHED")
    assert {a.path for a in client.list_artifacts(attacked.info.run_id, "figures")} == figures
    cases_csv = client.download_artifacts(attacked.info.run_id, "cases.csv", str(tmp_path / "c"))
    header = open(cases_csv).readline().strip().split(",")
    assert {"case", "dice", "tp", "fp", "tn", "fn"} <= set(header)
    clean = next(r for r in runs if r.data.tags.get("poisonbench.attack") == "none" and r.info.status == "FINISHED")
    assert {a.path for a in client.list_artifacts(clean.info.run_id)} == {"cases.csv"}  # no attack, no attack figure


@pytest.mark.slow
def test_export_again_replaces_the_study_runs(results_dir, tmp_path, capsys):
    uri = (tmp_path / "mlruns").as_uri()
    assert main(["export", "--out", str(results_dir), "--mlflow", uri]) == 0
    _, first = _runs(uri)
    assert main(["export", "--out", str(results_dir), "--mlflow", uri]) == 0
    assert "replaced 18 run(s)" in capsys.readouterr().out
    client, second = _runs(uri)
    assert len(second) == 18  # the active runs: one export's
    assert not {r.info.run_id for r in first} & {r.info.run_id for r in second}
    assert client.get_run(first[0].info.run_id).info.lifecycle_stage == "deleted"


@pytest.mark.slow
def test_default_is_a_local_mlruns_file_store(results_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--out", str(results_dir), "--mlflow", "--experiment", "paper"]) == 0
    assert (tmp_path / "mlruns").is_dir()
    _, runs = _runs((tmp_path / "mlruns").as_uri(), "paper")
    assert len(runs) == 18


@pytest.mark.slow
def test_sqlite_tracking_uri(results_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a database store keeps artifacts where MLflow puts them: ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["export", "--out", str(results_dir), "--mlflow", uri]) == 0
    client, runs = _runs(uri)
    assert len(runs) == 18 and (tmp_path / "mlflow.db").is_file()
    parent = next(r for r in runs if r.data.tags.get("poisonbench.kind") == "study")
    assert "summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_bundle_and_mlflow_in_one_call(results_dir, tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    assert main(["export", "--out", str(results_dir), "--to", str(tmp_path / "s.json"), "--mlflow", uri]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["kind"] == "poisonbench-submission"
    assert len(_runs(uri)[1]) == 18


def test_nothing_to_write_exits_2(results_dir, capsys):
    assert main(["export", "--out", str(results_dir)]) == 2
    assert "--to FILE" in capsys.readouterr().err


def test_without_mlflow_exit_2_with_the_install_command(results_dir, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    assert main(["export", "--out", str(results_dir), "--mlflow", str(tmp_path / "mlruns")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'poisonbench[mlflow]'" in err and "not installed" in err
    assert not (tmp_path / "mlruns").exists()


def test_missing_database_exits_2(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "none"), "--mlflow", str(tmp_path / "mlruns")]) == 2
    assert "no results database" in capsys.readouterr().err


def _measure_hd95(results_dir) -> str:
    """HD95 (mm) on every case of every finished cell but one, whose key is returned (its cases left unmeasured)."""
    import sqlite3

    with sqlite3.connect(results_dir / "results.sqlite") as db:
        keys = [row[0] for row in db.execute("SELECT DISTINCT cell_key FROM case_metrics ORDER BY cell_key")]
        db.execute("UPDATE case_metrics SET hd95 = 2.0 + (rowid % 5) * 1.5 + (dice < 0.7) * 10")
        db.execute("UPDATE case_metrics SET hd95 = NULL WHERE cell_key = ?", (keys[-1],))
    return keys[-1]


@pytest.mark.slow
def test_hd95_per_cell_and_per_group(results_dir, tmp_path):
    unmeasured = _measure_hd95(results_dir)
    uri = (tmp_path / "mlruns").as_uri()
    assert main(["export", "--out", str(results_dir), "--mlflow", uri]) == 0
    _, runs = _runs(uri)
    stored, cases, _ = _store(results_dir)
    summary = summary_table(*study_tables(stored, cases))
    children = {r.data.tags["poisonbench.cell"]: r for r in runs if r.data.tags.get("poisonbench.kind") == "cell" and r.info.status == "FINISHED"}
    config = {r["cell_key"]: r["config"] for _, r in stored.iterrows()}
    for key, run in children.items():
        mine = cases[cases["cell"] == key]["hd95"]
        if key == unmeasured:  # no case measured: no hd95, not NaN
            assert not any(name.startswith("hd95") for name in run.data.metrics), run.data.metrics
            continue
        assert run.data.metrics["hd95"] == pytest.approx(mine.mean(), abs=1e-12)
        assert run.data.metrics["hd95_std"] == pytest.approx(mine.std(ddof=1), abs=1e-12)
        assert run.data.metrics["hd95_ci_low"] <= run.data.metrics["hd95"] <= run.data.metrics["hd95_ci_high"]
    # the group's HD95 and its rise over the clean cells: the numbers of summary.csv
    attacked = next(r for k, r in children.items() if config[k]["rate"] == 1.0 and config[k]["defense"]["name"] == "none")
    row = summary[(summary["attack"] == "noise") & (summary["rate"] == 1.0) & (summary["defense"] == "none")].iloc[0]
    assert np.isfinite(row["hd95_rise"]) and row["hd95_rise"] > 0
    for column in ("hd95", "hd95_ci_low", "hd95_ci_high", "hd95_rise", "hd95_rise_ci_low", "hd95_rise_ci_high"):
        assert attacked.data.metrics[f"group.{column}"] == pytest.approx(row[column]), column
    assert all(np.isfinite(v) for r in runs for v in r.data.metrics.values())  # nothing NaN reaches MLflow


@pytest.mark.slow
def test_a_failed_export_leaves_the_earlier_one_intact(results_dir, tmp_path, monkeypatch):
    import leaderboard.tracking as tracking

    uri = (tmp_path / "mlruns").as_uri()
    assert main(["export", "--out", str(results_dir), "--mlflow", uri]) == 0
    client, first = _runs(uri)
    first_ids = {r.info.run_id for r in first}
    assert len(first_ids) == 18

    # the tracking store fails on the fifth cell of the second export
    log_cell, calls = tracking._log_cell, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("tracking server went away")
        return log_cell(*args, **kwargs)

    monkeypatch.setattr(tracking, "_log_cell", failing)
    with pytest.raises(RuntimeError, match="went away"):
        tracking.export_mlflow(results_dir, uri)
    _, after = _runs(uri)
    assert {r.info.run_id for r in after} == first_ids  # the earlier export, whole; nothing half-written left active
    assert all(client.get_run(i).info.lifecycle_stage == "active" for i in first_ids)

    # once it succeeds, the new runs replace the earlier ones, and only those
    monkeypatch.setattr(tracking, "_log_cell", log_cell)
    export = tracking.export_mlflow(results_dir, uri)
    _, final = _runs(uri)
    final_ids = {r.info.run_id for r in final}
    assert export.replaced == 18 and final_ids == {export.parent_run_id, *export.cell_run_ids.values()}
    assert len(final_ids) == 18 and not final_ids & first_ids
    assert all(client.get_run(i).info.lifecycle_stage == "deleted" for i in first_ids)
