"""The ``slurm`` executor: one Slurm job per cell, submitted through submitit.

``pip install 'poisonbench[slurm]'``. Each pending cell becomes one job (``sbatch``) that
runs `execute_cell` with the cell's key and hands its `CellRecord` back to the driver
through submitit's result file; the driver alone writes the results database, as with the
``ray`` executor. Jobs run the driver's Python (``sys.executable``) and read the data set
and trained generators from the artifact cache, so on a real cluster the project, the
output folder (or ``executor.folder``) and ``POISONBENCH_CACHE`` must be on a file system
the nodes share; ``executor.setup`` lines (``module load …``) run first in every job.
``device: auto`` means the GPUs the jobs ask for (``gpus_per_node``), not the driver's.

A job that ends without a result (cancelled with ``scancel``, past its time limit, out of
memory, its node lost) is recorded as a failed cell whose error is the scheduler's state
and reason, after the tail of the job's error log; the next ``bench run`` runs it again.

Job ids are kept per cell key in ``OUT/slurm-jobs.json`` until the cell's record is
stored, and a shared fit's job under ``prepare:<key>`` until it ends. ``bench run`` after
an interrupted driver (Ctrl-C, a lost login node) first looks at those jobs: a finished
one's record is collected without running the cell again, a queued or running one
(a generator still training included) is waited for, and one that ended without a result
is submitted again. Job states come from ``squeue``, which keeps finished jobs for
``MinJobAge`` (300 s by default), then from ``sacct`` where the cluster keeps accounting.
Jobs submitted with the other ``cluster`` (the config changed between runs) are forgotten:
their cells run again. A ``cluster: local`` job counts as running while its process
(submitit's controller, started before the job was recorded) does: a process that now
holds its id but started later, or runs another program, does not count.

Cells whose attack shares a fit (a trained generator) wait for one job that builds it, as
in the ``process`` executor (`CellQueue`), so a sweep trains each generator once.

``cluster: local`` runs the same jobs as processes on this machine through submitit's
local executor: a way to try a config before a cluster sees it; its per-case metrics are
the ``local`` executor's at the same thread count.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from .config import Cell, ExecutorConfig
from .errors import BenchError
from .executors import CELL, PREPARE, CellQueue, Executor, Task, WorkerSpec, cell_threads, execute_cell, prepare_cell
from .store import FAILED, CellRecord

__all__ = ["SlurmExecutor", "JOBS_FILE", "job_device", "scheduler_states"]

logger = logging.getLogger(__name__)

#: The cells' jobs not yet collected, by cell key, in the output folder.
JOBS_FILE = "slurm-jobs.json"

#: Slurm job states after which a job never runs again (``squeue``/``sacct`` spelling).
_ENDED = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
})
#: How long a job unknown to the scheduler counts as just submitted (squeue may lag sbatch).
_UNKNOWN_GRACE_S = 60.0
#: Lines of a failed job's error log kept in the cell's error.
_LOG_TAIL = 20


class SlurmExecutor(Executor):
    """One Slurm job per cell (``cluster: slurm``) or one local process per cell (``cluster: local``).

    Args:
        spec: what a job needs to rebuild the driver's runner.
        config: the sweep's executor settings (``partition``, ``timeout_min``, … ).
        out_dir: the sweep's output folder: ``slurm-jobs.json`` and, unless
            ``config.folder`` is set, the jobs' folder ``slurm/``.
        poll_s: seconds between looks at the jobs' result files. Defaults to 1.
        state_every_s: seconds between asking the scheduler for job states. Defaults to 5.
        result_grace_s: how long after a job ended without a result file to wait for one
            (shared file systems show files late) before the cell counts as failed. Defaults to 5.
    """

    def __init__(self, spec: WorkerSpec, config: ExecutorConfig, out_dir: str | Path,
                 poll_s: float = 1.0, state_every_s: float = 5.0, result_grace_s: float = 5.0):
        try:
            import submitit
        except ImportError:
            raise BenchError("executor.name: 'slurm' needs submitit; install it with: pip install 'poisonbench[slurm]'") from None
        if config.cluster == "slurm" and shutil.which("sbatch") is None:
            raise BenchError(
                "executor.cluster: 'slurm' submits with sbatch, which is not on PATH here; "
                "run bench on a Slurm login node, or use cluster: local to run the jobs on this machine"
            )
        self.submitit = submitit
        self.config = config
        self.spec = replace(spec, threads=cell_threads(config), device=job_device(spec.config.get("device", "auto"), config))
        self.out_dir = Path(out_dir)
        self.folder = Path(config.folder).expanduser().resolve() if config.folder else self.out_dir.resolve() / "slurm"
        self.jobs_file = self.out_dir / JOBS_FILE
        self.poll_s = poll_s
        self.state_every_s = state_every_s
        self.result_grace_s = result_grace_s
        self._ended_at: dict[str, float] = {}  # job id -> when it was first seen ended without a result
        self.lost = []
        #: jobs submitted by this executor (cells and shared fits), for tests and logs
        self.submitted: list[str] = []
        #: cells whose finished job from an earlier run was collected without running them again
        self.collected: list[str] = []
        self._executor: Any = None
        self._cells: dict[str, Cell] = {}

    # submission

    def _job_folder(self) -> Path:
        return self.folder / "%j"  # one folder per job: its script, pickles and logs

    def _submitter(self) -> Any:
        """submitit's executor with this config's job parameters, made once."""
        if self._executor is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.config.cluster == "local":
                executor = self.submitit.LocalExecutor(folder=self._job_folder(), max_num_timeout=0)
                executor.update_parameters(timeout_min=self.config.timeout_min, gpus_per_node=self.config.gpus_per_node,
                                           setup=list(self.config.setup))
            else:
                executor = self.submitit.SlurmExecutor(folder=self._job_folder(), max_num_timeout=0)
                parameters: dict[str, Any] = {
                    "time": self.config.timeout_min, "cpus_per_task": self.config.cpus_per_task,
                    "setup": list(self.config.setup), "signal_delay_s": _signal_delay_s(self.config.timeout_min),
                    "additional_parameters": dict(self.config.sbatch),
                }
                if self.config.gpus_per_node:
                    parameters["gpus_per_node"] = self.config.gpus_per_node
                for key in ("partition", "account"):
                    if getattr(self.config, key):
                        parameters[key] = getattr(self.config, key)
                if self.config.mem_gb:
                    mem_gb = self.config.mem_gb  # Slurm's units: whole G, else M
                    parameters["mem"] = f"{int(mem_gb)}G" if mem_gb == int(mem_gb) else f"{round(mem_gb * 1024)}M"
                executor.update_parameters(**parameters)
            self._executor = executor
        return self._executor

    def _submit(self, task: Task) -> Any:
        submitter = self._submitter()
        name = f"poisonbench-{'fit' if task.kind == PREPARE else 'cell'}-{task.key[:10]}"
        if self.config.cluster == "slurm":
            submitter.update_parameters(job_name=name)
        function = prepare_cell if task.kind == PREPARE else execute_cell
        try:
            job = submitter.submit(function, self.spec, task.key)
        except Exception as exc:  # sbatch refused (unknown partition, account, limits)
            raise BenchError(f"executor: the {self.config.cluster} job of {task.kind} {task.key[:10]} could not be submitted: {exc}") from exc
        self.submitted.append(task.key)
        logger.info("submitted %s job %s for %s %s", self.config.cluster, job.job_id, task.kind, task.key[:10])
        return job

    @staticmethod
    def _entry_key(task: Task) -> str:
        """The task's key in ``slurm-jobs.json``: the cell's key, or ``prepare:<key>`` for a shared fit."""
        return task.key if task.kind == CELL else f"{PREPARE}:{task.key}"

    def _rebuild(self, entry: dict[str, Any]) -> Any:
        """The submitit job of a persisted entry (submitted by an earlier run)."""
        job_class = self.submitit.LocalJob if entry["cluster"] == "local" else self.submitit.SlurmJob
        return job_class(folder=Path(entry["folder"]) / "%j", job_id=str(entry["job_id"]))

    # the persisted jobs

    def _load_entries(self) -> dict[str, dict[str, Any]]:
        try:
            entries = json.loads(self.jobs_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring %s (%s): its cells run again", self.jobs_file, exc)
            return {}
        if not isinstance(entries, dict):
            return {}
        # an entry someone edited into another shape is dropped: its cell runs again
        return {key: entry for key, entry in entries.items() if isinstance(entry, dict)
                and entry.get("cluster") in ("slurm", "local") and isinstance(entry.get("folder"), str)
                and str(entry.get("job_id", "")).isdigit()}

    def _save_entries(self, entries: dict[str, dict[str, Any]]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.jobs_file.with_name(self.jobs_file.name + ".tmp")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(temporary, self.jobs_file)

    # the run

    def run(self, cells: list[Cell]) -> Iterator[CellRecord]:
        self._cells = {cell.key: cell for cell in cells}
        entries = self._load_entries()
        for name, entry in list(entries.items()):  # the config changed cluster: this run cannot follow those jobs
            if entry["cluster"] != self.config.cluster:
                logger.warning("forgetting %s job %s (%s): this run uses cluster: %s, so its cell runs again",
                               entry["cluster"], entry["job_id"], name[:18], self.config.cluster)
                del entries[name]
        running: dict[Task, tuple[Any, float]] = {}  # task -> (job, submitted at)
        earlier = {task: entries[self._entry_key(task)] for cell in cells for task in (Task(PREPARE, cell.key), Task(CELL, cell.key))
                   if self._entry_key(task) in entries}
        states = scheduler_states([str(e["job_id"]) for e in earlier.values()]) if self.config.cluster == "slurm" else {}
        for task, entry in earlier.items():  # jobs of an earlier, interrupted run: collect or wait for them
            job = self._rebuild(entry)
            submitted_at = float(entry.get("submitted_at", time.time()))
            if _refreshed(job.paths.result_pickle).exists() or self._alive(job, entry, states):
                running[task] = (job, submitted_at)
                logger.info("picking up %s job %s of %s %s", entry["cluster"], entry["job_id"], task.kind, task.key[:10])
            else:
                logger.info("job %s of %s %s ended without a result; submitting it again", entry["job_id"], task.kind, task.key[:10])
                del entries[self._entry_key(task)]
        self._save_entries(entries)
        picked_up = {task.key for task in running if task.kind == CELL}
        queue = CellQueue([cell for cell in cells if cell.key not in picked_up])
        fits_ended: set[Task] = set()  # shared fits picked up from an earlier run that ended before the queue got to them
        limit = self.config.workers or sys.maxsize
        asked_at = float("-inf")
        try:
            while len(queue) or running:
                while len(running) < limit and (task := queue.next()) is not None:
                    if task in running or task in fits_ended:  # an earlier run's fit: its cells wait for (or have) it
                        continue
                    job = self._submit(task)
                    running[task] = (job, time.time())
                    entries[self._entry_key(task)] = {"job_id": job.job_id, "cluster": self.config.cluster,
                                                      "folder": str(self.folder), "submitted_at": time.time()}
                    self._save_entries(entries)
                if not running:  # nothing runs, so nothing will release the tasks that wait
                    self.lost.extend(queue.remaining())
                    break
                if self.config.cluster == "slurm" and time.time() - asked_at >= self.state_every_s:
                    states = scheduler_states([job.job_id for job, _ in running.values()])
                    asked_at = time.time()
                ended = False
                for task, (job, submitted_at) in list(running.items()):
                    outcome = self._outcome(task, job, submitted_at, states)
                    if outcome is None:
                        continue
                    ended = True
                    del running[task]
                    if task.kind == PREPARE:  # built or not, its cells run now (a failed fit is theirs to report)
                        entries.pop(self._entry_key(task), None)
                        self._save_entries(entries)
                        fits_ended.add(task)
                        queue.ended(task)
                        continue
                    queue.ended(task)
                    if task.key in picked_up and outcome.status != FAILED:
                        self.collected.append(task.key)
                    yield outcome
                    # the driver stored the record before asking for the next one: the job is done with
                    entries.pop(task.key, None)
                    self._save_entries(entries)
                if not ended:
                    time.sleep(self.poll_s)
        finally:
            still = [job.job_id for job, _ in running.values()]
            if still:  # the caller stopped early: the jobs go on, and the next run picks them up
                logger.warning("%d job(s) still queued or running (%s); run bench again to collect them",
                               len(still), ", ".join(still))

    @staticmethod
    def _alive(job: Any, entry: dict[str, Any], states: dict[str, tuple[str, str]] | None) -> bool:
        """Whether a persisted job may still produce a result (queued or running), given the scheduler's states."""
        if entry["cluster"] == "local":
            return _local_running(job, float(entry.get("submitted_at", time.time())))
        if states is None:  # no answer: wait for the job rather than run its cell twice
            return True
        return job.job_id in states and states[job.job_id][0] not in _ENDED

    def _outcome(self, task: Task, job: Any, submitted_at: float,
                 states: dict[str, tuple[str, str]] | None) -> CellRecord | bool | None:
        """How a task's job ended; None while it runs.

        Returns:
            a cell's record (a failed one when its job left no result); for a shared fit,
            True when it was built, else a failed record (already logged with its reason).
        """
        if _refreshed(job.paths.result_pickle).exists():
            try:
                result = job.result()
            except Exception as exc:  # the job's Python failed outside the cell (import, unpickling)
                return self._failed(task, job, submitted_at, f"{type(exc).__name__}: {exc}")
            if task.kind == PREPARE:
                if result is True:
                    logger.info("the shared fit of cell %s is built (job %s)", task.key[:10], job.job_id)
                    return True
                # prepare_cell keeps the exception at debug level: each cell that shares the fit reports it
                return self._failed(task, job, submitted_at, "the fit raised an error; the cells that share it fit again and report it")
            if isinstance(result, CellRecord):
                return result
            return self._failed(task, job, submitted_at, f"job {job.job_id} returned {type(result).__name__}, not a cell's record")
        if self.config.cluster == "local":
            if _local_running(job, submitted_at):
                return None
            code = getattr(getattr(job, "_process", None), "returncode", None)
            reason = f"local job {job.job_id} ended without a result" + (f" (exit code {code})" if code is not None else "")
        else:
            if states is None:
                return None  # the scheduler did not answer: ask again
            state = states.get(job.job_id)
            if state is None:
                if time.time() - submitted_at < _UNKNOWN_GRACE_S:
                    return None  # not listed yet
                reason = f"slurm job {job.job_id} is no longer known to squeue or sacct and left no result"
            elif state[0] not in _ENDED:
                return None
            else:
                reason = f"slurm job {job.job_id} ended {state[0]}" + (f" (reason: {state[1]})" if state[1] not in ("", "None") else "")
        # the job writes its result before it ends, but a shared file system may show it late
        first_seen = self._ended_at.setdefault(job.job_id, time.time())
        if _refreshed(job.paths.result_pickle).exists():
            return self._outcome(task, job, submitted_at, states)
        if time.time() - first_seen < self.result_grace_s:
            return None
        return self._failed(task, job, submitted_at, reason)

    def _failed(self, task: Task, job: Any, submitted_at: float, reason: str) -> CellRecord:
        """A failed record: the job's error log tail, then the scheduler's account (the line a sweep prints)."""
        log = ""
        try:
            log = job.paths.stderr.read_text(errors="replace") if job.paths.stderr.exists() else ""
        except OSError:
            pass
        tail = "\n".join(log.strip().splitlines()[-_LOG_TAIL:])
        error = "\n".join(part for part in (f"job log {job.paths.stderr}:\n{tail}" if tail else "", reason) if part)
        if task.kind == CELL:
            logger.warning("cell %s failed: %s", task.key[:10], reason)
        else:
            logger.warning("the shared fit of cell %s failed: %s", task.key[:10], reason)
        environment = {"device": self.spec.device, "torch_threads": self.spec.threads, "executor": "slurm",
                       "cluster": self.config.cluster, "job_id": job.job_id}
        return CellRecord(task.key, self._cells[task.key].config(), FAILED, submitted_at, time.time(), {}, environment, error=error)


def job_device(requested: str, config: ExecutorConfig) -> str:
    """The device the cells' jobs run on: ``device: auto`` means the GPUs the jobs ask for.

    The driver runs on a login node (or here, for ``cluster: local``), whose devices say
    nothing of the jobs': a job sees a GPU when ``gpus_per_node`` asks for one (submitit's
    local executor also hides the GPUs from a job that asks for none).

    Raises:
        BenchError: ``device: cuda`` with ``gpus_per_node: 0``.
    """
    if requested == "auto":
        return "cuda" if config.gpus_per_node else "cpu"
    if requested == "cuda" and not config.gpus_per_node:
        raise BenchError("executor.gpus_per_node: device: cuda needs a GPU in each job; set executor.gpus_per_node: 1 (or device: cpu)")
    return requested


def _signal_delay_s(timeout_min: int) -> int:
    """Seconds before the time limit at which Slurm warns the job (submitit then ends the cell as timed out).

    submitit's 90 s would come before a short job even starts, and a warned job that has
    not timed out counts as preempted and is queued again.
    """
    return min(90, max(10, timeout_min * 60 // 10))


def _refreshed(path: Path) -> Path:
    """The path, after touching its folder's attributes so that an NFS client looks again (as submitit does)."""
    try:
        path.parent.chmod(path.parent.stat().st_mode)
    except OSError:
        pass
    return path


#: Seconds a local job's process may seem to have started after the job was recorded
#: (``/proc`` counts from the boot time in whole seconds, in clock ticks).
_START_SLACK_S = 2.0


def _local_running(job: Any, submitted_at: float) -> bool:
    """Whether a job of submitit's local executor still runs.

    Its controller process, when an earlier driver started it: a process with the job's id
    (its pid) that is not a zombie, runs submitit's controller and started no later than
    ``submitted_at``; a later process that reuses the pid is not the job. Where ``/proc``
    cannot tell (not Linux), a live pid counts.
    """
    process = getattr(job, "_process", None)
    if process is not None:
        return process.poll() is None
    try:
        pid = int(job.job_id)
        os.kill(pid, 0)  # the controller outlives the driver that started it
    except (OSError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        started_at = _boot_time() + int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in clock ticks
    except (OSError, IndexError, ValueError):
        return True
    if stat[0] == "Z":  # an ended child of this process that nobody reaped yet is a zombie, not a running job
        return False
    return b"submitit.local._local" in command and started_at <= submitted_at + _START_SLACK_S


def _boot_time() -> float:
    """When this machine booted (``btime`` of ``/proc/stat``), in seconds since the epoch."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("/proc/stat has no btime line")


def scheduler_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """Slurm's state and reason of each job it still knows, by job id.

    ``squeue`` first (it lists finished jobs for ``MinJobAge`` seconds), then ``sacct`` for
    the jobs squeue no longer lists (clusters that keep accounting). A job neither knows is
    left out.

    Returns:
        ``{job_id: (state, reason)}``, e.g. ``{"12": ("CANCELLED", "None")}``; None when
        ``squeue`` did not answer (slurmctld down or busy).
    """
    if not job_ids:
        return {}
    states: dict[str, tuple[str, str]] = {}
    squeue = _query(["squeue", "--noheader", "--states=all", "--format=%i|%T|%r", f"--jobs={','.join(job_ids)}"])
    if squeue is None:
        return None
    for line in squeue.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3:
            states[fields[0]] = (fields[1], fields[2])
    missing = [job_id for job_id in job_ids if job_id not in states]
    if missing:
        sacct = _query(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                        *(f"--jobs={job_id}" for job_id in missing)])
        for line in (sacct or "").splitlines():
            fields = line.strip().split("|")
            if len(fields) == 2 and fields[0] in missing:
                state, _, by = fields[1].partition(" ")  # "CANCELLED by 1000"
                states[fields[0]] = (state, by)
    return states


def _query(command: list[str]) -> str | None:
    """A scheduler command's output; empty when it knows none of the jobs, None when it did not answer."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("%s failed: %s", command[0], exc)
        return None
    if done.returncode == 0:
        return done.stdout
    if "Invalid job id" in done.stderr:  # squeue: none of the jobs is known (any more)
        return ""
    logger.debug("%s failed: %s", command[0], done.stderr.strip())
    return None
