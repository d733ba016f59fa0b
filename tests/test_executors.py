"""The process and ray executors give the local executor's results; lost workers are re-run.

The process executor keeps one warm pool of workers for every cell of a sweep, builds each
fit that cells share once (before those cells), and loses only the cell of a worker that dies.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import Field

import fault_plugins  # noqa: F401 - registers the test plugins
from benchmark import Attack, PluginParams, SliceSet, artifact_dir, build_artifact, register_attack, validate_config
from benchmark.cli import main
from benchmark.executors import PREPARE, CellQueue, ProcessExecutor, WorkerSpec, plugin_modules, shares_fit
from benchmark.runner import plan_sweep
from benchmark.sweep import run_sweep


@register_attack("test-shared-fit")
class SharedFitAttack(Attack):
    """Builds a cached artifact in ``fit`` (as gan-synthetic caches its generator) and logs each build."""

    class Params(PluginParams):
        build_log: str = Field(description="file that gets one line per build: the seed of its generator stream")
        build_s: float = Field(1.0, ge=0, description="how long a build takes")

    def fit(self, pool: SliceSet, rng: np.random.Generator) -> None:
        def write(tmp: Path) -> None:
            with open(self.params.build_log, "a") as log:
                log.write(f"{self.context.seed}\n")
            time.sleep(self.params.build_s)  # long enough for a second worker to start a cell of the same setting
            (tmp / "artifact.txt").write_text(str(self.context.seed))

        build_artifact(artifact_dir("test-shared-fit", str(self.context.seed), root=self.context.cache_dir), write)

    def poison(self, train: SliceSet, rate: float, rng: np.random.Generator) -> SliceSet:
        return train


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
        ({"name": "kubernetes"}, "executor.name:"),
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


def _threshold_config(tiny_config, **attack):
    tiny_config["segmenters"] = [{"name": "test-threshold"}]
    tiny_config["attacks"] = [{"rates": [0, 0.5], **attack}] if attack else tiny_config["attacks"]
    return tiny_config


def test_cell_queue_fits_each_shared_setting_first_and_once(tiny_config, tmp_path):
    tiny_config["attacks"] = [
        {"name": "none", "rates": [0, 0.5]},
        {"name": "test-shared-fit", "build_log": str(tmp_path / "log"), "rates": [0, 0.5, 1]},
        {"name": "test-shared-fit", "build_log": str(tmp_path / "log"), "build_s": 2, "rates": [0.5]},
    ]
    tiny_config["seeds"] = [0, 1]
    cells = plan_sweep(validate_config(tiny_config)).cells
    by_key = {cell.key: cell for cell in cells}
    assert [shares_fit(cell) for cell in cells] == [cell.attack.name == "test-shared-fit" for cell in cells]
    queue = CellQueue(cells)
    assert len(queue) == len(cells) + 2  # one prepare per seed of the three-rate setting

    first = [queue.next() for _ in range(4)]
    # the long poles first: one prepare per shared setting, then the cells that fit alone (build_s=2, one rate)
    assert [task.kind for task in first] == [PREPARE, PREPARE, "cell", "cell"]
    assert sorted(by_key[task.key].seed for task in first[:2]) == [0, 1]
    assert all(by_key[task.key].attack.params["build_s"] == 2 for task in first[2:])
    rest = []
    while (task := queue.next()) is not None:
        rest.append(task)
    assert {by_key[task.key].attack.name for task in rest} == {"none"}  # the setting's cells wait for its fit
    assert queue.remaining() and all(by_key[key].attack.name == "test-shared-fit" for key in queue.remaining())

    queue.ended(first[0])  # built (or lost): its three cells may go
    released = [queue.next() for _ in range(3)]
    assert queue.next() is None
    seed = by_key[first[0].key].seed
    assert sorted(by_key[task.key].rate for task in released) == [0, 0.5, 1]
    assert {by_key[task.key].seed for task in released} == {seed}
    queue.ended(first[1])
    assert len(queue) == 3 and len(queue.remaining()) == 3


def _spec(config: dict, threads: int = 1) -> tuple[WorkerSpec, list]:
    import os

    validated = validate_config(config)
    plan = plan_sweep(validated)
    plan.source.load()  # the data cache the workers read
    spec = WorkerSpec(validated.resolved(), "cpu", os.environ["POISONBENCH_CACHE"], None, plugin_modules=plugin_modules(validated))
    return spec, plan.cells


def test_warm_pool_is_started_once_and_reused_across_cells_and_runs(tiny_config):
    tiny_config = _threshold_config(tiny_config)
    tiny_config["attacks"] = [{"name": "none", "rates": [0, 0.25, 0.5, 0.75]}]
    spec, cells = _spec(tiny_config)
    with ProcessExecutor(spec, workers=2, threads=1).start(len(cells)) as executor:
        warm = executor.worker_pids()
        assert len(warm) == 2 and executor.started == 2  # started before any cell was handed out
        first = list(executor.run(cells[:3]))
        second = list(executor.run(cells[3:]))
        assert [r.status for r in first + second] == ["finished"] * 4
        assert {r.key for r in first + second} == {cell.key for cell in cells}
        assert executor.worker_pids() == warm and executor.started == 2 and not executor.lost
    assert executor.worker_pids() == []


def test_shared_fit_is_built_once_per_setting_with_two_workers(tiny_config, write_config, tmp_path):
    log = tmp_path / "builds"
    tiny_config = _threshold_config(tiny_config, name="test-shared-fit", build_log=str(log), build_s=1.0)
    tiny_config["attacks"][0]["rates"] = [0, 0.5, 1]
    tiny_config["executor"] = {"name": "process", "workers": 2, "threads": 1}
    assert main(["run", str(write_config(tiny_config)), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    # three cells share the setting's artifact: one build, though two workers start at once
    assert len(log.read_text().split()) == 1

    tiny_config["seeds"] = [1, 2]  # two more settings, one per seed
    assert main(["run", str(write_config(tiny_config)), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    builds = log.read_text().split()
    assert len(builds) == len(set(builds)) == 3


@pytest.mark.slow
def test_process_executor_with_a_trained_generator_matches_local(tiny_config, write_config, tmp_path, monkeypatch):
    """The generator is built by a worker's prepare task under the cells' thread count: the same one local trains."""
    tiny_config["attacks"] = [
        {"name": "gan-synthetic", "epochs": 1, "width": 8, "blocks": 2, "crop": 0, "holdout_cases": 1, "rates": [0, 0.5, 1]}
    ]
    tiny_config["segmenters"][0]["epochs"] = 1
    outs = {}
    for executor in ({"name": "local", "threads": 1}, {"name": "process", "workers": 2, "threads": 1}):
        monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path / f"cache-{executor['name']}"))  # each trains its own
        config = copy.deepcopy(tiny_config)
        config["executor"] = executor
        outs[executor["name"]] = out = tmp_path / executor["name"]
        assert main(["run", str(write_config(config, f"{executor['name']}.yaml")), "--out", str(out), "--quiet"]) == 0
    with sqlite3.connect(outs["process"] / "results.sqlite") as db:
        reports = [json.loads(row[0]) for row in db.execute("SELECT attack_report_json FROM runs")]
    assert all(report["generator_cached"] for report in reports)  # built once, before the cells, by a prepare task
    pd.testing.assert_frame_equal(_sorted_results(outs["local"]), _sorted_results(outs["process"]))
    quality = ["cell", "mae", "psnr", "ssim"]
    local, process = (pd.read_csv(outs[name] / "attacks.csv")[quality].sort_values("cell").reset_index(drop=True) for name in outs)
    pd.testing.assert_frame_equal(local, process)  # the same generator


def test_worker_death_loses_only_its_cell_and_the_pool_carries_on(tiny_config, write_config, tmp_path):
    marker = tmp_path / "kill-once"
    marker.touch()
    # four cells, one of which kills its worker (the others differ in a pause that changes nothing)
    tiny_config["segmenters"] = [{"name": "test-threshold", "sleep_s": pause} for pause in (0, 0.1, 0.2)]
    tiny_config["segmenters"].insert(1, {"name": "test-threshold", "kill_marker": str(marker)})
    tiny_config["executor"] = {"name": "process", "workers": 2, "threads": 1}
    config = validate_config(tiny_config)
    result = run_sweep(config, tmp_path / "out", quiet=True)
    assert not marker.exists()
    killer = [cell.key for cell in plan_sweep(config).cells if cell.segmenter.params.get("kill_marker")]
    assert result.lost == killer and len(result.ran) == 3 and not result.failed and result.exit_code == 1

    again = run_sweep(config, tmp_path / "out", quiet=True)  # the lost cell is still pending, and only it
    assert again.ran == result.lost and again.exit_code == 0
