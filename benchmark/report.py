"""The per-cell summary of a sweep, the study summary and the defense-effect table, printed as rich tables."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

from .analysis import ALPHA, MIN_SEEDS
from .metrics import METRICS, aggregate
from .store import ResultStore

__all__ = ["summary_frame", "summarise", "print_summary", "print_study_summary", "print_defense_effect", "report_console"]


def summary_frame(store: ResultStore, keys: list[str] | None = None) -> pd.DataFrame:
    """Per cell: status, case count and mean / std / 95 % CI of every metric."""
    return summarise(store.runs(keys), store.case_metrics(keys))


def summarise(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """`summary_frame` from the runs and case-metrics tables already read from a store."""
    by_cell = dict(tuple(metrics.groupby("cell", sort=False)))
    no_cases = metrics.iloc[:0]
    rows = []
    for _, run in runs.iterrows():
        row = {k: run[k] for k in ("cell_key", "segmenter", "attack", "rate", "defense", "seed", "status", "duration_s")}
        cases = by_cell.get(run["cell_key"], no_cases)
        row["cases"] = len(cases)
        for metric in METRICS:
            agg = aggregate(cases[metric].to_numpy())
            row.update({metric: agg.mean, f"{metric}_std": agg.std, f"{metric}_ci_low": agg.ci_low, f"{metric}_ci_high": agg.ci_high})
        error = run["error"] if isinstance(run["error"], str) else ""
        row["error"] = error.strip().splitlines()[-1] if error.strip() else ""
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["segmenter", "attack", "rate", "defense", "seed"], kind="stable").reset_index(drop=True)
    return frame


def report_console(stderr: bool = False, quiet: bool = False) -> Console:
    """A console that does not squeeze tables when output is piped to a file."""
    console = Console(stderr=stderr, quiet=quiet)
    if not console.is_terminal:
        console = Console(stderr=stderr, quiet=quiet, width=200)
    return console


CELL_TITLE = "per cell: mean [95 % CI over validation cases, one training run]"


def print_summary(frame: pd.DataFrame, console: Console, title: str = CELL_TITLE) -> None:
    """Render the summary as a rich table: mean [95 % CI] per metric.

    The interval of a cell resamples its validation cases alone: it says nothing about
    training noise (`print_study_summary` does, over seeds and cases).
    """
    table = Table(title=title, header_style="bold")
    for column in ("segmenter", "attack", "rate", "defense", "seed", "cases"):
        table.add_column(column, justify="right" if column in ("rate", "seed", "cases") else "left")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    table.add_column("status")
    for _, row in frame.iterrows():
        cells = [str(row["segmenter"]), str(row["attack"]), f"{row['rate']:.4g}", str(row["defense"]), str(row["seed"]), str(row["cases"])]
        if row["status"] == "finished":
            cells += [f"{row[m]:.4f} [{row[f'{m}_ci_low']:.3f}, {row[f'{m}_ci_high']:.3f}]" for m in METRICS]
            cells.append("[green]finished[/]")
        else:
            cells += ["-"] * len(METRICS)
            cells.append(f"[red]failed[/]: {row['error'][:80]}")
        table.add_row(*cells)
    console.print(table)


STUDY_TITLE = "over seeds and cases (summary.csv)"


def print_study_summary(frame: pd.DataFrame, console: Console, title: str = STUDY_TITLE) -> None:
    """Render `benchmark.analysis.summary_table`: Dice and its drop from the clean cell, with intervals and tests.

    Where a comparison has fewer than three seeds the p-value column says "1 seed" or
    "2 seeds": such a drop is not tested against training noise. A star marks a drop
    whose Holm-adjusted p-value (over the study's drops) is below `ALPHA` (``significant``).
    """
    caption = (f"* significant: Holm-adjusted p < {ALPHA:g} over the study's drops (p: raw, two-sided); "
               f"tested only with ≥ {MIN_SEEDS} seeds")
    table = Table(title=title, caption=caption, header_style="bold")
    share = "poisoned_share" in frame and frame["poisoned_share"].notna().any()
    columns = ["segmenter", "attack", "rate", *(["poisoned share"] if share else []), "defense", "seeds", "cases",
               "dice [95 % CI]", "drop [95 % CI]", "p", "p (Holm)"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("segmenter", "attack", "defense") else "right")
    for _, row in frame.iterrows():
        cells = [str(row["segmenter"]), str(row["attack"]), f"{float(row['rate']):.4g}"]
        if share:
            cells.append("–" if pd.isna(row["poisoned_share"]) else f"{float(row['poisoned_share']):.3f}")
        cells += [str(row["defense"]), str(int(row["seeds"])), str(int(row["cases"])),
                  f"{row['dice']:.3f} [{row['dice_ci_low']:.3f}, {row['dice_ci_high']:.3f}]"]
        if pd.isna(row["drop"]):
            cells += ["–", row["note"] or "–", "–"]
        else:
            star = "*" if row["significant"] is True else ""
            cells.append(f"{row['drop']:+.3f}{star} [{row['drop_ci_low']:+.3f}, {row['drop_ci_high']:+.3f}]")
            cells.append(row["note"] if pd.isna(row["p_value"]) else f"{row['p_value']:.3g}")
            cells.append("–" if pd.isna(row["p_holm"]) else f"{row['p_holm']:.3g}")
        table.add_row(*cells)
    console.print(table)


def print_defense_effect(frame: pd.DataFrame, console: Console) -> None:
    """Render `benchmark.defense_effect_frame`: detection, Dice, recovery and clean cost per defense."""
    table = Table(title="defenses: detection, recovery under attack, cost when clean (mean over seeds)", header_style="bold")
    columns = ["segmenter", "attack", "rate", "defense", "seeds", "auroc", "ap", "f1", "removed_fraction", "dice", "dice_without",
               "recovery", "clean_cost", "recovery_note"]
    if "poisoned_share" in frame and frame["poisoned_share"].notna().any():
        columns.insert(3, "poisoned_share")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="left" if column in ("segmenter", "attack", "defense") else "right")
    for _, row in frame.iterrows():
        table.add_row(*(_effect_text(c, row[c]) for c in columns))
    console.print(table)


def _effect_text(column: str, value: object) -> str:
    if column in ("segmenter", "attack", "defense", "recovery_note"):
        return "" if pd.isna(value) else str(value)
    if column == "seeds":
        return str(int(value))
    if column == "rate":
        return f"{float(value):.4g}"
    return "–" if pd.isna(value) else f"{float(value):.3f}"
