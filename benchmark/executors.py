"""Executors run the cells of a sweep and hand each finished `CellRecord` back to the driver.

Only the driver writes the results database. A cell whose worker dies (killed process,
lost node) yields no record, so it stays not-finished and the next ``bench run`` runs
it; records already returned are kept.

- ``local``: cells one after another in this process.
- ``process``: N spawned worker processes; torch threads per worker = usable cores // N, so
  workers do not oversubscribe the CPU. Each worker loads the data set from the on-disk
  cache (memory-mapped) that the driver built before dispatching.
- ``ray``: one Ray task per cell with ``num_cpus`` / ``num_gpus`` from the config, and
  ``num_cpus`` torch threads. Tasks
  load the data set and trained generators from the artifact cache: on a multi-node
  cluster point ``POISONBENCH_CACHE`` at a shared folder so they are built once (the
  atomic rename in `benchmark.cache` makes concurrent builders safe); without a shared
  folder each node builds its own identical copy once.

``executor.threads`` overrides the torch thread count of every cell. Floating-point sums
are split differently over different thread counts, so CPU results are bit-identical
across executors and machines only at the same count.
"""

from __future__ import annotations

import importlib
import logging
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

from .cache import CACHE_ENV
from .config import Cell, ExecutorConfig, SweepConfig, validate_config
from .errors import BenchError
from .store import CellRecord

__all__ = ["plugin_modules", "WorkerSpec", "Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor", "cell_threads", "create_executor", "execute_cell"]

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


_WORKER_STATE: dict[str, Any] = {}


def _worker_runner(spec: WorkerSpec):
    """The runner of this worker process, built once per sweep spec."""
    from .runner import CellRunner, plan_sweep
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
        )
        _WORKER_STATE.update(ident=ident, runner=runner, cells={cell.key: cell for cell in plan.cells})
    return _WORKER_STATE["runner"], _WORKER_STATE["cells"]


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
    runner, cells = _worker_runner(spec)
    return runner.run(cells[key])


class Executor:
    """Runs cells; yields a record per cell that ends (finished or failed)."""

    lost: list[str]

    def run(self, cells: list[Cell]) -> Iterator[CellRecord]:
        raise NotImplementedError


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


class ProcessExecutor(Executor):
    """Cells spread over spawned worker processes on this machine."""

    def __init__(self, spec: WorkerSpec, workers: int, threads: int | None = None):
        self.workers = workers
        self.spec = replace(spec, threads=threads or max(1, _usable_cores() // workers))
        self.lost = []

    def run(self, cells: list[Cell]) -> Iterator[CellRecord]:
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(cells)), mp_context=get_context("spawn"))
        pending = {pool.submit(execute_cell, self.spec, cell.key): cell.key for cell in cells}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    key = pending.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        self.lost.append(key)
                    except Exception as exc:  # infrastructure failure, not a cell failure
                        logger.warning("worker for cell %s did not return a result: %s", key, exc)
                        self.lost.append(key)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


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
    (``ray``), or None (``local``). The executors below and `bench data export` follow it.
    """
    if config.threads:
        return int(config.threads)
    if config.name == "process":
        return max(1, _usable_cores() // (config.workers or 2))
    if config.name == "ray":
        return max(1, round(config.num_cpus))
    return None


def create_executor(config: ExecutorConfig, spec: WorkerSpec, run_local: Callable[[Cell], CellRecord] | None,
                    announce: Callable[[Cell], None] | None = None) -> Executor:
    """The executor named in the config."""
    if config.name == "process":
        return ProcessExecutor(spec, config.workers or 2, cell_threads(config))
    if config.name == "ray":
        return RayExecutor(spec, config)
    if run_local is None:
        raise BenchError("the local executor needs the driver's cell runner")
    return LocalExecutor(run_local, announce, config.threads)
