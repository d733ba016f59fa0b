"""From board entries to the rows of the attacks, defenses and segmenters boards.

Seeds are pooled per validation case: a cell group (entry × data set × segmenter ×
attack × rate × defense) gives each case the mean of its value over the group's seeds.
The clean baseline of a group is the cell of the same segmenter, data set and seeds with
no defense at rate 0 (attack ``none`` preferred, else the same attack at rate 0), and
every difference against it is paired over the same validation cases.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmark import ATTACKS, DATASETS, DEFENSES, RECOVERY_MIN_DAMAGE, SEGMENTERS, ConfigError, aggregate

from .board import Entry
from .stats import DROP_FRACTION, dose_response_auc, paired_test, rate_at_drop, value_at_rate

__all__ = ["CURVE_METRICS", "ROBUSTNESS_RATE", "Analysis", "analyse", "plugin_label"]

CURVE_METRICS = ("dice", "accuracy", "sensitivity")
ROBUSTNESS_RATE = 0.5
"""Poison rate of the segmenters board (Dice drop under each attack at rate 1/2)."""


def _ident(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


_REGISTRIES = {"dataset": DATASETS, "segmenter": SEGMENTERS, "attack": ATTACKS, "defense": DEFENSES}


def plugin_label(spec: dict[str, Any], kind: str | None = None) -> str:
    """``name`` plus its parameters, e.g. ``unet (epochs=2, lr=0.003)``.

    With ``kind`` (``dataset``, ``segmenter``, ``attack``, ``defense``) parameters equal to
    the defaults of the plugin as installed here are left out, which keeps labels short; a
    plugin not installed here is labelled with all its parameters.
    """
    defaults = _defaults(kind, str(spec.get("name"))) if kind else {}
    params = {k: v for k, v in spec.items() if k != "name" and (k not in defaults or _canonical(v) != defaults[k])}
    if not params:
        return str(spec.get("name", "?"))
    inner = ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(params.items()))
    return f"{spec.get('name', '?')} ({inner})"


def _defaults(kind: str, name: str) -> dict[str, str]:
    """Canonical JSON of each optional parameter's default for an installed plugin ({} if not installed)."""
    try:
        params = _REGISTRIES[kind].get(name).Params
    except ConfigError:
        return {}
    return _param_defaults(params)


@lru_cache(maxsize=None)
def _param_defaults(params: type) -> dict[str, str]:
    return {
        key: _canonical(field_info.get_default(call_default_factory=True))
        for key, field_info in params.model_fields.items()
        if not field_info.is_required()
    }


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class _Group:
    entry: Entry
    dataset: dict[str, Any]
    segmenter: dict[str, Any]
    attack: dict[str, Any]
    rate: float
    defense: dict[str, Any]
    cells: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> cell

    def per_case(self, metric: str, seeds: list[int] | None = None) -> dict[str, float]:
        seeds = sorted(self.cells) if seeds is None else seeds
        tables = [{c["case"]: c[metric] for c in self.cells[s]["cases"]} for s in seeds if s in self.cells]
        if not tables or len(tables) != len(seeds):
            return {}
        common = set(tables[0]).intersection(*tables[1:])
        return {case: float(np.mean([t[case] for t in tables])) for case in sorted(common)}


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


def _groups(entry: Entry) -> dict[tuple, _Group]:
    groups: dict[tuple, _Group] = {}
    for cell in entry.submission["cells"]:
        cfg = cell["config"]
        key = (_ident(cfg["dataset"]), _ident(cfg["segmenter"]), _ident(cfg["attack"]), float(cfg["rate"]), _ident(cfg["defense"]))
        group = groups.setdefault(key, _Group(entry, cfg["dataset"], cfg["segmenter"], cfg["attack"], float(cfg["rate"]), cfg["defense"]))
        group.cells[int(cfg["seed"])] = cell
    return groups


def _clean_for(group: _Group, groups: dict[tuple, _Group]) -> _Group | None:
    ds, seg = _ident(group.dataset), _ident(group.segmenter)
    none_defense = [k for k, g in groups.items() if k[0] == ds and k[1] == seg and k[3] == 0.0 and g.defense.get("name") == "none"]
    for prefer in (lambda g: g.attack.get("name") == "none", lambda g: _ident(g.attack) == _ident(group.attack), lambda g: True):
        for k in none_defense:
            candidate = groups[k]
            if prefer(candidate) and set(group.cells) <= set(candidate.cells):
                return candidate
    return None


def _mean_report(group: _Group, field_name: str) -> float | None:
    values = []
    for cell in group.cells.values():
        report = cell.get("defense_report") or {}
        value = report.get(field_name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values.append(float(value))
    return float(np.mean(values)) if values else None


def _identity(entry: Entry, group: _Group) -> dict[str, Any]:
    """The columns that name a board row: entry, status, submitter, data set, segmenter."""
    return {
        "entry": entry.entry_id,
        "status": entry.status,
        "submitter": entry.submitter.get("name", ""),
        "dataset": plugin_label(group.dataset, "dataset"),
        "segmenter": plugin_label(group.segmenter, "segmenter"),
    }


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(float(value), digits)


def analyse(entries: list[Entry]) -> Analysis:
    """Compute every board's rows from the entries."""
    cell_rows: list[dict[str, Any]] = []
    attacks: list[dict[str, Any]] = []
    defenses: list[dict[str, Any]] = []
    segmenters: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    entry_rows: list[dict[str, Any]] = []
    for entry in entries:
        sub = entry.submission
        entry_rows.append(
            {
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
        )
        groups = _groups(entry)
        rows_by_group: dict[tuple, dict[str, Any]] = {}
        for key, group in sorted(groups.items(), key=lambda kv: (plugin_label(kv[1].segmenter, "segmenter"), kv[1].attack.get("name"), kv[1].defense.get("name"), kv[1].rate)):
            seeds = sorted(group.cells)
            clean = _clean_for(group, groups)
            row: dict[str, Any] = {
                **_identity(entry, group),
                "attack": plugin_label(group.attack, "attack"),
                "attack_name": group.attack.get("name"),
                "rate": group.rate,
                "defense": plugin_label(group.defense, "defense"),
                "defense_name": group.defense.get("name"),
                "seeds": seeds,
            }
            for metric in CURVE_METRICS:
                values = group.per_case(metric)
                agg = aggregate(np.array(list(values.values())))
                row["cases"] = agg.n
                row[metric] = _round(agg.mean)
                row[f"{metric}_ci_low"] = _round(agg.ci_low)
                row[f"{metric}_ci_high"] = _round(agg.ci_high)
            row.update({"clean_dice": None, "drop": None, "p_value": None, "significant": False})
            if clean is not None and clean is not group:
                attacked = group.per_case("dice", seeds)
                baseline = clean.per_case("dice", seeds)
                if attacked and sorted(attacked) == sorted(baseline):
                    cases = sorted(attacked)
                    test = paired_test(np.array([baseline[c] for c in cases]), np.array([attacked[c] for c in cases]))
                    row.update(
                        clean_dice=_round(float(np.mean(list(baseline.values())))),
                        drop=_round(test.mean_drop),
                        p_value=_round(test.p_value, 8),
                        significant=test.significant,
                        paired_cases=test.n,
                    )
            elif clean is group:
                row["clean_dice"] = row["dice"]
            row["auroc"] = _mean_report(group, "auroc")
            row["ap"] = _mean_report(group, "ap")
            cell_rows.append(row)
            rows_by_group[key] = row

        # attacks board and curves: defense none, per (dataset, segmenter, attack)
        by_attack: dict[tuple, list[tuple[tuple, _Group]]] = defaultdict(list)
        for key, group in groups.items():
            if group.defense.get("name") == "none" and group.attack.get("name") != "none":
                by_attack[(key[0], key[1], key[2])].append((key, group))
        seg_drops: dict[tuple, dict[str, float | None]] = defaultdict(dict)
        seg_clean: dict[tuple, float | None] = {}
        for (ds, seg, _), members in sorted(by_attack.items(), key=lambda kv: plugin_label(kv[1][0][1].segmenter, "segmenter")):
            members.sort(key=lambda m: m[1].rate)
            first = members[0][1]
            clean = _clean_for(first, groups)
            points = [(g.rate, rows_by_group[k]) for k, g in members if g.rate > 0 or clean is None]
            if clean is not None:
                points.insert(0, (0.0, rows_by_group[_key_of(clean, groups)]))
            rates = [p[0] for p in points]
            dice = [p[1]["dice"] for p in points]
            clean_dice = dice[0] if rates and rates[0] == 0.0 else None
            row = {
                **_identity(entry, first),
                "attack": plugin_label(first.attack, "attack"),
                "attack_name": first.attack.get("name"),
                "clean_dice": clean_dice,
                "points": [
                    {"rate": r, "dice": p["dice"], "drop": p["drop"], "p_value": p["p_value"], "significant": p["significant"]}
                    for r, p in points
                ],
                "max_drop": _round(max((p["drop"] for _, p in points if p["drop"] is not None), default=None)),
                "auc": _round(dose_response_auc(rates, dice)),
                "rate_at_5pct": _round(rate_at_drop(rates, dice, clean_dice, DROP_FRACTION)) if clean_dice is not None else None,
                "figure": None,
            }
            attacks.append(row)
            curves.append({"row": row, "points": points})
            seg_key = (ds, seg)
            seg_clean[seg_key] = clean_dice
            at_half = value_at_rate(rates, dice, ROBUSTNESS_RATE) if clean_dice is not None else None
            seg_drops[seg_key][plugin_label(first.attack, "attack")] = _round(clean_dice - at_half) if at_half is not None else None
        seg_labels = {(_ident(g.dataset), _ident(g.segmenter)): g for g in groups.values()}
        for (ds, seg), group in sorted(seg_labels.items(), key=lambda kv: plugin_label(kv[1].segmenter, "segmenter")):
            drops = seg_drops.get((ds, seg), {})
            known = [v for v in drops.values() if v is not None]
            clean = _clean_for(group, groups)
            segmenters.append(
                {
                    **_identity(entry, group),
                    "clean_dice": seg_clean.get((ds, seg)) if (ds, seg) in seg_clean else (rows_by_group[_key_of(clean, groups)]["dice"] if clean else None),
                    "drops": {name: drops.get(name) for name in drops},
                    "mean_drop": _round(float(np.mean(known))) if known else None,
                }
            )

        # defenses board: per (dataset, segmenter, attack, defense != none)
        by_defense: dict[tuple, list[tuple[tuple, _Group]]] = defaultdict(list)
        for key, group in groups.items():
            if group.defense.get("name") != "none":
                by_defense[(key[0], key[1], key[2], key[4])].append((key, group))
        for (ds, seg, atk, dfn), members in sorted(by_defense.items(), key=lambda kv: (plugin_label(kv[1][0][1].segmenter, "segmenter"), kv[1][0][1].attack.get("name"))):
            members.sort(key=lambda m: m[1].rate)
            first = members[0][1]
            others = [k for k in by_defense if k[:2] == (ds, seg) and k[3] == dfn and k[2] != atk]
            if first.attack.get("name") == "none" and others:
                continue  # its rate-0 cells give the other rows' clean cost
            recovered = []
            for key, group in members:
                undefended = next(
                    (k for k, g in groups.items() if k[:4] == (ds, seg, atk, group.rate) and g.defense.get("name") == "none"), None
                )
                defended_row = rows_by_group[key]
                gain, recovery = _recovery(group, groups[undefended], groups) if undefended is not None else (None, None)
                recovered.append({"rate": group.rate, "dice": defended_row["dice"], "recovered": gain, "recovery": recovery,
                                  "auroc": defended_row["auroc"], "ap": defended_row["ap"]})
            # clean cost: Dice lost when the defense runs on clean data (rate 0, attack 'none' preferred)
            clean_cost = None
            at_zero = sorted(
                (k for k, g in groups.items() if k[:2] == (ds, seg) and k[3] == 0.0 and k[4] == dfn and k[2] in (atk, _ident({"name": "none"}))),
                key=lambda k: groups[k].attack.get("name") != "none",
            )
            if at_zero:
                clean = _clean_for(groups[at_zero[0]], groups)
                defended = rows_by_group[at_zero[0]]["dice"]
                if clean is not None and defended is not None:
                    clean_cost = _round(rows_by_group[_key_of(clean, groups)]["dice"] - defended)
            aurocs = [r["auroc"] for r in recovered if r["auroc"] is not None]
            aps = [r["ap"] for r in recovered if r["ap"] is not None]
            gains = [r["recovered"] for r in recovered if r["recovered"] is not None and r["rate"] > 0]
            recoveries = [r["recovery"] for r in recovered if r["recovery"] is not None]
            defenses.append(
                {
                    **_identity(entry, first),
                    "attack": plugin_label(first.attack, "attack"),
                    "defense": plugin_label(first.defense, "defense"),
                    "auroc": _round(float(np.mean(aurocs))) if aurocs else None,
                    "ap": _round(float(np.mean(aps))) if aps else None,
                    "points": recovered,
                    "mean_recovered": _round(float(np.mean(gains))) if gains else None,
                    "mean_recovery": _round(float(np.mean(recoveries))) if recoveries else None,
                    "clean_cost": clean_cost,
                }
            )
    return Analysis(entry_rows, cell_rows, attacks, defenses, segmenters, curves, sorted({k for s in segmenters for k in s["drops"]}))


def _recovery(defended: _Group, undefended: _Group, groups: dict[tuple, _Group]) -> tuple[float | None, float | None]:
    """Dice won back over no defense, and that gain as a share of the attack's damage.

    Each compares over the seeds the groups share, with the clean baseline of
    `_clean_for`, as `benchmark.defense_effect_frame` does for ``defenses.csv``.
    """
    def mean_dice(group: _Group, seeds: list[int]) -> float | None:
        values = group.per_case("dice", seeds)
        return float(np.mean(list(values.values()))) if values else None

    paired = sorted(set(defended.cells) & set(undefended.cells))
    with_defense, without = mean_dice(defended, paired), mean_dice(undefended, paired)
    if with_defense is None or without is None:
        return None, None
    gain = _round(with_defense - without)
    clean = _clean_for(undefended, groups)
    shared = sorted(set(paired) & set(clean.cells)) if clean is not None and defended.rate > 0 else []
    if not shared:
        return gain, None
    with_defense, without, clean_dice = (mean_dice(g, shared) for g in (defended, undefended, clean))
    if None in (with_defense, without, clean_dice) or clean_dice - without < RECOVERY_MIN_DAMAGE:
        return gain, None
    return gain, _round((with_defense - without) / (clean_dice - without))


def _key_of(group: _Group, groups: dict[tuple, _Group]) -> tuple:
    return next(k for k, g in groups.items() if g is group)
