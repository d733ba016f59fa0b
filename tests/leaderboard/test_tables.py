"""The boards call the analysis layer of benchmark: same numbers as summary.csv and defenses.csv, Holm over the board."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pandas as pd
import pytest

import leaderboard
from benchmark import ALPHA, ResultStore, adjust_p_values
from benchmark.outputs import write_sweep_tables
from leaderboard.board import Entry
from leaderboard.tables import analyse


@pytest.fixture
def three_seeds(helpers, tmp_path, monkeypatch):
    monkeypatch.setitem(helpers.write_results.__globals__, "SEEDS", [0, 1, 2])
    return helpers.write_results(tmp_path / "results")


def _board_and_tables(results_dir: Path):
    bundle = leaderboard.export_bundle(results_dir)
    analysis = analyse([Entry("e", None, bundle, "", None)])
    with ResultStore(results_dir / "results.sqlite") as store:
        tables = write_sweep_tables(store.runs(), store.case_metrics(), results_dir)
    return analysis, tables


def test_board_drops_and_tests_equal_summary_csv(three_seeds):
    analysis, tables = _board_and_tables(three_seeds)
    summary = tables["summary"].set_index(["attack", "rate", "defense"])
    for row in analysis.cells:
        expected = summary.loc[(row["attack"].split(" (")[0], row["rate"], row["defense"].split(" (")[0])]
        assert row["seeds"] == [0, 1, 2] and row["cases"] == expected["cases"]
        assert row["dice"] == pytest.approx(expected["dice"], abs=1e-6)
        assert row["dice_ci_low"] == pytest.approx(expected["dice_ci_low"], abs=1e-6)
        if pd.isna(expected["drop"]):
            assert row["drop"] is None
        else:
            assert row["drop"] == pytest.approx(expected["drop"], abs=1e-6)
            assert row["p_value"] == pytest.approx(expected["p_value"], rel=1e-6)
    # Holm over every drop on the board, and a star only where the adjusted p-value is below alpha
    tested = [r for r in analysis.cells if r["p_value"] is not None]
    assert len(tested) >= 6
    holm = adjust_p_values([r["p_value"] for r in tested])
    assert [r["p_holm"] for r in tested] == pytest.approx(holm, rel=1e-6)
    assert all(r["significant"] == (r["p_holm"] < ALPHA and r["drop"] > 0) for r in tested)
    noise_half = next(r for r in analysis.cells if r["attack_name"] == "noise" and r["rate"] == 0.5 and r["defense_name"] == "none")
    assert noise_half["significant"] and noise_half["seeds_note"] == ""


def test_board_recovery_equals_defenses_csv(three_seeds):
    analysis, tables = _board_and_tables(three_seeds)
    (board,) = analysis.defenses
    written = tables["defenses"].set_index(["attack", "rate"])
    given = [p for p in board["points"] if p["recovery"] is not None]
    assert given and board["points"][-1] in given  # the largest damage clears the detectable difference
    for point in board["points"]:
        expected = written.loc[("noise", point["rate"]), "recovery"]
        if point["recovery"] is None:
            assert pd.isna(expected) and "not above the detectable difference" in point["recovery_note"]
        else:
            assert point["recovery"] == pytest.approx(expected, abs=1e-6) == pytest.approx(0.5, abs=1e-6)
    # the noise attack has no rate 0: the clean cost is that of the none attack's rate-0 row
    assert board["clean_cost"] == pytest.approx(written.loc[("none", 0.0), "clean_cost"], abs=1e-6) == pytest.approx(0.01)


def test_leaderboard_imports_only_the_benchmark_public_api():
    for path in Path(leaderboard.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("benchmark."), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("benchmark.") for alias in node.names), path.name


def test_one_seed_entries_say_so_instead_of_a_star(bundle):
    one_seed = dict(bundle, cells=[c for c in bundle["cells"] if c["config"]["seed"] == 0])
    analysis = analyse([Entry("e", None, one_seed, "", None)])
    drops = [r for r in analysis.cells if r["drop"] is not None]
    assert drops and all(r["p_value"] is None and r["seeds_note"] == "1 seed" and not r["significant"] for r in drops)
    assert analysis.detectable[0]["detectable_difference"] is None


def test_segmenters_drop_is_the_paired_drop_of_the_rate_half_cell(three_seeds):
    # the clean cell has a fourth seed that scored 0.2 lower: an unpaired clean mean would shrink the drop by 0.05
    bundle = leaderboard.export_bundle(three_seeds)
    clean = next(c for c in bundle["cells"] if c["config"]["rate"] == 0 and c["config"]["defense"]["name"] == "none"
                 and c["config"]["attack"]["name"] == "none")
    extra = copy.deepcopy(clean)
    extra["key"], extra["config"]["seed"] = "f" * 20, 3
    for case in extra["cases"]:
        case["dice"] -= 0.2
    bundle["cells"].append(extra)
    analysis = analyse([Entry("e", None, bundle, "", None)])
    (segmenter,) = analysis.segmenters
    (noise,) = [a for a in analysis.attacks if a["attack_name"] == "noise"]
    half = next(p for p in noise["points"] if p["rate"] == 0.5)
    assert segmenter["drops"][noise["attack"]] == pytest.approx(half["drop"], abs=1e-6) == pytest.approx(0.10, abs=2e-3)
    assert segmenter["drops_interpolated"] == []


def test_segmenters_drop_between_rates_is_interpolated_and_says_so(three_seeds):
    bundle = leaderboard.export_bundle(three_seeds)
    bundle["cells"] = [c for c in bundle["cells"] if c["config"]["rate"] != 0.5]
    (segmenter,) = analyse([Entry("e", None, bundle, "", None)]).segmenters
    (attack,) = [a for a in segmenter["drops"]]
    # paired drops 0.03 at 0.25 and 0.30 at 1.0: 0.03 + (0.5 − 0.25) / 0.75 · 0.27
    assert segmenter["drops"][attack] == pytest.approx(0.03 + 0.27 / 3, abs=2e-3)
    assert segmenter["drops_interpolated"] == [attack]


def test_site_shows_each_entry_s_detectable_difference(three_seeds, helpers, tmp_path):
    bundle = helpers.reseal(leaderboard.export_bundle(three_seeds, {"name": "Lab A", "affiliation": "", "link": ""},
                                                      created="2025-01-01T00:00:00+00:00"))
    board = leaderboard.Board(tmp_path / "board")
    board.add(helpers.dump(bundle, tmp_path / "a.json"))
    result = leaderboard.build_site(board, tmp_path / "site", now="2025-01-01T00:00:00+00:00")
    (row,) = result.analysis.detectable
    assert row["detectable_difference"] is not None and row["seeds"] == 3
    shown = f"smallest detectable Dice difference {row['detectable_difference']:.3f} (3 seeds"
    site = tmp_path / "site"
    assert shown in (site / "leaderboard.md").read_text() and shown in (site / "index.html").read_text()
    (page,) = (site / "entries").glob("*.html")
    assert shown in page.read_text()
    assert json.loads((site / "leaderboard.json").read_text())["detectable"][0]["detectable_difference"] == pytest.approx(
        row["detectable_difference"])
    assert "mean of per-rate recoveries" in (site / "leaderboard.md").read_text()
