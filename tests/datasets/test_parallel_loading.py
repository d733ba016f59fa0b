"""Cases read by several processes (``dataset.workers``): the same cache, the same errors, the same keys."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from benchmark import ConfigError, DataError, create_dataset
from benchmark.config import validate_config
from benchmark.datasets._parallel import CaseReads, default_workers
from benchmark.runner import plan_sweep
from test_brats import NAMING, write_brats
from test_decathlon import write_msd
from test_nnunet import write_nnunet

WRITERS = {"brats": write_brats, "decathlon": write_msd, "nnunet": write_nnunet}


def build(name: str, root: Path, cache: Path, monkeypatch, workers: int | None, **params) -> tuple[object, Path]:
    """Load ``root`` into the cache folder ``cache`` with ``workers`` processes; the source and its artifact folder."""
    monkeypatch.setenv("POISONBENCH_CACHE", str(cache))
    source = create_dataset(name, root=str(root), **params)
    source.workers = workers
    data = source.load()
    folder = cache / "datasets" / f"{name}-{source.fingerprint()}"
    assert folder.is_dir()
    return data, folder


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_parallel_cache_is_byte_identical_to_one_process(tmp_path, monkeypatch, name):
    root = WRITERS[name](tmp_path / "data", 5)
    one, one_folder = build(name, root, tmp_path / "cache-1", monkeypatch, 1)
    three, three_folder = build(name, root, tmp_path / "cache-3", monkeypatch, 3)
    files = sorted(p.name for p in one_folder.iterdir())
    assert files == sorted(p.name for p in three_folder.iterdir())
    assert not any(name.startswith(".") for name in files)  # the scratch folder does not survive
    for file in files:
        assert (one_folder / file).read_bytes() == (three_folder / file).read_bytes(), file
    ids = list(three.case_ids)
    order = list(dict.fromkeys(ids))
    assert order == sorted(order) and len(order) == 5  # cases in order ...
    assert sum(a != b for a, b in zip(ids, ids[1:])) == len(order) - 1  # ... each in one block
    np.testing.assert_array_equal(np.asarray(one.images), np.asarray(three.images))


def test_cases_arrive_in_order_with_one_progress_tick_each(tmp_path, monkeypatch):
    root = write_brats(tmp_path / "data", 4)
    seen: list[str] = []

    def progress(iterable, description, total):
        assert description == "reading brats" and total == 4
        for case, result in iterable:
            seen.append(case.case_id)
            yield case, result

    from benchmark import RunContext

    monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path / "cache"))
    source = create_dataset("brats", root=str(root))
    source.workers = 2
    source.bind(RunContext(quiet=False, progress=progress))
    source.load()
    assert seen == [f"BraTS2021_{i:05d}" for i in range(4)]


def test_a_corrupt_file_read_by_a_worker_is_named(tmp_path, monkeypatch):
    root = write_brats(tmp_path / "data", 4)
    case = "BraTS2021_00002"
    bad = root / case / f"{case}{NAMING['2021']['flair']}.nii.gz"
    bad.write_bytes(gzip.compress(b"not a NIfTI header")[:20])
    monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path / "cache"))
    source = create_dataset("brats", root=str(root))
    source.workers = 2
    with pytest.raises(DataError, match=rf"{bad}: cannot read this flair image of case {case} as NIfTI"):
        source.load()
    datasets = tmp_path / "cache" / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []  # no artifact, no temporary folder left


def _die_on_second(case: int) -> tuple[np.ndarray]:
    if case == 1:
        os._exit(3)  # as a process killed by the OOM killer
    return (np.full((64, 64), case, dtype=np.float32),)


def _shapes(case: int) -> tuple[np.ndarray, np.ndarray, str]:
    return np.full((3, 64, 64), case, dtype=np.float32), np.arange(case), f"case-{case}"


def test_a_worker_that_dies_names_its_case(tmp_path):
    reads = CaseReads(_die_on_second, [0, 1, 2], 2, tmp_path / "scratch", describe=lambda c: f"case-file-{c}.nii.gz")
    try:
        with pytest.raises(DataError, match=r"case-file-1\.nii\.gz: the process reading this case stopped"):
            list(reads)
    finally:
        reads.close()
    assert not (tmp_path / "scratch").exists()


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_case_reads_hand_back_values_in_order(tmp_path, workers):
    reads = CaseReads(_shapes, list(range(6)), workers, tmp_path / "scratch")
    try:
        got = [(case, np.array(big), np.array(small), text) for case, (big, small, text) in reads]
    finally:
        reads.close()
    assert [g[0] for g in got] == list(range(6))
    for case, big, small, text in got:
        assert big.shape == (3, 64, 64) and (big == case).all()  # large: through the scratch folder
        np.testing.assert_array_equal(small, np.arange(case))  # small: pickled
        assert text == f"case-{case}"
    assert not (tmp_path / "scratch").exists()


def _read_in_a_daemon(scratch: str, out) -> None:
    reads = CaseReads(_shapes, list(range(3)), 2, Path(scratch))
    try:
        out.put([(case, text) for case, (_, _, text) in reads])
    finally:
        reads.close()


def test_a_daemonic_process_reads_in_itself(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    out = context.Queue()
    process = context.Process(target=_read_in_a_daemon, args=(str(tmp_path / "scratch"), out), daemon=True)
    process.start()
    got = out.get(timeout=60)
    process.join(timeout=60)
    assert process.exitcode == 0
    assert got == [(0, "case-0"), (1, "case-1"), (2, "case-2")]


def test_default_workers_is_the_cpu_affinity():
    assert default_workers() == len(os.sched_getaffinity(0))


def _config(tiny_config: dict, root: Path, **dataset) -> dict:
    return {**tiny_config, "dataset": {"name": "brats", "root": str(root), **dataset}}


def test_workers_change_neither_fingerprint_nor_cell_keys(tmp_path, tiny_config):
    root = write_brats(tmp_path / "data", 3)
    plans = {w: plan_sweep(validate_config(_config(tiny_config, root, workers=w))) for w in (None, 1, 4)}
    assert plans[4].source.workers == 4 and plans[1].source.workers == 1 and plans[None].source.workers is None
    assert len({p.fingerprint for p in plans.values()}) == 1
    assert len({tuple(c.key for c in p.cells) for p in plans.values()}) == 1
    assert "workers" not in plans[4].config.resolved()["dataset"]


@pytest.mark.parametrize("value", [0, -1, 2.5, "two", True, 5000])
def test_bad_workers_are_named(tmp_path, tiny_config, value):
    with pytest.raises(ConfigError, match=r"dataset\.workers: expected a number of processes"):
        validate_config(_config(tiny_config, tmp_path, workers=value))


def _parent(case: int) -> tuple[int]:
    return (os.getppid(),)


def test_readers_are_not_forked_from_the_threaded_driver(tmp_path):
    """The driver runs threads (torch, the progress display): its workers come from a fork server or spawn."""
    import multiprocessing
    import threading

    from benchmark.datasets._parallel import _context

    busy = threading.Event()
    thread = threading.Thread(target=busy.wait, daemon=True)  # a driver thread, as torch's or rich's
    thread.start()
    reads = CaseReads(_parent, list(range(4)), 2, tmp_path / "scratch")
    try:
        parents = {parent for _, (parent,) in reads}
    finally:
        reads.close()
        busy.set()
    assert _context(_parent).get_start_method() in ("forkserver", "spawn")
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert os.getpid() not in parents  # forked from the server, not from this process
