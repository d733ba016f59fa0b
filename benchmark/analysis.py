"""The analysis layer: every number a table, figure or leaderboard shows about a study.

Pure functions over two tables of one study, built by `study_tables`:

- the *case table*: one row per finished cell × validation case, columns
  ``segmenter, attack, rate, defense, seed, case`` and the metrics (plugins named by label);
- the *cell table*: one row per finished cell, with its attack and defense reports.

A *group* is a segmenter × attack × rate × defense; its seeds are separate trainings.

Aggregation (pinned by ``tests/test_analysis.py``):

- A cell's value is the mean over its validation cases of the per-case metric (not the
  Dice of all voxels pooled); a group's value is the mean over its seeds of those cell
  means (each seed weighs the same).
- Comparisons pair over seeds and cases: a drop, a recovery or a clean cost uses only the
  seeds every group in it finished and the cases every one of them scored.
- The clean baseline of a group is the cell of the same segmenter with the ``none``
  defense at rate 0 of the ``none`` attack (or, without one, of the same attack).
- ``drop`` = clean − attacked (positive: the attack hurt). ``recovery`` = (defended −
  undefended) / (clean − undefended): a ratio of the means over the paired seeds and
  cases, not a mean of per-seed ratios; 1 restores clean Dice, 0 changes nothing.
  ``clean_cost`` = clean − defended at rate 0.

Intervals: a two-level bootstrap, `BOOTSTRAP_RESAMPLES` resamples drawn from a generator
seeded with `BOOTSTRAP_SEED` (so tables are reproducible), 95 % coverage. Every seed is
scored on the same validation cases, so each resample draws the seeds with replacement
and, once, the cases with replacement, and every drawn seed uses that one case draw
(`two_level_bootstrap`). With S seeds, ``se`` = the standard deviation of the resampled
means × √(S / (S − 1)), and the interval is ``mean ± t[df, 0.975] · se``, ``df`` being
Satterthwaite's degrees of freedom of the crossed seed × case table
(`crossed_degrees_of_freedom`: S − 1 where seed variation dominates, more where case
variation does; never fewer than S − 1). A percentile interval of 3–5 seeds would be too
narrow. A drop resamples the per-seed, per-case differences clean − attacked, so both
sides share the same seed and case draw. With one seed the interval is over the cases
alone (``se`` × √(C / (C − 1)), C − 1 degrees of freedom) and says nothing about training
noise.

Tests: the p-value of a drop is two-sided, from ``t = drop / se`` against Student's t with
the interval's ``df``. It is given only with at least `MIN_SEEDS` seeds (one training run
says nothing about training noise); with fewer, tables say "1 seed" / "2 seeds" instead.
``significant`` (in ``summary.csv`` and the printed tables) is Holm's adjusted p-value over
the study's drops below `ALPHA`; ``p_value`` stays the raw one, ``p_holm`` the adjusted one.

Detectable difference (`detectable_difference`): the smallest drop the study's paired test
(above) finds with power `POWER` at two-sided level `ALPHA`, from the study's own spread:

    δ = (t[1 − α/2, n − 1] + t[power, n − 1]) · SE,    SE = √(v / n),
    v = Σ_k (n_k − 1) · n_k · se_k² / Σ_k (n_k − 1)

over every drop k of the study (each group against its clean baseline) with n_k ≥ 2
paired seeds, se_k being that drop's standard error (the corrected two-level bootstrap
above, so it holds the per-seed variation of the paired differences and their case
component). ``v`` is the pooled per-seed variance of a drop, ``n`` the study's number of
seeds. A recovery is given only where the attack's damage exceeds ``max(δ,
RECOVERY_MIN_DAMAGE)``; with δ unknown (one seed) it is empty.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .catalog import ATTACKS, DATASETS, DEFENSES, SEGMENTERS
from .errors import ConfigError
from .identity import NO_ATTACK, NO_DEFENSE
from .metrics import DISTANCE_METRICS, LESION_METRICS, LOWER_IS_BETTER, METRICS, OPTIONAL_METRICS

__all__ = [
    "ALPHA",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CURVE_METRICS",
    "DEFENSE_EFFECT_COLUMNS",
    "DETECTION_FIGURES",
    "DISTANCE_SUMMARY_COLUMNS",
    "LESION_SUMMARY_COLUMNS",
    "GROUP_COLUMNS",
    "Interval",
    "MIN_SEEDS",
    "POWER",
    "RECOVERY_MIN_DAMAGE",
    "SUMMARY_COLUMNS",
    "DetectableDifference",
    "adjust_p_values",
    "clean_baseline",
    "crossed_degrees_of_freedom",
    "defense_effect",
    "detectable_difference",
    "dose_response_rows",
    "drop_interval",
    "mean_interval",
    "plugin_label",
    "plugin_labels",
    "recovery",
    "seeds_note",
    "study_tables",
    "summary_table",
    "two_level_bootstrap",
]

ALPHA = 0.05
"""Two-sided significance level of every test."""
POWER = 0.8
"""Power of the detectable difference."""
MIN_SEEDS = 3
"""Fewest seeds for which a p-value or a significance mark is given."""
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
RECOVERY_MIN_DAMAGE = 0.01
"""Floor of the damage (clean − attacked Dice) under which no recovery ratio is given."""

GROUP_COLUMNS = ["segmenter", "attack", "rate", "defense"]
CURVE_METRICS = ("dice", "accuracy", "sensitivity")
DETECTION_FIGURES = ["auroc", "ap", "precision", "recall", "f1", "removed_fraction"]
SUMMARY_COLUMNS = [
    "segmenter", "attack", "rate", "defense", "seeds", "cases", "dice", "dice_ci_low", "dice_ci_high",
    "drop", "drop_ci_low", "drop_ci_high", "p_value", "significant",
]
"""The contract columns of ``summary.csv``, in order; `summary_table` appends more after them."""
SUMMARY_EXTRA_COLUMNS = [
    "poisoned_share", "seed_list", "dice_clean", "p_holm", "note",
    *(f"{m}{s}" for m in CURVE_METRICS if m != "dice" for s in ("", "_ci_low", "_ci_high")),
]
DISTANCE_SUMMARY_COLUMNS = [
    f"{m}{s}" for m in DISTANCE_METRICS for s in ("", "_ci_low", "_ci_high", "_rise", "_rise_ci_low", "_rise_ci_high")
]
"""HD95 columns of ``summary.csv``, after `SUMMARY_EXTRA_COLUMNS`. HD95 is lower-is-better, so
its comparison with the clean baseline is a *rise*, attacked − clean (positive: the attack
hurt, as a positive Dice ``drop`` is), over the seeds and cases both measured."""


def _change_suffix(metric: str) -> str:
    """``_rise`` (attacked − clean) for a lower-is-better metric, ``_drop`` (clean − attacked) otherwise: positive = hurt."""
    return "_rise" if metric in LOWER_IS_BETTER else "_drop"


LESION_SUMMARY_COLUMNS = [
    f"{m}{s}" for m in LESION_METRICS
    for s in ("", "_ci_low", "_ci_high", _change_suffix(m), f"{_change_suffix(m)}_ci_low", f"{_change_suffix(m)}_ci_high")
]
"""Lesion-wise columns of ``summary.csv``, after `DISTANCE_SUMMARY_COLUMNS`: ``lesion_dice``
with its interval and ``lesion_dice_drop`` (clean − attacked), ``lesion_hd95`` with its
interval and ``lesion_hd95_rise`` (attacked − clean); empty where not measured."""
DEFENSE_EFFECT_COLUMNS = [
    "segmenter", "attack", "rate", "defense", "seeds", "dice", "dice_without", "dice_clean", "recovery", "clean_cost",
    *DETECTION_FIGURES, "damage", "detectable_difference", "recovery_note", "poisoned_share",
]
"""Columns of ``defenses.csv``: the original ones first, additions appended."""

Label = Callable[[list[dict[str, Any]], str], list[str]]


# -- labels -------------------------------------------------------------------------
def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _format(name: str, params: dict[str, Any]) -> str:
    if not params:
        return name
    return f"{name} ({', '.join(f'{k}={_value_text(v)}' for k, v in sorted(params.items()))})"


def plugin_labels(specs: Sequence[dict[str, Any]], kind: str | None = None) -> list[str]:
    """Plugin names with the parameters that tell apart the configurations sharing a name.

    ``spectral (budget=0.2)`` and ``spectral (budget=0.5)`` when both appear; ``spectral``
    when only one configuration of it does.

    Args:
        specs: resolved plugin configs (``{"name": ..., **params}``), one per row.
        kind: unused here; keeps the signature of a `Label` function. Defaults to None.

    Returns:
        One label per spec, in order.
    """
    variants: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in specs:
        variants.setdefault(str(spec.get("name")), {})[_canonical(spec)] = spec
    differing = {
        name: {k for v in group.values() for k in v if k != "name" and len({_canonical(o.get(k)) for o in group.values()}) > 1}
        for name, group in variants.items()
    }
    # a key a spec leaves out (an option it does not use, e.g. stealth off) is not part of its label
    return [_format(str(s.get("name")), {k: s[k] for k in differing[str(s.get("name"))] if k in s}) for s in specs]


_REGISTRIES = {"dataset": DATASETS, "segmenter": SEGMENTERS, "attack": ATTACKS, "defense": DEFENSES}


def plugin_label(spec: dict[str, Any], kind: str | None = None) -> str:
    """``name`` plus its parameters, e.g. ``unet (epochs=2, lr=0.003)``, for one spec alone.

    With ``kind`` (``dataset``, ``segmenter``, ``attack``, ``defense``) parameters equal to
    the defaults of the plugin as installed here are left out; a plugin not installed
    here, or no ``kind``, shows every parameter.
    """
    defaults = _installed_defaults(kind, str(spec.get("name"))) if kind else {}
    params = {k: v for k, v in spec.items() if k != "name" and (k not in defaults or _canonical(v) != defaults[k])}
    return _format(str(spec.get("name", "?")), params)


def _installed_defaults(kind: str, name: str) -> dict[str, str]:
    try:
        params = _REGISTRIES[kind].get(name).Params
    except ConfigError:
        return {}
    return _param_defaults(params)


@lru_cache(maxsize=None)
def _param_defaults(params: type) -> dict[str, str]:
    return {
        key: _canonical(info.get_default(call_default_factory=True))
        for key, info in params.model_fields.items()
        if not info.is_required()
    }


# -- the study's tables ---------------------------------------------------------------
def study_tables(runs: pd.DataFrame, metrics: pd.DataFrame, label: Label = plugin_labels) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cell table and the case table of finished cells, plugins named by ``label``.

    Args:
        runs: one row per cell: ``cell_key``, ``status``, ``config`` (the cell's resolved
            config) and optionally ``attack_report`` and ``defense_report`` (dicts), as
            `ResultStore.runs` gives.
        metrics: one row per cell × case: ``cell``, ``case`` and the metrics, as
            `ResultStore.case_metrics` gives.
        label: names plugins from their configs (`plugin_labels` by default). Labels are
            worked out over every run, so a failed cell does not rename others.

    Returns:
        ``(cells, cases)``: ``cells`` has ``cell`` + `GROUP_COLUMNS` + ``seed``,
        ``attack_report``, ``defense_report``; ``cases`` has `GROUP_COLUMNS` + ``seed, cell,
        case`` + the metrics.
    """
    columns = ["cell", *GROUP_COLUMNS, "seed", "attack_report", "defense_report"]
    scores = (*METRICS, *OPTIONAL_METRICS)
    if runs.empty:
        return pd.DataFrame(columns=columns), pd.DataFrame(columns=[*GROUP_COLUMNS, "seed", "cell", "case", *scores])
    configs = list(runs["config"])
    cells = pd.DataFrame({"cell": runs["cell_key"].to_numpy()})
    for kind in ("segmenter", "attack", "defense"):
        cells[kind] = label([c[kind] for c in configs], kind)
    cells["rate"] = [float(c["rate"]) for c in configs]
    cells["seed"] = [int(c["seed"]) for c in configs]
    for report in ("attack_report", "defense_report"):
        cells[report] = list(runs[report]) if report in runs else [{}] * len(runs)
        cells[report] = cells[report].map(lambda r: r if isinstance(r, dict) else {})
    cells = cells[(runs["status"] == "finished").to_numpy()].reset_index(drop=True)[columns]
    keep = [c for c in ("cell", "case", *scores) if c in metrics]
    cases = metrics[keep].merge(cells[["cell", *GROUP_COLUMNS, "seed"]], on="cell", how="inner")
    return cells, cases[[*GROUP_COLUMNS, "seed", "cell", "case", *[m for m in scores if m in cases]]]


def _group_key(row: Any) -> tuple:
    return tuple(row[c] for c in GROUP_COLUMNS)


def _matrices(cases: pd.DataFrame, metric: str) -> dict[tuple, pd.DataFrame]:
    """Per group: a seed × case table of ``metric`` (a case scored twice in a seed is averaged)."""
    out = {}
    for key, part in cases.groupby(GROUP_COLUMNS, sort=True):
        out[tuple(key)] = part.pivot_table(index="seed", columns="case", values=metric, aggfunc="mean").sort_index()
    return out


def _paired(*tables: pd.DataFrame) -> tuple[list[int], list[str]]:
    """Seeds every table has, and the cases every one of them scored in each of those seeds."""
    seeds = sorted(set.intersection(*(set(t.index) for t in tables)))
    if not seeds:
        return [], []
    cases = set.intersection(*(set(t.loc[seeds].dropna(axis=1).columns) for t in tables))
    return seeds, sorted(cases)


# -- intervals and tests ----------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """Mean over seeds and cases with its two-level bootstrap interval.

    ``p_value`` (two-sided, against a mean of 0) is None with fewer than `MIN_SEEDS` seeds.
    """

    mean: float
    ci_low: float
    ci_high: float
    se: float
    seeds: int
    cases: int
    p_value: float | None = None
    dof: float | None = None
    """Degrees of freedom of the interval's and the test's t (`crossed_degrees_of_freedom`)."""

    @property
    def significant(self) -> bool | None:
        return None if self.p_value is None else bool(self.p_value < ALPHA)


def two_level_bootstrap(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Bootstrapped means of a seed × case table: seeds and cases drawn with replacement, crossed.

    Every seed is scored on the same validation cases, so a resample draws the seeds and,
    once, the cases, and every drawn seed uses that one case draw (drawing cases afresh per
    seed would average case variation over the seeds and under-count it by about 1/S).

    Args:
        values: ``[S, C]`` per seed and case.
        resamples: number of resamples. Defaults to `BOOTSTRAP_RESAMPLES`.
        seed: seed of the generator. Defaults to `BOOTSTRAP_SEED`.

    Returns:
        ``[resamples]`` means.
    """
    values = np.asarray(values, dtype=np.float64)
    n_seeds, n_cases = values.shape
    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    case_draw = rng.integers(0, n_cases, size=(resamples, n_cases))
    return values[seed_draw[:, :, None], case_draw[:, None, :]].mean(axis=(1, 2))


def crossed_degrees_of_freedom(values: np.ndarray) -> float:
    """Satterthwaite's degrees of freedom of the mean of a crossed seed × case table.

    From the two-way ANOVA mean squares of seeds (``A``, S − 1 df), cases (``B``, C − 1 df)
    and the residual (``E``): the variance of the mean is (A + B − E) / (S·C), and its
    degrees of freedom (A + B − E)² / (A²/(S−1) + B²/(C−1) + E²/((S−1)(C−1))), never fewer
    than S − 1 (what the seeds alone give).

    Args:
        values: ``[S, C]`` with S ≥ 2 and C ≥ 2.
    """
    n_seeds, n_cases = values.shape
    grand = values.mean()
    by_seed, by_case = values.mean(axis=1), values.mean(axis=0)
    seeds_ms = n_cases * float(((by_seed - grand) ** 2).sum()) / (n_seeds - 1)
    cases_ms = n_seeds * float(((by_case - grand) ** 2).sum()) / (n_cases - 1)
    residual = values - by_seed[:, None] - by_case[None, :] + grand
    residual_ms = float((residual**2).sum()) / ((n_seeds - 1) * (n_cases - 1))
    total = seeds_ms + cases_ms - residual_ms
    spread = seeds_ms**2 / (n_seeds - 1) + cases_ms**2 / (n_cases - 1) + residual_ms**2 / ((n_seeds - 1) * (n_cases - 1))
    if total <= 0 or spread <= 0:
        return float(n_seeds - 1)
    return max(float(n_seeds - 1), total**2 / spread)


def mean_interval(values: np.ndarray, test: bool = False, resamples: int = BOOTSTRAP_RESAMPLES) -> Interval:
    """Mean of a seed × case table (``[S, C]``) with its t interval; with ``test`` a p-value too.

    ``se`` is the standard deviation of `two_level_bootstrap` times √(S / (S − 1)) (the
    bootstrap's variance of a mean over S seeds is (S − 1) / S of the unbiased one); the
    interval is ``mean ± t[df, 0.975] · se`` and the p-value (≥ `MIN_SEEDS` seeds) is
    two-sided from ``mean / se`` against the same t, ``df`` being
    `crossed_degrees_of_freedom` (S − 1 when seeds dominate, more when case variation
    does). With one seed nothing measures training noise: the interval is over the cases
    alone, ``se`` the case bootstrap's SD times √(C / (C − 1)), with C − 1 degrees of freedom.

    Args:
        values: ``[S, C]`` per seed and case.
        test: also give the p-value against a mean of 0. Defaults to False.
        resamples: bootstrap resamples. Defaults to `BOOTSTRAP_RESAMPLES`.
    """
    values = np.asarray(values, dtype=np.float64)
    n_seeds, n_cases = values.shape if values.ndim == 2 else (0, 0)
    if n_seeds == 0 or n_cases == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, n_seeds, n_cases)
    from scipy.stats import t as student_t

    mean = float(values.mean(axis=1).mean())
    units = n_seeds if n_seeds > 1 else n_cases  # what the bootstrap counts as independent draws
    if units < 2:
        return Interval(mean, math.nan, math.nan, math.nan, n_seeds, n_cases)
    draws = two_level_bootstrap(values, resamples)
    se = float(draws.std(ddof=1)) * math.sqrt(units / (units - 1))
    if n_seeds > 1:
        dof = crossed_degrees_of_freedom(values) if n_cases > 1 else float(n_seeds - 1)
    else:
        dof = float(n_cases - 1)
    half = float(student_t.ppf(1 - (1 - LEVEL) / 2, dof)) * se
    p_value = None
    if test and n_seeds >= MIN_SEEDS:
        if se > 0:
            p_value = float(2 * student_t.sf(abs(mean) / se, dof))
        else:
            p_value = 1.0 if mean == 0 else 0.0
    return Interval(mean, mean - half, mean + half, se, n_seeds, n_cases, p_value, dof)


def drop_interval(clean: pd.DataFrame, attacked: pd.DataFrame) -> Interval:
    """clean − attacked over the seeds and cases both have, with interval and (≥ `MIN_SEEDS` seeds) p-value.

    Args:
        clean: seed × case table of the clean baseline.
        attacked: seed × case table of the compared group.
    """
    seeds, cases = _paired(clean, attacked)
    difference = clean.loc[seeds, cases].to_numpy() - attacked.loc[seeds, cases].to_numpy()
    return mean_interval(difference.reshape(len(seeds), len(cases)), test=True)


def seeds_note(seeds: int) -> str:
    """What a table says instead of a p-value when there are too few seeds to test."""
    return "" if seeds >= MIN_SEEDS else f"{seeds} seed{'s' if seeds != 1 else ''}"


def adjust_p_values(p_values: Sequence[float | None], method: str = "holm") -> list[float | None]:
    """Holm's step-down (``holm``) or Benjamini–Hochberg (``bh``) adjusted p-values; None stays None."""
    indexed = [(p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    m = len(indexed)
    if m == 0:
        return out
    order = sorted(indexed)
    if method == "holm":
        running = 0.0
        for rank, (p, i) in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p))
            out[i] = running
    elif method == "bh":
        running = 1.0
        for rank in range(m - 1, -1, -1):
            p, i = order[rank]
            running = min(running, p * m / (rank + 1))
            out[i] = min(1.0, running)
    else:
        raise ValueError(f"unknown p-value adjustment {method!r}; expected 'holm' or 'bh'")
    return out


# -- the clean baseline -------------------------------------------------------------------
def clean_baseline(groups: Iterable[tuple], segmenter: str, attack: str) -> tuple | None:
    """The clean group of ``segmenter``: defense ``none`` at rate 0 of attack ``none``, else of ``attack``.

    Args:
        groups: group keys ``(segmenter, attack, rate, defense)`` present.
        segmenter: segmenter label.
        attack: attack label of the compared group.
    """
    undefended = [g for g in groups if g[0] == segmenter and g[2] == 0.0 and g[3] == NO_DEFENSE]
    for wanted in (NO_ATTACK, attack):
        for group in undefended:
            if group[1] == wanted:
                return group
    return None


# -- detectable difference -------------------------------------------------------------------
@dataclass(frozen=True)
class DetectableDifference:
    """The smallest Dice drop a study could detect (see the module doc for the formula).

    ``delta``, ``sd`` (pooled per-seed standard deviation of a paired drop) and ``se`` (its
    standard error over the study's seeds) are None with fewer than two seeds.
    """

    delta: float | None
    sd: float | None
    seeds: int
    alpha: float = ALPHA
    power: float = POWER
    se: float | None = None

    def describe(self) -> str:
        if self.delta is None:
            if self.seeds < 2:
                return (f"smallest detectable Dice difference: unknown with {seeds_note(self.seeds) or self.seeds} "
                        f"(needs ≥ 2 seeds; ≥ {MIN_SEEDS} for significance)")
            return "smallest detectable Dice difference: unknown (no drop against a clean cell with 2 seeds or more)"
        return (f"smallest detectable Dice difference: {self.delta:.3f} (power {self.power:.0%}, two-sided α = {self.alpha:g}, "
                f"{self.seeds} seeds, pooled standard error of a paired drop {self.se:.3f})")


def _drop_intervals(cases: pd.DataFrame, metric: str = "dice") -> dict[tuple, Interval]:
    """Every group's drop against its clean baseline (`drop_interval`), by group key."""
    tables = _matrices(cases, metric)
    drops = {}
    for key, table in tables.items():
        clean = clean_baseline(tables, key[0], key[1])
        if clean is not None and clean != key:
            drops[key] = drop_interval(tables[clean], table)
    return drops


def detectable_difference(cases: pd.DataFrame, metric: str = "dice", alpha: float = ALPHA, power: float = POWER,
                          drops: Iterable[Interval] | None = None) -> DetectableDifference:
    """δ = (t[1 − α/2, n − 1] + t[power, n − 1]) · SE, SE the pooled standard error of the study's paired drops.

    Args:
        cases: the case table.
        metric: the metric. Defaults to ``dice``.
        alpha: two-sided level. Defaults to `ALPHA`.
        power: power. Defaults to `POWER`.
        drops: the study's drop intervals, when already worked out. Defaults to those of ``cases``.
    """
    seeds = int(cases["seed"].nunique()) if not cases.empty else 0
    if seeds < 2:
        return DetectableDifference(None, None, seeds, alpha, power)
    found = list(drops) if drops is not None else list(_drop_intervals(cases, metric).values())
    squares, weights = 0.0, 0
    for drop in found:
        if drop.seeds >= 2 and math.isfinite(drop.se):
            squares += (drop.seeds - 1) * drop.seeds * drop.se**2
            weights += drop.seeds - 1
    if weights == 0:
        return DetectableDifference(None, None, seeds, alpha, power)
    from scipy.stats import t as student_t

    sd = math.sqrt(squares / weights)
    se = sd / math.sqrt(seeds)
    delta = (student_t.ppf(1 - alpha / 2, seeds - 1) + student_t.ppf(power, seeds - 1)) * se
    return DetectableDifference(float(delta), sd, seeds, alpha, power, se)


# -- summary.csv -------------------------------------------------------------------------------
def _mean_report(cells: pd.DataFrame, report: str, field: str) -> float:
    values = [r.get(field) for r in cells[report]] if not cells.empty else []
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return float(np.mean(numbers)) if numbers else math.nan


def summary_table(cells: pd.DataFrame, cases: pd.DataFrame) -> pd.DataFrame:
    """One row per group: `SUMMARY_COLUMNS`, `SUMMARY_EXTRA_COLUMNS`, `DISTANCE_SUMMARY_COLUMNS`, `LESION_SUMMARY_COLUMNS`.

    ``dice`` and its interval are over the group's seeds and cases; ``drop`` is against
    the same segmenter's clean baseline over the seeds and cases both have (empty on the
    baseline itself); ``p_value`` (raw) and ``significant`` are empty with fewer than
    `MIN_SEEDS` paired seeds (``note`` says "1 seed" / "2 seeds" then); ``p_holm`` is
    the p-value adjusted by Holm over the study's drops (the table's), and
    ``significant`` is ``p_holm < ALPHA``. ``hd95`` and its interval are over the seeds and
    cases that measured it, ``hd95_rise`` (attacked − clean, lower-is-better) over those both
    measured; empty where nothing was measured. The lesion-wise metrics alike, with
    ``lesion_dice_drop`` = clean − attacked.
    """
    columns = [*SUMMARY_COLUMNS, *SUMMARY_EXTRA_COLUMNS, *DISTANCE_SUMMARY_COLUMNS, *LESION_SUMMARY_COLUMNS]
    if cases.empty:
        return pd.DataFrame(columns=columns)
    tables = {metric: _matrices(cases, metric) for metric in CURVE_METRICS if metric in cases}
    dice = tables["dice"]
    optional = {m: _matrices(cases, m) for m in OPTIONAL_METRICS if m in cases and cases[m].notna().any()}
    rows = []
    for key, table in dice.items():
        segmenter, attack, rate, defense = key
        seeds, case_ids = _paired(table)
        row: dict[str, Any] = dict(zip(GROUP_COLUMNS, key))
        for metric, by_group in tables.items():
            interval = mean_interval(by_group[key].loc[seeds, case_ids].to_numpy())
            row.update({metric: interval.mean, f"{metric}_ci_low": interval.ci_low, f"{metric}_ci_high": interval.ci_high})
        row.update(seeds=len(seeds), cases=len(case_ids), seed_list=" ".join(map(str, seeds)))
        group_cells = cells[(cells[GROUP_COLUMNS] == pd.Series(dict(zip(GROUP_COLUMNS, key)))).all(axis=1)]
        row["poisoned_share"] = _mean_report(group_cells, "attack_report", "poisoned_share")
        clean = clean_baseline(dice, segmenter, attack)
        paired_seeds = len(seeds)
        if clean is not None and clean != key:
            drop = drop_interval(dice[clean], table)
            paired_seeds = drop.seeds
            clean_seeds, clean_cases = _paired(dice[clean], table)
            row.update(
                drop=drop.mean, drop_ci_low=drop.ci_low, drop_ci_high=drop.ci_high, p_value=drop.p_value,
                significant=drop.significant, dice_clean=float(dice[clean].loc[clean_seeds, clean_cases].to_numpy().mean())
                if clean_seeds and clean_cases else math.nan,
            )
        for metric, by_group in optional.items():
            row.update(_optional_columns(metric, by_group, key, clean))
        if clean == key:
            row["note"] = "clean baseline"
        else:
            row["note"] = "no clean cell" if clean is None else seeds_note(paired_seeds)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns)
    frame["p_holm"] = adjust_p_values([None if pd.isna(p) else float(p) for p in frame["p_value"]])
    frame["significant"] = [None if pd.isna(p) else bool(p < ALPHA) for p in frame["p_holm"]]
    frame["significant"] = frame["significant"].astype(object)
    return frame.sort_values(["segmenter", "attack", "defense", "rate"], kind="stable").reset_index(drop=True)


def _optional_columns(metric: str, by_group: dict[tuple, pd.DataFrame], key: tuple, clean: tuple | None) -> dict[str, float]:
    """An optional metric's mean and interval for group ``key``, and its change from the clean baseline (positive: hurt)."""
    own = by_group.get(key)
    if own is None or own.empty:
        return {}
    seeds, case_ids = _paired(own)
    interval = mean_interval(own.loc[seeds, case_ids].to_numpy())
    out = {metric: interval.mean, f"{metric}_ci_low": interval.ci_low, f"{metric}_ci_high": interval.ci_high}
    if clean is not None and clean != key and clean in by_group and not by_group[clean].empty:
        pair = (own, by_group[clean]) if metric in LOWER_IS_BETTER else (by_group[clean], own)  # first − second
        change, name = drop_interval(*pair), f"{metric}{_change_suffix(metric)}"
        out.update({name: change.mean, f"{name}_ci_low": change.ci_low, f"{name}_ci_high": change.ci_high})
    return out


def dose_response_rows(summary: pd.DataFrame, attack: str, segmenter: str | None = None) -> pd.DataFrame:
    """The summary rows of an attack's dose-response curve without defense, sorted by rate.

    The clean baseline (attack ``none`` at rate 0) is added as the rate-0 point where the
    attack has no rate-0 cell of its own.
    """
    frame = summary[summary["defense"] == NO_DEFENSE]
    if segmenter is not None:
        frame = frame[frame["segmenter"] == segmenter]
    rows = frame[frame["attack"] == attack]
    if attack != NO_ATTACK:
        clean = frame[(frame["attack"] == NO_ATTACK) & (frame["rate"].astype(float) == 0.0)]
        own_zero = rows[rows["rate"].astype(float) == 0.0]["segmenter"]
        clean = clean[~clean["segmenter"].isin(set(own_zero))]
        rows = pd.concat([rows, clean]) if not clean.empty else rows
    return rows.sort_values(["segmenter", "rate"], kind="stable").reset_index(drop=True)


# -- defenses.csv ------------------------------------------------------------------------------
def recovery(dice: float, dice_without: float, dice_clean: float, threshold: float | None, seeds: int) -> tuple[float, str]:
    """(defended − undefended) / (clean − undefended), or NaN with the reason.

    Args:
        dice: the defended group's Dice.
        dice_without: the undefended group's Dice at the same rate.
        dice_clean: the clean baseline's Dice.
        threshold: the study's detectable difference, or None when it is unknown (< 2 seeds): then no
            recovery is given.
        seeds: paired seeds of the comparison.

    Returns:
        ``(recovery, note)``; the note says why a recovery is empty, or that it rests on too few seeds.
    """
    damage = dice_clean - dice_without
    if not math.isfinite(damage):
        return math.nan, "no clean cell"
    if threshold is None:
        return math.nan, f"detectable difference unknown ({seeds_note(seeds) or f'{seeds} seeds'})"
    floor = max(RECOVERY_MIN_DAMAGE, threshold)
    if damage <= floor:
        what = "the detectable difference" if threshold >= RECOVERY_MIN_DAMAGE else "the minimum damage"
        return math.nan, f"damage {damage:.3f} not above {what} {floor:.3f}"
    return (dice - dice_without) / damage, seeds_note(seeds)


def defense_effect(cells: pd.DataFrame, cases: pd.DataFrame, detectable: DetectableDifference | None = None) -> pd.DataFrame:
    """One row per segmenter × attack × rate × defense other than ``none`` (`DEFENSE_EFFECT_COLUMNS`).

    ``dice``, ``dice_without`` (the ``none`` defense at the same attack and rate) and
    ``dice_clean`` are means over the seeds and cases all three share (without a clean
    baseline, over those the first two share); ``recovery`` and ``clean_cost`` as in the
    module doc; detection figures are the defense's reports averaged over those seeds.

    Args:
        cells: the cell table.
        cases: the case table.
        detectable: the study's detectable difference. Defaults to the one of ``cases``.
    """
    if cases.empty or (cases["defense"] == NO_DEFENSE).all():
        return pd.DataFrame(columns=DEFENSE_EFFECT_COLUMNS)
    detectable = detectable or detectable_difference(cases)
    dice = _matrices(cases, "dice")
    rows = []
    for key, table in dice.items():
        segmenter, attack, rate, defense = key
        if defense == NO_DEFENSE:
            continue
        row: dict[str, Any] = dict(zip(GROUP_COLUMNS, key))
        without_key = (segmenter, attack, rate, NO_DEFENSE)
        clean_key = clean_baseline(dice, segmenter, attack)
        seeds: list[int] = []
        if without_key in dice:
            with_clean = [table, dice[without_key]] + ([dice[clean_key]] if clean_key is not None else [])
            seeds, case_ids = _paired(*with_clean)
            if not seeds and clean_key is not None:  # without a paired clean cell: Dice only
                seeds, case_ids = _paired(table, dice[without_key])
                clean_key = None
            if seeds and case_ids:
                value = lambda k: float(dice[k].loc[seeds, case_ids].to_numpy().mean())  # noqa: E731
                row.update(dice=value(key), dice_without=value(without_key))
                if clean_key is not None:
                    row["dice_clean"] = value(clean_key)
                    row["damage"] = row["dice_clean"] - row["dice_without"]
                    if rate > 0:
                        row["recovery"], row["recovery_note"] = recovery(
                            row["dice"], row["dice_without"], row["dice_clean"], detectable.delta, len(seeds))
                    else:
                        row["clean_cost"] = row["dice_clean"] - row["dice"]
                        row["recovery_note"] = "rate 0: nothing to recover"
                else:
                    row["recovery_note"] = "no clean cell"
        else:
            row["recovery_note"] = "no undefended cell at this rate"
        row["seeds"] = len(seeds)
        row["detectable_difference"] = detectable.delta
        group = cells[(cells[GROUP_COLUMNS] == pd.Series(row)[GROUP_COLUMNS]).all(axis=1)]
        used = group[group["seed"].isin(seeds)] if seeds else group
        for figure in DETECTION_FIGURES:
            row[figure] = _mean_report(used, "defense_report", figure)
        row["poisoned_share"] = _mean_report(used, "attack_report", "poisoned_share")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=DEFENSE_EFFECT_COLUMNS)
    return frame.sort_values(["segmenter", "attack", "defense", "rate"], kind="stable").reset_index(drop=True)
