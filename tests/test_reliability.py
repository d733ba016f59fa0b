"""Crash safety, concurrent runs, corrupted caches and plugin faults, tested by doing them."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fault_plugins  # noqa: F401 - registers the test plugins
from benchmark import BenchError, SliceSet
from benchmark.cache import artifact_dir, build_artifact, cached_sliceset, load_sliceset
from benchmark.cli import main
from benchmark.locking import OutputBusy, OutputLock

TESTS_DIR = Path(__file__).parent


def _bench(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    code = "import sys, fault_plugins; from benchmark.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "POISONBENCH_CACHE": str(cache), "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _finished_rows(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        with sqlite3.connect(db_path) as db:
            return db.execute("SELECT COUNT(*) FROM runs WHERE status = 'finished'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.fixture
def kill_config(tiny_config, write_config, tmp_path):
    started = tmp_path / "fit-started"
    tiny_config["segmenters"] = [{"name": "test-threshold", "sleep_s": 0.5, "started_marker": str(started)}]
    tiny_config["attacks"] = [{"name": "none", "rates": [0, 0.25, 0.5, 0.75]}]
    return write_config(tiny_config), started


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["data-generation", "training", "writing-results"])
def test_sigkill_at_any_moment_then_resume_equals_uninterrupted(moment, kill_config, tmp_path):
    config, started = kill_config
    cache = tmp_path / f"cache-{moment}"  # a fresh cache, so data generation happens in the killed run
    reference, out = tmp_path / "reference", tmp_path / "killed"
    env = _env(cache)
    proc = _bench(["run", str(config), "--out", str(out), "--quiet"], env)
    if moment == "data-generation":
        _wait_for(lambda: (cache / "datasets").exists())
    elif moment == "training":
        _wait_for(lambda: started.exists())
    else:
        _wait_for(lambda: _finished_rows(out / "results.sqlite") >= 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    rerun = _bench(["run", str(config), "--out", str(out), "--quiet"], env)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    assert _bench(["run", str(config), "--out", str(reference), "--quiet"], env).wait(timeout=300) == 0

    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [row[0] for row in db.execute("SELECT cell_key FROM runs")]
        assert len(keys) == len(set(keys)) == 4
        assert db.execute("SELECT COUNT(*) FROM runs WHERE status != 'finished'").fetchone()[0] == 0
        per_cell = db.execute("SELECT COUNT(*), COUNT(DISTINCT case_id) FROM case_metrics GROUP BY cell_key").fetchall()
    assert all(total == distinct == 2 for total, distinct in per_cell)
    a = pd.read_csv(out / "results.csv").sort_values(["cell", "case"]).reset_index(drop=True)
    b = pd.read_csv(reference / "results.csv").sort_values(["cell", "case"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_second_run_on_same_output_refuses_while_first_runs(tiny_config, write_config, tmp_path):
    started = tmp_path / "fit-started"
    tiny_config["segmenters"] = [{"name": "test-threshold", "sleep_s": 600, "started_marker": str(started)}]
    config = write_config(tiny_config)
    out = tmp_path / "out"
    env = _env(tmp_path / "cache")
    first = _bench(["run", str(config), "--out", str(out), "--quiet"], env)
    try:
        _wait_for(lambda: started.exists())
        second = _bench(["run", str(config), "--out", str(out), "--quiet"], env)
        assert second.wait(timeout=120) == 2
        message = second.stderr.read().decode()
        assert "is in use by another bench run (pid" in message and "Traceback" not in message
    finally:
        first.kill()
        first.wait()
    # the killed holder does not keep the folder: the next run takes it and finishes the cell
    tiny_config["segmenters"][0]["sleep_s"] = 0
    config = write_config(tiny_config)
    assert _bench(["run", str(config), "--out", str(out), "--quiet"], env).wait(timeout=120) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM runs WHERE status = 'finished'").fetchone()[0] == 1


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from benchmark.locking import OutputLock\n"
         "with OutputLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline().strip() == b"held"
    with pytest.raises(OutputBusy, match="in use by another bench run"):
        with OutputLock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    with OutputLock(tmp_path):  # the kernel released the dead holder's lock
        pass


def _tiny_sliceset() -> SliceSet:
    rng = np.random.default_rng(0)
    return SliceSet.create(rng.normal(size=(4, 2, 8, 8)), np.zeros((4, 8, 8)), ["a", "a", "b", "b"], ["t1", "t1ce"])


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete-manifest"])
def test_corrupt_cached_artifact_is_detected_and_rebuilt(damage, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path))
    builds = []

    def build() -> SliceSet:
        builds.append(1)
        return _tiny_sliceset()

    first = cached_sliceset("datasets", "tiny", build, mmap=False)
    folder = artifact_dir("datasets", "tiny")
    images = folder / "images.npy"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:-50])
    elif damage == "alter":
        data = bytearray(images.read_bytes())
        data[-1] ^= 0xFF
        images.write_bytes(bytes(data))
    else:
        (folder / "manifest.json").unlink()
    with caplog.at_level("WARNING"):
        again = cached_sliceset("datasets", "tiny", build, mmap=False)
    assert len(builds) == 2
    assert "corrupt and will be rebuilt" in caplog.text
    np.testing.assert_array_equal(again.images, first.images)
    cached_sliceset("datasets", "tiny", build)
    assert len(builds) == 2  # a sound artifact is loaded, not rebuilt


def test_read_only_cache_gives_clear_error(tmp_path, monkeypatch):
    import benchmark.cache as cache

    def refuse(*args, **kwargs):  # what a read-only folder answers, whoever runs the test
        raise PermissionError(13, "Permission denied")

    monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path / "ro"))
    monkeypatch.setattr(cache.tempfile, "mkdtemp", refuse)
    with pytest.raises(BenchError, match=f"cannot write to the cache folder {tmp_path / 'ro'}.*Permission denied"):
        cached_sliceset("datasets", "x", _tiny_sliceset)


def test_unwritable_cache_gives_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("POISONBENCH_CACHE", str(blocker))
    with pytest.raises(BenchError, match="cannot write to the cache folder .*not-a-folder"):
        cached_sliceset("datasets", "x", _tiny_sliceset)


def test_full_disk_while_writing_artifact_gives_clear_error_and_leaves_nothing(tmp_path):
    def write(folder: Path):
        raise OSError(28, "No space left on device")

    target = tmp_path / "gan" / "key"
    with pytest.raises(BenchError, match="No space left on device"):
        build_artifact(target, write)
    assert not target.exists()
    assert list((tmp_path / "gan").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, message",
    [
        ({"segmenters": [{"name": "test-nan"}]}, "segmenter 'test-nan'"),
        ({"attacks": [{"name": "test-nan-attack", "rates": [0.5]}]}, "attack 'test-nan-attack': poison() returned images containing NaN"),
        ({"attacks": [{"name": "test-wrong-type", "rates": [0.5]}]}, "attack 'test-wrong-type': poison() must return a SliceSet; got ndarray"),
    ],
)
def test_plugin_fault_fails_only_its_cell(change, message, tiny_config, write_config, tmp_path, capsys):
    good = tiny_config["segmenters"][0] | {"epochs": 1}
    tiny_config["segmenters"] = [{"name": "test-threshold"}]
    tiny_config.update(change)
    if "segmenters" in change:
        tiny_config["segmenters"].append({"name": "test-threshold"})
    else:
        tiny_config["attacks"].append({"name": "none", "rates": [0]})
    out = tmp_path / "out"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 1
    with sqlite3.connect(out / "results.sqlite") as db:
        statuses = db.execute("SELECT status, error FROM runs").fetchall()
    assert sorted(s for s, _ in statuses) == ["failed", "finished"]
    assert any(message in (error or "") for _, error in statuses)
    assert main(["report", "--out", str(out)]) == 1
    assert "failed" in capsys.readouterr().out
    assert good  # the tiny unet spec is untouched by the change


def test_loaded_cache_is_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path))
    cached_sliceset("datasets", "mm", _tiny_sliceset)
    loaded = load_sliceset(artifact_dir("datasets", "mm"))
    assert isinstance(loaded.images, np.memmap)


def test_large_artifacts_are_verified_by_sampled_digest(tmp_path, monkeypatch, caplog):
    import benchmark.cache as cache

    monkeypatch.setattr(cache, "FULL_HASH_LIMIT", 0)  # treat every file as large
    monkeypatch.setenv("POISONBENCH_CACHE", str(tmp_path))
    builds = []
    cached_sliceset("datasets", "big", lambda: builds.append(1) or _tiny_sliceset())
    images = artifact_dir("datasets", "big") / "images.npy"
    assert "sample_sha256" in (artifact_dir("datasets", "big") / "manifest.json").read_text()
    data = bytearray(images.read_bytes())
    data[200] ^= 0xFF  # inside the first sampled block
    images.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        cached_sliceset("datasets", "big", lambda: builds.append(1) or _tiny_sliceset())
    assert len(builds) == 2 and "sampled" in caplog.text


@pytest.mark.slow
def test_spilled_arrays_give_the_same_results(tiny_config, write_config, tmp_path, monkeypatch):
    """With every copy forced to a memory-mapped temporary file, a cell's metrics do not change."""
    from benchmark.spill import SPILL_ENV, allocate

    tiny_config["split"]["trusted"] = 1
    tiny_config["attacks"] = [{"name": "noise", "rates": [0.5]}]
    config = write_config(tiny_config)
    assert main(["run", str(config), "--out", str(tmp_path / "ram"), "--quiet"]) == 0
    monkeypatch.setenv(SPILL_ENV, "0")
    assert isinstance(allocate((2, 2), np.float32), np.memmap)
    assert main(["run", str(config), "--out", str(tmp_path / "spilled"), "--quiet"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ram" / "results.csv"), pd.read_csv(tmp_path / "spilled" / "results.csv"))


@pytest.mark.parametrize("case", ["../../escaped", "/etc/passwd", "..", "a/b\\c"])
def test_prediction_files_stay_in_their_folder(case, tmp_path):
    from benchmark.runner import save_predictions

    folder = tmp_path / "predictions" / "cell"
    save_predictions(folder, np.zeros((2, 4, 4), np.uint8), np.array([case, case]))
    written = [p for p in tmp_path.rglob("*.nii.gz")]
    assert len(written) == 1 and written[0].parent == folder
