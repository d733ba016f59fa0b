"""Executors run the cells of a sweep and hand each finished `CellRecord` back to the driver.

Only the driver writes the results database. A cell whose worker dies (killed process,
lost node) yields no record, so it stays not-finished and the next ``bench run`` runs
it; records already returned are kept.

- ``local``: cells one after another in this process.
- ``process``: a pool of N worker processes on this machine, started with the sweep (they
  import torch, MONAI and the plugins while the driver loads the data set) and kept for
  all its cells; torch threads per worker = usable cores // N, so workers do not
  oversubscribe the CPU. On Linux the workers are forked from a server process that
  imported torch and MONAI once (multiprocessing's ``forkserver``): N workers cost one
  import, and a worker that dies is replaced in a fraction of a second; elsewhere they
  are spawned. Each worker loads the data set from the on-disk cache (memory-mapped) that
  the driver built before dispatching.
- ``slurm``: one Slurm job per cell through submitit (`benchmark.slurm_executor`).
- ``ray``: one Ray task per cell with ``num_cpus`` / ``num_gpus`` from the config, and
  ``num_cpus`` torch threads. Tasks
  load the data set and trained generators from the artifact cache: on a multi-node
  cluster point ``POISONBENCH_CACHE`` at a shared folder so they are built once (the
  atomic rename in `benchmark.cache` makes concurrent builders safe); without a shared
  folder each node builds its own identical copy once.

Shared fits. An attack that overrides `Attack.fit` caches what it learns (the trained
generator of ``gan-synthetic``), and every cell of one attack setting and seed loads the
same artifact. The ``process`` executor (`CellQueue`) fits each such setting once, in one
worker, before any of its cells runs; those fits go first (they are the long pole, minutes
for a generator), and the other workers meanwhile run cells that wait for nothing. Without
this, two workers that start cells of one setting both train the same generator, as
nothing locks a cache entry while it is built.

A shared fit runs under the cells' torch thread count, as the ``local`` executor runs it:
a generator trained with more threads is a different generator (its cache key holds the
count), so building it with every core would give poisoned cells that differ from
``local`` ones and from one machine to the next. The price is that a sweep with one
generator (the default ``bench.yaml``) trains it on one worker while the others wait.

``executor.threads`` overrides the torch thread count of every cell. Floating-point sums
are split differently over different thread counts, so CPU results are bit-identical
across executors and machines only at the same count.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import traceback
import weakref
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from .cache import CACHE_ENV
from .config import Cell, ExecutorConfig, SweepConfig, validate_config
from .errors import BenchError
from .store import CellRecord

__all__ = [
    "plugin_modules", "WorkerSpec", "Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor", "Task", "CellQueue",
    "cell_threads", "create_executor", "execute_cell", "prepare_cell", "shares_fit",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild the driver's runner: plain, picklable data."""

    config: dict[str, Any]
    device: str
    cache_dir: str
    predictions_dir: str | None
    threads: int | None = None
    plugin_modules: tuple[str, ...] = ()
    figures_dir: str | None = None
    out_dir: str | None = None  # the sweep's output folder (the slurm executor keeps its job ids there)


_WORKER_STATE: dict[str, Any] = {}


def _worker_runner(spec: WorkerSpec):
    """The runner of this worker process, built once per sweep spec."""
    from .runner import CellRunner, example_figure_names, plan_sweep
    from .splitting import split_cases

    ident = repr(spec)
    if _WORKER_STATE.get("ident") != ident:
        os.environ[CACHE_ENV] = spec.cache_dir
        for module in spec.plugin_modules:  # plugins registered outside the discovered packages
            importlib.import_module(module)
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        config = validate_config(spec.config, source="<worker>")
        plan = plan_sweep(config)
        data = plan.source.load()
        split = split_cases(data, config.split.val_fraction, config.split.seed, config.split.trusted)
        runner = CellRunner(
            data, split, spec.device, plan.fingerprint, Path(spec.cache_dir), True, None,
            Path(spec.predictions_dir) if spec.predictions_dir else None,
            Path(spec.figures_dir) if spec.figures_dir else None,
            Path(spec.out_dir) / "artifacts" if spec.out_dir else None, example_figure_names(plan.cells),
        )
        _WORKER_STATE.update(ident=ident, runner=runner, cells={cell.key: cell for cell in plan.cells})
    return _WORKER_STATE["runner"], _WORKER_STATE["cells"]


def _worker_cell(spec: WorkerSpec, key: str):
    runner, cells = _worker_runner(spec)
    if key not in cells:
        raise BenchError(f"cell {key} is not in the worker's plan of the sweep; did the source change while the sweep ran?")
    return runner, cells[key]


def plugin_modules(config: SweepConfig) -> tuple[str, ...]:
    """Modules defining the sweep's plugins, for workers to import before running cells."""
    from .catalog import ATTACKS, DATASETS, DEFENSES, SEGMENTERS

    classes = [DATASETS.get(config.dataset.name)]
    classes += [SEGMENTERS.get(s.name) for s in config.segmenters]
    classes += [ATTACKS.get(a.name) for a, _ in config.attacks]
    classes += [DEFENSES.get(d.name) for d in config.defenses]
    return tuple(sorted({cls.__module__ for cls in classes if cls.__module__ != "__main__"}))


def execute_cell(spec: WorkerSpec, key: str) -> CellRecord:
    """Run one cell by key in a worker (process or Ray task)."""
    runner, cell = _worker_cell(spec, key)
    return runner.run(cell)


def prepare_cell(spec: WorkerSpec, key: str) -> bool:
    """Fit one cell's attack in a worker, building what the cells of its setting share.

    Returns:
        whether the fit succeeded; a failure is left for the cells themselves to report.
    """
    runner, cell = _worker_cell(spec, key)
    try:
        runner.prepare(cell)
    except Exception:  # the cells that share the fit fail with the full story
        logger.debug("the shared fit of cell %s failed", key, exc_info=True)
        return False
    return True


def shares_fit(cell: Cell) -> bool:
    """Whether the cell's attack fits something that the cells of its setting share.

    True when the attack overrides `Attack.fit` (the base class learns nothing): by the
    `Attack` contract a plugin caches what ``fit`` learns under ``context.cache_dir``.
    """
    from .catalog import ATTACKS
    from .plugins import Attack

    return ATTACKS.get(cell.attack.name).fit is not Attack.fit


#: The kinds of `Task`: run a cell; fit a cell's attack alone (`prepare_cell`).
CELL, PREPARE = "cell", "prepare"


class Task(NamedTuple):
    """One piece of work for a worker: a cell to run, or the shared fit of a cell's attack to build."""

    kind: str  # CELL or PREPARE
    key: str


class CellQueue:
    """The order in which a pool's workers take a sweep's cells, and what cells wait for.

    Cells whose attack shares its fit (`shares_fit`) are grouped by attack, parameters and
    seed, as the attack's cache key groups them. A group of two or more gets a `PREPARE`
    task for its first cell, and its cells wait until that task ends (done or lost). The
    order: prepare tasks (a generator takes minutes: the long pole), then the cells of a
    group of one (they fit and train), then the others in the plan's order; a group's
    cells join the end of the queue when its fit is built.

    Args:
        cells: the cells to run, in the plan's order.
        fit_is_shared: whether a cell's attack shares its fit. Defaults to `shares_fit`.
    """

    def __init__(self, cells: list[Cell], fit_is_shared: Callable[[Cell], bool] = shares_fit):
        groups: dict[str, list[Cell]] = {}
        for cell in cells:
            if fit_is_shared(cell):
                groups.setdefault(_fit_group(cell), []).append(cell)
        shared = [group for group in groups.values() if len(group) > 1]
        alone = {group[0].key for group in groups.values() if len(group) == 1}
        held = {cell.key for group in shared for cell in group}
        self._ready: deque[Task] = deque(Task(PREPARE, group[0].key) for group in shared)
        self._ready.extend(Task(CELL, cell.key) for cell in cells if cell.key in alone)
        self._ready.extend(Task(CELL, cell.key) for cell in cells if cell.key not in alone and cell.key not in held)
        self._waiting = {group[0].key: [Task(CELL, cell.key) for cell in group] for group in shared}

    def next(self) -> Task | None:
        """The next task a free worker should take; None when every remaining task waits."""
        return self._ready.popleft() if self._ready else None

    def put_back(self, task: Task) -> None:
        """Return a task that no worker took (its worker was gone), to be taken next."""
        self._ready.appendleft(task)

    def ended(self, task: Task) -> None:
        """A task ended, done or lost: a prepare releases the cells that waited for it."""
        if task.kind == PREPARE:
            self._ready.extend(self._waiting.pop(task.key, []))

    def remaining(self) -> list[str]:
        """Keys of the cells not handed out yet (ready or waiting)."""
        waiting = [task.key for tasks in self._waiting.values() for task in tasks]
        return [task.key for task in self._ready if task.kind == CELL] + waiting

    def __len__(self) -> int:
        """Tasks not handed out yet, prepares included."""
        return len(self._ready) + sum(len(tasks) for tasks in self._waiting.values())


def _fit_group(cell: Cell) -> str:
    """Cells with equal groups share the attack's fit: the same data, split, attack, parameters and seed.

    At least as fine as an attack's own cache key: the two modes of ``gan-synthetic`` share
    one generator but fall in two groups here, so the second prepare finds it built.
    """
    config = cell.config()
    return json.dumps([config["dataset"], config["split"], config["attack"], cell.seed], sort_keys=True)


class Executor:
    """Runs cells; yields a record per cell that ends (finished or failed).

    An executor is a context manager: `start` begins slow set-up (worker processes) so
    that it overlaps the driver's own work, and leaving the block (or `close`) ends it.
    """

    lost: list[str]

    def start(self, cells: int | None = None) -> Executor:
        """Begin set-up for about ``cells`` cells; returns the executor itself."""
        return self

    def run(self, cells: list[Cell]) -> Iterator[CellRecord]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `start` or `run` set up."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Cells one after another in this process, with the driver's runner."""

    def __init__(self, run_cell: Callable[[Cell], CellRecord], announce: Callable[[Cell], None] | None = None,
                 threads: int | None = None):
        self.run_cell = run_cell
        self.announce = announce
        self.threads = threads
        self.lost = []

    def run(self, cells: list[Cell]) -> Iterator[CellRecord]:
        import torch

        threads_before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for cell in cells:
                if self.announce:
                    self.announce(cell)
                yield self.run_cell(cell)
        finally:
            torch.set_num_threads(threads_before)


#: What a forkserver imports once for every worker it forks (with the sweep's plugin modules).
_PRELOAD = ("torch", "monai", f"{__package__}.runner")
_TASKS: dict[str, Callable[[WorkerSpec, str], Any]] = {CELL: execute_cell, PREPARE: prepare_cell}


def _serve(conn: Connection, modules: tuple[str, ...], threads: int, environ: dict[str, str]) -> None:
    """A pool worker: import once, then run the tasks the driver sends until it sends None or goes away."""
    # Ctrl-C reaches the whole process group: the driver decides when its workers stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a forked worker inherits the forkserver's environment, which may be older than the driver's
    os.environ.clear()
    os.environ.update(environ)
    import torch

    torch.set_num_threads(threads)
    for module in modules:
        importlib.import_module(module)
    importlib.import_module(f"{__package__}.runner")
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the driver is gone
            return
        if message is None:
            return
        kind, spec, key = message
        try:
            reply = ("done", _TASKS[kind](spec, key))
        except Exception as exc:  # infrastructure failure, not a cell failure (the runner captures those)
            reply = ("error", "".join(traceback.format_exception(exc)))
        conn.send(reply)


def _pool_context():
    """``forkserver`` on Linux (one import of torch and MONAI serves every worker), ``spawn`` elsewhere."""
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


@dataclass
class _Worker:
    process: Any  # a multiprocessing process
    conn: Connection
    task: Task | None = None


def _stop_workers(workers: list[_Worker]) -> None:
    """Stop workers and empty the list: idle ones are asked to leave, then whatever still runs is terminated.

    A busy worker runs a cell whose record nobody will store; a worker still importing (the
    sweep stopped at once, e.g. on a config error) would make the driver wait for nothing.
    """
    for worker in workers:
        if worker.task is None:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        else:
            worker.process.terminate()
    for worker in workers:
        worker.process.join(timeout=2)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(timeout=10)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
    workers.clear()


class ProcessExecutor(Executor):
    """Cells spread over a pool of worker processes on this machine, kept for every cell of the sweep.

    Args:
        spec: what a worker needs to rebuild the driver's runner.
        workers: worker processes.
        threads: torch threads per worker. Defaults to usable cores // ``workers``.
    """

    def __init__(self, spec: WorkerSpec, workers: int, threads: int | None = None):
        self.workers = workers
        self.spec = replace(spec, threads=threads or max(1, _usable_cores() // workers))
        self.lost = []
        #: worker processes started so far, replacements of dead ones included
        self.started = 0
        self._pool: list[_Worker] = []
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None
        # idle workers wait for the driver: stop them at exit even if nobody called close()
        self._finalizer = weakref.finalize(self, _stop_workers, self._pool)

    def start(self, cells: int | None = None) -> ProcessExecutor:
        """Start ``min(workers, cells)`` workers in the background and return at once.

        Starting waits for the forkserver to import torch and MONAI (seconds); meanwhile the
        driver goes on, e.g. loading or generating the data set.
        """
        count = self.workers if cells is None else min(self.workers, cells)

        def fill() -> None:
            try:
                self._fill(count)
            except BaseException as exc:  # raised again by the run or close that waits for the start
                self._start_error = exc

        self._starting = threading.Thread(target=fill, name="poisonbench-pool-start", daemon=True)
        self._starting.start()
        return self

    def _started(self) -> None:
        """Wait for a background `start` to finish; raise what it raised."""
        if self._starting is not None:
            self._starting.join()
            self._starting = None
        if self._start_error is not None:
            error, self._start_error = self._start_error, None
            raise error

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (after a background start has finished)."""
        self._started()
        return [worker.process.pid for worker in self._pool]

    def _fill(self, count: int) -> None:
        while len(self._pool) < count:
            self._spawn()

    def _spawn(self) -> _Worker:
        context = _pool_context()
        if context.get_start_method() == "forkserver":
            # takes effect when the server starts (once per driver process)
            context.set_forkserver_preload([*_PRELOAD, *self.spec.plugin_modules])
        driver_end, worker_end = context.Pipe()
        process = context.Process(
            target=_serve, args=(worker_end, self.spec.plugin_modules, self.spec.threads, dict(os.environ)),
            name=f"poisonbench-worker-{self.started}",
        )
        process.start()
        worker_end.close()
        worker = _Worker(process, driver_end)
        self._pool.append(worker)
        self.started += 1
        return worker

    def run(self, cells: list[Cell]) -> Iterator[CellRecord]:
        self._started()
        queue = CellQueue(cells)
        self._fill(min(self.workers, len(queue)))
        try:
            while True:
                for worker in [w for w in self._pool if w.task is None]:
                    self._give(worker, queue)
                busy = [w for w in self._pool if w.task is not None]
                if not busy:  # nothing runs, so nothing waits for a prepare: the queue is empty
                    break
                ready = set(wait([w.conn for w in self._pool] + [w.process.sentinel for w in self._pool]))
                for worker in list(self._pool):
                    if worker.conn in ready or worker.process.sentinel in ready:
                        record = self._collect(worker, queue)
                        if record is not None:
                            yield record
                self._fill(min(self.workers, len(busy) + len(queue)))  # in place of workers that died
            self.lost.extend(queue.remaining())  # none, unless a worker died between its check and the hand-over
        finally:
            # cells still running can no longer be stored (the caller stopped early or failed)
            _stop_workers([w for w in self._pool if w.task is not None])
            self._pool[:] = [w for w in self._pool if w.task is None]

    def _give(self, worker: _Worker, queue: CellQueue) -> None:
        """Hand an idle worker the next ready task, if there is one (a new worker if this one died idle)."""
        task = queue.next()
        if task is None:
            return
        if not worker.process.is_alive():
            self._drop(worker)
            worker = self._spawn()
        try:
            worker.conn.send((task.kind, self.spec, task.key))
        except OSError:  # it died after the check: the task waits for another worker
            queue.put_back(task)
            self._drop(worker)
            return
        worker.task = task

    def _collect(self, worker: _Worker, queue: CellQueue) -> CellRecord | None:
        """Read a worker's reply, or learn of its death; the record of a cell task that ended."""
        task, worker.task = worker.task, None
        try:
            status, payload = worker.conn.recv()
        except (EOFError, OSError):  # the worker died (killed, out of memory), with its task if it had one
            self._drop(worker)
            if task is not None:
                logger.warning("the worker running %s %s died (exit code %s)", task.kind, task.key, worker.process.exitcode)
                queue.ended(task)
                if task.kind == CELL:
                    self.lost.append(task.key)
            return None
        if task is None:  # an idle worker never speaks first
            return None
        queue.ended(task)
        if status != "done":
            logger.warning("the worker running %s %s did not return a result: %s", task.kind, task.key, payload.strip().splitlines()[-1])
            if task.kind == CELL:
                self.lost.append(task.key)
            return None
        return payload if task.kind == CELL else None

    def _drop(self, worker: _Worker) -> None:
        worker.process.join(timeout=5)
        worker.conn.close()
        self._pool.remove(worker)

    def close(self) -> None:
        try:
            self._started()
        finally:
            _stop_workers(self._pool)


def _usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, as set by containers and schedulers)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class RayExecutor(Executor):
    """One Ray task per cell (``pip install poisonbench[ray]``)."""

    def __init__(self, spec: WorkerSpec, config: ExecutorConfig):
        try:
            import ray
        except ImportError:
            raise BenchError("executor.name: 'ray' needs Ray; install it with: pip install 'poisonbench[ray]'") from None
        self.ray = ray
        self.spec = replace(spec, threads=cell_threads(config))
        self.config = config
        self.lost = []

    def run(self, cells: list[Cell]) -> Iterator[CellRecord]:
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.config.address:
                options["address"] = self.config.address
            elif self.config.workers:
                options["num_cpus"] = int(self.config.workers * self.config.num_cpus)
            ray.init(**options)
        try:
            task = ray.remote(execute_cell).options(
                num_cpus=self.config.num_cpus, num_gpus=self.config.num_gpus, max_retries=0
            )
            spec = ray.put(self.spec)
            limit = self.config.workers or len(cells)
            queue = list(cells)
            pending: dict[Any, str] = {}
            while queue or pending:
                while queue and len(pending) < limit:
                    cell = queue.pop(0)
                    pending[task.remote(spec, cell.key)] = cell.key
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    key = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except Exception as exc:  # worker or node lost
                        logger.warning("ray task for cell %s did not return a result: %s", key, exc)
                        self.lost.append(key)
        finally:
            if started_here:
                ray.shutdown()


def cell_threads(config: ExecutorConfig) -> int | None:
    """The torch thread count a cell of this executor runs under (None: torch's count as it is).

    ``threads`` when set; else ``usable cores // workers`` (``process``), ``round(num_cpus)``
    (``ray``), ``cpus_per_task`` (``slurm``), or None (``local``). The executors below and `bench data export` follow it.
    """
    if config.threads:
        return int(config.threads)
    if config.name == "process":
        return max(1, _usable_cores() // (config.workers or 2))
    if config.name == "ray":
        return max(1, round(config.num_cpus))
    if config.name == "slurm":
        return config.cpus_per_task
    return None


def create_executor(config: ExecutorConfig, spec: WorkerSpec, run_local: Callable[[Cell], CellRecord] | None,
                    announce: Callable[[Cell], None] | None = None) -> Executor:
    """The executor named in the config."""
    if config.name == "process":
        return ProcessExecutor(spec, config.workers or 2, cell_threads(config))
    if config.name == "ray":
        return RayExecutor(spec, config)
    if config.name == "slurm":
        from .slurm_executor import SlurmExecutor

        if spec.out_dir is None:
            raise BenchError("the slurm executor needs the sweep's output folder (WorkerSpec.out_dir)")
        return SlurmExecutor(spec, config, spec.out_dir)
    if run_local is None:
        raise BenchError("the local executor needs the driver's cell runner")
    return LocalExecutor(run_local, announce, config.threads)
