"""``bench leaderboard verify``: re-run cells of an entry here and compare every per-case result.

Each chosen cell becomes a one-cell sweep (its resolved config), run with
`benchmark.run_sweep` in a temporary folder with the submission's torch thread count
(CPU results are bit-identical only at equal thread counts); the entry is ``verified`` when every
validation case of every re-run cell has the same case ids, every metric (Dice, Jaccard,
accuracy, sensitivity, specificity) within the tolerance of the submitted one (absolute
difference; default `DEFAULT_TOLERANCE`), TP/FP/TN/FN within the tolerance as a
fraction of the case's foreground (TP + FP + FN), and HD95, where the submission carries
it, within the tolerance as a fraction of the re-run's HD95 (at least 1 mm), measured on
the same cases (a case measured on one side only is a mismatch; unmeasured on both agrees).
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import tempfile
from pathlib import Path
from typing import Any

import benchmark
from benchmark import (
    DISTANCE_METRICS, LESION_METRICS, LOWER_IS_BETTER, METRICS, OPTIONAL_METRICS, BenchError, ResultStore, run_sweep, validate_config,
)

from .board import Board, Entry
from .bundle import COUNT_COLUMNS, common_thread_count

__all__ = ["DEFAULT_TOLERANCE", "cell_sweep", "choose_cells", "compare_cases", "verify_entry"]

DEFAULT_TOLERANCE = 1e-3
"""Largest accepted absolute per-case metric difference (and count difference, as a fraction of the case's TP + FP + FN)."""


def compare_cases(submitted: list[dict[str, Any]], rerun: list[dict[str, Any]]) -> dict[str, Any]:
    """Largest per-case differences between submitted and re-run results.

    Args:
        submitted: the cell's ``cases`` (case id, every metric, ``tp fp tn fn``; ``hd95`` in mm
            or None where not measured).
        rerun: the same fields from the re-run.

    Returns:
        ``same_cases`` (bool), ``cases`` (count submitted) and ``max_abs_diff``: per metric the
        largest absolute difference, and under ``counts`` the largest TP/FP/TN/FN difference
        divided by the case's foreground (TP + FP + FN of the re-run, at least 1): the scale
        of Dice and Jaccard, not of the background (None when no case is shared). ``hd95``,
        when the submitted cases carry it: the largest difference divided by the re-run's
        HD95 (at least 1 mm); unmeasured on both sides counts as equal, measured on one side
        only gives None (a mismatch). ``lesion_dice`` (absolute) and ``lesion_hd95`` (as
        ``hd95``) are compared on the cases the submitter measured: a submitter without the
        brats-eval extra left them null, which a re-run with it does not contradict.
    """
    mine = {str(c["case"]): c for c in submitted}
    theirs = {str(c["case"]): c for c in rerun}
    shared = [case for case in mine if case in theirs]
    diffs: dict[str, float | None] = {}
    for metric in METRICS:
        diffs[metric] = max((abs(float(mine[c][metric]) - float(theirs[c][metric])) for c in shared), default=None)
    for metric in DISTANCE_METRICS:
        if any(metric in mine[c] for c in mine):  # bundles from before HD95 carry none: nothing to compare
            per_case = [_distance_diff(mine[c].get(metric), theirs[c].get(metric)) for c in shared]
            diffs[metric] = None if not per_case or None in per_case else max(per_case)
    for metric in LESION_METRICS:
        measured = [c for c in shared if mine[c].get(metric) is not None]
        if not measured:
            continue
        if metric in LOWER_IS_BETTER:
            per_case = [_distance_diff(mine[c][metric], theirs[c].get(metric)) for c in measured]
        else:
            per_case = [None if theirs[c].get(metric) is None or math.isnan(float(theirs[c][metric]))
                        else abs(float(mine[c][metric]) - float(theirs[c][metric])) for c in measured]
        diffs[metric] = None if None in per_case else max(per_case)
    fractions = []
    for case in shared:
        foreground = max(sum(int(theirs[case][k]) for k in ("tp", "fp", "fn")), 1)
        fractions.append(max(abs(int(mine[case][k]) - int(theirs[case][k])) for k in COUNT_COLUMNS) / foreground)
    diffs["counts"] = max(fractions, default=None)
    return {"same_cases": sorted(mine) == sorted(theirs), "cases": len(mine), "max_abs_diff": diffs}


def _distance_diff(submitted: Any, rerun: Any) -> float | None:
    """The difference of two distances (mm) as a fraction of the re-run's (at least 1 mm); 0 when neither
    was measured (None or NaN), None when only one was."""
    a, b = (None if v is None or math.isnan(float(v)) else float(v) for v in (submitted, rerun))
    if a is None or b is None:
        return 0.0 if a is None and b is None else None
    return abs(a - b) / max(abs(b), 1.0)


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
    """Re-run cells of an entry, compare every per-case metric and count, and record the outcome.

    Args:
        board: the board holding the entry.
        ident: entry id, file name or path.
        which: ``sample``, ``all`` or a cell key. Defaults to ``sample``.
        tolerance: largest absolute per-case metric difference (counts: as a fraction of the
            case's TP + FP + FN). Defaults to `DEFAULT_TOLERANCE`.
        device: ``cpu``, ``cuda`` or ``auto``. Defaults to ``cpu``.
        seed: seed of the cell sample. Defaults to one drawn from the digest.
        workdir: where re-runs write their results. Defaults to a temporary folder, removed afterwards.
        threads: torch threads of the re-run. Defaults to the submission's recorded count
            (``provenance.torch_threads``), else torch's default.

    Returns:
        The verification record (``status`` ``verified`` or ``mismatch``), stored in the board's
        index for the entry's digest when the entry is on ``board``.

    Raises:
        SubmissionError: the entry fails the board's checks (digest, schema, metrics): it cannot be verified.
    """
    entry = board.get(ident)
    cells = choose_cells(entry, which, seed)
    lesion_measured = any(c.get(m) is not None for cell in cells for c in cell["cases"] for m in LESION_METRICS)
    if lesion_measured and benchmark.lesionwise_missing():
        # a re-run without the extra could not reproduce them: an honest entry would read as a mismatch
        raise BenchError(f"{entry.entry_id}: its cells carry lesion-wise metrics, which this install cannot compute: "
                         f"{benchmark.lesionwise_missing()}; nothing was re-run or recorded.")
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
            got = [{"case": str(r["case"]), **{k: r[k] for k in (*METRICS, *OPTIONAL_METRICS, *COUNT_COLUMNS) if k in r}}
                   for _, r in rerun.iterrows()]
            comparison = compare_cases(cell["cases"], got)
            diffs = comparison["max_abs_diff"]
            within = all(value is not None and value <= tolerance for value in diffs.values())
            matched = bool(result.exit_code == 0 and comparison["same_cases"] and within)
            outcomes.append(
                {
                    "key": cell["key"],
                    "rerun_keys": result.ran + result.skipped,
                    "same_key": cell["key"] in (result.ran + result.skipped),
                    "same_cases": comparison["same_cases"],
                    "cases": comparison["cases"],
                    "max_abs_dice_diff": diffs["dice"],
                    "max_abs_diff": diffs,
                    "matched": matched,
                }
            )
    ok = all(o["matched"] for o in outcomes)
    worst = max((v for o in outcomes for v in o["max_abs_diff"].values() if v is not None), default=None)
    record = {
        "status": "verified" if ok else "mismatch",
        "metric": "all",
        "compared": [*dict.fromkeys(k for o in outcomes for k in o["max_abs_diff"] if k != "counts"), *COUNT_COLUMNS],
        "tolerance": tolerance,
        "cells": outcomes,
        "device": device,
        "torch_threads": common_thread_count(rerun_environments),  # as the re-runs recorded it
        "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": benchmark.package_version(),
        "git_commit": benchmark.git_commit(),
        "summary": (
            f"{sum(o['matched'] for o in outcomes)}/{len(outcomes)} re-run cell(s) matched every per-case metric and count within {tolerance:g}"
            + (f" (largest difference {worst:.3g})" if worst is not None else "")
        ),
    }
    if entry.path.parent.resolve() == board.root.resolve():
        board.record_verification(entry, record)  # bound to the digest re-run, in the board's index
    return record
