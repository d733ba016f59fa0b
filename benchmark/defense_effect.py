"""What each defense wins back under attack and what it costs without one.

For every segmenter × attack × defense × attack rate, against the undefended (``none``)
cells of the same segmenter and attack, over the seeds both have finished:

- ``recovery`` = (Dice with the defense − Dice without) / (clean Dice − Dice without):
  1 when the defense restores clean Dice, 0 when it changes nothing, negative when it
  makes things worse; empty where the attack lowered Dice by less than
  `RECOVERY_MIN_DAMAGE` (a ratio over a tiny damage is noise).
- ``clean_cost`` = clean Dice − the defense's Dice at rate 0: Dice lost to removing
  real cases when nothing is poisoned.

"Dice" is a cell's mean over its validation cases, averaged over the seeds counted in
``seeds``; "clean" is the ``none`` defense at rate 0 of the ``none`` attack (or, without
one, of the same attack; without either, recovery and clean cost stay empty) — the
leaderboard's choice too. Detection figures are the defense's reports averaged over the same seeds.
Plugins that appear with several parameter sets are labelled with the parameters that
differ, e.g. ``spectral (budget=0.2)``, where the CSVs of single cells give the name alone.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from .identity import NO_ATTACK, NO_DEFENSE
from .store import FINISHED

__all__ = ["DEFENSE_EFFECT_COLUMNS", "RECOVERY_MIN_DAMAGE", "defense_effect_frame"]

RECOVERY_MIN_DAMAGE = 0.01
"""Smallest Dice drop (clean − attacked) for which a recovery ratio is given."""

DETECTION_FIGURES = ["auroc", "ap", "precision", "recall", "f1", "removed_fraction"]
DEFENSE_EFFECT_COLUMNS = [
    "segmenter", "attack", "rate", "defense", "seeds", "dice", "dice_without", "dice_clean", "recovery", "clean_cost",
    *DETECTION_FIGURES,
]


def defense_effect_frame(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per segmenter × attack × rate × defense other than ``none`` (see the module doc).

    Args:
        runs: `ResultStore.runs`.
        metrics: `ResultStore.case_metrics`.
    """
    if (runs["defense"] == NO_DEFENSE).all():
        return pd.DataFrame(columns=DEFENSE_EFFECT_COLUMNS)
    cells = _finished_cells(runs, metrics)
    if cells.empty:
        return pd.DataFrame(columns=DEFENSE_EFFECT_COLUMNS)
    undefended = cells[cells["defense"] == NO_DEFENSE]
    rows = []
    for (segmenter, attack, defense, rate), group in cells[cells["defense"] != NO_DEFENSE].groupby(
        ["segmenter", "attack", "defense", "rate"], sort=True
    ):
        same_model = undefended[undefended["segmenter"] == segmenter]
        mine = _dice_by_seed(group)
        without = _dice_by_seed(same_model[(same_model["attack"] == attack) & (same_model["rate"] == rate)])
        clean = _dice_by_seed(_clean_cells(same_model, attack))
        paired = set(mine.index) & set(without.index)
        seeds = sorted(paired & set(clean.index)) or sorted(paired)  # without a clean cell: Dice only
        row: dict[str, Any] = {"segmenter": segmenter, "attack": attack, "rate": rate, "defense": defense, "seeds": len(seeds)}
        if seeds:
            dice, dice_without = float(mine.loc[seeds].mean()), float(without.loc[seeds].mean())
            row.update(dice=dice, dice_without=dice_without)
            if set(seeds) <= set(clean.index):
                dice_clean = float(clean.loc[seeds].mean())
                damage = dice_clean - dice_without
                row.update(
                    dice_clean=dice_clean,
                    recovery=(dice - dice_without) / damage if rate > 0 and damage >= RECOVERY_MIN_DAMAGE else np.nan,
                    clean_cost=dice_clean - dice if rate == 0 else np.nan,
                )
        used = group[group["seed"].isin(seeds)] if seeds else group
        reports = pd.DataFrame([report or {} for report in used["defense_report"]])
        for figure in DETECTION_FIGURES:
            values = pd.to_numeric(reports.get(figure, pd.Series(dtype=float)), errors="coerce")
            row[figure] = float(values.mean()) if values.notna().any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=DEFENSE_EFFECT_COLUMNS)


def _finished_cells(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Finished runs with their mean validation Dice, plugins named by label."""
    runs = runs.copy()
    for kind in ("segmenter", "attack", "defense"):  # labelled over all runs, so a failed cell does not rename others
        runs[kind] = _labels([config[kind] for config in runs["config"]])
    runs = runs[runs["status"] == FINISHED].copy()
    runs["dice"] = runs["cell_key"].map(metrics.groupby("cell")["dice"].mean())
    return runs


def _labels(configs: list[dict[str, Any]]) -> list[str]:
    """Plugin names, with the parameters that tell apart configurations sharing a name."""
    variants: dict[str, dict[str, dict[str, Any]]] = {}  # name -> distinct configurations by canonical JSON
    for config in configs:
        variants.setdefault(config["name"], {})[json.dumps(config, sort_keys=True)] = config
    differing = {
        name: sorted({k for v in group.values() for k in v if k != "name" and len({json.dumps(o.get(k)) for o in group.values()}) > 1})
        for name, group in variants.items()
    }
    labels = []
    for config in configs:
        suffix = ", ".join(f"{k}={json.dumps(config.get(k))}" for k in differing[config["name"]])
        labels.append(f"{config['name']} ({suffix})" if suffix else config["name"])
    return labels


def _clean_cells(undefended: pd.DataFrame, attack: str) -> pd.DataFrame:
    clean = undefended[undefended["rate"] == 0]
    no_attack = clean[clean["attack"] == NO_ATTACK]
    return no_attack if not no_attack.empty else clean[clean["attack"] == attack]


def _dice_by_seed(cells: pd.DataFrame) -> pd.Series:
    return cells.groupby("seed")["dice"].mean()
