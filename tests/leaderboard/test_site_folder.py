"""``bench leaderboard build --out``: nothing the build did not write is ever deleted or overwritten."""

from __future__ import annotations

import json

import pytest

import leaderboard.site as site_module
from benchmark import BenchError
from benchmark.cli import main
from leaderboard import Board, build_site
from leaderboard.staging import MANIFEST_NAME


def snapshot(folder):
    """Every file below ``folder`` (relative path -> bytes); {} when absent."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def board(bundle, helpers, tmp_path):
    root = tmp_path / "board"
    Board(root).add(helpers.dump(bundle, tmp_path / "sub.json"))
    return root


def _build(board, out):
    return main(["leaderboard", "build", "--board", str(board), "--out", str(out)])


def test_user_folders_named_entries_and_figures_survive(board, tmp_path):
    out = tmp_path / "site"
    (out / "entries").mkdir(parents=True)
    (out / "figures").mkdir()
    (out / "entries" / "notes.txt").write_text("mine")
    (out / "figures" / "poster.png").write_bytes(b"png of mine")
    (out / "README.txt").write_text("also mine")
    assert _build(board, out) == 0
    assert (out / "entries" / "notes.txt").read_text() == "mine"
    assert (out / "figures" / "poster.png").read_bytes() == b"png of mine"
    assert (out / "README.txt").read_text() == "also mine"
    assert len(list((out / "entries").glob("*.html"))) == 1 and len(list((out / "figures").glob("*.png"))) == 2
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert "entries/notes.txt" not in manifest["files"] and "index.html" in manifest["files"]
    # a rebuild from an emptied board removes the pages it wrote, and only those
    for entry in board.glob("*.json"):
        entry.unlink()
    assert _build(board, out) == 0
    assert not list((out / "entries").glob("*.html")) and [p.name for p in (out / "figures").iterdir()] == ["poster.png"]
    assert (out / "entries" / "notes.txt").read_text() == "mine" and (out / "figures" / "poster.png").exists()
    assert "No entries yet." in (out / "index.html").read_text()


def test_folders_the_build_created_go_when_emptied(board, tmp_path):
    out = tmp_path / "site"
    assert _build(board, out) == 0
    for entry in board.glob("*.json"):
        entry.unlink()
    assert _build(board, out) == 0
    assert not (out / "entries").exists() and not (out / "figures").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME, "index.html", "leaderboard.csv", "leaderboard.json", "leaderboard.md"])


@pytest.mark.parametrize("out", ["leaderboard", "leaderboard/entries", "leaderboard/entries/site", "."])
def test_out_equal_to_holding_or_inside_the_board_is_refused(bundle, helpers, tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    Board("leaderboard/entries").add(helpers.dump(bundle, tmp_path / "sub.json"))
    before = snapshot(tmp_path / "leaderboard")
    assert main(["leaderboard", "build", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "board folder" in err and "Traceback" not in err
    assert snapshot(tmp_path / "leaderboard") == before
    assert not (tmp_path / "leaderboard" / "entries" / "site").exists()


def test_a_build_that_fails_midway_keeps_the_previous_site(board, tmp_path, monkeypatch):
    out = tmp_path / "site"
    assert _build(board, out) == 0
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise RuntimeError("renderer broke after the pages were written")

    monkeypatch.setattr(site_module, "markdown_board", broken)
    with pytest.raises(RuntimeError):
        build_site(Board(board), out)
    assert snapshot(out) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_files_no_build_wrote_are_never_overwritten(board, tmp_path, capsys):
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("my own page")
    (out / "leaderboard.csv").mkdir()  # a folder where the build wants a file
    assert _build(board, out) == 2
    err = capsys.readouterr().err
    assert "would overwrite index.html, leaderboard.csv" in err
    assert (out / "index.html").read_text() == "my own page" and (out / "leaderboard.csv").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "leaderboard.csv"]


def test_a_manifest_naming_paths_outside_the_site_is_not_followed(board, tmp_path):
    out = tmp_path / "site"
    assert _build(board, out) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "keep.txt").write_text("keep me too")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["files"] += ["../victim.txt", str(victim), "/etc/hostname", "entries/../../victim.txt"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert _build(board, out) == 0
    assert victim.read_text() == "keep me" and (out / "keep.txt").exists()


@pytest.mark.parametrize("make", ["missing", "file"])
def test_build_needs_an_existing_board_folder(tmp_path, capsys, make):
    board = tmp_path / "board"
    if make == "file":
        board.write_text("not a folder")
    assert main(["leaderboard", "build", "--board", str(board), "--out", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: board folder") and ("does not exist" in err or "is not a folder" in err)
    assert not (tmp_path / "site").exists()


def test_out_that_is_a_file_is_refused(board, tmp_path, capsys):
    out = tmp_path / "site.html"
    out.write_text("a file")
    assert _build(board, out) == 2
    assert "is not a folder" in capsys.readouterr().err and out.read_text() == "a file"


def test_library_call_refuses_the_board_as_out(board):
    with pytest.raises(BenchError, match="must not be, hold or lie inside the board folder"):
        build_site(Board(board), board)
