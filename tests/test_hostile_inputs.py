"""Hostile and careless inputs to every command: exit 0 with the input inert, or exit 2 with an ``error:`` line.

Whatever is refused leaves the board folder byte for byte as it was; nothing is written
outside ``--out``; no traceback reaches the user.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.cli import main
from leaderboard import Board, build_site, check_bundle, compute_digest, export_bundle
from leaderboard.board import Entry
from leaderboard.tables import analyse

# the leaderboard suite's results database and bundle helpers (tests/ is not a package)
_spec = importlib.util.spec_from_file_location("leaderboard_fixtures", Path(__file__).parent / "leaderboard" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)
reseal, dump, recount, write_results = fixtures.reseal, fixtures.dump, fixtures.recount, fixtures.write_results

VALID_CONFIG = {
    "dataset": {"name": "synthetic-brats", "cases": 6, "slices": 4, "size": 32, "seed": 0},
    "segmenters": [{"name": "unet", "epochs": 1}],
    "attacks": [{"name": "none", "rates": [0]}],
}


def folder_hash(folder: Path) -> str:
    """SHA-256 over every path and file below ``folder`` ('' when it does not exist)."""
    if not folder.exists():
        return ""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``bench``; assert the outcome is 0, or 2 with an ``error:`` line, and never a traceback."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out, captured.err
    assert code in (0, 2), (code, captured.err)
    if code == 2:
        assert any(line.startswith("error: ") for line in captured.err.splitlines()), captured.err
    return code, captured.err


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> dict:
    results = write_results(tmp_path_factory.mktemp("results"))
    return export_bundle(results, {"name": "Jane Doe", "affiliation": "Lab", "link": "https://example.org"}, created="2025-01-01T00:00:00+00:00")


@pytest.fixture
def bundle(honest) -> dict:
    return copy.deepcopy(honest)


@pytest.fixture
def board(honest, tmp_path) -> Board:
    board = Board(tmp_path / "board")
    board.add(dump(honest, tmp_path / "honest.json"))
    return board


# -- submissions refused by 'add': exit 2, board unchanged ------------------------------
def _forged_accuracy(b):
    for case in b["cells"][3]["cases"]:
        case["accuracy"] = min(1.0, case["accuracy"] + 0.01)
    return reseal(b, recompute_aggregates=True)


def _forged_dice(b):
    b["cells"][2]["cases"][0]["dice"] = min(1.0, b["cells"][2]["cases"][0]["dice"] + 0.05)
    return reseal(b, recompute_aggregates=True)


def _auroc_out_of_range(b):
    next(c for c in b["cells"] if c["defense_report"] and "auroc" in c["defense_report"])["defense_report"]["auroc"] = 7.5
    return reseal(b)


def _near_duplicate(b):
    b["cells"][0]["cases"][0]["dice"] += 1e-15
    b["submitter"]["name"] = "Copycat"
    return reseal(b, recompute_aggregates=True)


def _renamed_cell(b):
    b["cells"][1]["key"] = "abcdef0123456789abcd"
    b["provenance"]["cell_keys"] = [c["key"] for c in b["cells"]]
    return reseal(b)


def _bidi_name(b):
    b["submitter"]["name"] = "Jane\u202eeoD"
    return reseal(b)


def _tampered(b):
    b["cells"][0]["cases"][0]["tp"] += 1
    return b


REFUSED = [_forged_accuracy, _forged_dice, _auroc_out_of_range, _near_duplicate, _renamed_cell, _bidi_name, _tampered]


@pytest.mark.parametrize("spoil", REFUSED, ids=[f.__name__.strip("_") for f in REFUSED])
def test_refused_submission_leaves_the_board_as_it_was(board, bundle, tmp_path, capsys, spoil):
    before = folder_hash(board.root)
    code, err = cli(["leaderboard", "add", dump(spoil(bundle), tmp_path / "bad.json"), "--board", board.root], capsys)
    assert code == 2 and "refused" in err
    assert folder_hash(board.root) == before


@pytest.mark.parametrize(
    "text",
    ['{"duration_s": 1e999}', "[" * 500 + "]" * 500, '{"a": NaN}', '{"a": 1, "a": 2}', "\xff\xfe", "", "null"],
    ids=["1e999", "deep", "nan", "duplicate-key", "not-utf8", "empty", "null"],
)
def test_malformed_submission_on_an_empty_board_leaves_no_board_folder(tmp_path, capsys, text):
    path = tmp_path / "bad.json"
    path.write_bytes(text.encode("latin-1"))
    assert cli(["leaderboard", "add", path, "--board", tmp_path / "board"], capsys)[0] == 2
    assert not (tmp_path / "board").exists()


def test_infinite_duration_in_a_real_bundle(bundle, tmp_path, capsys):
    text = json.dumps(bundle).replace('"duration_s": 1.0', '"duration_s": 1e999', 1)
    assert "1e999" in text
    path = tmp_path / "inf.json"
    path.write_text(text)
    code, err = cli(["leaderboard", "add", path, "--board", tmp_path / "board"], capsys)
    assert code == 2 and "out of range" in err and not (tmp_path / "board").exists()


def test_board_that_is_a_file(bundle, tmp_path, capsys):
    board = tmp_path / "board"
    board.write_text("not a folder")
    for argv in (["leaderboard", "add", dump(bundle, tmp_path / "s.json"), "--board", board],
                 ["leaderboard", "build", "--board", board, "--out", tmp_path / "site"],
                 ["leaderboard", "verify", "x", "--board", board]):
        assert cli(argv, capsys)[0] == 2
    assert board.read_text() == "not a folder" and not (tmp_path / "site").exists()


def test_build_of_a_missing_board(tmp_path, capsys):
    code, err = cli(["leaderboard", "build", "--board", tmp_path / "none", "--out", tmp_path / "site"], capsys)
    assert code == 2 and "does not exist" in err and not (tmp_path / "none").exists() and not (tmp_path / "site").exists()


# -- strings that are markup or TeX, in every kind of field ------------------------------
PAYLOAD = '<script>alert(1)</script>$\\foo{$|=cmd|`*x*`'


def test_markup_and_tex_in_every_string_field_stay_inert(bundle, tmp_path, capsys):
    bundle["submitter"] = {"name": PAYLOAD, "affiliation": PAYLOAD, "link": "javascript:" + PAYLOAD}
    for spec in [*[c["config"]["attack"] for c in bundle["cells"]], *bundle["config"]["attacks"]]:
        if spec["name"] == "noise":
            spec["label"] = PAYLOAD
    for cell in bundle["cells"]:
        for i, case in enumerate(cell["cases"]):
            case["case"] = f"{PAYLOAD}{i}"
        cell["attack_report"] = {**(cell["attack_report"] or {}), "note": PAYLOAD}
    bundle["provenance"]["platform"] = PAYLOAD
    board, site = tmp_path / "board", tmp_path / "work" / "site"
    assert cli(["leaderboard", "add", dump(reseal(bundle), tmp_path / "s.json"), "--board", board], capsys)[0] == 0
    code, err = cli(["leaderboard", "build", "--board", board, "--out", site], capsys)
    assert code == 0 and "warning" not in err
    for page in site.rglob("*.html"):
        assert "<script>alert" not in page.read_text() and 'href="javascript:' not in page.read_text()
    assert "<script>" not in (site / "leaderboard.md").read_text()
    assert len(list((site / "figures").glob("*.png"))) == 1
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["site"]


# -- wrong types anywhere in the schema (hypothesis) ---------------------------------------
def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:2]):  # the first two items of a list stand for the rest
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


def _schema_paths(honest_bundle):
    return sorted(set(_paths(honest_bundle)), key=str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def small(honest):
    """The honest bundle cut to its first three cells and a defended one (every field kind, a quarter of the checking)."""
    small = copy.deepcopy(honest)
    defended = next(c for c in small["cells"] if (c["defense_report"] or {}).get("auroc") is not None)
    small["cells"] = [*small["cells"][:3], defended]
    small["provenance"]["cell_keys"] = [c["key"] for c in small["cells"]]
    small = reseal(small)
    assert check_bundle(small) == []
    return small


@pytest.fixture(scope="module")
def schema_paths(small):
    return _schema_paths(small)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_wrong_type_in_any_field_is_refused_or_inert(small, schema_paths, data):
    bundle = copy.deepcopy(small)
    path = data.draw(st.sampled_from(schema_paths), label="path")
    parent = bundle
    for part in path[:-1]:
        parent = parent[part]
    value = data.draw(json_values.filter(lambda v: type(v) is not type(parent[path[-1]])), label="value")
    parent[path[-1]] = value
    if data.draw(st.booleans(), label="reseal"):
        bundle["digest"] = compute_digest(bundle)
    reasons = check_bundle(bundle)
    assert all(isinstance(r, str) and r for r in reasons)
    if not reasons:  # accepted: the analysis must take it
        analyse([Entry("accepted", Path("accepted.json"), bundle, "", None)])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_entry_file_with_a_wrong_type_never_stops_the_board(small, schema_paths, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("board")
    entry = {"entry_id": "mangled", "added_at": "", "submission": copy.deepcopy(small)}
    path = ("submission", *data.draw(st.sampled_from(schema_paths), label="path"))
    parent = entry
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = data.draw(json_values, label="value")
    (root / "mangled.json").write_text(json.dumps(entry))
    contents = Board(root).load()
    assert len(contents.entries) + len(contents.left_out) == 1


def test_a_mangled_entry_beside_a_good_one_is_left_out_of_the_site(board, bundle, tmp_path, capsys):
    mangled = {"entry_id": "mangled", "added_at": "", "submission": bundle}
    bundle["cells"][0]["config"] = "unet"
    (board.root / "mangled.json").write_text(json.dumps(mangled))
    code, err = cli(["leaderboard", "build", "--board", board.root, "--out", tmp_path / "site"], capsys)
    assert code == 0 and "mangled.json: left out" in err
    assert len(json.loads((tmp_path / "site" / "leaderboard.json").read_text())["entries"]) == 1


# -- sweep files and --set ---------------------------------------------------------------
def _bomb() -> str:
    lines = ["dataset: {name: synthetic-brats}", "segmenters: [{name: unet}]", "attacks:", "  - name: noise", "    rates:",
             "      - &a0 [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]"]
    lines += [f"      - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


CONFIG_TEXTS = {
    "alias-bomb": (_bomb(), "expands to more than"),
    "recursive-alias": ("a: &x [*x]\n", "recursive"),
    "deep-flow": ("seeds: " + "[" * 500 + "]" * 500 + "\n", "nested more than"),
    "deep-block": ("".join("  " * i + "a:\n" for i in range(300)) + "  " * 300 + "b: 1\n", "nested more than"),
    "duplicate-key": (yaml.safe_dump(VALID_CONFIG) + "seeds: [1]\nseeds: [2]\n", "duplicate key 'seeds'"),
    "huge-seed": (yaml.safe_dump({**VALID_CONFIG, "seeds": [10**23]}), "seeds[0]"),
    "negative-seed": (yaml.safe_dump({**VALID_CONFIG, "seeds": [-1]}), "seeds[0]"),
    "negative-split-seed": (yaml.safe_dump({**VALID_CONFIG, "split": {"seed": -5}}), "split.seed"),
    "root-out": (yaml.safe_dump({**VALID_CONFIG, "out": "/"}), "file-system root"),
    "empty-out": (yaml.safe_dump({**VALID_CONFIG, "out": ""}), "must not be empty"),
    "nul": ("dataset: \x00\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", list(CONFIG_TEXTS))
def test_hostile_sweep_files_are_refused_quickly(tmp_path, capsys, name):
    text, message = CONFIG_TEXTS[name]
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    started = time.perf_counter()
    code, err = cli(["validate", path], capsys)
    assert code == 2 and message in err, err
    assert time.perf_counter() - started < 10
    assert len(err) < 5000  # no expanded alias in the message


def test_merge_keys_may_be_overridden(tmp_path, capsys):
    text = "base: &base {name: unet, epochs: 1}\n"  # an unknown top-level key is the only problem
    path = tmp_path / "bench.yaml"
    path.write_text(text + "dataset: {name: synthetic-brats}\nsegmenters: [{<<: *base, epochs: 2}]\n")
    code, err = cli(["validate", path], capsys)
    assert code == 2 and "duplicate" not in err and "base" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["validate", "/dev/zero"], "larger than"),
        (["validate", "/"], "cannot be read"),
        (["validate", "{config}", "--set", "segmenters.²=1"], "not an index"),
        (["validate", "{config}", "--set", "segmenters.٣=1"], "not an index"),
        (["validate", "{config}", "--set", "seeds=[99999999999999999999999]"], "seeds[0]"),
        (["validate", "{config}", "--set", "attacks=[&a [*a]]"], "recursive"),
        (["run", "{config}", "--out", "/"], "file-system root"),
        (["run", "{config}", "--wait", "nan"], "finite number of seconds"),
        (["data", "export", "{config}", "--attack", "none", "--rate", "0", "--seed", "-1", "--out", "{tmp}/x"], "--seed"),
        (["data", "export", "{config}", "--attack", "none", "--rate", "0", "--seed", str(10**23), "--out", "{tmp}/x"], "--seed"),
        (["leaderboard", "verify", "x", "--tolerance", "nan"], "finite tolerance"),
        (["leaderboard", "build", "--board", "{tmp}", "--out", "/"], "file-system root"),
    ],
    ids=["dev-zero", "a-folder", "superscript-index", "arabic-index", "huge-seed", "recursive-set", "run-out-root", "wait-nan",
         "data-seed-negative", "data-seed-huge", "tolerance-nan", "build-out-root"],
)
def test_hostile_command_lines(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(VALID_CONFIG))
    before = folder_hash(tmp_path)
    code, err = cli([a.format(config=config, tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and message in err, err
    assert folder_hash(tmp_path) == before


# -- results folders and bundle files ---------------------------------------------------
def _foreign(folder: Path) -> Path:
    folder.mkdir(parents=True)
    with sqlite3.connect(folder / "results.sqlite") as db:
        db.execute("CREATE TABLE runs (x)")
        db.execute("INSERT INTO runs VALUES (1)")
    return folder


@pytest.mark.parametrize("command", ["export", "report", "run"])
def test_a_foreign_sqlite_file_in_out_is_left_as_it_is(tmp_path, capsys, command):
    out = _foreign(tmp_path / "out")
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(VALID_CONFIG))
    before = (out / "results.sqlite").read_bytes()
    argv = {"export": ["export", "--out", out, "--to", tmp_path / "s.json"], "report": ["report", "--out", out],
            "run": ["run", config, "--out", out, "--quiet"]}[command]
    code, err = cli(argv, capsys)
    assert code == 2 and "not a poisonbench results database" in err
    assert (out / "results.sqlite").read_bytes() == before and not (tmp_path / "s.json").exists()
    assert {p.name for p in out.iterdir()} <= {"results.sqlite", ".bench.lock"}  # run's lock file, nothing else


def test_a_text_file_as_results_database(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.sqlite").write_text("hello")
    assert cli(["export", "--out", out, "--to", tmp_path / "s.json"], capsys)[0] == 2
    assert (out / "results.sqlite").read_text() == "hello"


def test_export_to_a_folder_leaves_no_temporary_file(tmp_path, capsys):
    results = write_results(tmp_path / "results")
    target = tmp_path / "target"
    target.mkdir()
    code, err = cli(["export", "--out", results, "--to", target], capsys)
    assert code == 2 and "is a folder" in err
    assert list(target.iterdir()) == [] and not list(tmp_path.glob("*.tmp"))


def test_export_refuses_a_bidi_name_and_writes_nothing(tmp_path, capsys):
    results = write_results(tmp_path / "results")
    code, err = cli(["export", "--out", results, "--to", tmp_path / "s.json", "--name", "a\u2067b"], capsys)
    assert code == 2 and "U+2067" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
