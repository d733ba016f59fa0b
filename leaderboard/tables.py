"""From board entries to the rows of the attacks, defenses and segmenters boards.

Every number comes from the analysis layer of ``benchmark`` (`benchmark.summary_table`,
`benchmark.defense_effect`, `benchmark.detectable_difference`): the same clean baseline,
pairing over seeds and cases, two-level bootstrap intervals, tests and recovery as
``summary.csv`` and ``defenses.csv``. Each entry (one study) is analysed on its own, per
data set. Drops are tested only with at least three seeds (the rows say "1 seed" /
"2 seeds" otherwise); the p-values of every drop on the board are adjusted together by
Holm's method, and a star marks a drop whose adjusted p-value is below `ALPHA`.

The segmenters board's drop at `ROBUSTNESS_RATE` is the paired drop of that rate's cell
(``summary.csv``'s); without such a cell it interpolates the paired drops of the
neighbouring rates and names the attack in ``drops_interpolated``. A defense row's
``mean_recovery`` is the mean over the poisoned rates of the per-rate recoveries (each a
ratio of paired means, `benchmark.defense_effect`), over the rates where one is given.
Each entry's detectable difference (`benchmark.detectable_difference`) is in ``detectable``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from benchmark import (
    ALPHA,
    CURVE_METRICS,
    DISTANCE_SUMMARY_COLUMNS,
    LESION_SUMMARY_COLUMNS,
    NO_ATTACK,
    NO_DEFENSE,
    adjust_p_values,
    defense_effect,
    detectable_difference,
    dose_response_rows,
    plugin_label,
    study_tables,
    summary_table,
)

from .board import Entry
from .stats import DROP_FRACTION, dose_response_auc, rate_at_drop, value_at_rate

__all__ = ["CURVE_METRICS", "ROBUSTNESS_RATE", "P_ADJUSTMENT", "Analysis", "analyse", "plugin_label"]

ROBUSTNESS_RATE = 0.5
"""Poison rate of the segmenters board (Dice drop under each attack at rate 1/2)."""
P_ADJUSTMENT = "holm"
"""How the board's p-values are adjusted for multiple comparisons (Holm's step-down)."""


@dataclass
class Analysis:
    """Rows of every board (plain dicts, JSON-ready) and the dose-response curves to draw."""

    entries: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    attacks: list[dict[str, Any]]
    defenses: list[dict[str, Any]]
    segmenters: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    attack_names: list[str]
    detectable: list[dict[str, Any]] | None = None


def _number(value: Any, digits: int = 6) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, digits) if math.isfinite(value) else None


def _mean_known(values: list[float | None]) -> float | None:
    """The mean of the values that are known (None without any)."""
    known = [v for v in values if v is not None]
    return _number(sum(known) / len(known)) if known else None


def _p_value(value: Any) -> float | None:
    """A p-value to 8 significant digits (small ones keep their precision)."""
    number = _number(value, 17)
    return float(f"{number:.8g}") if number is not None else None


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _label(specs: list[dict[str, Any]], kind: str) -> list[str]:
    return [plugin_label(spec, kind) for spec in specs]


def _ident(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def _entry_tables(cells: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A bundle's cells as the runs and case-metrics tables `benchmark.study_tables` reads."""
    runs = pd.DataFrame({
        "cell_key": [c["key"] for c in cells],
        "status": ["finished"] * len(cells),
        "config": [c["config"] for c in cells],
        "attack_report": [c.get("attack_report") or {} for c in cells],
        "defense_report": [c.get("defense_report") or {} for c in cells],
    })
    metrics = pd.DataFrame([{"cell": c["key"], **case} for c in cells for case in c["cases"]])
    return runs, metrics


def _identity(entry: Entry, dataset: str, segmenter: str) -> dict[str, Any]:
    """The columns that name a board row: entry, status, submitter, data set, segmenter."""
    return {"entry": entry.entry_id, "status": entry.status, "submitter": entry.submitter.get("name", ""),
            "dataset": dataset, "segmenter": segmenter}


def _entry_row(entry: Entry) -> dict[str, Any]:
    sub = entry.submission
    return {
        "entry": entry.entry_id,
        "status": entry.status,
        "name": entry.submitter.get("name", ""),
        "affiliation": entry.submitter.get("affiliation", ""),
        "link": entry.submitter.get("link", ""),
        "created": sub.get("created", ""),
        "added_at": entry.added_at,
        "cells": len(sub.get("cells", [])),
        "digest": sub.get("digest", ""),
        "package_version": (sub.get("provenance") or {}).get("package_version"),
        "verification": entry.verification,
    }


@dataclass
class _Study:
    """One entry's cells of one data set, analysed."""

    entry: Entry
    dataset: str
    summary: pd.DataFrame
    effect: pd.DataFrame
    names: dict[tuple[str, str], str]  # (kind, label) -> plugin name
    cell_rows: dict[tuple, dict[str, Any]]


def _cell_rows(study: _Study) -> None:
    for _, s in study.summary.iterrows():
        attack, defense = s["attack"], s["defense"]
        group = study.effect[(study.effect["segmenter"] == s["segmenter"]) & (study.effect["attack"] == attack)
                             & (study.effect["rate"] == s["rate"]) & (study.effect["defense"] == defense)]
        detection = group.iloc[0] if not group.empty else {}
        row = {
            **_identity(study.entry, study.dataset, s["segmenter"]),
            "attack": attack, "attack_name": study.names[("attack", attack)], "rate": float(s["rate"]),
            "poisoned_share": _number(s["poisoned_share"]),
            "defense": defense, "defense_name": study.names[("defense", defense)],
            "seeds": [int(x) for x in str(s["seed_list"]).split()], "cases": int(s["cases"]),
            **{f"{m}{suffix}": _number(s[f"{m}{suffix}"]) for m in CURVE_METRICS for suffix in ("", "_ci_low", "_ci_high")},
            **{column: _number(s.get(column)) for column in (*DISTANCE_SUMMARY_COLUMNS, *LESION_SUMMARY_COLUMNS)},
            "clean_dice": _number(s["dice"]) if s["note"] == "clean baseline" else _number(s["dice_clean"]),
            "drop": _number(s["drop"]), "drop_ci_low": _number(s["drop_ci_low"]), "drop_ci_high": _number(s["drop_ci_high"]),
            "p_value": _p_value(s["p_value"]), "p_holm": None, "significant": False, "seeds_note": _text(s["note"]),
            "auroc": _number(detection.get("auroc")) if len(detection) else None,
            "ap": _number(detection.get("ap")) if len(detection) else None,
        }
        study.cell_rows[(s["segmenter"], attack, float(s["rate"]), defense)] = row


def analyse(entries: list[Entry]) -> Analysis:
    """Compute every board's rows from the entries."""
    studies: list[_Study] = []
    entry_rows, detectable_rows = [], []
    for entry in entries:
        entry_rows.append(_entry_row(entry))
        by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for cell in entry.submission["cells"]:
            by_dataset[_ident(cell["config"]["dataset"])].append(cell)
        for cells in by_dataset.values():
            runs, metrics = _entry_tables(cells)
            cell_table, case_table = study_tables(runs, metrics, _label)
            detectable = detectable_difference(case_table)
            names = {(kind, plugin_label(c["config"][kind], kind)): c["config"][kind].get("name") for c in cells
                     for kind in ("attack", "defense")}
            study = _Study(entry, plugin_label(cells[0]["config"]["dataset"], "dataset"), summary_table(cell_table, case_table),
                           defense_effect(cell_table, case_table, detectable), names, {})
            _cell_rows(study)
            studies.append(study)
            detectable_rows.append({"entry": entry.entry_id, "submitter": entry.submitter.get("name", ""),
                                    "dataset": study.dataset, "seeds": detectable.seeds,
                                    "detectable_difference": _number(detectable.delta), "drop_sd": _number(detectable.sd),
                                    "drop_se": _number(detectable.se), "text": detectable.describe()})

    cell_rows = [row for study in studies for row in study.cell_rows.values()]
    for row, adjusted in zip(cell_rows, adjust_p_values([row["p_value"] for row in cell_rows], P_ADJUSTMENT)):
        row["p_holm"] = _p_value(adjusted)
        row["significant"] = bool(adjusted is not None and adjusted < ALPHA and (row["drop"] or 0) > 0)

    attacks, curves, segmenters, defenses = [], [], [], []
    for study in studies:
        _attack_rows(study, attacks, curves, segmenters)
        _defense_rows(study, defenses)
    attack_names = sorted({k for s in segmenters for k in s["drops"]})
    return Analysis(entry_rows, cell_rows, attacks, defenses, segmenters, curves, attack_names, detectable_rows)


def _attack_rows(study: _Study, attacks: list, curves: list, segmenters: list) -> None:
    """Attacks board and curves (no defense, per segmenter × attack), and the segmenters board."""
    undefended = study.summary[study.summary["defense"] == NO_DEFENSE]
    for segmenter in sorted(study.summary["segmenter"].unique()):
        drops: dict[str, float | None] = {}
        drops_interpolated: list[str] = []
        clean_of_segmenter = None
        mine = undefended[undefended["segmenter"] == segmenter]
        for attack in sorted(set(mine["attack"]) - {NO_ATTACK}):
            rows = dose_response_rows(study.summary, attack, segmenter)
            points = [(float(r["rate"]), study.cell_rows[(segmenter, r["attack"], float(r["rate"]), NO_DEFENSE)]) for _, r in rows.iterrows()]
            rates, dice = [p[0] for p in points], [p[1]["dice"] for p in points]
            clean_dice = dice[0] if rates and rates[0] == 0.0 else None
            clean_of_segmenter = clean_dice if clean_dice is not None else clean_of_segmenter
            row = {
                **_identity(study.entry, study.dataset, segmenter),
                "attack": attack,
                "attack_name": study.names[("attack", attack)],
                "clean_dice": clean_dice,
                "points": [
                    {"rate": r, "poisoned_share": p["poisoned_share"], "dice": p["dice"], "drop": p["drop"],
                     "p_value": p["p_value"], "p_holm": p["p_holm"], "significant": p["significant"], "seeds_note": p["seeds_note"]}
                    for r, p in points
                ],
                "max_drop": _number(max((p["drop"] for _, p in points if p["drop"] is not None), default=None)),
                "auc": _number(dose_response_auc(rates, dice)),
                "rate_at_5pct": _number(rate_at_drop(rates, dice, clean_dice, DROP_FRACTION)) if clean_dice is not None else None,
                "figure": None,
            }
            attacks.append(row)
            curves.append({"row": row, "points": points})
            drops[attack], interpolated = _drop_at(points, ROBUSTNESS_RATE) if clean_dice is not None else (None, False)
            if interpolated and drops[attack] is not None:
                drops_interpolated.append(attack)
        if clean_of_segmenter is None:
            clean = study.cell_rows.get((segmenter, NO_ATTACK, 0.0, NO_DEFENSE))
            clean_of_segmenter = clean["dice"] if clean else None
        segmenters.append({
            **_identity(study.entry, study.dataset, segmenter),
            "clean_dice": clean_of_segmenter,
            "drops": drops,
            "drops_interpolated": drops_interpolated,
            "mean_drop": _mean_known(list(drops.values())),
        })


def _drop_at(points: list[tuple[float, dict[str, Any]]], rate: float) -> tuple[float | None, bool]:
    """The paired drop from the clean cell at ``rate`` (`benchmark.summary_table`'s), and whether it is interpolated.

    Where no cell ran at ``rate`` the paired drops of the neighbouring rates (0 at the clean
    cell) are interpolated linearly; None outside the rates run.
    """
    for at, point in points:
        if at == rate and point["drop"] is not None:
            return _number(point["drop"]), False
    known = [(at, 0.0 if at == 0.0 and point["drop"] is None else point["drop"]) for at, point in points]
    known = [(at, drop) for at, drop in known if drop is not None]
    value = value_at_rate([at for at, _ in known], [drop for _, drop in known], rate)
    return _number(value), value is not None


def _defense_rows(study: _Study, defenses: list) -> None:
    """Defenses board: per segmenter × attack × defense, the per-rate rows of `benchmark.defense_effect`."""
    effect = study.effect
    if effect.empty:
        return
    for (segmenter, attack, defense), group in effect.groupby(["segmenter", "attack", "defense"], sort=True):
        others = effect[(effect["segmenter"] == segmenter) & (effect["defense"] == defense) & (effect["attack"] != attack)]
        if attack == NO_ATTACK and not others.empty:
            continue  # its rate-0 rows give the other rows' clean cost
        group = group.sort_values("rate")
        points = [
            {"rate": float(r["rate"]), "poisoned_share": _number(r["poisoned_share"]), "dice": _number(r["dice"]),
             "recovered": _number(r["dice"] - r["dice_without"]), "recovery": _number(r["recovery"]),
             "recovery_note": _text(r["recovery_note"]), "auroc": _number(r["auroc"]), "ap": _number(r["ap"])}
            for _, r in group.iterrows()
        ]
        at_zero = group[group["rate"] == 0.0]
        if at_zero.empty:
            at_zero = effect[(effect["segmenter"] == segmenter) & (effect["defense"] == defense) & (effect["attack"] == NO_ATTACK)
                             & (effect["rate"] == 0.0)]
        clean_cost = _number(at_zero.iloc[0]["clean_cost"]) if not at_zero.empty else None

        defenses.append({
            **_identity(study.entry, study.dataset, segmenter),
            "attack": attack,
            "defense": defense,
            "auroc": _mean_known([p["auroc"] for p in points]),
            "ap": _mean_known([p["ap"] for p in points]),
            "points": points,
            "mean_recovered": _mean_known([p["recovered"] for p in points if p["rate"] > 0]),
            "mean_recovery": _mean_known([p["recovery"] for p in points]),
            "clean_cost": clean_cost,
        })
