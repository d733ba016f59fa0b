"""``bench data``: inspect data sets."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ..config import load_config
from ..errors import ExitCode
from .commands import add_command, config_arguments

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


def _data_summary(args: argparse.Namespace) -> int:
    from ..datasummary import summarise
    from ..runner import plan_sweep

    config = load_config(args.config, args.overrides)
    plan = plan_sweep(config)
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


