"""``bench leaderboard add``: each refusal reason, all reasons at once, exit 2, board unchanged."""

from __future__ import annotations

import copy
import json

import pytest

from benchmark.cli import main
from leaderboard import Board, SubmissionError, safe_name


def _snapshot(board):
    return {p.name: p.read_bytes() for p in sorted(board.glob("*"))} if board.exists() else {}


def _bad_schema(b, h):
    del b["submitter"]["affiliation"]
    b["cells"][0]["cases"][0]["dice"] = "high"
    return h.reseal(b)


def _tampered(b, h):
    b["submitter"]["name"] = "Someone Else"  # changed after export, digest kept
    return b


def _inconsistent(b, h):
    b["cells"][3]["aggregates"]["dice"]["mean"] += 0.05
    return h.reseal(b)


def _rate_out_of_range(b, h):
    b["cells"][2]["config"]["rate"] = 1.5
    b["config"]["attacks"][1]["rates"][0] = -0.25
    return h.reseal(b)


def _metric_out_of_range(b, h):
    b["cells"][1]["cases"][2]["sensitivity"] = 1.2
    return h.reseal(b, recompute_aggregates=True)


CASES = [
    (_bad_schema, ["schema: cells/0/cases/0/dice: 'high' is not of type 'number'", "schema: submitter: 'affiliation' is a required property"]),
    (_tampered, ["digest: the bundle's digest"]),
    (_inconsistent, ["aggregate: cells/3/aggregates/dice/mean is"]),
    (_rate_out_of_range, ["range: cells/2/config/rate: rate 1.5 is not in [0, 1].", "range: config/attacks/1/rates/0: rate -0.25 is not in [0, 1]."]),
    (_metric_out_of_range, ["range: cells/1/cases/2/sensitivity: 1.2 is not in [0, 1]."]),
]


@pytest.mark.parametrize("spoil, expected", CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_each_refusal_reason(bundle, helpers, tmp_path, capsys, spoil, expected):
    board = tmp_path / "board"
    bad = spoil(copy.deepcopy(bundle), helpers)
    path = helpers.dump(bad, tmp_path / "bad.json")
    with pytest.raises(SubmissionError) as info:
        Board(board).add(path)
    reasons = info.value.reasons
    for text in expected:
        assert any(r.startswith(text) for r in reasons), (text, reasons)
    kinds = {r.split(":")[0] for r in reasons}
    assert kinds == {expected[0].split(":")[0]}, reasons  # exactly the reason provoked, nothing else
    assert main(["leaderboard", "add", str(path), "--board", str(board)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "refused" in err and expected[0][:40] in err
    assert not board.exists()


def test_duplicate_refused_and_board_unchanged(bundle, helpers, tmp_path, capsys):
    board = tmp_path / "board"
    path = helpers.dump(bundle, tmp_path / "sub.json")
    assert main(["leaderboard", "add", str(path), "--board", str(board)]) == 0
    before = _snapshot(board)
    assert main(["leaderboard", "add", str(path), "--board", str(board)]) == 2
    assert "duplicate: a submission with digest" in capsys.readouterr().err
    # the same results under another submitter are a duplicate too
    other = copy.deepcopy(bundle)
    other["submitter"]["name"] = "Copycat"
    other = helpers.reseal(other)
    assert main(["leaderboard", "add", str(helpers.dump(other, tmp_path / "copy.json")), "--board", str(board)]) == 2
    assert "duplicate: the same results" in capsys.readouterr().err
    assert _snapshot(board) == before


def test_every_reason_at_once(bundle, helpers, tmp_path, capsys):
    board = tmp_path / "board"
    assert main(["leaderboard", "add", str(helpers.dump(bundle, tmp_path / "ok.json")), "--board", str(board)]) == 0
    before = _snapshot(board)
    bad = copy.deepcopy(bundle)
    bad["cells"][2]["config"]["rate"] = 2.0
    bad["cells"][3]["aggregates"]["dice"]["std"] = 0.5
    bad["submitter"]["link"] = 7
    path = helpers.dump(bad, tmp_path / "bad.json")  # digest not resealed either; same results as the entry on the board
    with pytest.raises(SubmissionError) as info:
        Board(board).add(path)
    kinds = {r.split(":")[0] for r in info.value.reasons}
    assert kinds == {"schema", "digest", "range", "aggregate", "duplicate"}
    assert main(["leaderboard", "add", str(path), "--board", str(board)]) == 2
    err = capsys.readouterr().err
    assert f"({len(info.value.reasons)} reasons)" in err
    assert _snapshot(board) == before


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 5000 + "]" * 5000, "nested more than 32 levels"),
        ('{"a": ' * 40 + "1" + "}" * 40, "nested more than 32 levels"),
        ('{"schema_version": NaN}', "NaN and infinities must be written as null"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
    ids=["deep-array", "deep-object", "nan", "duplicate-key", "syntax", "not-object"],
)
def test_malformed_files_refused_cleanly(tmp_path, capsys, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert main(["leaderboard", "add", str(path), "--board", str(tmp_path / "board")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "board").exists()


def test_huge_file_refused_before_parsing(bundle, helpers, tmp_path, capsys, monkeypatch):
    import leaderboard.validate as validate

    monkeypatch.setattr(validate, "MAX_BUNDLE_BYTES", 10_000)
    path = helpers.dump(bundle, tmp_path / "big.json")
    assert path.stat().st_size > 10_000
    assert main(["leaderboard", "add", str(path), "--board", str(tmp_path / "board")]) == 2
    assert "the limit is 10000 bytes" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, expected",
    [("Jane Doe", "jane-doe"), ("../../etc/passwd", "etc-passwd"), ("<script>x</script>", "script-x-script"), ("", "anonymous"),
     (".hidden", "hidden"), ("ÄÖÜ", "anonymous"), ("a" * 100, "a" * 40)],
)
def test_safe_names(name, expected):
    assert safe_name(name) == expected


def test_entry_file_name_is_sanitised(bundle, helpers, tmp_path):
    evil = copy.deepcopy(bundle)
    evil["submitter"]["name"] = "../../outside/evil name"
    entry = Board(tmp_path / "board").add(helpers.dump(helpers.reseal(evil), tmp_path / "evil.json"))
    assert entry.path.parent == tmp_path / "board"
    assert entry.path.name == f"outside-evil-name-{evil['digest'][:12]}.json" or entry.path.name.startswith("outside-evil-name-")
    assert sorted(p.name for p in (tmp_path / "board").iterdir()) == sorted([entry.path.name, "index.json"])
    assert not (tmp_path / "outside").exists()
    assert json.loads(entry.path.read_text())["submission"]["submitter"]["name"] == "../../outside/evil name"
