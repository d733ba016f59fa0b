"""Escaping of submission strings in every output; the page is self-contained and its CSP allows only its own script."""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import re

import pytest

from leaderboard import Board, build_site
from leaderboard.site import SORT_SCRIPT

PAYLOAD = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'


@pytest.fixture
def evil_site(bundle, helpers, tmp_path):
    evil = copy.deepcopy(bundle)
    evil["submitter"] = {"name": PAYLOAD, "affiliation": "=HYPERLINK(\"http://x\")|`*bold*`", "link": "javascript:alert(1)"}
    evil["cells"][0]["attack_report"] = {"note": "</pre><script>window.__pwned=3</script>"}
    evil = helpers.reseal(evil)
    board = Board(tmp_path / "board")
    board.add(helpers.dump(evil, tmp_path / "evil.json"))
    build_site(board, tmp_path / "site", now="2025-01-01T00:00:00+00:00")
    return tmp_path / "site"


def _pages(site):
    return [site / "index.html", *sorted((site / "entries").glob("*.html"))]


def test_submission_strings_are_escaped_in_html(evil_site):
    for page in _pages(evil_site):
        html = page.read_text()
        assert "__pwned" in html or page.name == "index.html"
        assert "<script>window" not in html and "<img src=x" not in html and "</pre><script>" not in html
        assert html.count("<script") == 1  # the page's own script only
        assert 'href="javascript:' not in html
    index = (evil_site / "index.html").read_text()
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in index
    entry = _pages(evil_site)[1].read_text()
    assert "&lt;/pre&gt;&lt;script&gt;window.__pwned=3" in entry


def test_page_is_self_contained_with_script_pinned_by_csp(evil_site):
    html = (evil_site / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no CDN, nothing fetched from the network
    assert "<link" not in html and "@import" not in html
    digest = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in html
    assert f"<script>{SORT_SCRIPT}</script>" in html


def test_markdown_and_csv_are_escaped(evil_site):
    markdown = (evil_site / "leaderboard.md").read_text()
    assert "<script>" not in markdown and "&#60;script&#62;" in markdown
    attack_lines = [line for line in markdown.splitlines() if "&#60;script" in line]
    assert attack_lines and all(line.count(" | ") == line.count(" | ") for line in attack_lines)
    with (evil_site / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(r["submitter"] == PAYLOAD for r in rows)  # CSV holds text; it is not markup
    bundle_like = (evil_site / "leaderboard.json").read_text()
    assert "javascript:alert(1)" in bundle_like  # data stays data in JSON


def test_formula_cells_are_neutralised_in_csv(bundle, helpers, tmp_path):
    b = copy.deepcopy(bundle)
    b["submitter"]["name"] = "=cmd|' /C calc'!A0"
    board = Board(tmp_path / "board")
    board.add(helpers.dump(helpers.reseal(b), tmp_path / "s.json"))
    build_site(board, tmp_path / "site")
    with (tmp_path / "site" / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["submitter"] for r in rows} == {"'=cmd|' /C calc'!A0"}


def test_an_entry_without_defenses_says_so_instead_of_an_empty_table(bundle, helpers, tmp_path):
    undefended = copy.deepcopy(bundle)
    undefended["cells"] = [c for c in undefended["cells"] if c["config"]["defense"]["name"] == "none"]
    undefended["provenance"]["cell_keys"] = sorted(c["key"] for c in undefended["cells"])
    board = Board(tmp_path / "board")
    board.add(helpers.dump(helpers.reseal(undefended), tmp_path / "undefended.json"))
    defended = Board(tmp_path / "board2")
    defended.add(helpers.dump(bundle, tmp_path / "defended.json"))
    build_site(board, tmp_path / "site")
    build_site(defended, tmp_path / "site2")
    [page] = (tmp_path / "site" / "entries").glob("*.html")
    html = page.read_text(encoding="utf-8")
    assert 'id="defenses"' not in html and "This entry runs no defense" in html
    [page] = (tmp_path / "site2" / "entries").glob("*.html")
    html = page.read_text(encoding="utf-8")
    assert 'id="defenses"' in html and "This entry runs no defense" not in html


def test_a_dice_gain_reads_as_a_gain_not_a_double_minus():
    from leaderboard.site import _environment

    macros = _environment().get_template("macros.html.j2").module
    row = {
        "submitter": "lab", "entry": "lab-1", "status": "verified", "dataset": "d", "segmenter": "unet", "attack": "noise",
        "clean_dice": 0.82, "max_drop": 0.066, "auc": 0.8, "rate_at_5pct": None, "figure": None,
        "points": [
            {"rate": 0.0, "dice": 0.82, "drop": None, "significant": False, "p_value": None},
            {"rate": 0.5, "dice": 0.755, "drop": 0.066, "significant": False, "p_value": 0.04},
            {"rate": 0.75, "dice": 0.847, "drop": -0.027, "significant": False, "p_value": 0.5},
        ],
    }
    html = str(macros.attacks_table([row]))
    assert "0.755 (−0.066)" in html and "0.847 (+0.027)" in html
    assert "−-" not in html and "(-" not in html
