"""The process and ray executors give the local executor's results; lost workers are re-run."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

import fault_plugins  # noqa: F401 - registers the test plugins
from benchmark.cli import main


def _sorted_results(out):
    frame = pd.read_csv(out / "results.csv")
    return frame.sort_values(["cell", "case"]).reset_index(drop=True)


@pytest.fixture
def sweep_config(tiny_config, write_config):
    tiny_config["attacks"] = [{"name": "none", "rates": [0, 0.5]}]
    tiny_config["seeds"] = [0, 1]
    return write_config(tiny_config)


@pytest.mark.slow
def test_process_executor_matches_local(sweep_config, tmp_path):
    assert main(["run", str(sweep_config), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    assert main(["run", str(sweep_config), "--out", str(tmp_path / "proc"), "--quiet", "--executor", "process", "--workers", "2"]) == 0
    pd.testing.assert_frame_equal(_sorted_results(tmp_path / "local"), _sorted_results(tmp_path / "proc"))


@pytest.mark.slow
def test_ray_executor_matches_local(sweep_config, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'poisonbench[ray]')")
    assert main(["run", str(sweep_config), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    assert main(["run", str(sweep_config), "--out", str(tmp_path / "ray"), "--quiet", "--executor", "ray", "--workers", "2"]) == 0
    pd.testing.assert_frame_equal(_sorted_results(tmp_path / "local"), _sorted_results(tmp_path / "ray"))


def test_killed_worker_cell_runs_next_time_and_finished_cells_do_not(tiny_config, write_config, tmp_path):
    marker = tmp_path / "kill-once"
    marker.touch()
    tiny_config["segmenters"] = [
        {"name": "test-threshold"},
        {"name": "test-threshold", "kill_marker": str(marker)},
    ]
    config = write_config(tiny_config)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--executor", "process", "--workers", "1"]) == 1
    with sqlite3.connect(out / "results.sqlite") as db:
        first = db.execute("SELECT cell_key, finished_at FROM runs WHERE status = 'finished'").fetchall()
    assert len(first) == 1  # the killed worker's cell left no row
    assert not marker.exists()

    assert main(["run", str(config), "--out", str(out), "--quiet", "--executor", "process", "--workers", "1"]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = db.execute("SELECT cell_key, finished_at FROM runs WHERE status = 'finished'").fetchall()
    assert len(rows) == 2
    assert first[0] in rows  # the finished cell was kept, not re-run


@pytest.mark.parametrize(
    "executor, fragment",
    [
        ({"name": "slurm"}, "executor.name:"),
        ({"name": "local", "workers": 4}, "executor.workers: the local executor runs one cell at a time"),
        ({"name": "process", "workers": 0}, "executor.workers:"),
        ({"name": "process", "num_gpus": 1}, "executor.num_gpus: only the ray executor"),
        ({"name": "ray", "num_cpus": -1}, "executor.num_cpus:"),
        ({"name": "ray", "colour": "red"}, "executor.colour: unknown parameter"),
        ({"name": "local", "threads": 0}, "executor.threads:"),
    ],
)
def test_bad_executor_config_exits_2(executor, fragment, tiny_config, write_config, capsys):
    tiny_config["executor"] = executor
    assert main(["validate", str(write_config(tiny_config))]) == 2
    assert fragment in capsys.readouterr().err


def test_workers_flag_overrides_config(tiny_config, write_config, capsys, tmp_path):
    assert main(["run", str(write_config(tiny_config)), "--workers", "3", "--out", str(tmp_path)]) == 2
    assert "executor.workers: the local executor" in capsys.readouterr().err


def test_gpus_per_cell_is_accepted_for_ray(tiny_config, write_config, capsys):
    from benchmark import validate_config

    tiny_config["executor"] = {"name": "ray", "workers": 4, "gpus_per_cell": 0.25}
    assert main(["validate", str(write_config(tiny_config))]) == 0
    assert validate_config(tiny_config).executor.num_gpus == 0.25


def _recorded_threads(out):
    with sqlite3.connect(out / "results.sqlite") as db:
        return {json.loads(row[0])["torch_threads"] for row in db.execute("SELECT environment_json FROM runs")}


@pytest.mark.slow
@pytest.mark.parametrize("executor", [{"name": "local", "threads": 1}, {"name": "process", "workers": 1, "threads": 1}])
def test_executor_threads_fix_every_cells_torch_threads(executor, tiny_config, write_config, tmp_path):
    import torch

    tiny_config["executor"] = executor
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["run", str(write_config(tiny_config)), "--out", str(tmp_path), "--quiet"]) == 0
        assert _recorded_threads(tmp_path) == {1}
        assert torch.get_num_threads() == 2  # the driver's own setting is given back
    finally:
        torch.set_num_threads(threads_before)


class _CellFails(Exception):
    pass


@pytest.mark.parametrize("ending", ["cell raises", "closed early"])
def test_local_executor_gives_back_the_thread_count_however_it_ends(ending):
    import torch

    from benchmark.executors import LocalExecutor

    def run_cell(cell):
        assert torch.get_num_threads() == 1
        if ending == "cell raises":
            raise _CellFails
        return cell

    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        records = LocalExecutor(run_cell, threads=1).run(["a", "b"])
        if ending == "cell raises":
            with pytest.raises(_CellFails):
                next(records)
        else:
            assert next(records) == "a"
            records.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads_before)
