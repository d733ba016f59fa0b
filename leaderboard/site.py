"""``bench leaderboard build``: the static site, ``leaderboard.md``, ``.json`` and ``.csv``.

The HTML is self-contained: inline CSS and JavaScript, no network; figures are PNG files
beside the pages. Every string from a submission goes through jinja2 autoescaping, and
a Content-Security-Policy allows only the page's own script (by hash), so a script
smuggled into a submission neither shows as markup nor runs.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import hashlib
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

import benchmark

from .board import Board, Entry
from .bundle import finite_or_none
from .staging import SiteWriter, check_site_folder, staged_site
from .text import neutralise
from .stats import ALPHA
from .tables import Analysis, analyse, plugin_label

__all__ = ["SORT_SCRIPT", "BuildResult", "build_site", "markdown_board", "CSV_COLUMNS"]

SORT_SCRIPT = """
(function () {
  function key(cell) {
    var raw = cell.getAttribute('data-sort');
    if (raw === null) { raw = cell.textContent.trim(); }
    if (raw === '' || raw === '\\u2014') { return null; }
    var n = Number(raw);
    return isNaN(n) ? raw.toLowerCase() : n;
  }
  function compare(a, b, asc) {
    if (a === null && b === null) { return 0; }
    if (a === null) { return 1; }
    if (b === null) { return -1; }
    var an = typeof a === 'number', bn = typeof b === 'number';
    var r = (an && bn) ? a - b : (an ? -1 : (bn ? 1 : (a < b ? -1 : (a > b ? 1 : 0))));
    return asc ? r : -r;
  }
  function sortBy(table, th, index) {
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows = rows.map(function (row, i) { return [row, i]; });
    rows.sort(function (x, y) {
      var r = compare(key(x[0].cells[index]), key(y[0].cells[index]), asc);
      return r !== 0 ? r : x[1] - y[1];
    });
    rows.forEach(function (pair) { body.appendChild(pair[0]); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    if (!table.tHead || !table.tBodies.length) { return; }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.tabIndex = 0;
      th.title = 'sort by this column';
      th.addEventListener('click', function () { sortBy(table, th, index); });
      th.addEventListener('keydown', function (e) {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortBy(table, th, index); }
      });
    });
  });
  document.documentElement.setAttribute('data-sortable', 'ready');
})();
""".strip()

CSV_COLUMNS = [
    "entry", "status", "submitter", "dataset", "segmenter", "attack", "rate", "defense", "seeds", "cases",
    "dice", "dice_ci_low", "dice_ci_high", "accuracy", "sensitivity", "clean_dice", "drop", "p_value", "significant",
    "auroc", "ap", "drop_ci_low", "drop_ci_high", "p_holm", "seeds_note", "poisoned_share",
    *benchmark.DISTANCE_SUMMARY_COLUMNS, *benchmark.LESION_SUMMARY_COLUMNS,
]


class BuildResult:
    """Where the site went and what it holds."""

    def __init__(self, out: Path, analysis: Analysis, figures: list[Path], left_out: list[str] | None = None):
        self.out = out
        self.analysis = analysis
        self.figures = figures
        self.left_out = list(left_out or [])
        """One line per entry file (or figure) left out of the site, with why."""


def _fmt(value: Any, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if digits == 0:
            return str(int(value))
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("leaderboard", "templates"), autoescape=True, undefined=StrictUndefined, trim_blocks=False, finalize=_inert
    )
    env.filters["fmt"] = _fmt
    return env


def _inert(value: Any) -> Any:
    """Every string printed into a page loses control and bidirectional characters (`leaderboard.text`)."""
    return neutralise(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def _safe_link(link: str) -> str | None:
    link = (link or "").strip()
    return link if link.lower().startswith(("https://", "http://")) and not any(c.isspace() for c in link) else None


def _figure(row: dict[str, Any], points: list[tuple[float, dict[str, Any]]], path: Path) -> None:
    """The attack's dose-response curve, drawn by `benchmark.plot_dose_response` (the one plotter)."""
    # the board lists a cell's seeds; the plotter counts them
    frame = pd.DataFrame([{**point, "seeds": len(point.get("seeds") or []), "attack": row["attack"], "rate": rate} for rate, point in points])
    title = f"{row['segmenter'].split(' (')[0]} | {row['attack']}"
    # the title spans the three panels: room for an attack's distinguishing parameters (stealth=true)
    benchmark.plot_dose_response(frame, row["attack"], path, title=textwrap.shorten(title, 140, placeholder="…"))


_MD_ESCAPES = str.maketrans({**{c: f"&#{ord(c)};" for c in "<>&|"}, **{c: "\\" + c for c in "\\`*_{}[]()#+!~"}})


def _md(text: Any) -> str:
    """Escape a value for a Markdown table cell: no HTML, no pipes, no line breaks, no link syntax."""
    value = _fmt(text) if not isinstance(text, str) else text
    value = neutralise(" ".join(value.split()))
    return value.translate(_MD_ESCAPES)


STAR = "\\*"
STATISTICS_NOTE = (
    "Intervals: 95 % two-level bootstrap t intervals (seeds, and one case draw shared by every drawn seed; 2000 resamples, "
    "fixed seed; mean ± t · se, se the bootstrap SD × √(S/(S−1)), Satterthwaite's degrees of freedom). "
    "`*`: a drop from the clean baseline whose p-value (t-test on that standard error, same degrees of freedom), "
    "adjusted by Holm over every drop on the board, is below {alpha}; tested only with at least 3 seeds."
)


def _submitter_of(analysis: Analysis, entry: str) -> str:
    return next((e["name"] or e["entry"] for e in analysis.entries if e["entry"] == entry), entry)


def _detectable_text(row: dict[str, Any]) -> str:
    """One line on an entry's smallest detectable Dice difference (`benchmark.DetectableDifference`)."""
    seeds = row["seeds"]
    if row.get("detectable_difference") is None:
        return f"smallest detectable Dice difference unknown ({seeds} seed{'' if seeds == 1 else 's'})"
    return (f"smallest detectable Dice difference {_fmt(row['detectable_difference'])} ({seeds} seeds, 80 % power, "
            f"two-sided α = {ALPHA}; pooled standard error of a paired drop {_fmt(row.get('drop_se'))})")


def markdown_board(analysis: Analysis, generated: str) -> str:
    """The boards as GitHub-flavoured Markdown (drop-in for a README)."""
    lines = ["# poisonbench leaderboard", "", f"_Built {generated}. {STATISTICS_NOTE.format(alpha=ALPHA)}_", ""]

    def table(header: list[str], rows: list[list[str]]) -> None:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines.extend("| " + " | ".join(r) + " |" for r in rows)
        if not rows:
            lines.append("| " + " | ".join("" for _ in header) + " |")
        lines.append("")

    lines += ["## Detectable differences", ""]
    lines += [f"- {_md(_submitter_of(analysis, d['entry']))}, {_md(d['dataset'])}: {_detectable_text(d)}"
              for d in analysis.detectable or []] or ["- no entries"]
    lines += ["", "## Attacks", ""]
    table(
        ["entry", "status", "segmenter", "attack", "clean Dice", "Dice at each rate", "AUC", "rate @5 %"],
        [
            [
                _md(r["submitter"] or r["entry"]), r["status"], _md(r["segmenter"]), _md(r["attack"]), _fmt(r["clean_dice"]),
                "<br>".join(f"{_fmt(p['rate'])}: {_fmt(p['dice'])}{STAR if p['significant'] else ''}"
                           f"{' (' + p['seeds_note'] + ')' if p['seeds_note'] and p['drop'] is not None else ''}" for p in r["points"]),
                _fmt(r["auc"]), _fmt(r["rate_at_5pct"]),
            ]
            for r in analysis.attacks
        ],
    )
    lines += ["## Defenses", "", "_Mean recovery: the mean over the poisoned rates of the per-rate recoveries (each a ratio of "
              "paired means), over the rates where the damage exceeds the detectable difference._", ""]
    table(
        ["entry", "status", "segmenter", "attack", "defense", "AUROC", "AP", "mean Dice recovered", "mean of per-rate recoveries",
         "clean cost"],
        [
            [_md(r["submitter"] or r["entry"]), r["status"], _md(r["segmenter"]), _md(r["attack"]), _md(r["defense"]), _fmt(r["auroc"]),
             _fmt(r["ap"]), _fmt(r["mean_recovered"]), _fmt(r["mean_recovery"]), _fmt(r["clean_cost"])]
            for r in analysis.defenses
        ],
    )
    lines += ["## Segmenters", "", "_Paired drop from the clean cell at rate 0.5 (over the seeds and cases both have); "
              "~ marks one interpolated between the paired drops of the neighbouring rates where no cell ran at 0.5._", ""]
    table(
        ["entry", "status", "segmenter", "clean Dice", *[f"paired drop @0.5 {_md(a)}" for a in analysis.attack_names], "mean drop"],
        [
            [_md(r["submitter"] or r["entry"]), r["status"], _md(r["segmenter"]), _fmt(r["clean_dice"]),
             *[("~" if a in r.get("drops_interpolated", []) else "") + _fmt(r["drops"].get(a)) for a in analysis.attack_names],
             _fmt(r["mean_drop"])]
            for r in analysis.segmenters
        ],
    )
    return "\n".join(lines)


def _csv_value(value: Any) -> Any:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    if value is None:
        return ""
    if isinstance(value, str):
        value = neutralise(value, single_line=True)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # no formula injection when opened in a spreadsheet
    return value


def build_site(board: Board, out: str | Path, now: str | None = None) -> BuildResult:
    """Render every page and table of the board into ``out``.

    The site is built in a staging folder beside ``out`` and swapped in (see
    `leaderboard.staging`): a failed build leaves the previous site as it was, and only
    files an earlier build wrote are replaced or removed.

    Entry files that fail the board's checks (`Board.load`), that the analysis cannot take,
    and figures that cannot be drawn are left out and listed in the result's ``left_out``;
    they never stop the build.

    Raises:
        BenchError: the board folder is missing or not a folder, ``out`` is, holds or lies
            inside the board folder, or ``out`` holds files the build would overwrite that
            no earlier build wrote.

    Returns:
        The result, with the analysis the pages were made from.
    """
    out = Path(out)
    board.require_folder()
    check_site_folder(board.root, out)
    contents = board.load()
    entries, analysis, left_out = _analyse_leaving_out(contents.entries)
    left_out = contents.left_out + left_out
    generated = now or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with staged_site(out) as site:
        figures = _write_site(site, entries, analysis, generated, left_out)
    return BuildResult(out, analysis, [out / f for f in figures], left_out)


def _analyse_leaving_out(entries: list[Entry]) -> tuple[list[Entry], Analysis, list[str]]:
    """The analysis of every entry it can take; the others are left out, each with the error."""
    try:
        return entries, analyse(entries), []
    except Exception:  # noqa: BLE001 - one entry the analysis cannot take must not stop the board
        kept, left_out = [], []
        for entry in entries:
            try:
                analyse([entry])
                kept.append(entry)
            except Exception as exc:  # noqa: BLE001
                left_out.append(f"{entry.path}: left out: the analysis failed on it: {type(exc).__name__}: {str(exc)[:200]}")
        return kept, analyse(kept), left_out


def _write_site(site: SiteWriter, entries: list[Entry], analysis: Analysis, generated: str, left_out: list[str]) -> list[str]:
    """Write every file of the site through ``site``; returns the figures' relative paths."""
    figures: list[str] = []
    figure_index: dict[str, list[dict[str, str]]] = {}
    drawn_per_entry: dict[str, int] = {}
    for curve in analysis.curves:
        row = curve["row"]
        if len(curve["points"]) < 1:
            continue
        # numbered within the entry, so adding or removing another entry renames no figure
        drawn_per_entry[row["entry"]] = drawn_per_entry.get(row["entry"], 0) + 1
        name = f"figures/{row['entry']}-{drawn_per_entry[row['entry']]:03d}.png"
        try:
            _figure(row, curve["points"], site.path(name))  # drawn in the default style, a '$' in a name as text
        except Exception as exc:  # noqa: BLE001 - a figure that cannot be drawn is left out, the page still builds
            site.discard(name)
            left_out.append(f"figure of entry {row['entry']} ({neutralise(str(row['attack']), True)}): not drawn: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        row["figure"] = name
        figures.append(name)
        caption = f"{row['submitter'] or row['entry']}: {row['segmenter']} | {row['attack']}"
        figure_index.setdefault(row["entry"], []).append({"path": name, "caption": caption})

    env = _environment()
    common = {
        "script": Markup(SORT_SCRIPT),
        "script_hash": "sha256-" + base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode("utf-8")).digest()).decode("ascii"),
        "generated": generated,
        "version": benchmark.package_version(),
        "alpha": ALPHA,
    }
    all_figures = [f for e in analysis.entries for f in figure_index.get(e["entry"], [])]
    site.text("index.html", env.get_template("index.html.j2").render(analysis=analysis, figures=all_figures, **common))

    by_id = {e.entry_id: e for e in entries}
    for row in analysis.entries:
        entry: Entry = by_id[row["entry"]]
        sub = entry.submission
        verification = dict(entry.verification or {})
        if verification:
            verification.setdefault("summary", "")
        reports = [
            {
                "key": c["key"],
                "segmenter": plugin_label(c["config"]["segmenter"], "segmenter"),
                "attack": plugin_label(c["config"]["attack"], "attack"),
                "rate": c["config"]["rate"],
                "defense": plugin_label(c["config"]["defense"], "defense"),
                "seed": c["config"]["seed"],
                "attack_report": json.dumps(c.get("attack_report"), indent=1, sort_keys=True, ensure_ascii=False) if c.get("attack_report") else "—",
                "defense_report": json.dumps(c.get("defense_report"), indent=1, sort_keys=True, ensure_ascii=False) if c.get("defense_report") else "—",
            }
            for c in sub["cells"]
        ]
        page = env.get_template("entry.html.j2").render(
            entry={**row, "verification": verification or None},
            safe_link=_safe_link(row["link"]),
            attacks=[r for r in analysis.attacks if r["entry"] == entry.entry_id],
            defenses=[r for r in analysis.defenses if r["entry"] == entry.entry_id],
            detectable=[r for r in analysis.detectable or [] if r["entry"] == entry.entry_id],
            cells=[r for r in analysis.cells if r["entry"] == entry.entry_id],
            figures=figure_index.get(entry.entry_id, []),
            reports=reports,
            provenance=json.dumps(sub.get("provenance"), indent=1, sort_keys=True, ensure_ascii=False),
            config=json.dumps(sub.get("config"), indent=1, sort_keys=True, ensure_ascii=False),
            **common,
        )
        site.text(f"entries/{entry.entry_id}.html", page)

    site.text("leaderboard.md", markdown_board(analysis, generated) + "\n")
    payload = finite_or_none(
        {
            "generated": generated,
            "alpha": ALPHA,
            "entries": analysis.entries,
            "attacks": analysis.attacks,
            "defenses": analysis.defenses,
            "segmenters": analysis.segmenters,
            "cells": analysis.cells,
            "detectable": analysis.detectable or [],
        }
    )
    site.text("leaderboard.json", json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")
    with site.path("leaderboard.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in analysis.cells:
            writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
    return figures
