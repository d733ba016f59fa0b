"""A whole sweep: plan cells, skip finished ones, run the rest, store, report."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from .cache import cache_root
from .config import Cell, SweepConfig
from .environment import package_version, resolve_device
from .errors import ConfigError, ExitCode
from .executors import WorkerSpec, create_executor, plugin_modules
from .locking import OutputLock
from .outputs import write_sweep_tables
from .paths import safe_file_name
from .plugins import RunContext
from .progress import make_progress, tracker
from .identity import NO_ATTACK
from .report import print_defense_effect, print_study_summary, print_summary, summarise
from .runner import CellRunner, example_figure_names, plan_sweep
from .studies import describe_study, study_config, study_key
from .splitting import split_cases
from .store import FINISHED, CellRecord, ResultStore

__all__ = ["SweepResult", "run_sweep", "check_task_channels", "draw_dose_response", "draw_frontier"]

logger = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """Outcome of `run_sweep`."""

    exit_code: ExitCode
    ran: list[str]
    skipped: list[str]
    failed: list[str]
    summary: pd.DataFrame
    out: Path
    lost: list[str]


def check_task_channels(config: SweepConfig, channels: tuple[str, ...]) -> None:
    missing = [(i, c) for i, c in enumerate(config.task.inputs) if c not in channels]
    if missing:
        raise ConfigError(
            [f"task.inputs[{i}]: channel '{c}' is not in data set '{config.dataset.name}', which has {list(channels)}." for i, c in missing],
            source=config.source,
        )


def draw_dose_response(summary: pd.DataFrame, folder: Path) -> None:
    """One dose-response figure per attack swept over more than one rate.

    Args:
        summary: the study's `benchmark.analysis.summary_table`.
        folder: where the PNGs go (``<attack>-dose-response.png``, the label made a safe file
            name as the examples' are: a setting's label carries spaces, quotes and brackets).
    """
    from .figures import plot_dose_response

    for attack, rows in summary.groupby("attack"):
        if attack == NO_ATTACK or rows["rate"].nunique() < 2:
            continue
        try:
            plot_dose_response(summary, str(attack), folder / f"{safe_file_name(str(attack))}-dose-response.png")
        except Exception as exc:  # a figure is a courtesy; it must not fail the sweep
            logger.warning("could not draw the dose-response of %s: %s", attack, exc)


def draw_frontier(defenses: pd.DataFrame, folder: Path) -> Path | None:
    """``frontier.png`` when more than one attack setting has both a damage and a defense's AUROC.

    A point needs the setting's undefended cells at its rate and clean cells to measure the
    damage; a detection-only study (no undefended cells) has none, and gets no empty figure.

    Args:
        defenses: the study's ``defenses.csv`` table.
        folder: where the PNG goes.

    Returns:
        the figure's path, or None when there is nothing to compare.
    """
    from .frontier import frontier_rows, plot_frontier

    rows = frontier_rows(defenses)
    rows = rows[np.isfinite(rows["damage"].astype(float))]
    if rows["attack"].nunique() < 2:
        return None
    try:
        return plot_frontier(rows, folder / "frontier.png")
    except Exception as exc:  # a figure is a courtesy; it must not fail the sweep
        logger.warning("could not draw the frontier: %s", exc)
        return None


def run_sweep(
    config: SweepConfig,
    out: str | Path | None = None,
    force: bool = False,
    save_predictions: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    wait_s: float = 0.0,
) -> SweepResult:
    """Run every cell of ``config`` that is not finished yet (all of them with ``force``).

    Results are written to ``OUT/results.sqlite`` one transaction per cell, then
    ``OUT/results.csv``, ``attacks.csv``, ``detection.csv``, ``defenses.csv`` and
    ``summary.csv``, all of this sweep's study (every cell of it stored in the folder,
    whichever run finished it: the same tables `bench report` writes), and the per-cell
    table (this run's cells, intervals over validation cases), the study table over seeds
    and cases, the defense table when the sweep has defenses and the smallest detectable
    Dice difference are printed. One run at a time holds the output folder (see
    `benchmark.locking`).
    """
    console = console or Console(stderr=True)
    out_dir = Path(out if out is not None else config.out)
    plan = plan_sweep(config)
    keys = [cell.key for cell in plan.cells]
    study = study_config(config, plan.fingerprint, package_version())
    with OutputLock(out_dir, wait_s), ResultStore(out_dir / "results.sqlite") as store:
        store.record_study(study_key(study), study, keys, describe_study(study))
        finished = store.finished_keys()
        todo = [cell for cell in plan.cells if force or cell.key not in finished]
        skipped = [cell.key for cell in plan.cells if cell not in todo]
        ran: list[str] = []
        failed: list[str] = []
        lost: list[str] = []
        if todo:
            device = resolve_device(config.device)
            progress = make_progress(console, quiet)
            track = tracker(progress)
            predictions = out_dir / "predictions" if save_predictions else None
            spec = WorkerSpec(
                config.resolved(), device, str(cache_root()), str(predictions) if predictions else None,
                plugin_modules=plugin_modules(config), figures_dir=str(out_dir / "figures"), out_dir=str(out_dir),
            )
            runner: CellRunner | None = None  # the driver's own (local executor), built once the data is loaded

            def run_local(cell: Cell) -> CellRecord:
                return runner.run(cell)

            def announce(cell: Cell) -> None:
                if not quiet:
                    console.log(f"cell {cell.key[:10]}: {cell.label}")

            # a process pool starts here: its workers import torch and MONAI while the driver loads the data
            executor = create_executor(config.executor, spec, run_local, announce).start(len(todo))
            with executor, progress if progress is not None else nullcontext():
                plan.source.bind(RunContext(quiet=quiet, progress=track))
                data = plan.source.load()  # builds the cache that workers read
                check_task_channels(config, data.channels)
                if config.executor.name == "local":
                    split = split_cases(data, config.split.val_fraction, config.split.seed, config.split.trusted)
                    runner = CellRunner(
                        data, split, device, plan.fingerprint, cache_root(), quiet, track, predictions, out_dir / "figures",
                        out_dir / "artifacts", example_figures=example_figure_names(plan.cells),
                    )
                for record in track(executor.run(todo), "cells", total=len(todo)):
                    store.write(record)
                    ran.append(record.key)
                    if record.status != FINISHED:
                        failed.append(record.key)
                        last_line = (record.error or "").strip().splitlines()[-1:] or ["unknown error"]
                        console.print(f"[red]cell {record.key[:10]} failed:[/] {last_line[0]}")
                    elif (record.defense_report or {}).get("warning"):
                        console.print(f"[yellow]warning:[/] cell {record.key[:10]}: {record.defense_report['warning']}")
                lost = list(executor.lost)
                if lost:
                    console.print(f"[red]{len(lost)} cell(s) lost their worker and did not finish; run again to resume them.[/]")
        elif not quiet:
            console.print(f"all {len(plan.cells)} cells already finished in {out_dir}; nothing to run (use --force to rerun).")
        # the tables cover the whole study (every seed run into this folder), as `bench report` does;
        # the per-cell table and the exit code cover this run's cells
        study_keys = store.study_cells(study_key(study))
        tables = write_sweep_tables(store.runs(study_keys), store.case_metrics(study_keys), out_dir)
        summary = summarise(store.runs(keys), store.case_metrics(keys))
        if ran:
            draw_dose_response(tables["summary"], out_dir / "figures")
            draw_frontier(tables["defenses"], out_dir / "figures")
    if not quiet:
        print_summary(summary, console)
        if not tables["summary"].empty:
            print_study_summary(tables["summary"], console)
        if not tables["defenses"].empty:
            print_defense_effect(tables["defenses"], console)
        console.print(f"study {study_key(study)}: {tables['detectable'].describe()}")
    incomplete = lost or (summary["status"] != FINISHED).any() or len(summary) < len(keys)
    exit_code = ExitCode.CELL_FAILED if incomplete else ExitCode.OK
    return SweepResult(exit_code, ran, skipped, failed, summary, out_dir, lost)
