"""The results database's schema: older files migrated without losing a row, a newer one refused
before anything runs, two processes opening an old file at once."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pandas as pd
import pytest

from benchmark import METRICS, BenchError, ResultStore
from benchmark.store import SCHEMA_VERSION, CellRecord

CASES = ["a", "b", "c"]


def _record(key: str, rate: float, hd95: list[float] | None = None) -> CellRecord:
    frame = pd.DataFrame({m: [0.9 - 0.1 * i - rate / 10 for i in range(3)] for m in METRICS}, index=pd.Index(CASES, name="case"))
    for i, count in enumerate(("tp", "fp", "tn", "fn")):
        frame[count] = [10 * (i + 1) + j for j in range(3)]
    if hd95 is not None:
        frame["hd95"] = hd95
    config = {"dataset": {"name": "synthetic-brats"}, "segmenter": {"name": "unet"}, "attack": {"name": "noise"}, "rate": rate,
              "defense": {"name": "none"}, "seed": 0}
    return CellRecord(key, config, "finished", 1.0 + rate, 2.0 + rate, environment={"dataset_fingerprint": "fp"}, case_metrics=frame)


def _schema_2_database(path) -> None:
    """A results database as a release of schema 2 wrote it: study tables, no ``case_metrics.hd95``, rows in it."""
    with ResultStore(path) as store:
        store.record_study("s" * 16, {"dataset_fingerprint": "fp", "package_version": "0.1.0"}, ["k0", "k1", "k2"], "a study")
        for i, rate in enumerate((0.0, 0.5, 1.0)):
            store.write(_record(f"k{i}", rate))
    with sqlite3.connect(path) as db:
        for column in ("lesion_hd95", "lesion_dice", "hd95"):
            db.execute(f"ALTER TABLE case_metrics DROP COLUMN {column}")
        db.execute("PRAGMA user_version=2")


def _schema_3_database(path) -> None:
    """A results database as a release of schema 3 wrote it: ``hd95`` measured, no lesion-wise columns."""
    with ResultStore(path) as store:
        store.write(_record("k0", 0.0, hd95=[1.0, 2.0, 3.0]))
    with sqlite3.connect(path) as db:
        for column in ("lesion_hd95", "lesion_dice"):
            db.execute(f"ALTER TABLE case_metrics DROP COLUMN {column}")
        db.execute("PRAGMA user_version=3")


def _tables(path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as db:
        return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("runs", "studies", "study_cells")} | {
            "case_metrics": db.execute("SELECT cell_key, case_id, dice, jaccard, accuracy, sensitivity, specificity, tp, fp, tn, fn"
                                       " FROM case_metrics ORDER BY 1, 2").fetchall()}


def test_a_schema_2_database_is_migrated_and_keeps_every_row(tmp_path):
    path = tmp_path / "results.sqlite"
    _schema_2_database(path)
    before = _tables(path)
    assert len(before["runs"]) == 3 and len(before["case_metrics"]) == 9 and len(before["study_cells"]) == 3
    with ResultStore(path) as store:
        cases = store.case_metrics()
        assert len(cases) == 9 and cases["hd95"].isna().all()  # stored before HD95: not measured
        assert len(store.studies()) == 1 and store.studies().iloc[0]["finished"] == 3
        store.write(_record("k3", 0.25, hd95=[1.5, 2.5, np.nan]))  # a new cell, with HD95
    after = _tables(path)
    assert len(after["runs"]) == 4 and len(after["case_metrics"]) == 12  # k3 added ...
    for table, rows in before.items():
        assert set(rows) <= set(after[table]), table  # ... and nothing lost or changed
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with ResultStore(path) as store:
        hd95 = store.case_metrics(["k3"]).set_index("case")["hd95"]
        assert hd95["a"] == 1.5 and hd95["b"] == 2.5 and np.isnan(hd95["c"])


def test_a_schema_3_database_gains_the_lesion_wise_columns_and_keeps_its_hd95(tmp_path):
    path = tmp_path / "results.sqlite"
    _schema_3_database(path)
    with ResultStore(path) as store:
        cases = store.case_metrics().set_index("case")
        assert list(cases["hd95"]) == [1.0, 2.0, 3.0]
        assert cases[["lesion_dice", "lesion_hd95"]].isna().all().all()  # stored before them: not measured
        record = _record("k1", 0.5, hd95=[1.0, 1.0, 1.0])
        record.case_metrics["lesion_dice"] = [0.5, np.nan, 1.0]
        record.case_metrics["lesion_hd95"] = [4.0, np.nan, 0.0]
        store.write(record)
        lesions = store.case_metrics(["k1"]).set_index("case")
    assert list(lesions["lesion_dice"].fillna(-1)) == [0.5, -1, 1.0] and list(lesions["lesion_hd95"].fillna(-1)) == [4.0, -1, 0.0]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT hd95 FROM case_metrics WHERE cell_key = 'k0' ORDER BY case_id").fetchall() == [(1.0,), (2.0,), (3.0,)]


def test_a_migrated_database_is_refused_by_a_release_that_writes_without_hd95(tmp_path):
    # releases of schema 2 and older accept user_version 0, 1 and 2 only, and check it when the
    # store opens, which run_sweep does before the first cell: a schema 3 file is refused there
    path = tmp_path / "results.sqlite"
    _schema_2_database(path)
    ResultStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] not in (0, 1, 2)


def test_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(BenchError, match=f"schema {SCHEMA_VERSION + 1} is not supported .*newer poisonbench"):
        ResultStore(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_two_processes_migrating_at_once(tmp_path):
    """Another connection migrates the file while this one opens it: this one waits and finds it done."""
    path = tmp_path / "results.sqlite"
    _schema_2_database(path)
    other = sqlite3.connect(path, isolation_level=None, timeout=60)
    other.execute("BEGIN IMMEDIATE")
    for column in ("hd95", "lesion_dice", "lesion_hd95"):
        other.execute(f"ALTER TABLE case_metrics ADD COLUMN {column} REAL")
    other.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    outcome: list[object] = []

    def open_store() -> None:
        try:
            with ResultStore(path) as store:
                outcome.append(len(store.case_metrics()))
        except Exception as exc:  # reported by the assertion below
            outcome.append(exc)

    thread = threading.Thread(target=open_store)
    thread.start()
    time.sleep(1.0)  # the store is now waiting on the other connection's migration
    other.execute("COMMIT")
    other.close()
    thread.join(60)
    assert outcome == [9]
