"""``bench export`` and ``bench leaderboard add|build|verify|rebuild-reference`` (registered via ``poisonbench.commands``)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from benchmark import BenchError, ExitCode

__all__ = ["register_export", "register_leaderboard"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text}")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text[:40]!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite tolerance >= 0; got {text[:40]}")
    return value


def _add_command(sub: argparse._SubParsersAction, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=f"{help}\n\nexamples:\n{examples}", formatter_class=argparse.RawDescriptionHelpFormatter
    )


# -- export ---------------------------------------------------------------------------
def register_export(sub: argparse._SubParsersAction) -> None:
    from .tracking import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, INSTALL_HINT

    p = _add_command(
        sub, "export", "export a study as a leaderboard submission bundle (JSON) and/or as MLflow runs",
        "  bench export --to submission.json --name 'Jane Doe' --affiliation 'Example Lab'\n"
        "  bench export --out paper-results --to paper.json --link https://example.org/paper\n"
        "  bench export --out paper-results --mlflow                      # ./mlruns\n"
        "  bench export --out paper-results --mlflow sqlite:///mlflow.db --experiment paper",
    )
    p.add_argument("--out", default="results", help="output folder of the sweep, holding results.sqlite (default: results)")
    p.add_argument("--to", metavar="FILE", help="where to write the bundle")
    p.add_argument("--mlflow", nargs="?", const=DEFAULT_TRACKING_URI, metavar="TRACKING_URI",
                   help=f"write the study to MLflow: a parent run, one nested run per cell (default URI: {DEFAULT_TRACKING_URI}, "
                        f"a local file store; needs {INSTALL_HINT})")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    p.add_argument("--name", default="", help="submitter name (free text)")
    p.add_argument("--affiliation", default="", help="submitter affiliation (free text)")
    p.add_argument("--link", default="", help="link to a paper or code (free text)")
    p.add_argument("--study", action="append", metavar="KEY",
                   help="the study to export: its key or a prefix (default: the study last run into the folder; see 'bench report --studies')")
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from .bundle import export_bundle, write_bundle

    if args.to is None and args.mlflow is None:
        raise BenchError("bench export: nothing to write; give --to FILE (a submission bundle), --mlflow [TRACKING_URI], or both.")
    if args.to is not None:
        bundle = export_bundle(args.out, {"name": args.name, "affiliation": args.affiliation, "link": args.link}, study=args.study)
        path = write_bundle(bundle, args.to)
        print(f"{path}: {len(bundle['cells'])} cell(s), digest {bundle['digest']}")
    if args.mlflow is not None:
        from .tracking import export_mlflow

        done = export_mlflow(args.out, args.mlflow, study=args.study, experiment=args.experiment)
        replaced = f"; replaced {done.replaced} run(s) of an earlier export" if done.replaced else ""
        print(f"{done.tracking_uri}: experiment {args.experiment!r}, study run {done.parent_run_id} "
              f"with {len(done.cell_run_ids)} cell run(s){replaced}")
    return int(ExitCode.OK)


# -- leaderboard ----------------------------------------------------------------------
def register_leaderboard(sub: argparse._SubParsersAction) -> None:
    from .board import DEFAULT_BOARD

    p = _add_command(
        sub, "leaderboard", "add submissions to a leaderboard, verify them, and build the site",
        "  bench leaderboard add submission.json\n  bench leaderboard build --out site\n  bench leaderboard verify jane-doe-0123456789ab",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True

    add = _add_command(
        actions, "add", "validate a submission and add it to the board (exit 2 with every reason when refused)",
        "  bench leaderboard add submission.json\n  bench leaderboard add submission.json --board my-board",
    )
    add.add_argument("submission", help="bundle written by 'bench export'")
    add.add_argument("--board", default=str(DEFAULT_BOARD), help=f"board folder (default: {DEFAULT_BOARD})")
    add.set_defaults(handler=_add)

    build = _add_command(
        actions, "build", "build the static site, leaderboard.md, .json and .csv from the board",
        "  bench leaderboard build --out site\n  bench leaderboard build --board my-board --out public",
    )
    build.add_argument("--board", default=str(DEFAULT_BOARD), help=f"board folder (default: {DEFAULT_BOARD})")
    build.add_argument("--out", required=True, metavar="SITE", help="folder to write the site into")
    build.set_defaults(handler=_build)

    from .verify import DEFAULT_TOLERANCE

    verify = _add_command(
        actions, "verify", "re-run a sampled cell (or all cells) of an entry and compare every per-case metric and count; a match marks it verified",
        "  bench leaderboard verify jane-doe-0123456789ab\n  bench leaderboard verify jane-doe-0123456789ab --cells all --tolerance 1e-4",
    )
    verify.add_argument("entry", help="entry id, entry file name or path")
    verify.add_argument("--board", default=str(DEFAULT_BOARD), help=f"board folder (default: {DEFAULT_BOARD})")
    verify.add_argument("--cells", default="sample", metavar="WHICH", help="'sample' (one cell, default), 'all', or a cell key (prefix)")
    verify.add_argument("--tolerance", type=_tolerance, default=DEFAULT_TOLERANCE, help=f"largest absolute per-case metric difference; counts: as a fraction of the case's TP+FP+FN (default: {DEFAULT_TOLERANCE:g})")
    verify.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="device of the re-run (default: cpu)")
    verify.add_argument("--seed", type=int, default=None, help="seed of the cell sample (default: drawn from the digest)")
    verify.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads of the re-run (default: the submission's recorded count)")
    verify.set_defaults(handler=_verify)

    from .reference import DEFAULT_SITE, REFERENCE_CONFIGS

    rebuild = _add_command(
        actions, "rebuild-reference",
        "run the project's reference configs (finished cells are reused), export each study, put it on the board and build the site",
        "  bench leaderboard rebuild-reference\n"
        "  bench leaderboard rebuild-reference --config configs/paper.yaml --runs ~/runs --verify\n"
        "  bench leaderboard rebuild-reference --no-run --runs ~/runs     # export runs made elsewhere, train nothing",
    )
    rebuild.add_argument("--config", action="append", metavar="FILE",
                         help="a config to run (repeatable; default: those of " + ", ".join(map(str, REFERENCE_CONFIGS)) + " present)")
    rebuild.add_argument("--runs", metavar="DIR", help="folder of the run folders, one per config: DIR/<config stem> (default: each config's 'out')")
    rebuild.add_argument("--no-run", dest="run", action="store_false",
                         help="train nothing: export studies whose cells all finished, refuse the others")
    rebuild.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a key of every config, as 'bench run --set' (repeatable)")
    rebuild.add_argument("--board", default=str(DEFAULT_BOARD), help=f"board folder (default: {DEFAULT_BOARD})")
    rebuild.add_argument("--site", default=str(DEFAULT_SITE), help=f"folder to build the site into (default: {DEFAULT_SITE})")
    rebuild.add_argument("--verify", action="store_true", help="re-run one sampled cell of every entry not yet verified")
    rebuild.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="device of the verification re-runs (default: cpu)")
    rebuild.add_argument("--quiet", action="store_true", help="no progress bars or tables from the runs")
    rebuild.set_defaults(handler=_rebuild_reference)


def _add(args: argparse.Namespace) -> int:
    from .board import Board

    entry = Board(args.board).add(args.submission)
    print(f"added {entry.entry_id} ({len(entry.submission['cells'])} cell(s)) to {entry.path}")
    return int(ExitCode.OK)


def _build(args: argparse.Namespace) -> int:
    from .board import Board
    from .site import build_site

    result = build_site(Board(args.board), args.out)
    for line in result.left_out:
        print(f"warning: {line}", file=sys.stderr)
    a = result.analysis
    print(
        f"{Path(args.out) / 'index.html'}: {len(a.entries)} entr{'y' if len(a.entries) == 1 else 'ies'}, "
        f"{len(a.attacks)} attack row(s), {len(a.defenses)} defense row(s), {len(a.segmenters)} segmenter row(s), {len(result.figures)} figure(s)"
    )
    return int(ExitCode.OK)


def _verify(args: argparse.Namespace) -> int:
    from .board import Board
    from .verify import verify_entry

    record = verify_entry(Board(args.board), args.entry, args.cells, args.tolerance, args.device, args.seed, threads=args.threads)
    print(f"{args.entry}: {record['status']}: {record['summary']}")
    if record["status"] != "verified":
        for cell in record["cells"]:
            if not cell["matched"]:
                diffs = ", ".join(f"{name} {value:.3g}" if value is not None else f"{name} -" for name, value in cell["max_abs_diff"].items())
                print(f"  cell {cell['key']}: same cases {cell['same_cases']}, largest differences: {diffs}", file=sys.stderr)
        return int(ExitCode.CELL_FAILED)
    return int(ExitCode.OK)


def _rebuild_reference(args: argparse.Namespace) -> int:
    from .reference import rebuild_reference

    result = rebuild_reference(args.config, args.runs, args.board, args.site, args.overrides, run=args.run,
                               verify=args.verify, device=args.device, quiet=args.quiet)
    failed = [o for o in result.outcomes if o.status == "failed"]
    for outcome in failed:
        print(f"error: {outcome.config}: {outcome.message}", file=sys.stderr)
    return int(result.exit_code)
