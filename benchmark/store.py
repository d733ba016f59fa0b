"""The results database: ``OUT/results.sqlite`` (SQLite, WAL, one transaction per cell).

Tables:
    runs: one row per cell key — its resolved config, status (``finished`` or
        ``failed``), timings, environment, error traceback, and the attack's and
        defense's reports (JSON).
    case_metrics: one row per cell × validation case — Dice, Jaccard, accuracy,
        sensitivity, specificity and the TP/FP/TN/FN they come from, and HD95, lesion-wise
        Dice and lesion-wise HD95 (`benchmark.metrics.OPTIONAL_METRICS`; NULL where
        unmeasured: cells stored before they were, data without geometry, and for the
        lesion-wise two an install without the brats-eval extra).
    studies: one row per study (`benchmark.studies`): its key, config, data fingerprint,
        package version, a short description, and when it was first and last run.
    study_cells: which cells each study planned (a cell may belong to several studies).

Older databases are migrated when opened, in one transaction that keeps every row:
schema 1 (without the study tables), whose cells belong to no recorded study
(`ResultStore.studies` groups them into derived ones), and schema 2 (without
``case_metrics.hd95``) and 3 (without the lesion-wise columns), whose cases read what they
lack as not measured. Each schema number marks its columns: a release that writes without
them reads the older schemas only and refuses a newer file when it opens it, before it
runs any cell, rather than losing a cell's results to a failed insert after training. A
file of a newer schema is refused here alike.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .errors import BenchError
from .metrics import METRICS, OPTIONAL_METRICS

__all__ = ["ResultStore", "CellRecord", "SCHEMA_VERSION", "STUDY_COLUMNS"]

SCHEMA_VERSION = 4
"""1: runs and case metrics; 2: the study tables; 3: ``case_metrics.hd95``; 4: ``lesion_dice`` and ``lesion_hd95``."""
FINISHED, FAILED = "finished", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    cell_key TEXT PRIMARY KEY,
    segmenter TEXT NOT NULL,
    attack TEXT NOT NULL,
    rate REAL NOT NULL,
    defense TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('finished', 'failed')),
    config_json TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    duration_s REAL NOT NULL,
    timings_json TEXT NOT NULL,
    environment_json TEXT NOT NULL,
    attack_report_json TEXT NOT NULL DEFAULT '{}',
    defense_report_json TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
CREATE TABLE IF NOT EXISTS case_metrics (
    cell_key TEXT NOT NULL REFERENCES runs(cell_key) ON DELETE CASCADE,
    case_id TEXT NOT NULL,
    dice REAL NOT NULL, jaccard REAL NOT NULL, accuracy REAL NOT NULL,
    sensitivity REAL NOT NULL, specificity REAL NOT NULL,
    tp INTEGER NOT NULL, fp INTEGER NOT NULL, tn INTEGER NOT NULL, fn INTEGER NOT NULL,
    hd95 REAL, lesion_dice REAL, lesion_hd95 REAL,
    PRIMARY KEY (cell_key, case_id)
);
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    dataset_fingerprint TEXT NOT NULL,
    package_version TEXT NOT NULL,
    description TEXT NOT NULL,
    first_run_at REAL NOT NULL,
    last_run_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_cells (
    study_key TEXT NOT NULL REFERENCES studies(study_key) ON DELETE CASCADE,
    cell_key TEXT NOT NULL,
    PRIMARY KEY (study_key, cell_key)
);
"""
STUDY_COLUMNS = ["study", "last_run_at", "cells", "finished", "seeds", "description", "recorded", "config", "cell_keys"]


@dataclass
class CellRecord:
    """What one cell produced, written in one transaction."""

    key: str
    config: dict[str, Any]
    status: str
    started_at: float
    finished_at: float
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    case_metrics: pd.DataFrame | None = None
    attack_report: dict[str, Any] = field(default_factory=dict)
    defense_report: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class ResultStore:
    """Reads and writes ``results.sqlite`` in an output folder.

    Args:
        path: the database file; its folder is created if needed.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._refuse_foreign_database()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version)
            if version != SCHEMA_VERSION:
                self._migrate()
        except sqlite3.DatabaseError as exc:
            raise BenchError(f"{self.path}: cannot open the results database: {exc}") from None
        except OSError as exc:
            raise BenchError(f"{self.path}: cannot create the output folder: {exc.strerror or exc}") from None

    def _check_version(self, version: int) -> None:
        """Refuse a schema this release cannot read (0: a new file; 1 to 3: migrated by `_migrate`)."""
        if version not in range(SCHEMA_VERSION + 1):
            newer = " (written by a newer poisonbench: upgrade it, or choose another --out)" if version > SCHEMA_VERSION else ""
            raise BenchError(f"{self.path}: results database schema {version} is not supported (expected {SCHEMA_VERSION} or older){newer}.")

    def _migrate(self) -> None:
        """Create what is missing and mark the file as `SCHEMA_VERSION`, in one transaction.

        ``BEGIN IMMEDIATE`` makes a second process opening the file at the same time wait,
        then find it migrated (the version is read again inside the transaction).
        """
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version)
            if version == SCHEMA_VERSION:
                return
            for statement in _SCHEMA.split(";"):  # executescript would commit the transaction first
                if statement.strip():
                    db.execute(statement)
            present = {row[1] for row in db.execute("PRAGMA table_info(case_metrics)")}
            for metric in OPTIONAL_METRICS:  # cases stored before the metric was measured read NULL
                if metric in present:
                    continue
                try:
                    db.execute(f"ALTER TABLE case_metrics ADD COLUMN {metric} REAL")
                except sqlite3.OperationalError as exc:  # "duplicate column": another process added it first
                    if "duplicate column" not in str(exc):
                        raise
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _refuse_foreign_database(self) -> None:
        """An SQLite file with tables but no ``runs(cell_key)`` is someone else's: close it unchanged and refuse."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")} if "runs" in tables else set()
        if tables and "cell_key" not in columns:
            self._db.close()
            raise BenchError(f"{self.path}: an SQLite database that is not a poisonbench results database; it is left as it is (choose another --out).")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def finished_keys(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT cell_key FROM runs WHERE status = ?", (FINISHED,))}

    def write(self, record: CellRecord) -> None:
        """Store one cell atomically, replacing an earlier row of the same key."""
        cfg = record.config
        rows = []
        if record.case_metrics is not None:
            frame = record.case_metrics
            for case, row in frame.iterrows():
                optional = (float(row[m]) if m in row and pd.notna(row[m]) else None for m in OPTIONAL_METRICS)
                rows.append(
                    (record.key, str(case), *(float(row[m]) for m in METRICS), *(int(row[c]) for c in ("tp", "fp", "tn", "fn")),
                     *optional)
                )
        with self._transaction() as db:
            db.execute("DELETE FROM case_metrics WHERE cell_key = ?", (record.key,))
            db.execute(
                "INSERT OR REPLACE INTO runs (cell_key, segmenter, attack, rate, defense, seed, status, config_json,"
                " started_at, finished_at, duration_s, timings_json, environment_json, attack_report_json,"
                " defense_report_json, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.key,
                    cfg["segmenter"]["name"],
                    cfg["attack"]["name"],
                    float(cfg["rate"]),
                    cfg["defense"]["name"],
                    int(cfg["seed"]),
                    record.status,
                    _dumps(cfg),
                    record.started_at,
                    record.finished_at,
                    record.finished_at - record.started_at,
                    _dumps(record.timings),
                    _dumps(record.environment),
                    _dumps(record.attack_report),
                    _dumps(record.defense_report),
                    record.error,
                ),
            )
            columns = ("cell_key", "case_id", *METRICS, "tp", "fp", "tn", "fn", *OPTIONAL_METRICS)
            db.executemany(f"INSERT INTO case_metrics ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)

    def runs(self, keys: list[str] | None = None) -> pd.DataFrame:
        """The runs table (JSON columns parsed), optionally limited to some cell keys."""
        frame = pd.read_sql_query("SELECT * FROM runs ORDER BY started_at, cell_key", self._db)
        if keys is not None:
            frame = frame[frame["cell_key"].isin(keys)]
        for column in ("config_json", "timings_json", "environment_json", "attack_report_json", "defense_report_json"):
            frame[column.removesuffix("_json")] = frame.pop(column).map(json.loads)
        return frame.reset_index(drop=True)

    def case_metrics(self, keys: list[str] | None = None) -> pd.DataFrame:
        """Per-case metrics joined with each cell's segmenter, attack, rate, defense and seed."""
        frame = pd.read_sql_query(
            "SELECT r.cell_key AS cell, r.segmenter, r.attack, r.rate, r.defense, r.seed, m.case_id AS 'case',"
            " m.dice, m.jaccard, m.accuracy, m.sensitivity, m.specificity, m.tp, m.fp, m.tn, m.fn, "
            + ", ".join(f"m.{metric}" for metric in OPTIONAL_METRICS)
            + " FROM case_metrics m JOIN runs r ON r.cell_key = m.cell_key WHERE r.status = 'finished'"
            " ORDER BY r.started_at, r.cell_key, m.rowid",
            self._db,
        )
        for metric in OPTIONAL_METRICS:
            frame[metric] = pd.to_numeric(frame[metric]).astype(float)  # NULL (not measured) -> NaN
        if keys is not None:
            frame = frame[frame["cell"].isin(keys)].reset_index(drop=True)
        return frame

    def record_study(self, key: str, config: dict[str, Any], cell_keys: list[str], description: str, at: float | None = None) -> None:
        """Record (or touch) a study and the cells it plans, in one transaction.

        Args:
            key: the study key (`benchmark.studies.study_key`).
            config: the study's config (`benchmark.studies.study_config`): holds
                ``dataset_fingerprint`` and ``package_version``.
            cell_keys: every cell the study plans, finished or not.
            description: a short description for listings.
            at: when it was run. Defaults to now.
        """
        at = time.time() if at is None else at
        with self._transaction() as db:
            db.execute(
                "INSERT INTO studies (study_key, config_json, dataset_fingerprint, package_version, description, first_run_at,"
                " last_run_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(study_key) DO UPDATE SET last_run_at = excluded.last_run_at",
                (key, _dumps(config), str(config.get("dataset_fingerprint", "")), str(config.get("package_version", "")),
                 description, at, at),
            )
            db.executemany("INSERT OR IGNORE INTO study_cells VALUES (?, ?)", [(key, cell) for cell in cell_keys])

    def studies(self) -> pd.DataFrame:
        """Every study in the folder, the last run first (`STUDY_COLUMNS`).

        Cells stored without a study (databases from before studies, or written directly)
        are grouped into derived studies by data set, task, split, data fingerprint and
        package version; ``recorded`` is False for those.
        """
        rows = []
        runs = pd.read_sql_query("SELECT cell_key, status, seed, finished_at, config_json, environment_json FROM runs", self._db)
        status = dict(zip(runs["cell_key"], runs["status"]))
        seed_of = dict(zip(runs["cell_key"], runs["seed"]))
        members = pd.read_sql_query("SELECT study_key, cell_key FROM study_cells", self._db)
        for _, study in pd.read_sql_query("SELECT * FROM studies", self._db).iterrows():
            keys = list(members.loc[members["study_key"] == study["study_key"], "cell_key"])
            rows.append(_study_row(study["study_key"], float(study["last_run_at"]), keys, status, seed_of, study["description"], True,
                                   json.loads(study["config_json"])))
        orphans = runs[~runs["cell_key"].isin(set(members["cell_key"]))]
        derived: dict[str, dict[str, Any]] = {}
        for _, run in orphans.iterrows():
            config, env = json.loads(run["config_json"]), json.loads(run["environment_json"])
            identity = {
                "dataset": config.get("dataset"), "task": config.get("task"), "split": config.get("split"),
                "dataset_fingerprint": env.get("dataset_fingerprint"),
                "package_version": (env.get("versions") or {}).get("poisonbench"),
            }
            key = hashlib.sha256(_dumps({"derived": identity}).encode()).hexdigest()[:16]
            group = derived.setdefault(key, {"identity": identity, "keys": [], "last": 0.0})
            group["keys"].append(run["cell_key"])
            group["last"] = max(group["last"], float(run["finished_at"]))
        for key, group in derived.items():
            name = (group["identity"]["dataset"] or {}).get("name", "unknown data set")
            rows.append(_study_row(key, group["last"], group["keys"], status, seed_of, f"{name}; cells stored without a study",
                                   False, group["identity"]))
        frame = pd.DataFrame(rows, columns=STUDY_COLUMNS)
        return frame.sort_values(["last_run_at", "study"], ascending=[False, True], kind="stable").reset_index(drop=True)

    def study_cells(self, key: str) -> list[str]:
        """The cell keys of a study (recorded or derived, see `studies`) that are stored."""
        found = self.studies()
        match = found[found["study"] == key]
        if match.empty:
            raise BenchError(f"{self.path}: no study {key!r} here.")
        return list(match.iloc[0]["cell_keys"])

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _study_row(key: str, last: float, keys: list[str], status: dict[str, str], seed_of: dict[str, int], description: str,
               recorded: bool, config: dict[str, Any]) -> dict[str, Any]:
    stored = [k for k in keys if k in status]
    finished = [k for k in stored if status[k] == FINISHED]
    return {
        "study": key, "last_run_at": last, "cells": len(stored), "finished": len(finished),
        "seeds": len({seed_of[k] for k in finished}), "description": description, "recorded": recorded, "config": config,
        "cell_keys": stored,
    }


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def now() -> float:
    return time.time()
