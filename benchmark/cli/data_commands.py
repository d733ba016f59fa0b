"""``bench data``: inspect data sets and export poisoned copies of them."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ..config import MAX_SEED, load_config
from ..errors import ExitCode
from .commands import add_command, config_arguments, seed_argument

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "data", "inspect data sets", "  bench data summary bench.yaml --json")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=type(p))
    data_sub.required = True
    s = add_command(data_sub, "summary", "cases, slices, channels, shape and label / region voxel counts of a config's data set",
             "  bench data summary\n  bench data summary bench.yaml --json")
    config_arguments(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(handler=_data_summary)
    e = add_command(
        data_sub, "export",
        "write the poisoned training split and the real validation split as NIfTI (nnU-Net raw or BraTS-2021 folders)",
        "  bench data export bench.yaml --attack noise --rate 0.5 --seed 0   # writes ./Dataset501_noise_r050_s0\n"
        "  bench data export bench.yaml --attack noise --rate 0.5 --format nnunet --out export/Dataset502_Noise\n"
        "  bench data export --attack none --rate 0 --format folder --out export/clean",
    )
    config_arguments(e)
    e.add_argument("--attack", required=True, help="registered attack; its parameters come from the config's entry of that name")
    e.add_argument("--rate", type=float, required=True, help="poison rate in [0, 1]")
    e.add_argument("--seed", type=seed_argument, default=0, help=f"cell seed, 0 to {MAX_SEED} (default: 0)")
    e.add_argument("--format", dest="fmt", choices=["nnunet", "folder"], default="nnunet", help="output layout (default: nnunet)")
    e.add_argument(
        "--out", default=None,
        help="output folder (must be empty or absent; default: nnU-Net's DatasetNNN_Name in the working folder, "
        "e.g. Dataset501_noise_r050_s0)",
    )
    e.add_argument("--dataset-id", type=int, default=501, help="nnU-Net data set id NNN of the default folder name, 1 to 999 (default: 501)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(handler=_data_export)


def _progress_context(quiet: bool):
    """A transient progress display on stderr (a no-op unless on a terminal) and a context using it."""
    from contextlib import nullcontext

    from ..plugins import RunContext
    from ..progress import make_progress, tracker

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return nullcontext(), RunContext(quiet=True)
    progress = make_progress(console, quiet=False, transient=True)
    return progress, RunContext(quiet=False, progress=tracker(progress))


def _data_summary(args: argparse.Namespace) -> int:
    from ..datasummary import summarise
    from ..runner import plan_sweep

    config = load_config(args.config, args.overrides)
    plan = plan_sweep(config)
    display, context = _progress_context(quiet=False)
    with display:
        plan.source.bind(context)
        summary = summarise(plan.source.load())
    summary = {"dataset": config.dataset.name, **summary}
    if args.json:
        print(json.dumps(summary))
        return int(ExitCode.OK)
    table = Table(title=f"data set {config.dataset.name}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)
    return int(ExitCode.OK)


def _data_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..datasets.export import default_folder_name, export_poisoned

    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(default_folder_name(args.dataset_id, args.attack, args.rate, args.seed))
    display, context = _progress_context(quiet=args.quiet)
    with display:
        manifest = export_poisoned(
            config, args.attack, args.rate, args.seed, args.fmt, out, quiet=args.quiet, progress=context.progress,
            dataset_id=args.dataset_id,
        )
    print(
        f"{out}: {len(manifest['train_cases'])} training case(s), {len(manifest['poisoned_cases'])} poisoned by "
        f"'{args.attack}' at rate {args.rate:g}; {len(manifest['val_cases'])} real validation case(s); format {args.fmt}."
    )
    return int(ExitCode.OK)
