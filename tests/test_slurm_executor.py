"""The slurm executor: jobs on a real one-node cluster and through submitit's local executor.

The real-cluster tests need ``sbatch`` and a node that takes jobs: ``bash .ci/slurm-up.sh``
starts one (CI runs it before the tests). Jobs run the driver's Python, so they import this
module (its test segmenter) through ``PYTHONPATH``, which sbatch passes on to the job.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_sweep import TINY_CONFIG
from pydantic import Field

from benchmark import PluginParams, Segmenter, register_segmenter, validate_config
from benchmark.cli import main
from benchmark.executors import WorkerSpec, plugin_modules
from benchmark.runner import plan_sweep

TESTS = Path(__file__).resolve().parent


@register_segmenter("test-slurm-hold")
class HoldingSegmenter(Segmenter):
    """Predicts the brightest pixels; its fit waits while a hold file exists, so a test can cancel its job."""

    class Params(PluginParams):
        started: str | None = Field(None, description="file touched when fit starts")
        hold: str | None = Field(None, description="while this file exists (at most 5 minutes), fit waits")

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        if self.params.started:
            Path(self.params.started).touch()
        deadline = time.time() + 300
        while self.params.hold and Path(self.params.hold).exists() and time.time() < deadline:
            time.sleep(0.2)
        self.threshold = float(np.quantile(images[:, 0], 0.99))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return (images[:, 0] > self.threshold).astype(np.uint8)


def _cluster_problem() -> str | None:
    """Why the real-cluster tests cannot run here, or None."""
    if importlib.util.find_spec("submitit") is None:
        return "the slurm extra is not installed (pip install 'poisonbench[slurm]')"
    missing = [tool for tool in ("sbatch", "sinfo", "squeue", "scancel", "srun") if shutil.which(tool) is None]
    if missing:
        return f"Slurm's {', '.join(missing)} not on PATH; start a one-node cluster with: bash .ci/slurm-up.sh"
    try:
        states = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo did not answer ({exc}); start the cluster with: bash .ci/slurm-up.sh"
    if not {"idle", "mixed", "allocated", "completing"} & set(states):
        return f"no Slurm node takes jobs (sinfo: {states or 'no answer'}); start the cluster with: bash .ci/slurm-up.sh"
    return None


needs_cluster = pytest.mark.skipif(_cluster_problem() is not None, reason=_cluster_problem() or "")
needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None, reason="the slurm extra is not installed (pip install 'poisonbench[slurm]')"
)


@pytest.fixture
def jobs_import_tests(monkeypatch):
    """Jobs (fresh Pythons, on the cluster or here) find this module and the test plugins."""
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}:{Path(__file__).resolve().parents[1]}")


def _sorted_results(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv").sort_values(["cell", "case"]).reset_index(drop=True)


def _runs(out: Path) -> dict[str, tuple[str, float, str | None]]:
    with sqlite3.connect(out / "results.sqlite") as db:
        return {key: (status, finished, error) for key, status, finished, error in
                db.execute("SELECT cell_key, status, finished_at, error FROM runs")}


def _two_cells(executor: dict) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["attacks"] = [{"name": "none", "rates": [0, 0.5]}]
    config["executor"] = executor
    return config


def _run(config: dict, folder: Path) -> Path:
    """Run a sweep of ``config`` into ``folder/out``; returns the output folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(folder / "bench.yaml"), "--out", str(folder / "out"), "--quiet"]) == 0
    return folder / "out"


@pytest.fixture(scope="module")
def local_results(tmp_path_factory) -> pd.DataFrame:
    """The two-cell sweep's per-case metrics from the local executor at one thread (run once for the module)."""
    return _sorted_results(_run(_two_cells({"name": "local", "threads": 1}), tmp_path_factory.mktemp("local")))


def _matches_local(local_results: pd.DataFrame, tmp_path: Path, executor: dict) -> None:
    """The two-cell sweep through ``executor`` gives the local executor's per-case metrics at one thread."""
    out = _run(_two_cells(executor), tmp_path)
    assert len(local_results) > 0
    pd.testing.assert_frame_equal(local_results, _sorted_results(out))
    assert json.loads((out / "slurm-jobs.json").read_text()) == {}  # every job collected


# validation and job parameters


def test_missing_submitit_fails_validation_with_the_install_command(tiny_config, write_config, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else find_spec(name, *a))
    tiny_config["executor"] = {"name": "slurm", "partition": "gpu"}
    assert main(["validate", str(write_config(tiny_config))]) == 2
    err = capsys.readouterr().err
    assert "executor.name: 'slurm' needs submitit" in err and "pip install 'poisonbench[slurm]'" in err


@pytest.mark.parametrize(
    "executor, fragment",
    [
        ({"name": "process", "partition": "gpu"}, "executor.partition: only the slurm executor"),
        ({"name": "ray", "sbatch": {"qos": "high"}}, "executor.sbatch: only the slurm executor"),
        ({"name": "slurm", "cluster": "aws"}, "executor.cluster:"),
        ({"name": "slurm", "timeout_min": 0}, "executor.timeout_min:"),
        ({"name": "slurm", "mem_gb": -1}, "executor.mem_gb:"),
        ({"name": "slurm", "num_gpus": 1}, "executor.num_gpus: only the ray executor"),
        ({"name": "slurm", "gres": "gpu:1"}, "executor.gres:"),
    ],
)
def test_bad_slurm_config_exits_2(executor, fragment, tiny_config, write_config, capsys):
    tiny_config["executor"] = executor
    assert main(["validate", str(write_config(tiny_config))]) == 2
    assert fragment in capsys.readouterr().err


@needs_submitit
@pytest.mark.skipif(shutil.which("srun") is None, reason="submitit writes Slurm scripts only where srun is on PATH (bash .ci/slurm-up.sh)")
def test_config_becomes_the_jobs_sbatch_options(tiny_config, tmp_path):
    from benchmark.slurm_executor import SlurmExecutor

    tiny_config["executor"] = {
        "name": "slurm", "partition": "gpu", "account": "lab42", "timeout_min": 90, "cpus_per_task": 8,
        "gpus_per_node": 1, "mem_gb": 1.5, "sbatch": {"qos": "high", "constraint": "a100"}, "setup": ["module load cuda"],
    }
    config = validate_config(tiny_config)
    spec = WorkerSpec(config.resolved(), "cuda", str(tmp_path / "cache"), None, out_dir=str(tmp_path / "out"))
    executor = SlurmExecutor(spec, config.executor, tmp_path / "out")
    script = executor._submitter()._make_submission_file_text("true", "uid")
    for line in ("--partition=gpu", "--account=lab42", "--time=90", "--cpus-per-task=8", "--gpus-per-node=1",
                 "--mem=1536M", "--qos=high", "--constraint=a100"):
        assert f"#SBATCH {line}\n" in script
    assert "\nmodule load cuda\n" in script
    assert executor.spec.threads == 8  # a cell's torch threads: its CPUs
    assert str(executor.folder).startswith(str((tmp_path / "out").resolve()))


@needs_submitit
@pytest.mark.parametrize(
    "device, gpus, expected",
    [("auto", 0, "cpu"), ("auto", 1, "cuda"), ("cpu", 2, "cpu"), ("cuda", 1, "cuda"), ("cuda", 0, "error")],
)
def test_jobs_run_on_the_device_their_gpus_allow(device, gpus, expected):
    from benchmark import BenchError
    from benchmark.config import ExecutorConfig
    from benchmark.slurm_executor import job_device

    config = ExecutorConfig(name="slurm", gpus_per_node=gpus)
    if expected == "error":
        with pytest.raises(BenchError, match="executor.gpus_per_node: device: cuda needs a GPU in each job"):
            job_device(device, config)
    else:
        assert job_device(device, config) == expected


# submitit's local executor: the jobs as processes here


@pytest.mark.slow
@needs_submitit
def test_cluster_local_matches_local_executor(local_results, tmp_path, jobs_import_tests):
    _matches_local(local_results, tmp_path, {"name": "slurm", "cluster": "local", "threads": 1})


def _spec(config: dict, out: Path) -> tuple[WorkerSpec, list]:
    import os

    validated = validate_config(config)
    plan = plan_sweep(validated)
    plan.source.load()  # the data cache the jobs read
    spec = WorkerSpec(validated.resolved(), "cpu", os.environ["POISONBENCH_CACHE"], None,
                      plugin_modules=plugin_modules(validated), out_dir=str(out))
    return spec, validated, plan.cells


@pytest.mark.slow
@needs_submitit
def test_interrupted_driver_collects_running_and_finished_jobs_and_reruns_lost_ones(tiny_config, tmp_path, jobs_import_tests):
    from benchmark.slurm_executor import SlurmExecutor

    hold = tmp_path / "hold"
    hold.touch()
    tiny_config["segmenters"] = [{"name": "test-slurm-hold"}, {"name": "test-slurm-hold", "hold": str(hold)}]
    tiny_config["executor"] = {"name": "slurm", "cluster": "local", "threads": 1}
    out = tmp_path / "out"
    spec, config, cells = _spec(tiny_config, out)
    free, held = cells
    assert held.segmenter.params["hold"]

    first = SlurmExecutor(spec, config.executor, out, poll_s=0.2)
    records = first.run(cells)
    assert next(records).key == free.key  # the other job waits on the hold file
    records.close()  # the driver stops; its jobs go on
    entries = json.loads((out / "slurm-jobs.json").read_text())
    assert held.key in entries  # kept in the output folder for the next run

    hold.unlink()
    second = SlurmExecutor(spec, config.executor, out, poll_s=0.2)
    again = list(second.run([held]))
    assert [(r.key, r.status) for r in again] == [(held.key, "finished")]
    assert second.submitted == [] and second.collected == [held.key]  # picked up, not run again

    # a job that ended without a result (its process gone, no result file) is submitted again
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    entries[held.key]["job_id"] = str(dead.pid)
    (out / "slurm-jobs.json").write_text(json.dumps(entries))
    third = SlurmExecutor(spec, config.executor, out, poll_s=0.2)
    assert [(r.key, r.status) for r in third.run([held])] == [(held.key, "finished")]
    assert third.submitted == [held.key] and third.collected == []


# the real one-node cluster (.ci/slurm-up.sh)


@pytest.mark.slow
@needs_cluster
def test_real_slurm_sweep_matches_local(local_results, tmp_path, jobs_import_tests):
    _matches_local(local_results, tmp_path, {"name": "slurm", "threads": 1, "timeout_min": 10})


@needs_cluster
def test_job_that_fails_before_the_cell_is_recorded_with_the_schedulers_state(tiny_config, write_config, tmp_path):
    tiny_config["segmenters"] = [{"name": "test-slurm-hold"}]
    tiny_config["executor"] = {"name": "slurm", "threads": 1, "setup": ["echo 'no such module' >&2", "exit 3"]}
    out = tmp_path / "out"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 1
    [(status, _, error)] = _runs(out).values()
    assert status == "failed"
    assert re.fullmatch(r"slurm job \d+ ended FAILED \(reason: NonZeroExitCode\)", error.strip().splitlines()[-1])
    assert "no such module" in error  # the job's error log comes first


def _wait_for(path: Path, seconds: float) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.2)


@pytest.mark.slow
@needs_cluster
def test_scancelled_job_is_recorded_failed_with_the_schedulers_reason_and_reruns(
    tiny_config, write_config, tmp_path, jobs_import_tests, capsys
):
    hold, started = tmp_path / "hold", tmp_path / "started"
    hold.touch()
    tiny_config["segmenters"] = [{"name": "test-slurm-hold"}, {"name": "test-slurm-hold", "hold": str(hold), "started": str(started)}]
    tiny_config["executor"] = {"name": "slurm", "threads": 1, "timeout_min": 10}
    config = write_config(tiny_config)
    cells = plan_sweep(validate_config(tiny_config)).cells
    free, victim = (cell.key for cell in cells)
    out = tmp_path / "out"

    codes: list[int] = []
    driver = threading.Thread(target=lambda: codes.append(main(["run", str(config), "--out", str(out), "--quiet"])))
    driver.start()
    try:
        _wait_for(started, 240)
        job_id = json.loads((out / "slurm-jobs.json").read_text())[victim]["job_id"]
        subprocess.run(["scancel", job_id], check=True)
    finally:
        driver.join(timeout=300)
    assert codes == [1]
    runs = _runs(out)
    assert runs[free][0] == "finished"
    status, _, error = runs[victim]
    assert status == "failed"
    assert error.strip().splitlines()[-1] == f"slurm job {job_id} ended CANCELLED"
    assert "CANCELLED" in capsys.readouterr().out + error  # the job log's own line, when slurmstepd wrote it

    hold.unlink()  # the rerun does not wait
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    rerun = _runs(out)
    assert rerun[victim][0] == "finished" and rerun[free] == runs[free]  # only the cancelled cell ran again


# the driver's bookkeeping, with stand-in jobs (no processes, no cluster)


class _FakeJob:
    """A submitit job stand-in: it runs for ``polls`` looks at its process, then leaves ``value`` as its result."""

    def __init__(self, folder: Path, job_id: str, value, polls: int = 0, events: list | None = None):
        self.job_id, self.value, self.polls, self.events = job_id, value, polls, events
        self.paths = SimpleNamespace(result_pickle=folder / f"{job_id}_result.pkl", stderr=folder / f"{job_id}_log.err")
        self._process = SimpleNamespace(poll=self._poll, returncode=None)
        if polls == 0:
            self.paths.result_pickle.touch()

    def _poll(self):
        self.polls -= 1
        if self.polls > 0:
            return None
        if not self.paths.result_pickle.exists():
            self.paths.result_pickle.touch()
            if self.events is not None:
                self.events.append(f"job {self.job_id} ended")
        return 0

    def result(self):
        return self.value


class _Interrupted(Exception):
    """The driver stopped (Ctrl-C) while its jobs run."""


def _fake_executor(spec, executor_config, out: Path, jobs: dict, submitted: list, cells: list, fit_polls: int = 1000):
    """A local-cluster executor whose jobs are `_FakeJob`s: fits build in ``fit_polls`` looks, cells finish at once."""
    from benchmark.slurm_executor import SlurmExecutor
    from benchmark.store import FINISHED, CellRecord

    executor = SlurmExecutor(spec, executor_config, out, poll_s=0.001)
    by_key = {cell.key: cell for cell in cells}

    def submit(task):
        submitted.append((task.kind, task.key))
        job_id = str(1000 + len(jobs))
        if task.kind == "prepare":
            job = _FakeJob(out, job_id, True, polls=fit_polls, events=submitted)
        else:
            now = time.time()
            job = _FakeJob(out, job_id, CellRecord(task.key, by_key[task.key].config(), FINISHED, now, now))
        jobs[job_id] = job
        return job

    executor._submit = submit
    executor._rebuild = lambda entry: jobs[str(entry["job_id"])]
    return executor


def _shared_fit_cells(tiny_config, tmp_path, cluster: str = "local"):
    from benchmark.config import expand_cells

    tiny_config["attacks"] = [{"name": "gan-synthetic", "rates": [0.25, 0.5]}]
    tiny_config["executor"] = {"name": "slurm", "cluster": cluster, "threads": 1}
    config = validate_config(tiny_config)
    spec = WorkerSpec(config.resolved(), "cpu", str(tmp_path / "cache"), None, out_dir=str(tmp_path / "out"))
    return spec, config, expand_cells(config, "toy", "test")


@needs_submitit
def test_shared_fit_job_is_persisted_and_waited_for_after_an_interrupted_driver(tiny_config, tmp_path, caplog):
    from benchmark.executors import PREPARE

    spec, config, cells = _shared_fit_cells(tiny_config, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    jobs: dict = {}
    first_submitted: list = []
    first = _fake_executor(spec, config.executor, out, jobs, first_submitted, cells)

    def interrupt(*args):
        raise _Interrupted

    first._outcome = interrupt
    with pytest.raises(_Interrupted):
        next(first.run(cells))
    assert first_submitted == [(PREPARE, cells[0].key)]  # the generator trains; its cells wait
    entries = json.loads((out / "slurm-jobs.json").read_text())
    assert list(entries) == [f"prepare:{cells[0].key}"]

    caplog.set_level("INFO", logger="benchmark.slurm_executor")
    second_submitted: list = []
    second = _fake_executor(spec, config.executor, out, jobs, second_submitted, cells)
    jobs[entries[f"prepare:{cells[0].key}"]["job_id"]].polls = 3  # the old fit ends while the second driver waits
    jobs[entries[f"prepare:{cells[0].key}"]["job_id"]].events = second_submitted
    records = list(second.run(cells))
    assert [r.status for r in records] == ["finished", "finished"]
    fit_job = entries[f"prepare:{cells[0].key}"]["job_id"]
    # no second fit: the cells were submitted once the first driver's fit had ended
    assert second_submitted == [f"job {fit_job} ended", ("cell", cells[0].key), ("cell", cells[1].key)]
    assert json.loads((out / "slurm-jobs.json").read_text()) == {}
    assert "failed" not in caplog.text  # a built fit is no failure
    assert f"picking up local job {fit_job} of prepare" in caplog.text


@needs_submitit
@pytest.mark.parametrize("built", [True, False])
def test_a_built_shared_fit_is_no_failure_and_a_failed_one_says_why(built, tiny_config, tmp_path, caplog):
    from benchmark.executors import PREPARE, Task

    spec, config, cells = _shared_fit_cells(tiny_config, tmp_path)
    executor = _fake_executor(spec, config.executor, tmp_path, {}, [], cells)
    executor._cells = {cell.key: cell for cell in cells}
    job = _FakeJob(tmp_path, "77", built)
    caplog.set_level("INFO", logger="benchmark.slurm_executor")
    outcome = executor._outcome(Task(PREPARE, cells[0].key), job, time.time(), {})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if built:
        assert outcome is True and warnings == []
    else:
        assert outcome.status == "failed"
        assert warnings == [f"the shared fit of cell {cells[0].key[:10]} failed: the fit raised an error; "
                            "the cells that share it fit again and report it"]


@needs_submitit
def test_jobs_of_the_other_cluster_are_forgotten_and_their_cells_run_again(tiny_config, tmp_path, monkeypatch):
    from benchmark import slurm_executor

    def no_scheduler(job_ids):
        raise AssertionError(f"asked the scheduler about {job_ids} in a cluster: local run")

    monkeypatch.setattr(slurm_executor, "scheduler_states", no_scheduler)
    spec, config, cells = _shared_fit_cells(tiny_config, tmp_path)
    cell = cells[1]
    out = tmp_path / "out"
    out.mkdir()
    (out / "slurm-jobs.json").write_text(json.dumps(
        {cell.key: {"job_id": "4242", "cluster": "slurm", "folder": str(tmp_path / "slurm"), "submitted_at": time.time()}}
    ))
    submitted: list = []
    executor = _fake_executor(spec, config.executor, out, {}, submitted, cells, fit_polls=1)
    records = list(executor.run([cell]))
    assert [(r.key, r.status) for r in records] == [(cell.key, "finished")]
    assert submitted == [("cell", cell.key)] and executor.collected == []  # run again, not waited for
    assert json.loads((out / "slurm-jobs.json").read_text()) == {}


@needs_submitit
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc (Linux)")
def test_a_local_jobs_pid_held_by_a_later_or_other_process_is_not_the_job():
    from benchmark.slurm_executor import _local_running

    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit.local._local"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.2)
        recorded_later = time.time() + 1
        assert _local_running(SimpleNamespace(job_id=str(controller.pid)), recorded_later)
        # the job was recorded an hour ago: a process started now only reuses its pid
        assert not _local_running(SimpleNamespace(job_id=str(controller.pid)), recorded_later - 3600)
        assert not _local_running(SimpleNamespace(job_id=str(other.pid)), recorded_later)  # another program
    finally:
        for process in (controller, other):
            process.kill()
            process.wait()
    assert not _local_running(SimpleNamespace(job_id=str(controller.pid)), time.time())  # ended


# .ci/slurm-up.sh stop


@pytest.mark.skipif(not Path("/proc/self/comm").exists() or shutil.which("tac") is None, reason="needs /proc and tac (Linux)")
def test_slurm_up_stop_ends_only_the_daemons_it_recorded(tmp_path):
    script = TESTS.parent / ".ci" / "slurm-up.sh"
    recorded, reused, foreign = (subprocess.Popen(["sleep", "60"]) for _ in range(3))
    started = tmp_path / "started"
    # "sleep" stands for a daemon this script started; "slurmd" names a pid that now runs another program
    started.write_text(f"sleep {recorded.pid}\nslurmd {reused.pid}\n")
    env = {"PATH": "/usr/bin:/bin", "SLURM_UP_STARTED": str(started)}
    try:
        done = subprocess.run(["bash", str(script), "stop"], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert recorded.wait(timeout=10) is not None  # stopped
        assert reused.poll() is None and foreign.poll() is None  # left alone
        assert f"slurmd (pid {reused.pid}) no longer runs" in done.stderr
        assert not started.exists()
        again = subprocess.run(["bash", str(script), "stop"], capture_output=True, text=True, timeout=60, env=env)
        assert again.returncode == 0 and "nothing to stop" in again.stderr
    finally:
        for process in (recorded, reused, foreign):
            process.kill()
            process.wait()
