"""The subcommands of ``bench``, each a small function with examples in its help."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..config import MAX_SEED, check_out_folder, load_config
from ..errors import BenchError, DataNotFoundError, ExitCode
from ..report import print_defense_effect, print_study_summary, print_summary, report_console, summarise
from ..store import ResultStore

__all__ = ["COMMANDS", "add_command", "config_arguments", "seed_argument"]


def config_arguments(parser: argparse.ArgumentParser, default: str | None = "bench.yaml") -> None:
    parser.add_argument("config", nargs="?" if default else None, default=default, help=f"sweep file (default: {default})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key before validation; dotted path, list index allowed, value parsed as YAML (repeatable)",
    )


def seed_argument(text: str) -> int:
    """An argparse type: a seed the harness can use (0 to `MAX_SEED`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed; got {text[:40]!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}; got {text[:40]}")
    return value


def seconds_argument(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds; got {text[:40]!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0; got {text[:40]}")
    return value


def add_command(sub: argparse._SubParsersAction, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=f"{help}\n\nexamples:\n{examples}", formatter_class=argparse.RawDescriptionHelpFormatter)


# -- run -------------------------------------------------------------------------
def _register_run(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "run", "run a sweep; finished cells are skipped (resume)",
             "  bench run\n  bench run configs/paper.yaml --out paper-results\n  bench run --set dataset.cases=12 --set segmenters.0.epochs=2")
    config_arguments(p)
    p.add_argument("--out", help="output folder (overrides 'out' in the config)")
    p.add_argument("--force", action="store_true", help="rerun cells that are already finished")
    p.add_argument("--save-predictions", action="store_true", help="write predicted masks as NIfTI under OUT/predictions/<cell>/")
    p.add_argument("--executor", choices=["local", "process", "ray", "slurm"], help="where cells run (overrides executor.name)")
    p.add_argument("--workers", type=int, help="cells run at once by the process, ray or slurm executor (overrides executor.workers)")
    p.add_argument("--wait", type=seconds_argument, default=0.0, metavar="SECONDS", help="wait this long for another run on the same --out to finish (default: refuse at once)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or logs")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ..sweep import run_sweep

    overrides = list(args.overrides)
    if args.executor:
        overrides.append(f"executor.name={args.executor}")
    if args.workers is not None:
        overrides.append(f"executor.workers={args.workers}")
    if args.out is not None:
        check_out_folder(args.out)
    config = load_config(args.config, overrides)
    console = report_console(stderr=True, quiet=args.quiet)
    result = run_sweep(
        config, out=args.out, force=args.force, save_predictions=args.save_predictions, quiet=args.quiet,
        console=console, wait_s=args.wait,
    )
    if result.exit_code != ExitCode.OK:
        count = len(result.failed) + len(result.lost) or "some"
        print(f"error: {count} cell(s) failed or did not finish; see 'bench report --out {result.out}'.", file=sys.stderr)
    return int(result.exit_code)


# -- validate ----------------------------------------------------------------------
def _register_validate(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "validate", "check a sweep file without running anything (exit 0 valid, 2 invalid)",
             "  bench validate bench.yaml\n  bench validate configs/paper.yaml --set seeds=[0,1]")
    config_arguments(p)
    p.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    from ..runner import plan_sweep

    config = load_config(args.config, args.overrides)
    try:
        plan = plan_sweep(config)
    except DataNotFoundError as exc:  # a config for data on another machine (a cluster, a GPU box) still validates
        from ..config import expand_cells

        cells = expand_cells(config, "", "")
        print(f"{args.config}: valid; {len(cells)} cell(s). The data is not here, so bench run would stop: {exc}")
        return int(ExitCode.OK)
    print(f"{args.config}: valid; {len(plan.cells)} cell(s).")
    return int(ExitCode.OK)


# -- report ---------------------------------------------------------------------------
def _register_report(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "report", "print the tables of one study in an output folder's results database and write OUT/summary.csv",
             "  bench report\n  bench report --out paper-results\n  bench report --out results-defenses --defenses\n"
             "  bench report --studies\n  bench report --study 3f2a")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--defenses", action="store_true",
                   help="print each defense's detection, recovery under attack and clean cost instead of the per-cell table")
    p.add_argument("--study", action="append", metavar="KEY",
                   help="the study to report: its key or a prefix of it (default: the study last run into the folder)")
    p.add_argument("--studies", action="store_true", help="list the studies in the folder (key, last run, cells, seeds, description)")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from ..analysis import defense_effect, detectable_difference, study_tables, summary_table
    from ..outputs import write_summary_csv
    from ..studies import format_studies, select_study

    path = Path(args.out) / "results.sqlite"
    if not path.is_file():
        raise BenchError(f"{path}: no results database here; run 'bench run --out {args.out}' first.")
    with ResultStore(path) as store:
        if args.studies:
            studies = store.studies()
            print(f"{path}: {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, the last run first:")
            if not studies.empty:
                print(format_studies(studies))
            return int(ExitCode.OK)
        study = select_study(store, args.study)
        if study is None:
            print(f"{path}: no cells recorded yet.")
            return int(ExitCode.OK)
        runs, metrics = store.runs(study.cell_keys), store.case_metrics(study.cell_keys)
    summary = summarise(runs, metrics)
    if summary.empty:
        print(f"{path}: no cells recorded yet.")
        return int(ExitCode.OK)
    cells, cases = study_tables(runs, metrics)
    detectable = detectable_difference(cases)
    groups = summary_table(cells, cases)
    write_summary_csv(groups, Path(args.out))
    console = report_console()
    others = f"; {study.others} other stud{'y' if study.others == 1 else 'ies'} here (bench report --studies)" if study.others else ""
    console.print(f"study {study.key}: {study.description}{others}")
    if args.defenses:
        effect = defense_effect(cells, cases, detectable)
        if effect.empty:
            print(f"{path}: no finished cells with a defense other than 'none'.")
        else:
            print_defense_effect(effect, console)
    else:
        print_summary(summary, console)
        if not groups.empty:
            print_study_summary(groups, console)
    console.print(detectable.describe())
    return int(ExitCode.CELL_FAILED if (summary["status"] != "finished").any() else ExitCode.OK)


COMMANDS = [_register_run, _register_validate, _register_report]
