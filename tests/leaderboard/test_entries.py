"""Entry files are re-checked whenever the board is read; the verified mark lives in the board's index."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest

from benchmark.cli import main
from leaderboard import Board, SubmissionError, build_site
from leaderboard.board import INDEX_NAME
from leaderboard.site import _csv_value, _environment, _md
from leaderboard.text import neutralise


def entry_files(board):
    return sorted(p for p in board.glob("*.json") if p.name != INDEX_NAME)


def other_results(bundle, helpers, name="Other"):
    """A second, distinct honest submission: one case's counts changed and every number recomputed."""
    other = copy.deepcopy(bundle)
    other["submitter"]["name"] = name
    case = other["cells"][0]["cases"][0]
    case["fn"] += 12345
    helpers.recount(case)
    return helpers.reseal(other, recompute_aggregates=True)


@pytest.fixture
def two_entry_board(bundle, helpers, tmp_path):
    board = Board(tmp_path / "board")
    first = board.add(helpers.dump(bundle, tmp_path / "a.json"))
    second = board.add(helpers.dump(other_results(bundle, helpers), tmp_path / "b.json"))
    return board, first, second


def _build(board, out, capsys):
    code = main(["leaderboard", "build", "--board", str(board.root), "--out", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def _site_entries(out):
    return {e["entry"]: e["status"] for e in json.loads((out / "leaderboard.json").read_text())["entries"]}


def test_an_entry_edited_on_disk_is_left_out_and_cannot_be_verified(two_entry_board, tmp_path, capsys):
    board, first, second = two_entry_board
    data = json.loads(first.path.read_text())
    for case in data["submission"]["cells"][3]["cases"]:
        case["dice"] = min(1.0, case["dice"] + 0.1)
    data["verification"] = {"status": "verified", "summary": "trust me"}
    first.path.write_text(json.dumps(data))
    code, err = _build(board, tmp_path / "site", capsys)
    assert code == 0
    assert f"warning: {first.path}: left out: digest:" in err
    assert _site_entries(tmp_path / "site") == {second.entry_id: "self-reported"}
    assert not (tmp_path / "site" / "entries" / f"{first.entry_id}.html").exists()
    assert main(["leaderboard", "verify", first.entry_id, "--board", str(board.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "digest" in err and "Traceback" not in err


def test_the_verified_mark_is_bound_to_the_digest_in_the_index(two_entry_board, tmp_path, capsys, helpers):
    board, first, second = two_entry_board
    board.record_verification(first, {"status": "verified", "summary": "1/1 matched"})
    index = json.loads(board.index_path.read_text())
    assert index["entries"][first.entry_id]["verification"]["digest"] == first.submission["digest"]
    assert _build(board, tmp_path / "site", capsys)[0] == 0
    assert _site_entries(tmp_path / "site") == {first.entry_id: "verified", second.entry_id: "self-reported"}

    # the submission replaced by a consistent one (digest recomputed): the badge is gone
    data = json.loads(first.path.read_text())
    better = copy.deepcopy(data["submission"])
    case = better["cells"][2]["cases"][0]
    case["tp"], case["fn"] = case["tp"] + case["fn"], 0
    helpers.recount(case)
    data["submission"] = helpers.reseal(better, recompute_aggregates=True)
    first.path.write_text(json.dumps(data))
    # a verified block written into an entry file counts for nothing
    data = json.loads(second.path.read_text())
    data["verification"] = {"status": "verified", "summary": "self-awarded"}
    second.path.write_text(json.dumps(data))
    assert _build(board, tmp_path / "site", capsys)[0] == 0
    assert _site_entries(tmp_path / "site") == {first.entry_id: "self-reported", second.entry_id: "self-reported"}


@pytest.mark.parametrize("entry_id", ["../../pwned", "/tmp/pwned", "a/b", "..", "Upper", "index", "x" * 101, 7, None])
def test_an_entry_id_that_is_not_a_plain_name_is_left_out(bundle, tmp_path, capsys, entry_id):
    work = tmp_path / "deep" / "work"
    board = Board(work / "board")
    board.root.mkdir(parents=True)
    (board.root / "pwned.json").write_text(json.dumps({"entry_id": entry_id, "added_at": "", "submission": bundle}))
    code, err = _build(board, work / "site", capsys)
    assert code == 0 and "left out: entry" in err
    assert sorted(p.name for p in work.iterdir()) == ["board", "site"]  # nothing written beside --out
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["work"]
    assert not list((work / "site").rglob("*pwned*"))


def test_an_entry_id_that_differs_from_its_file_name_is_left_out(bundle, tmp_path, capsys):
    board = Board(tmp_path / "board")
    board.root.mkdir()
    (board.root / "mine.json").write_text(json.dumps({"entry_id": "theirs", "added_at": "", "submission": bundle}))
    code, err = _build(board, tmp_path / "site", capsys)
    assert code == 0 and "does not match the file name" in err


def _config_a_string(sub):
    sub["config"] = "dataset: synthetic"


def _cell_without_config(sub):
    del sub["cells"][0]["config"]


def _cells_an_object(sub):
    sub["cells"] = {"0": sub["cells"][0]}


def _submitter_a_list(sub):
    sub["submitter"] = ["Jane"]


def _case_metric_a_string(sub):
    sub["cells"][1]["cases"][0]["dice"] = "0.9"


def _not_an_entry(sub):
    return ["not", "an", "entry"]


@pytest.mark.parametrize(
    "spoil", [_config_a_string, _cell_without_config, _cells_an_object, _submitter_a_list, _case_metric_a_string, _not_an_entry]
)
def test_an_entry_with_wrong_types_is_left_out_and_the_board_still_builds(two_entry_board, tmp_path, capsys, spoil):
    board, first, second = two_entry_board
    data = json.loads(first.path.read_text())
    replaced = spoil(data["submission"])
    first.path.write_text(json.dumps(replaced if replaced is not None else data))
    code, err = _build(board, tmp_path / "site", capsys)
    assert code == 0 and f"{first.path}: left out" in err
    assert _site_entries(tmp_path / "site") == {second.entry_id: "self-reported"}


def test_an_entry_the_analysis_cannot_take_is_left_out(two_entry_board, tmp_path, monkeypatch):
    import leaderboard.site as site

    board, first, second = two_entry_board
    real = site.analyse

    def fragile(entries):
        if any(e.entry_id == first.entry_id for e in entries):
            raise KeyError("a field the analysis did not expect")
        return real(entries)

    monkeypatch.setattr(site, "analyse", fragile)
    result = build_site(board, tmp_path / "site")
    assert [e["entry"] for e in result.analysis.entries] == [second.entry_id]
    assert any("the analysis failed on it: KeyError" in line for line in result.left_out)


def test_tex_in_a_submitted_string_is_drawn_as_text(bundle, helpers, tmp_path, capsys):
    tex = "$\\foo{$"
    b = copy.deepcopy(bundle)
    for spec in [*[c["config"]["attack"] for c in b["cells"]], *b["config"]["attacks"]]:
        if spec["name"] == "noise":
            spec["label"] = tex
    b["submitter"]["name"] = tex
    board = Board(tmp_path / "board")
    board.add(helpers.dump(helpers.reseal(b), tmp_path / "tex.json"))
    code, err = _build(board, tmp_path / "site", capsys)
    assert code == 0 and "warning" not in err
    assert len(list((tmp_path / "site" / "figures").glob("*.png"))) == 1
    assert tex in (tmp_path / "site" / "index.html").read_text()


BIDI = ["\u202e", "\u202a", "\u2066", "\u2069", "\u200f", "\x00", "\x1b", "\x7f", "\x85"]


@pytest.mark.parametrize("char", BIDI, ids=[f"U+{ord(c):04X}" for c in BIDI])
def test_control_and_bidi_characters_are_refused_by_add(bundle, helpers, tmp_path, char):
    b = copy.deepcopy(bundle)
    b["submitter"]["name"] = f"evil{char}gpj.exe"
    b["cells"][0]["cases"][0]["case"] = f"case{char}"
    with pytest.raises(SubmissionError) as info:
        Board(tmp_path / "board").add(helpers.dump(helpers.reseal(b), tmp_path / "s.json"))
    reasons = info.value.reasons
    assert any(r.startswith("text: submitter/name: contains U+") for r in reasons), reasons
    assert any(r.startswith("text: cells/0/cases/0/case: contains U+") for r in reasons), reasons
    assert not (tmp_path / "board").exists()


def test_line_breaks_are_refused_in_single_line_fields_only(bundle, helpers, tmp_path):
    b = copy.deepcopy(bundle)
    b["submitter"]["affiliation"] = "Lab\nEvil row"
    b["cells"][0]["attack_report"] = {"note": "two\nlines\tand a tab"}
    with pytest.raises(SubmissionError) as info:
        Board(tmp_path / "board").add(helpers.dump(helpers.reseal(b), tmp_path / "s.json"))
    assert [r.split(":")[1].strip() for r in info.value.reasons] == ["submitter/affiliation"]


def test_export_refuses_a_name_add_would_refuse(results_dir, tmp_path, capsys):
    target = tmp_path / "sub.json"
    assert main(["export", "--out", str(results_dir), "--to", str(target), "--name", "Jane\u202eeoD"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: export of") and "text: submitter/name: contains U+202E RIGHT-TO-LEFT OVERRIDE" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no bundle, no .tmp
    assert main(["export", "--out", str(results_dir), "--to", str(target), "--name", "x" * 201]) == 2
    assert "schema: submitter/name" in capsys.readouterr().err


def test_every_output_neutralises_the_same_characters():
    text = "a\u202eb\u2066c\x1bd"
    assert neutralise(text) == "a\ufffdb\ufffdc\ufffdd"
    assert _md(text) == "a\ufffdb\ufffdc\ufffdd"
    assert _csv_value(text) == "a\ufffdb\ufffdc\ufffdd"
    assert _environment().from_string("<p>{{ x }}</p>").render(x=text) == "<p>a\ufffdb\ufffdc\ufffdd</p>"
    assert _md("two\nlines") == "two lines" and _csv_value("=1+1\n") == "'=1+1\ufffd"


def test_reading_a_submission_takes_a_small_multiple_of_its_size(tmp_path):
    """The pre-scan streams: an 8 MB string costs about twice its size, not a regex backtracking stack per byte."""
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"submitter": {"name": "x" * 8_000_000}, "cells": [[1, 2, 3]] * 10_000}))
    script = textwrap.dedent(
        f"""
        import resource, leaderboard, numpy
        from leaderboard import read_json_file
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        read_json_file({str(path)!r})
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
        """
    )
    grown = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert grown < 6 * path.stat().st_size, grown


def test_an_entry_keeps_its_figure_names_when_another_entry_joins(bundle, helpers, tmp_path):
    first_file = helpers.dump(bundle, tmp_path / "a.json")
    second_file = helpers.dump(other_results(bundle, helpers), tmp_path / "b.json")

    def figure_names(files, name):
        board = Board(tmp_path / f"board-{name}")
        entries = [board.add(f) for f in files]
        build_site(board, tmp_path / f"site-{name}", now="2025-01-01T00:00:00+00:00")
        return {e.entry_id: sorted(p.name for p in (tmp_path / f"site-{name}" / "figures").glob(f"{e.entry_id}-*.png"))
                for e in entries}

    alone = {**figure_names([first_file], "first"), **figure_names([second_file], "second")}
    together = figure_names([first_file, second_file], "both")
    assert together == alone and all(together.values())
