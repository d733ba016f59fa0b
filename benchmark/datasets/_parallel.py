"""Reading a data set's cases in worker processes, handed back in case order.

Reading a case (gzip-decompressing four or five NIfTI volumes, checking them, selecting,
cropping and z-scoring slices) is CPU-bound numpy and zlib work that holds the GIL for
much of it: on the 2-core machine two threads read two BraTS-sized cases only 1.39x as
fast as one thread. A pool of processes scales it instead. Each worker writes its case's large arrays as
``.npy`` files into a scratch folder and returns only their names (and any small values,
such as a slice geometry) with the SHA-256 of each file's data, taken while the bytes
are still in the worker's cache; the caller maps them (`SpilledArray`) and appends them
to the data set's memory-mapped cache in case order, so the cache is byte-for-byte what
one process writes, and at most ``workers × READ_AHEAD`` cases wait on disk at any
time. The appending process only copies bytes file to file: on 2 cores, a process that
also hashed and copied every case through its own memory became the bottleneck.

The scratch files live in shared memory (``/dev/shm``) where it has room, so a case's
bytes are written to disk once (into the cache) rather than twice: with BraTS-sized
cases the second write kept the disk's write-back busy enough to cancel the second
core. A worker that finds shared memory full writes to the scratch folder inside the
artifact instead. A folder left in shared memory by a driver that was killed is removed
by the next build.

The workers come from a fork server where there is one (Linux, macOS): a clean process,
started once, that imports the reader's module and forks each worker from itself. The
driver is not forked: it already runs threads (torch's and OpenMP's pools, the progress
display's refresh), and a child forked from a threaded process can deadlock on a lock
another thread held (Python 3.12 warns of it). Elsewhere the workers are spawned. Either
way a worker receives a pickled copy of the reader.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import hashlib
import multiprocessing
import os
import platform
import shutil
import tempfile
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np

from ..errors import DataError

__all__ = ["READ_AHEAD", "SPILL_BYTES", "CaseReads", "SpilledArray", "default_workers"]

Case = TypeVar("Case")

#: Cases submitted per worker ahead of the one appended next: room for a slow case.
READ_AHEAD = 2
#: Arrays at least this large travel through the scratch folder, smaller ones are pickled.
SPILL_BYTES = 1 << 16
#: Shared memory, where scratch files go when it has `SHARED_MEMORY_ROOM` free.
SHARED_MEMORY = Path("/dev/shm")
SHARED_MEMORY_ROOM = 1 << 30
_SHARED_PREFIX = "poisonbench-cases-"

# the reader of this worker process (set by the pool's initializer)
_READER: Callable[[Any], tuple[Any, ...]] | None = None


def default_workers() -> int:
    """The cores this process may use (its CPU affinity; the core count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class _Spilled:
    """An array a worker wrote to ``path`` (``.npy``) instead of returning it, and the SHA-256 of its data."""

    def __init__(self, path: str, sha256: str):
        self.path, self.sha256 = path, sha256


class SpilledArray(NamedTuple):
    """An array a reading process returned through a ``.npy`` file.

    Attributes:
        array: the data, memory-mapped read only (valid until the caller moves to the next case).
        path: the file.
        offset: the byte where the data starts in the file (after the ``.npy`` header).
        sha256: SHA-256 of the ``array.nbytes`` data bytes.
    """

    array: np.ndarray
    path: str
    offset: int
    sha256: str


def _init_worker(reader: Callable[[Any], tuple[Any, ...]]) -> None:
    global _READER
    _READER = reader
    _keep_freed_blocks(True)  # for the life of this reading process


# glibc's mallopt parameters; the thresholds its dynamic adjustment settles at once a
# process has freed a large array (32 MiB, trimming at twice that): setting them turns that
# adjustment off, so these are what a process that reads cases goes on with
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_SETTLED_MMAP_THRESHOLD, _SETTLED_TRIM_THRESHOLD = 32 << 20, 64 << 20
#: Blocks up to this size are taken from (and freed to) the heap while cases are read.
_READING_MMAP_THRESHOLD = 1 << 30


def _glibc() -> Any:
    """The C library when it is glibc (which has ``mallopt``), else None."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _keep_freed_blocks(keep: bool) -> None:
    """Let freed large arrays stay in the heap for the next case (``keep``), or go back to glibc's settled thresholds.

    Reading a case allocates and frees a few hundred MB of arrays. By default glibc maps
    each block over 32 MB afresh and unmaps it when freed, so every case pays the kernel
    to fault in and zero its pages again: about a quarter of a BraTS case's CPU time.
    Elsewhere than glibc nothing changes.
    """
    libc = _glibc()
    if libc is None:
        return
    if keep:
        libc.mallopt(_M_MMAP_THRESHOLD, _READING_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    else:
        libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)
        libc.malloc_trim(0)  # what the reading kept goes back to the system


def _read_one(position: int, case: Any, scratch: Sequence[str]) -> tuple[Any, ...]:
    """Read ``case`` with this worker's reader; large arrays go to the first ``scratch`` folder with room, as ``.npy`` files."""
    assert _READER is not None, "worker started without a reader"
    out = []
    for k, value in enumerate(_READER(case)):
        if isinstance(value, np.ndarray) and value.nbytes >= SPILL_BYTES:
            value = np.ascontiguousarray(value)
            path = _save(value, [os.path.join(folder, f"{position}-{k}.npy") for folder in scratch])
            value = _Spilled(path, hashlib.sha256(memoryview(value).cast("B")).hexdigest())
        out.append(value)
    return tuple(out)


def _save(array: np.ndarray, paths: Sequence[str]) -> str:
    """Save ``array`` at the first of ``paths`` whose file system has room; the path used."""
    for path in paths[:-1]:
        try:
            np.save(path, array, allow_pickle=False)
            return path
        except OSError:  # full (or gone): the next folder
            with contextlib.suppress(OSError):
                os.unlink(path)
    np.save(paths[-1], array, allow_pickle=False)
    return paths[-1]


def _shared_scratch() -> Path | None:
    """A new scratch folder in shared memory, or None where there is none with room.

    Folders of drivers that no longer run (killed before they could clean up) are removed first.
    """
    try:
        if not SHARED_MEMORY.is_dir() or not os.access(SHARED_MEMORY, os.W_OK):
            return None
        for stale in SHARED_MEMORY.glob(f"{_SHARED_PREFIX}*"):
            owner = stale.name[len(_SHARED_PREFIX) :].split("-")[0]
            if owner.isdigit() and not _alive(int(owner)):
                shutil.rmtree(stale, ignore_errors=True)
        if shutil.disk_usage(SHARED_MEMORY).free < SHARED_MEMORY_ROOM:
            return None
        return Path(tempfile.mkdtemp(prefix=f"{_SHARED_PREFIX}{os.getpid()}-", dir=SHARED_MEMORY))
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _context(read: Callable[..., Any]) -> multiprocessing.context.BaseContext:
    """The start method of the reading processes: the fork server where there is one, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # imported once in the server (before its first start) rather than in every worker
    context.set_forkserver_preload([name for name in (__name__, getattr(read, "__module__", None)) if name and name != "__main__"])
    return context


class CaseReads:
    """``(case, read(case))`` for every case in the order of ``cases``, read by ``workers`` processes.

    With one worker (or one case) everything runs in this process, exactly as a plain loop.
    Otherwise ``read`` runs in a process pool; arrays it returns that are at least
    `SPILL_BYTES` large come back as `SpilledArray` (memory-mapped, read only, from
    ``.npy`` files in shared memory, or in ``scratch`` where that is full, each deleted
    once the caller has moved on to the next case). `close` (which the caller must reach,
    normally or on an error) cancels the cases not yet started, waits for the running
    ones and removes the scratch folders.

    Args:
        read: reads one case; must be picklable (a module-level function or class instance).
            An exception it raises reaches the caller unchanged (a `DataError` naming the
            file, as the reader words it).
        cases: the cases, in the order they are handed back.
        workers: processes reading at once (>= 1; at most one per case is started; one, in
            this process, inside a daemonic process, which may not have children).
        scratch: a folder that may be created and removed (inside the artifact being built):
            where scratch files go when shared memory has no room.
        describe: names a case in the error raised when a worker process dies.
    """

    def __init__(
        self,
        read: Callable[[Case], tuple[Any, ...]],
        cases: Sequence[Case],
        workers: int,
        scratch: Path,
        describe: Callable[[Case], str] = str,
    ):
        self.read, self.cases, self.scratch, self.describe = read, list(cases), scratch, describe
        self.workers = max(1, min(int(workers), len(self.cases)))
        if multiprocessing.current_process().daemon:  # a daemonic process may not start children: read here
            self.workers = 1
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._shared: Path | None = None

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[tuple[Case, tuple[Any, ...]]]:
        if self.workers == 1:
            _keep_freed_blocks(True)
            try:
                for case in self.cases:
                    yield case, self.read(case)
            finally:
                _keep_freed_blocks(False)
            return
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._shared = _shared_scratch()
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=_context(self.read), initializer=_init_worker, initargs=(self.read,)
        )
        yield from self._ordered(self._pool, self.workers * READ_AHEAD)

    def close(self) -> None:
        """Stop reading: cancel what has not started, wait for the running cases, remove the scratch folder."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for folder in (self._shared, self.scratch):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self._shared = None

    def _ordered(self, pool: concurrent.futures.ProcessPoolExecutor, ahead: int) -> Iterator[tuple[Case, tuple[Any, ...]]]:
        pending: deque[tuple[Case, concurrent.futures.Future]] = deque()
        upcoming = iter(enumerate(self.cases))
        scratch = [str(folder) for folder in (self._shared, self.scratch) if folder is not None]

        def submit_next() -> None:
            for position, case in upcoming:
                pending.append((case, pool.submit(_read_one, position, case, scratch)))
                return

        for _ in range(ahead):
            submit_next()
        while pending:
            case, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                raise DataError(
                    f"{self.describe(case)}: the process reading this case stopped without a result (killed, or out of "
                    "memory?); set dataset.workers lower, or to 1 to read in this process."
                ) from None
            submit_next()  # keep the pool busy while the caller writes this case
            spilled = [value.path for value in result if isinstance(value, _Spilled)]
            yield case, tuple(_mapped(v) if isinstance(v, _Spilled) else v for v in result)
            for path in spilled:  # the caller has copied the arrays (an open mapping keeps its data alive)
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _mapped(spilled: _Spilled) -> SpilledArray:
    array = np.load(spilled.path, mmap_mode="r", allow_pickle=False)
    return SpilledArray(array, spilled.path, int(array.offset), spilled.sha256)
