"""The CSV files a sweep leaves in its output folder, all rebuilt from the results database.

Every table names a plugin as the summary does: its bare name when the study configures it
once, with the parameters that tell its settings apart when it configures it more than once.

- ``results.csv``: one row per cell × validation case: the five ratios, then ``hd95``
  (mm; empty for cells stored before it was measured or data without geometry), then
  ``lesion_dice`` and ``lesion_hd95`` (mm; empty, in addition, without the brats-eval
  extra); see `benchmark.metrics`.
- ``attacks.csv``: one row per cell: the attack's quality figures where the attack has
  them (MAE, PSNR, SSIM of synthetic vs real target over the brain; the enhancing-rim
  contrast-to-noise ratio of synthetic and of real target), the count of poisoned cases and
  their ids (``;``-joined; for one seed the ids at a rate are a subset of those at every
  higher rate).
- ``detection.csv``: one row per cell with a defense: AUROC and AP of its scores,
  precision / recall / F1 of its decision, fraction of training cases removed.
- ``defenses.csv``: one row per segmenter × attack × rate × defense, over seeds: Dice
  with and without the defense, its recovery and clean cost (`benchmark.defense_effect`).
- ``summary.csv``: one row per segmenter × attack × rate × defense, over seeds and cases:
  Dice with its two-level bootstrap interval, the drop from the clean baseline with its
  interval, p-value and significance (≥ 3 seeds) (`benchmark.analysis.summary_table`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .analysis import DEFENSE_EFFECT_COLUMNS, SUMMARY_COLUMNS, defense_effect, detectable_difference, study_tables, summary_table
from .identity import NO_DEFENSE
from .metrics import METRICS, OPTIONAL_METRICS

__all__ = [
    "RESULTS_CSV_COLUMNS", "ATTACKS_CSV_COLUMNS", "DETECTION_CSV_COLUMNS", "DEFENSE_EFFECT_COLUMNS", "SUMMARY_COLUMNS",
    "write_sweep_tables", "write_summary_csv",
]

RESULTS_CSV_COLUMNS = ["cell", "segmenter", "attack", "rate", "defense", "seed", "case", *METRICS, *OPTIONAL_METRICS]
"""The required columns first, in their order; HD95 and the lesion-wise metrics (empty where unmeasured) after them."""
ATTACKS_CSV_COLUMNS = [
    "cell", "attack", "rate", "seed", "mae", "psnr", "ssim", "rim_contrast_synthetic", "rim_contrast_real", "poisoned_cases",
    "poisoned_case_ids",
]
DETECTION_CSV_COLUMNS = ["cell", "attack", "rate", "defense", "seed", "auroc", "ap", "precision", "recall", "f1", "removed_fraction"]


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def write_summary_csv(summary: pd.DataFrame, out_dir: Path) -> Path:
    """Write `benchmark.analysis.summary_table` as ``OUT/summary.csv`` (atomically)."""
    path = Path(out_dir) / "summary.csv"
    _write_atomic(summary, path)
    return path


def _cell_value(value: Any) -> Any:
    """A report value as a CSV cell: lists (case ids) are ``;``-joined."""
    return ";".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def _report_table(cells: pd.DataFrame, report: str, columns: list[str]) -> pd.DataFrame:
    """One row per finished cell of `study_tables` (plugins named by their setting labels) with its report's values."""
    rows = []
    for _, cell in cells.iterrows():
        if report == "defense_report" and cell["defense"] == NO_DEFENSE:
            continue
        row = {"cell": cell["cell"], "attack": cell["attack"], "rate": cell["rate"], "defense": cell["defense"], "seed": cell["seed"]}
        row.update({c: _cell_value(cell[report].get(c)) for c in columns if c not in row})
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _with_setting_labels(results: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Name each row's plugins as the summary does, so two settings of one attack stay apart.

    A plugin configured once in the study keeps its bare name; two settings of one attack
    read as in ``summary.csv`` and ``defenses.csv``: the frontier's GAN without and with
    ``stealth`` is ``gan-synthetic`` and ``gan-synthetic (lambda_stealth=1.0, stealth=true)``.
    """
    results = results.copy()
    by_cell = cells.set_index("cell")
    for kind in ("segmenter", "attack", "defense"):
        results[kind] = results["cell"].map(by_cell[kind]).fillna(results[kind])
    return results


def write_sweep_tables(runs: pd.DataFrame, metrics: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    """Write ``results.csv``, ``attacks.csv``, ``detection.csv``, ``defenses.csv`` and ``summary.csv``.

    Args:
        runs: `ResultStore.runs` of the sweep's cells.
        metrics: `ResultStore.case_metrics` of the same cells.
        out_dir: the output folder.

    Returns:
        The written tables by name, plus ``detectable`` (the study's `DetectableDifference`).
    """
    cells, cases = study_tables(runs, metrics)
    results = _with_setting_labels(metrics[RESULTS_CSV_COLUMNS].astype({"rate": float}), cells)
    attacks = _report_table(cells, "attack_report", ATTACKS_CSV_COLUMNS)
    detection = _report_table(cells, "defense_report", DETECTION_CSV_COLUMNS)
    detectable = detectable_difference(cases)
    defenses = defense_effect(cells, cases, detectable)
    summary = summary_table(cells, cases)
    _write_atomic(results, out_dir / "results.csv")
    _write_atomic(attacks, out_dir / "attacks.csv")
    _write_atomic(detection, out_dir / "detection.csv")
    _write_atomic(defenses, out_dir / "defenses.csv")
    write_summary_csv(summary, out_dir)
    return {"results": results, "attacks": attacks, "detection": detection, "defenses": defenses, "summary": summary,
            "detectable": detectable}
