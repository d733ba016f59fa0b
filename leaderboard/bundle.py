"""Submission bundles: export a results database as one self-describing JSON document.

A bundle holds the schema version, the sweep's resolved config, every finished cell with
its per-case metrics and their aggregates (mean, std, 95 % bootstrap CI), the attack's
and defense's reports, provenance, a free-text submitter block and ``digest``: the
SHA-256 (hex) of the canonical JSON of the bundle without ``digest`` (keys sorted,
separators ``,`` and ``:``, UTF-8, NaN and infinities written as ``null``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

import benchmark
from benchmark import LESION_METRICS, METRICS, OPTIONAL_METRICS, BenchError, ResultStore, aggregate

__all__ = [
    "SCHEMA_VERSION",
    "BUNDLE_KIND",
    "AGGREGATE_METHOD",
    "COUNT_COLUMNS",
    "canonical_json",
    "common_thread_count",
    "compute_digest",
    "finite_or_none",
    "export_bundle",
    "write_bundle",
]

SCHEMA_VERSION = 1
BUNDLE_KIND = "poisonbench-submission"
COUNT_COLUMNS = ("tp", "fp", "tn", "fn")
AGGREGATE_METHOD = {"method": "percentile-bootstrap", "resamples": 2000, "seed": 0, "level": 0.95}


def finite_or_none(value: Any) -> Any:
    """Replace NaN and infinities (at any depth) by ``None``; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    # numpy scalars and the like
    item = getattr(value, "item", None)
    if callable(item):
        return finite_or_none(item())
    return str(value)


def canonical_json(value: Any) -> bytes:
    """Keys sorted, separators ``,``/``:``, UTF-8, no NaN: the bytes the digest is taken over."""
    return json.dumps(finite_or_none(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def compute_digest(bundle: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``bundle`` without its ``digest`` key."""
    return hashlib.sha256(canonical_json({k: v for k, v in bundle.items() if k != "digest"})).hexdigest()


def _aggregates(values: Any) -> dict[str, Any]:
    agg = aggregate(values, resamples=AGGREGATE_METHOD["resamples"], seed=AGGREGATE_METHOD["seed"], level=AGGREGATE_METHOD["level"])
    return finite_or_none({"mean": agg.mean, "std": agg.std, "ci_low": agg.ci_low, "ci_high": agg.ci_high, "n": agg.n})


def sweep_config_from_cells(cell_configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep that expands to these cells (dataset, task and split of the first cell)."""
    if not cell_configs:
        return {}
    first = cell_configs[0]

    def unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for item in items:
            seen.setdefault(json.dumps(item, sort_keys=True), item)
        return list(seen.values())

    attacks: dict[str, dict[str, Any]] = {}
    for cfg in cell_configs:
        ident = json.dumps(cfg["attack"], sort_keys=True)
        entry = attacks.setdefault(ident, {**cfg["attack"], "rates": []})
        if float(cfg["rate"]) not in entry["rates"]:
            entry["rates"].append(float(cfg["rate"]))
    for entry in attacks.values():
        entry["rates"].sort()
    return {
        "dataset": first["dataset"],
        "task": first["task"],
        "split": first["split"],
        "segmenters": unique([c["segmenter"] for c in cell_configs]),
        "attacks": list(attacks.values()),
        "defenses": unique([c["defense"] for c in cell_configs]),
        "seeds": sorted({int(c["seed"]) for c in cell_configs}),
    }


def _dataset_fingerprint(dataset: dict[str, Any]) -> str | None:
    try:
        params = {k: v for k, v in dataset.items() if k != "name"}
        return benchmark.create_dataset(dataset["name"], **params).fingerprint()
    except Exception:  # an unknown or broken dataset plugin: provenance says so with null
        return None


def export_bundle(
    results_dir: str | Path,
    submitter: dict[str, str | None] | None = None,
    created: str | None = None,
    study: str | list[str] | None = None,
) -> dict[str, Any]:
    """Build the submission bundle of one study in ``RESULTS_DIR/results.sqlite``.

    Args:
        results_dir: a sweep's output folder (holds ``results.sqlite``).
        submitter: ``name``, ``affiliation``, ``link`` (free text). Defaults to empty strings.
        created: ISO-8601 timestamp of the export. Defaults to now (UTC).
        study: key (or prefix) of the study to export; several that name different
            studies are refused. Defaults to the study last run into the folder.

    Returns:
        The bundle, ``digest`` included.

    Raises:
        BenchError: no database, a database that is not poisonbench's, no finished cell in it,
            or keys naming several studies (exit 2).
        SubmissionError: the bundle would be refused by ``bench leaderboard add`` (e.g. a
            submitter name with control or bidirectional characters); nothing is written.
    """
    path = Path(results_dir) / "results.sqlite"
    if not path.is_file():
        raise BenchError(f"{path}: no results database here; run 'bench run --out {results_dir}' first.")
    _require_results_database(path)
    with ResultStore(path) as store:
        chosen = benchmark.select_study(store, study)
        keys = chosen.cell_keys if chosen is not None else []
        runs = store.runs(keys)
        cases = store.case_metrics(keys)
    finished = runs[runs["status"] == "finished"]
    if finished.empty:
        raise BenchError(f"{path}: no finished cell to export.")
    cells = []
    for _, run in finished.sort_values("cell_key").iterrows():
        rows = cases[cases["cell"] == run["cell_key"]]
        # lesion-wise metrics only where the cell measured them: a bundle without them stays readable by older boards
        optional = [m for m in OPTIONAL_METRICS if m in rows and (m not in LESION_METRICS or rows[m].notna().any())]
        per_case = [
            {"case": str(r["case"]), **{m: float(r[m]) for m in METRICS}, **{c: int(r[c]) for c in COUNT_COLUMNS},
             **{m: finite_or_none(float(r[m])) for m in optional}}
            for _, r in rows.iterrows()
        ]
        cells.append(
            {
                "key": str(run["cell_key"]),
                "config": run["config"],
                "aggregates": {m: _aggregates(rows[m].to_numpy()) for m in (*METRICS, *optional)},
                "cases": per_case,
                "attack_report": run["attack_report"] or None,
                "defense_report": run["defense_report"] or None,
                "duration_s": float(run["duration_s"]),
                "dataset_fingerprint": (run["environment"] or {}).get("dataset_fingerprint"),
                "package_version": ((run["environment"] or {}).get("versions") or {}).get("poisonbench"),
            }
        )
    env = finished.iloc[0]["environment"] or {}
    config = sweep_config_from_cells([c["config"] for c in cells])
    versions = dict(env.get("versions") or {})
    provenance = {
        "package_version": versions.get("poisonbench") or benchmark.package_version(),
        "versions": versions,
        "torch": versions.get("torch"),
        "python": env.get("python"),
        "platform": env.get("platform"),
        "device": env.get("device"),
        "gpu": env.get("gpu"),
        "torch_threads": common_thread_count(finished["environment"]),
        "git_commit": env.get("git_commit") or benchmark.git_commit(),
        "dataset_fingerprint": env.get("dataset_fingerprint") or _dataset_fingerprint(config["dataset"]),
        "cell_keys": [c["key"] for c in cells],
        "study": chosen.key if chosen is not None else None,
        "failed_cells": int((runs["status"] != "finished").sum()),
        "run_started": _iso(float(finished["started_at"].min())),
        "run_finished": _iso(float(finished["finished_at"].max())),
    }
    submitter = submitter or {}
    bundle = {
        "schema_version": SCHEMA_VERSION,
        "kind": BUNDLE_KIND,
        "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "submitter": {k: str(submitter.get(k) or "") for k in ("name", "affiliation", "link")},
        "config": config,
        "aggregate_method": dict(AGGREGATE_METHOD),
        "provenance": provenance,
        "cells": cells,
    }
    bundle = finite_or_none(bundle)
    bundle["digest"] = compute_digest(bundle)
    _refuse_what_add_would_refuse(bundle, str(path))
    return bundle


def _refuse_what_add_would_refuse(bundle: dict[str, Any], source: str) -> None:
    """Run the board's own checks, so no bundle is written that ``bench leaderboard add`` refuses."""
    from .validate import SubmissionError, check_bundle

    reasons = check_bundle(bundle)
    if reasons:
        raise SubmissionError(f"export of {source}", reasons)


def _require_results_database(path: Path) -> None:
    """Refuse, without changing it, an SQLite file that is not a poisonbench results database."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise BenchError(f"{path}: not a poisonbench results database ({exc}).") from None
    if not {"runs", "case_metrics"} <= tables:
        raise BenchError(f"{path}: not a poisonbench results database (it has no runs and case_metrics tables).")


def write_bundle(bundle: dict[str, Any], path: str | Path) -> Path:
    """Write a bundle as indented UTF-8 JSON (atomically: a temporary file renamed into place).

    Raises:
        BenchError: ``path`` is a folder, or cannot be written; no temporary file is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise BenchError(f"{path}: is a folder; give the file to write, e.g. {path / 'submission.json'}.")
    try:
        text = json.dumps(bundle, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise BenchError(f"{path}: the bundle cannot be written as strict JSON: {exc}") from None
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        if tmp.is_file():
            tmp.unlink()
        raise BenchError(f"{path}: cannot write the file: {exc.strerror or exc}") from None
    return path


def common_thread_count(environments: Iterable[dict[str, Any] | None]) -> int | None:
    """The torch thread count every cell ran with, or None when they differ or were not recorded."""
    counts = {(env or {}).get("torch_threads") for env in environments}
    return counts.pop() if len(counts) == 1 else None


def _iso(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat(timespec="seconds")
