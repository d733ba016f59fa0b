"""``bench leaderboard verify``: re-run cells of an entry here and compare per-case Dice.

Each chosen cell becomes a one-cell sweep (its resolved config), run with
`benchmark.run_sweep` in a temporary folder with the submission's torch thread count
(CPU results are bit-identical only at equal thread counts); the entry is ``verified`` when every
validation case of every re-run cell has the same case ids and a Dice within the
tolerance of the submitted one (absolute difference; default `DEFAULT_TOLERANCE`).
"""

from __future__ import annotations

import datetime as _dt
import random
import tempfile
from pathlib import Path
from typing import Any

import benchmark
from benchmark import BenchError, ResultStore, run_sweep, validate_config

from .board import Board, Entry
from .bundle import common_thread_count

__all__ = ["DEFAULT_TOLERANCE", "cell_sweep", "choose_cells", "verify_entry"]

DEFAULT_TOLERANCE = 1e-3
"""Largest accepted absolute per-case Dice difference between submission and re-run."""


def cell_sweep(cell_config: dict[str, Any], device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """The one-cell sweep (``bench.yaml`` mapping) that reproduces a cell, with ``threads`` torch threads."""
    return {
        "dataset": dict(cell_config["dataset"]),
        "task": dict(cell_config["task"]),
        "split": dict(cell_config["split"]),
        "segmenters": [dict(cell_config["segmenter"])],
        "attacks": [{**cell_config["attack"], "rates": [cell_config["rate"]]}],
        "defenses": [dict(cell_config["defense"])],
        "seeds": [int(cell_config["seed"])],
        "device": device,
        "executor": {"name": "local", "threads": threads},
    }


def choose_cells(entry: Entry, which: str = "sample", seed: int | None = None) -> list[dict[str, Any]]:
    """Cells to re-run: ``sample`` (one, drawn reproducibly from the digest or ``seed``), ``all``, or a cell key (prefix)."""
    cells = sorted(entry.submission["cells"], key=lambda c: c["key"])
    if which == "all":
        return cells
    if which == "sample":
        rng = random.Random(seed if seed is not None else int(entry.submission["digest"][:12], 16))
        return [rng.choice(cells)]
    matches = [c for c in cells if c["key"].startswith(which)]
    if len(matches) != 1:
        raise BenchError(f"cell {which!r}: {'no' if not matches else 'more than one'} cell of entry {entry.entry_id} has that key (prefix).")
    return matches


def verify_entry(
    board: Board,
    ident: str,
    which: str = "sample",
    tolerance: float = DEFAULT_TOLERANCE,
    device: str = "cpu",
    seed: int | None = None,
    workdir: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Re-run cells of an entry, compare per-case Dice, and record the outcome in the entry file.

    Args:
        board: the board holding the entry.
        ident: entry id, file name or path.
        which: ``sample``, ``all`` or a cell key. Defaults to ``sample``.
        tolerance: largest absolute per-case Dice difference. Defaults to `DEFAULT_TOLERANCE`.
        device: ``cpu``, ``cuda`` or ``auto``. Defaults to ``cpu``.
        seed: seed of the cell sample. Defaults to one drawn from the digest.
        workdir: where re-runs write their results. Defaults to a temporary folder, removed afterwards.
        threads: torch threads of the re-run. Defaults to the submission's recorded count
            (``provenance.torch_threads``), else torch's default.

    Returns:
        The verification record stored in the entry (``status`` ``verified`` or ``mismatch``).
    """
    entry = board.get(ident)
    cells = choose_cells(entry, which, seed)
    threads = threads or entry.submission["provenance"].get("torch_threads")
    outcomes = []
    rerun_environments: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="poisonbench-verify-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        for cell in cells:
            out = root / cell["key"]
            config = validate_config(cell_sweep(cell["config"], device, threads), source=f"entry {entry.entry_id}, cell {cell['key']}")
            result = run_sweep(config, out=out, quiet=True)
            with ResultStore(out / "results.sqlite") as store:
                rerun = store.case_metrics()
                rerun_environments.extend(store.runs()["environment"])
            submitted = {c["case"]: float(c["dice"]) for c in cell["cases"]}
            got = {str(r["case"]): float(r["dice"]) for _, r in rerun.iterrows()}
            same_cases = sorted(submitted) == sorted(got)
            diffs = [abs(submitted[c] - got[c]) for c in submitted if c in got]
            max_diff = max(diffs) if diffs else None
            matched = bool(result.exit_code == 0 and same_cases and max_diff is not None and max_diff <= tolerance)
            outcomes.append(
                {
                    "key": cell["key"],
                    "rerun_keys": result.ran + result.skipped,
                    "same_key": cell["key"] in (result.ran + result.skipped),
                    "same_cases": same_cases,
                    "cases": len(submitted),
                    "max_abs_dice_diff": max_diff,
                    "matched": matched,
                }
            )
    ok = all(o["matched"] for o in outcomes)
    worst = max((o["max_abs_dice_diff"] for o in outcomes if o["max_abs_dice_diff"] is not None), default=None)
    record = {
        "status": "verified" if ok else "mismatch",
        "metric": "dice",
        "tolerance": tolerance,
        "cells": outcomes,
        "device": device,
        "torch_threads": common_thread_count(rerun_environments),  # as the re-runs recorded it
        "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": benchmark.package_version(),
        "git_commit": benchmark.git_commit(),
        "summary": (
            f"{sum(o['matched'] for o in outcomes)}/{len(outcomes)} re-run cell(s) matched per-case Dice within {tolerance:g}"
            + (f" (largest difference {worst:.3g})" if worst is not None else "")
        ),
    }
    entry.verification = record
    if entry.path.parent.resolve() == board.root.resolve():
        board.save(entry)
    return record
